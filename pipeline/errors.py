"""The one exception type that means "the user's input is wrong": jobs print it in one line, exit 2."""


class UserError(Exception):
    """Bad configuration, a missing path, unreachable services: nothing a traceback would help with."""
