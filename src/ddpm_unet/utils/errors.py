"""`UserError`: the one exception type for input a user can fix (config values, files, data).

`exit_on_user_error` (utils/cli.py) prints a `UserError` as one line and exits with status 2;
every other exception is a bug and keeps its traceback. It subclasses `ValueError` so code (and
tests) that catch `ValueError` for bad arguments keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input that the user can fix; the message names the value and how to fix it."""
