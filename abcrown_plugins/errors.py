"""The one exception type that reaches the user as a single line.

Anything the user can fix (a bad config key, a missing data file, a wrong
checkpoint) raises :class:`UserError`; the CLI prints ``error: <message>`` on
stderr and exits with code 2, never a traceback. Everything else is a bug.
"""


class UserError(Exception):
    """A problem with the user's input, worded so that it says how to fix it."""
