"""Start-up in parallel, an optimisation only: the `embed` command has its network's ONNX
Runtime session opened on a thread before its main thread loads numpy, pyarrow and Pillow
and scans the folder (~0.4 s on 2 cores). ONNX Runtime's set-up of InceptionV3 (~0.3 s)
mostly releases the GIL, so the two overlap instead of adding up.

The run takes that session (runtime.open_session) only where it is of the very file the
run settled on, unchanged since, on the same device and precision; otherwise it opens its
own as it would have, and meets any error there. Only the cached network is opened early,
and only on CPU: a GPU session may build a TensorRT engine for minutes, which a run refused
at once (its store locked, say) would then wait for.

This module imports nothing heavy itself: its thread does.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("headstart")


class _Opening:
    def __init__(self, **settings: Any):
        self.settings = settings
        self.key: tuple | None = None  # (model path, its size/mtime/inode, device, precision)
        self.session = None
        self.loaded = threading.Event()  # numpy and ONNX Runtime are imported
        self.thread = threading.Thread(target=self._open, name="headstart-session")
        self.thread.start()

    def _open(self) -> None:
        try:
            import onnxruntime  # noqa: F401  (and numpy with it)

            from .applications import APPLICATIONS
            from .backbone import model_cache_dir, parse_weights
            from .model_cache import file_signature, read_entry
            from .providers import runs_on_cpu
            from .runtime import new_session
            from .spec import copy_folder

            s = self.settings
            backbone = str(s["backbone"])
            if backbone not in APPLICATIONS or s["engine"] != "local":
                return
            if not runs_on_cpu(s["device"]):
                return
            weights = parse_weights(s["weights"], s["seed"])
            folder = model_cache_dir(weights, backbone)
            cached = read_entry(copy_folder(folder, s["precision"]))
            if cached is None:
                return  # exported under the store's lock by the run itself
            key = (cached.onnx_path, file_signature(cached.onnx_path), s["device"], s["precision"])
            self.loaded.set()
            self.session = new_session(cached.onnx_path, s["device"], s["precision"])
            self.key = key
        except Exception as error:  # the run opens its own session and meets it there
            log.debug("opening the session early failed: %r", error)
        finally:
            self.loaded.set()


_current: _Opening | None = None


@contextmanager
def session_opened_early(
    *, weights: str | None, seed: int, backbone: str, precision: str, device: str, engine: str
):
    """Within this block, an embed run with these settings may take the session opened
    early; one it did not take is dropped at the end."""
    global _current
    _current = _Opening(
        weights=weights,
        seed=seed,
        backbone=backbone,
        precision=precision,
        device=device,
        engine=engine,
    )
    # The imports of the two threads take turns on the GIL: let this one's go first, so
    # that the session's set-up, which leaves the GIL to others, overlaps the main
    # thread's imports instead of waiting behind them.
    _current.loaded.wait(timeout=2.0)
    try:
        yield
    finally:
        _current = None


def take_early_session(onnx_path: Path, device: str, precision: str):
    """The session opened early for `onnx_path` on `device` in `precision`, when the file is
    still the one it opened; else None. A session is taken once."""
    global _current
    opening, _current = _current, None
    if opening is None:
        return None
    opening.thread.join()
    from .model_cache import file_signature  # loaded by now: the caller runs a session

    try:
        key = (Path(onnx_path), file_signature(onnx_path), device, precision)
    except OSError:
        return None
    return opening.session if opening.key == key else None
