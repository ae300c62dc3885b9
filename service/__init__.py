"""The Clipwise HTTP service: ``service.app.create_app(settings)`` builds the FastAPI app.

Kept free of imports so that ``service.config`` stays light for the command line.
"""
