"""Command-line entry points: report bad input as one clear message, not a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException

from ddpm_unet.utils.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

# Errors that describe bad input (config values, missing files, corrupt data); their messages
# name the value and the fix. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)
TRACEBACK_ENV = "DDPM_UNET_TRACEBACK"


def user_message(err: BaseException) -> str:
    """The message of `err` without what a DataLoader worker adds around it.

    A worker re-raises an error in the main process as the same type with the worker's whole
    traceback as its message ("Caught X in DataLoader worker process 0. Original Traceback ...");
    the user needs only the original message, its last part.
    """
    text = str(err)
    marker = f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def report_user_error(err: BaseException) -> None:
    """Print `err` as `error: ...` on stderr and exit with status 2."""
    print(
        f"\nerror: {user_message(err)}\n(set {TRACEBACK_ENV}=1 for the full traceback)",
        file=sys.stderr,
    )
    raise SystemExit(2)


def exit_on_user_error(func: F) -> F:
    """Decorate a Hydra task function: a `UserError` (or a missing file) is printed as one line,
    exit status 2 (raised with `DDPM_UNET_TRACEBACK=1`); anything else keeps its traceback.

    Errors are first taken out of Hydra's `InstantiationException` wrapper(s), which only repeat
    the target's name: the original says what is wrong and carries the constructor's frames.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as raised:
            err: BaseException = raised
            while isinstance(err, InstantiationException) and err.__cause__ is not None:
                err = err.__cause__
            if isinstance(err, USER_ERRORS) and not os.environ.get(TRACEBACK_ENV):
                report_user_error(err)
            if err is raised:
                raise
            raise err from err.__cause__  # not chained to the wrapper, which only repeats it

    return wrapper  # type: ignore[return-value]
