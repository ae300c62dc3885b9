"""One module per ``clipwise`` subcommand; each exposes ``register(subparsers)``.

Command modules import their heavy dependencies inside the function that runs the command, so that
``clipwise --help`` and light commands start fast.
"""
