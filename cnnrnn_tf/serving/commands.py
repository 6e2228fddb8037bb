"""The ``cnnrnn serve`` and ``cnnrnn client`` commands (argument parsing only; imports are lazy)."""


def add_serving_commands(sub, parser_class) -> None:
    """Adds the serving subcommands to the CLI's subparsers."""
    return None
