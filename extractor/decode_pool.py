"""The decode stage's threads: images decoded ahead of their consumer, in input order.

A bounded window of decode jobs runs on daemon threads (Pillow and hashlib release the
GIL) at the lowest CPU priority, so the network that consumes them stays busy and memory
stays flat however many images there are. A decoder bug or a hostile file costs one image,
never the run: each outcome is the decoded image or the DecodeError saying why not.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from queue import SimpleQueue

from .decode import DecodedImage, DecodeError, UnchangedImage, decode_outcome
from .scan import ImageFile
from .settings import DEFAULT_COLOR_MODE, default_workers

DECODE_NICENESS = 19
# Pillow decodes even a 100-megapixel JPEG in seconds; a file that takes minutes is hostile.
DECODE_TIMEOUT_S = 120.0


def decode_in_order(
    images: list[ImageFile],
    size: int,
    color_mode: str = DEFAULT_COLOR_MODE,
    workers: int | None = None,
    window: int = 32,
    fast: bool = False,
) -> Iterator[tuple[ImageFile, DecodedImage | DecodeError]]:
    """Each image decoded (or the DecodeError saying why not), in input order, with worker
    threads decoding ahead: the decode stage of embed, for other consumers (train-cnn)."""

    def load(image: ImageFile) -> DecodedImage | DecodeError:
        return decode_outcome(image.location, size, (), color_mode, fast)

    return decoded_in_order(images, load, workers or default_workers(), window // 2)


def decoded_in_order(
    images: list[ImageFile],
    load: Callable[[ImageFile], DecodedImage | UnchangedImage | DecodeError],
    workers: int,
    batch_size: int,
    timeout: float = DECODE_TIMEOUT_S,
) -> Iterator[tuple[ImageFile, DecodedImage | UnchangedImage | DecodeError]]:
    """Decode on worker threads, yielding in input order. At most two batches are decoded
    ahead of the model: enough to keep it busy, bounded so memory stays flat. A file whose
    decoding takes longer than `timeout` seconds is given up (a DecodeError) and its
    thread replaced, so no file can stall the run."""
    window = max(2 * batch_size, 2 * workers)
    queue: deque[tuple[ImageFile, Future]] = deque()
    upcoming = iter(images)
    pool = _DecodePool(workers)
    try:
        for image in upcoming:
            queue.append((image, pool.submit(load, image)))
            if len(queue) >= window:
                break
        while queue:
            image, job = queue.popleft()
            following = next(upcoming, None)
            if following is not None:
                queue.append((following, pool.submit(load, following)))
            try:
                outcome = job.result(timeout=timeout)
            except TimeoutError:
                pool.replace_stuck_worker()
                outcome = DecodeError(f"decoding took longer than {timeout:g} s; skipped")
            yield image, outcome
    finally:
        for _, job in queue:
            job.cancel()
        pool.shutdown()


class _DecodePool:
    """Decode threads fed from a queue. They are daemon threads: one stuck in a decoder
    for good costs its thread, never the run, and never keeps the process from exiting
    (ThreadPoolExecutor joins its threads at exit)."""

    def __init__(self, workers: int):
        self._tasks: SimpleQueue = SimpleQueue()
        self._threads: list[threading.Thread] = []
        for _ in range(workers):
            self.replace_stuck_worker()

    def submit(self, function: Callable, argument) -> Future:
        future: Future = Future()
        self._tasks.put((future, function, argument))
        return future

    def replace_stuck_worker(self) -> None:
        thread = threading.Thread(target=self._work, name="decode", daemon=True)
        thread.start()
        self._threads.append(thread)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        _yield_cores_to_the_model()
        while (task := self._tasks.get()) is not None:
            future, function, argument = task
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(function(argument))
            except BaseException as error:  # handed to the consumer, like the executor does
                future.set_exception(error)


def _yield_cores_to_the_model() -> None:
    """Run this decode thread at the lowest CPU priority (Linux applies nice per thread).
    On a CPU node the model and the decoders share the cores: decoding then fills the
    moments the model's threads wait instead of slowing them down. Measured (2 cores,
    299 px, 500x375 JPEGs, steady state): 36.4 images/s at equal priority, 37.9 at nice 19
    without ORT spin-waiting, against 39.4 for ONNX Runtime alone. On a GPU node nothing
    else wants the cores, so it costs nothing there."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: equal priority it is
        pass
