"""The one exception type the command line turns into a one-line message."""


class VaekitError(Exception):
    """A problem the user can fix: the message names it and says what to do.

    The CLI prints ``vaekit: error: <message>`` and exits with code 2, no traceback.
    """
