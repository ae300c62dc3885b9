"""The Clipwise HTTP service: ``clipwise.service.app.create_app(settings)`` builds the FastAPI app.

Kept free of imports so that ``clipwise.service.config`` stays light for the command line.
"""
