"""SIGTERM and SIGINT (Ctrl-C) end a run the same way, whenever they land.

Python's SIGINT raises `KeyboardInterrupt` wherever the program is (inside a checkpoint write, a
DataLoader), and Lightning's SIGTERM flag is checked only at some points of its loops. Here both
signals only *record* that they arrived; the run stops at the next consistent point: Lightning's
checks (the flag is forwarded to the trainer), the start of sanity checking or training, the end
of training, or right after `trainer.fit` returns. `InterruptCheckpoint` writes
`interrupted.ckpt`, and `train.run` records `status: interrupted` and exits with 128 + the signal
number (130, 143). A second Ctrl-C stops at once (raw `KeyboardInterrupt`, nothing saved).
"""

from __future__ import annotations

import os
import signal
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(BaseException):
    """The run was stopped by a signal; `step` is the optimiser step reached, `checkpoint` the
    file that holds it (None when nothing could be saved).

    A `BaseException` (like `KeyboardInterrupt`), so `except Exception` never swallows it.
    """

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(f"{signal_name(signum)} received at step {step}")


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class _State:
    signum: int | None = None  # the first signal received since `install`
    installed: dict[int, Any] | None = None  # the handlers we replaced, to restore them
    depth = 0
    trainer_ref: weakref.ReferenceType | None = None


_STATE = _State()


def received() -> int | None:
    """The first signal received since `deferred_signals` was entered, or None."""
    return _STATE.signum


def attach_trainer(trainer: Any) -> None:
    """Forward signals to this trainer's `received_sigterm`, so its loops stop at their checks
    (one that arrived before, `InterruptCheckpoint` raises when sanity checks or training start)."""
    _STATE.trainer_ref = weakref.ref(trainer)


def raise_if_received(step: int | None = None) -> None:
    """Raise `TrainingInterrupted` if a signal arrived."""
    if _STATE.signum is not None:
        raise TrainingInterrupted(_STATE.signum, step)


def _handler(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT and _STATE.signum is not None:
        # A second Ctrl-C: the user wants out now.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    if _STATE.signum is None:
        _STATE.signum = signum
    # os.write, not logging: a signal handler must not take the logging locks.
    os.write(
        2,
        f"\n{signal_name(signum)} received: stopping at the next safe point and writing "
        f"checkpoints/interrupted.ckpt (Ctrl-C again to stop at once, without it).\n".encode(),
    )
    trainer = _STATE.trainer_ref() if _STATE.trainer_ref is not None else None
    connector = getattr(trainer, "_signal_connector", None)
    if connector is not None:
        connector.received_sigterm = True  # Lightning's own flag: its loops raise SIGTERMException


def install() -> None:
    """Defer SIGTERM/SIGINT (nests; main thread only, elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _STATE.depth += 1
    if _STATE.installed is None:
        _STATE.signum = None  # a fresh start: forget a signal of an earlier run in this process
        _STATE.installed = {s: signal.signal(s, _handler) for s in HANDLED}


def uninstall() -> None:
    """Undo one `install`; the last one restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread() or _STATE.depth == 0:
        return
    _STATE.depth -= 1
    if _STATE.depth == 0 and _STATE.installed is not None:
        for s, previous in _STATE.installed.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        _STATE.installed = None
        _STATE.trainer_ref = None


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Within the block SIGTERM/SIGINT are recorded, not acted on (see the module docstring)."""
    install()
    try:
        yield
    finally:
        uninstall()
