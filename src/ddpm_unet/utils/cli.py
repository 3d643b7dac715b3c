"""Command-line entry points: report bad input as one clear message, not a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Errors that describe bad input (config values, missing files, corrupt data); their messages
# name the value and the fix. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
TRACEBACK_ENV = "DDPM_UNET_TRACEBACK"


def report_user_error(err: BaseException) -> None:
    """Print `err` as `error: ...` on stderr and exit with status 2."""
    print(f"\nerror: {err}\n(set {TRACEBACK_ENV}=1 for the full traceback)", file=sys.stderr)
    raise SystemExit(2)


def exit_on_user_error(func: F) -> F:
    """Decorate a Hydra task function: user errors end the process with a clear message."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get(TRACEBACK_ENV):
                raise
            report_user_error(err)

    return wrapper  # type: ignore[return-value]
