"""Checks shared by the tests of user-facing errors."""


def one_line(exc_info, *needles):
    """The message of a raised error, checked to be one non-empty line holding every needle."""
    message = str(exc_info.value)
    assert message and "\n" not in message and "\r" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message
