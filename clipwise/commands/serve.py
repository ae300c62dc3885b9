"""``clipwise serve``: placeholder, filled in by its author."""


def register(subparsers):
    subparsers.add_parser("serve", help="(not yet available)")
