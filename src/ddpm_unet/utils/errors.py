"""`UserError`: the one exception type for input a user can fix.

Why and how: docs/design.md, section "Conventions", the **Errors** item.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input that the user can fix; the message names the value and how to fix it.

    `exit_on_user_error` (utils/cli.py) prints it as one line, exit status 2. A `ValueError`, so
    code that catches `ValueError` for bad arguments keeps working.
    """


class ConfigError(UserError):
    """A config value (or combination) that cannot work; the message names the key and the fix."""


def check_whole_numbers(minimum: int = 1, **values: object) -> None:
    """`name=value` arguments that must be whole numbers >= `minimum` (`True` is not 1)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"{name}={value!r} must be a whole number >= {minimum}.")
