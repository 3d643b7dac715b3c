"""SIGTERM and SIGINT (Ctrl-C) stop a run at its next safe point, whenever they land.

Inside `handle_signals()` both signals only *record* that they arrived (Python's default SIGINT
would raise `KeyboardInterrupt` wherever the program is: inside a checkpoint write or a
DataLoader). The code that runs the work calls `raise_if_interrupted()` at its safe points (a
training batch, a denoising step), which raises `Interrupted`; the entry point then reports what
was kept and exits with `Interrupted.exit_code` (128 + the signal number: 130, 143), as a shell
reports a process ended by that signal. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_HANDLED = (signal.SIGTERM, signal.SIGINT)
_received: int | None = None  # the first signal since the outermost `handle_signals` began
_active = False


class Interrupted(Exception):
    """A SIGTERM/SIGINT stopped the work; `exit_code` is what the process should exit with."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"{signal_name(signum)} received")


def signal_name(signum: int) -> str:
    """`SIGTERM`, `SIGINT`, ... for a signal number."""
    return signal.Signals(signum).name


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if a signal was recorded (a safe point of the work)."""
    if _received is not None:
        raise Interrupted(_received)


def _record(signum: int, frame: FrameType | None) -> None:
    global _received
    if signum == signal.SIGINT and _received is not None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the user wants out now
        raise KeyboardInterrupt
    if _received is None:
        _received = signum
    # os.write, not logging: a signal handler must not take the logging locks
    os.write(
        2,
        f"\n{signal_name(signum)} received: stopping at the next safe point "
        "(Ctrl-C again to stop at once).\n".encode(),
    )


@contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block SIGTERM/SIGINT are recorded (see the module docstring); on exit the
    previous handlers come back. Nested blocks, and threads other than the main one, leave the
    outermost block's handlers as they are."""
    global _received, _active
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _active = None, True  # a fresh start: forget a signal of an earlier run
    previous = {s: signal.signal(s, _record) for s in _HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _active = False
