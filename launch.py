"""The `headstart` process, from its first moment to its exit. Ctrl-C and SIGTERM are
answered at once, also while the libraries load (half a second), with the same exit codes
and one line as later on (see cli.HeadstartGroup), never a traceback. A command that ended
leaves at once, its outputs complete and closed. The CLI itself is cli.py."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import signal
import sys
import threading

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM

# Set by run(): only the headstart process itself may change how Python exits; cli.main()
# called in another program (a test's CliRunner, a notebook) leaves its hooks alone.
_as_process = False
_leaving_early: list[bool] = []
_terminated: list[bool] = []  # SIGTERM arrived: whatever a library made of it, it ends the run


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that every cleanup on the way runs."""


def terminate(signum, frame) -> None:
    _terminated.append(True)
    raise Terminated


def forget_termination() -> None:
    """A new command in this process (cli.main() called again by a program) starts with
    no SIGTERM of a previous one."""
    _terminated.clear()


def was_terminated() -> bool:
    """Whether SIGTERM arrived: a library that caught the Terminated it raised (TensorFlow
    tracing a model does, and fails on with an error of its own) still ends the run as
    terminated."""
    return bool(_terminated)


def on_sigterm(handler):
    """Install `handler` for SIGTERM (main thread only); returns the one it replaces."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def is_process() -> bool:
    """Whether cli.main() runs as the `headstart` process (run()), not inside a program."""
    return _as_process


def _open_closed_standard_descriptors() -> None:
    """Started with stdin, stdout or stderr closed (`2>&-`, a daemon's child): the next file
    opened would get that descriptor, and a library's message to stderr would be written
    into it, a store's part say. Each is opened on /dev/null instead, as is an output
    descriptor open for reading only (a launcher's script file took the closed number):
    what would have been said there is not shown, and nothing fails for it."""
    for descriptor, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            access = fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE
            usable = descriptor == 0 or access != os.O_RDONLY
        except OSError:  # closed
            usable = False
        if not usable:
            null = os.open(os.devnull, mode)
            if null != descriptor:
                os.dup2(null, descriptor)
                os.close(null)


def run() -> None:
    """The `headstart` command. A command that ended (done, refused or interrupted: click
    ends each with SystemExit) leaves at once: tearing the interpreter down would only free
    memory the process gives back anyway and run the libraries' exit handlers, 0.1-0.2 s of
    every run on 2 cores (and HDF5's can crash after a full disk). With Ray loaded, Python's
    own exit runs, so that Ray's handler stops the local cluster it started."""
    global _as_process
    signal.signal(signal.SIGTERM, terminate)  # SIGINT raises KeyboardInterrupt already
    _open_closed_standard_descriptors()
    try:
        from . import cli
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"{'terminated' if terminated else 'interrupted'}: nothing was done", file=sys.stderr)
        raise SystemExit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
    _as_process = True
    try:
        cli.main()
    except SystemExit as leaving:
        if "ray" in sys.modules:
            raise
        leave_now(exit_status(leaving.code))


def exit_status(code: int | str | None) -> int:
    """The status Python would exit with for sys.exit(code)."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def leave_without_library_exit_handlers() -> None:
    """HDF5 could not close a file a full disk cut short (a Keras checkpoint); its library
    would crash (SIGSEGV) closing it again at exit, so the process leaves without the C
    libraries' exit handlers, with exit code 1 as said."""
    if not _leaving_early:
        _leaving_early.append(True)
        atexit.register(leave_now)


def leave_now(status: int = 1) -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with that descriptor closed
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(status)
