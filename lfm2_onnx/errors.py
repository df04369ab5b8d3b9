"""Errors a user can fix. CLIs print them as one line and exit 2, without a traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


def cli_entry(main):
    """Wrap a CLI main(argv) so a UserError becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
