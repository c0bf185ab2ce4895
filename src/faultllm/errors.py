"""The one exception type users see as a one-line message instead of a traceback."""


class FaultLLMError(Exception):
    """Bad input or configuration: the message names the file/column/value and what was expected."""
