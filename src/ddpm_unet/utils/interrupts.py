"""Interruptions (SIGTERM, Ctrl-C) of long runs: record the signal, stop at the next safe point.

A minimal version of contract C5 (the integrator keeps h3's module): `handle_signals()` installs
handlers that only record the first SIGTERM/SIGINT (a second SIGINT raises `KeyboardInterrupt`
at once); the work calls `raise_if_interrupted()` at its safe points.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the first signal since `handle_signals` was entered


class Interrupted(Exception):
    """A signal stopped the run; `exit_code` is the shell's `128 + signum`."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"{signal_name(signum)} received")


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _record(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT and _received:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now
    if not _received:
        _received.append(signum)


def raise_if_interrupted() -> None:
    """Raise `Interrupted` if a signal was recorded."""
    if _received:
        raise Interrupted(_received[0])


@contextmanager
def handle_signals() -> Iterator[None]:
    """Record SIGTERM/SIGINT while inside; restore the previous handlers on exit."""
    _received.clear()
    previous: dict[int, Any] = {s: signal.signal(s, _record) for s in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
