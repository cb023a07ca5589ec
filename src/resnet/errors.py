class ResnetError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI."""
