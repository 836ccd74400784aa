"""Three stages over bounded queues, so that reading and preprocessing the next batch and writing the previous one
overlap the inference of this one:

    [thread] read + prepare + stage  ->  [caller's thread] infer  ->  [thread] build columns + write

Memory is bounded by the queue depths times the batch size, whatever the input's size.  An exception in any stage
stops the others and is raised in the caller's thread (so the CLI reports it and the output is discarded).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Pipeline:
    def __init__(self, produce: Iterable, consume: Callable, prepare_depth: int = 2, write_depth: int = 2):
        """``produce``: an iterable run in a thread, yielding work items; ``consume(result)``: run in a thread on
        what the caller's ``process`` returns, in order."""
        self._produce, self._consume = produce, consume
        self._ready: queue.Queue = queue.Queue(maxsize=prepare_depth)
        self._results: queue.Queue = queue.Queue(maxsize=write_depth)
        self._stop = threading.Event()
        self._writer_error: BaseException | None = None

    # -- the two threads
    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run_producer(self) -> None:
        try:
            for item in self._produce:
                if not self._put(self._ready, item):
                    return
            self._put(self._ready, _DONE)
        except BaseException as error:  # handed to the caller's thread, which raises it
            self._put(self._ready, _Failed(error))

    def _run_consumer(self) -> None:
        while True:
            try:
                item = self._results.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():   # the caller failed: write nothing more
                    return
                continue
            if item is _DONE:
                return
            try:
                self._consume(item)
            except BaseException as error:
                self._writer_error = error
                self._stop.set()
                return

    # -- the caller's loop
    def run(self, process: Callable) -> None:
        producer = threading.Thread(target=self._run_producer, name="gal-embed-read", daemon=True)
        consumer = threading.Thread(target=self._run_consumer, name="gal-embed-write", daemon=True)
        producer.start()
        consumer.start()
        try:
            for item in self._items():
                result = process(item)
                if not self._put(self._results, result):
                    break
        except BaseException:
            self._stop.set()
            self._finish(producer, consumer)
            raise
        self._finish(producer, consumer)
        if self._writer_error is not None:
            raise self._writer_error

    def _items(self) -> Iterator:
        while not self._stop.is_set():
            try:
                item = self._ready.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def _finish(self, producer: threading.Thread, consumer: threading.Thread) -> None:
        if not self._stop.is_set():
            self._put(self._results, _DONE)   # the consumer drains what is queued, then ends
            consumer.join()
        else:
            consumer.join(timeout=5)
        self._stop.set()                      # stops a producer still blocked on a full queue
        producer.join(timeout=5)
