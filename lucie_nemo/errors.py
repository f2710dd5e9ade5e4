"""The one exception type for bad user input: its message names the problem and the fix."""


class UserError(ValueError):
    """A problem with the user's input (a path, a value, a file), with the fix in the message."""
