"""Reading failures in workflow code: the message an operator should see from a chain of causes."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError


def failure_message(err: BaseException) -> str:
    """The operator-facing message of an activity/child failure: the innermost ApplicationError's."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause.message
        cause = cause.__cause__
    return str(err)
