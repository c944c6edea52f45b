"""The `headstart` command's first lines: Ctrl-C and SIGTERM are answered from the first
moment, also while the libraries load (half a second), with the same exit codes and one
line as later on (see cli.HeadstartGroup), never a traceback."""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that every cleanup on the way runs."""


def terminate(signum, frame) -> None:
    raise Terminated


def run() -> None:
    signal.signal(signal.SIGTERM, terminate)  # SIGINT raises KeyboardInterrupt already
    try:
        from . import cli
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"{'terminated' if terminated else 'interrupted'}: nothing was done", file=sys.stderr)
        raise SystemExit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
    cli.run()


if __name__ == "__main__":
    run()
