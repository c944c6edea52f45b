"""What C++ libraries write straight to file descriptor 2, past Python's logging: TensorFlow's
start-up lines, ONNX Runtime's account of a GPU provider that failed to start. Inside
`native_stderr`, that descriptor is a pipe read line by line as it comes; the lines the
caller keeps go on to the real stderr at once (so that a crash inside loses none of them),
the others are collected for the caller (to say their gist, or log them at debug level)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator

_JOIN_SECONDS = 5  # a child process started inside may hold the pipe open: do not wait on it


@contextlib.contextmanager
def native_stderr(keep: Callable[[str], bool] = lambda line: False) -> Iterator[list[str]]:
    """Inside, each line written to file descriptor 2 (by Python or by C++) for which
    `keep(line)` is true is passed on to stderr; the others are appended to the list
    yielded, complete once the block has ended. Where descriptor 2 cannot be redirected
    (closed), the block runs as it is and the list stays empty."""
    dropped: list[str] = []
    try:
        _flush_stderr()
        saved = os.dup(2)
    except OSError:
        saved = None
    if saved is None:
        yield dropped
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:
        os.close(saved)
        yield dropped
        return
    os.dup2(write_end, 2)
    os.close(write_end)

    def take(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        if not keep(line):
            dropped.append(line)
            return
        try:
            os.write(saved, raw + b"\n")
        except OSError:  # the terminal went away: nothing to tell it
            pass

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    take(raw)
        if pending:
            take(pending)

    reader = threading.Thread(target=pump, name="headstart-native-stderr", daemon=True)
    reader.start()
    try:
        yield dropped
    finally:
        try:
            _flush_stderr()  # Python's own buffered writes go through the pipe first
        finally:
            os.dup2(saved, 2)  # the pipe's last writer closed: the reader reads to its end
            reader.join(_JOIN_SECONDS)
            os.close(saved)


def _flush_stderr() -> None:
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
