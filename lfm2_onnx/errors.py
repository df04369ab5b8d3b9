"""Errors a user can fix. CLIs print them as one line and exit 2, without a traceback."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import threading

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


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that cleanup (a build's partial folder) runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def cli_entry(main):
    """Wrap a CLI main(argv) so a UserError becomes `error: ...` on stderr and exit code 2, and
    SIGINT/SIGTERM unwind through cleanup code and exit 130/143."""

    @functools.wraps(main)
    def wrapper(argv=None):
        previous = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Terminated:
            print("terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
