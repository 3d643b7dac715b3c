"""Where log messages go: every message once in `<run>/<task>.log`, the screen without noise."""

from __future__ import annotations

import logging
import warnings

# Lightning's information lines (accelerators available, "Tip: try litlogger", "fit stopped"):
# useful in the log file, noise on the screen. Its warnings still reach both.
QUIET_ON_CONSOLE = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning_fabric",
    "pytorch_lightning",
)


class QuietLibraryInfo(logging.Filter):
    """Console filter (configs/hydra/default.yaml): drop the `QUIET_ON_CONSOLE` loggers' records
    below WARNING; the file handler keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(QUIET_ON_CONSOLE)


def route_library_logs_to_root() -> None:
    """Send Lightning's log records to the root logger that Hydra configured (screen + file).

    Lightning, imported before logging is configured (as here, before Hydra starts), gives its
    logger a console handler of its own and stops propagation, so none of its messages reached
    `train.log`. Call this inside the Hydra task function.
    """
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # its own console handler, not a file
                logger.removeHandler(handler)
        logger.propagate = True


def ignore_known_upstream_warnings() -> None:
    """Silence one warning that no setting of ours can avoid, and only that one.

    Lightning 2.6.6 (the newest release) builds `torch.utils._pytree.LeafSpec()` for every
    dataloader (`CombinedLoader`), which torch 2.14 deprecates with a FutureWarning on each
    run. Remove this once Lightning stops constructing `LeafSpec`.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
