"""``clipwise search``: placeholder, filled in by its author."""


def register(subparsers):
    subparsers.add_parser("search", help="(not yet available)")
