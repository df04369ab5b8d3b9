"""Errors a user can fix. CLIs print them as one line and exit 2, without a traceback."""

from __future__ import annotations

import argparse
import functools
import os
import sys

# Environment variables whose values must never reach a terminal or a log.
_SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


def one_line(message: str) -> str:
    """The message on one line, with any token from the environment masked."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    for var in _SECRET_VARS:
        secret = os.environ.get(var, "").strip()
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UserError: one line, exit 2, like every other mistake."""

    def error(self, message: str):
        raise UserError(f"{message}; see {self.prog} --help")


def cli_entry(main):
    """Wrap a CLI main(argv) so a UserError becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
