"""The one exception type users see as a one-line message instead of a traceback."""


class FaultLLMError(Exception):
    """Bad input or configuration: the message names the file/column/value and what was expected."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (or its type's name when it has none), for a one-line report."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
