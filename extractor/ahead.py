"""One stage of work on a thread of its own, a bounded number of items ahead of the code
that consumes its results: the network runs batch k while the main thread decodes and
stacks batch k+1, and a store part is written while the next one fills.

A failure in the background is raised in the consumer, at the item it belongs to; when the
consumer stops early (an error, Ctrl-C), queued items are dropped and the one running is
waited for, so nothing runs on after the caller has moved on (a part written after the
store's lock is released, say).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def run_ahead(
    items: Iterable[Item], work: Callable[[Item], Result], name: str, depth: int = 2
) -> Iterator[tuple[Item, Result]]:
    """(item, work(item)) in the order of `items`, work() running on one background thread
    while the next items are made: at most `depth` of them are handed over and not yet
    consumed (one running, the next queued), so a caller that reuses buffers needs
    depth + 1 of them."""
    pending: deque[tuple[Item, Future]] = deque()
    with Background(name) as thread:
        for item in items:
            pending.append((item, thread.submit(work, item)))
            if len(pending) >= depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


class Background:
    """A single background thread; leaving the `with` block drops what is queued and waits
    for what runs."""

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"headstart-{name}")

    def submit(self, work: Callable, *args) -> Future:
        return self._pool.submit(work, *args)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
