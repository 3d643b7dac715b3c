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
