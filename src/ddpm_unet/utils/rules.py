"""Declarative checks of single values: `Rule(key, kind, example)` says what one argument must be.

An object checks its arguments with its rules at construction (`check_arguments`), and the early
config check runs the same rules on the composed config (`check_values`), so a typo such as
`data.batch_size=abc` names its key before any work starts (docs/design.md, section
"Conventions", the **Errors** item).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddpm_unet.utils.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """A whole number (`whole`) or any real number for which `allowed` holds; `words` says so to
    the user ("a positive whole number")."""

    whole: bool
    allowed: Callable[[float], bool]
    words: str


POSITIVE_INT = Kind(True, lambda v: v >= 1, "a positive whole number")
AT_LEAST_TWO = Kind(True, lambda v: v >= 2, "a whole number >= 2")
NON_NEGATIVE_INT = Kind(True, lambda v: v >= 0, "a whole number >= 0")
# numpy's and Lightning's seeding accept 0 .. 2**32 - 1 only.
SEED = Kind(True, lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295")
LIMIT = Kind(True, lambda v: v == -1 or v >= 1, "a positive whole number, or -1 for no limit")
POSITIVE = Kind(False, lambda v: v > 0, "a number > 0")
NON_NEGATIVE = Kind(False, lambda v: v >= 0, "a number >= 0")
OPEN_FRACTION = Kind(False, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
DECAY = Kind(False, lambda v: 0 <= v < 1, "a number from 0 up to (not including) 1")
FRACTION = Kind(False, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def shown(value: Any) -> str:
    """A value as the user would type it back: strings quoted, None as null, booleans as
    true/false (YAML's spelling, not Python's)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


@dataclass(frozen=True)
class Rule:
    """`key` must hold a value of `kind`; `example` is a good value shown in the message.

    `null_means`: null is allowed and means this (e.g. "a random seed"); None: null is an error.
    """

    key: str
    kind: Kind
    example: str
    null_means: str | None = None

    def check(self, value: Any, prefix: str = "") -> None:
        """Raise `ConfigError` unless `value` (of `prefix + key`) is of `kind`."""
        key, kind = prefix + self.key, self.kind
        words = kind.words + (f", or null for {self.null_means}" if self.null_means else "")
        fix = f"give {words}, e.g. {key}={self.example}."
        if value is None:
            if self.null_means is None:
                raise ConfigError(f"{key}=null is not allowed: {fix}")
            return
        # bool is an int in Python, but `data.batch_size=true` is a mistake, not the number 1.
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if kind.whole and not is_int:
            raise ConfigError(f"{key}={shown(value)} is not an integer: {fix}")
        if not (is_int or isinstance(value, float)):
            raise ConfigError(f"{key}={shown(value)} is not a number: {fix}")
        if math.isnan(value) or not kind.allowed(value):
            raise ConfigError(f"{key}={shown(value)} is out of range: {fix}")


@dataclass(frozen=True)
class Choice:
    """`key` must be one of `options` (strings)."""

    key: str
    options: tuple[str, ...]

    def check(self, value: Any, prefix: str = "") -> None:
        if value not in self.options:
            key = prefix + self.key
            raise ConfigError(
                f"{key}={shown(value)} is unknown: use one of {', '.join(self.options)}, "
                f"e.g. {key}={self.options[0]}."
            )


_ABSENT = object()


def check_values(cfg: DictConfig, rules: Sequence[Rule | Choice], prefix: str = "") -> None:
    """Check every key `prefix + rule.key` of `rules` that `cfg` has (a key absent from the
    config, e.g. a callback turned off, is not checked); raise `ConfigError` at the first bad
    one."""
    for rule in rules:
        value = OmegaConf.select(cfg, prefix + rule.key, default=_ABSENT, throw_on_missing=True)
        if value is not _ABSENT:
            rule.check(value, prefix)


def check_arguments(
    arguments: Mapping[str, Any], rules: Sequence[Rule | Choice], prefix: str = ""
) -> None:
    """Check a constructor's `arguments` (name -> value) against its `rules`; messages name
    `prefix + name` (the config key, e.g. `data.batch_size`)."""
    for rule in rules:
        rule.check(arguments[rule.key], prefix)
