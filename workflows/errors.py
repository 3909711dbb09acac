"""Reading failures in workflow code: the message an operator should see from a chain of causes."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

# An error's message lands in the history, in a run's status and in every `ferry status`: an upstream that
# answers with a megabyte of text (a stack trace, an HTML page) must not grow them without bound. Activities
# cut their messages with `bounded` (activities/errors.py); workflows cut whatever else reaches a status.
MAX_MESSAGE = 4000


def bounded(message: str) -> str:
    """`message`, cut to MAX_MESSAGE characters, saying how much was cut."""
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[: MAX_MESSAGE - 60]}... ({len(message) - MAX_MESSAGE + 60} more characters cut)"


def failure_message(err: BaseException) -> str:
    """The operator-facing message of an activity/child failure: the innermost ApplicationError's, bounded."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return bounded(cause.message)
        cause = cause.__cause__
    return bounded(str(err))
