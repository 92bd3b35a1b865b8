"""Batches read ahead in a background thread, so reading overlaps training.

Reading a batch (memory-mapped pages, Fourier cropping, normalisation) runs in torch and numpy code that
mostly releases the GIL; one thread ``depth`` batches ahead keeps the trainer from waiting on the disk.
A dataset cached in memory needs no thread: its batches are a tensor index.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["BatchLoader"]


class BatchLoader:
    """Iterate ``(idx, images)`` for the index batches ``batches``, reading up to ``depth`` ahead.

    Errors raised while reading are raised again in the consuming thread, at the batch that failed.
    Closing (or garbage-collecting) the loader stops the thread.
    """

    def __init__(self, dataset, batches: Sequence[np.ndarray | torch.Tensor], depth: int = 2):
        self.dataset = dataset
        self.batches = [np.asarray(b) for b in batches]
        self.depth = depth
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if getattr(self.dataset, "in_memory", False) or self.depth <= 0:
            for b in self.batches:
                yield b, self.dataset.read(b)
            return
        q: queue.Queue = queue.Queue(maxsize=self.depth)
        self._stop.clear()

        def work():
            for b in self.batches:
                if self._stop.is_set():
                    return
                try:
                    item = (b, self.dataset.read(b), None)
                except BaseException as exc:  # handed to the consumer
                    item = (b, None, exc)
                while not self._stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if item[2] is not None:
                    return

        self._thread = threading.Thread(target=work, name="semiamort-loader", daemon=True)
        self._thread.start()
        try:
            for _ in self.batches:
                b, images, exc = q.get()
                if exc is not None:
                    raise exc
                yield b, images
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
