"""The one exception type for mistakes a user can fix (bad path, bad flag, bad data)."""


class UserError(Exception):
    """A problem with the user's input or environment. The CLI prints its message on one line
    and exits with status 2; the message must say what to do about it."""
