"""The next batch, drawn one step ahead in a background thread while the model trains."""
from __future__ import annotations

import contextlib
import queue
import threading

import torch

from audiopg.train.data import SynthSpectrograms

__all__ = ["Prefetcher"]


class Prefetcher:
    """Draws batches with one generator, one batch ahead in a background thread (or inline).

    ``next()`` returns ``(batch, state_before, state_after)``: the :class:`~audiopg.train.data.Batch` and the
    generator state before and after drawing it, so that a saved state can
    point at exactly the next batch to draw, whatever the thread has drawn
    since.  On CUDA the thread works on its own stream and the batch is handed
    over with an event, so synthesis overlaps the training kernels.
    """

    def __init__(self, data: SynthSpectrograms, batch_size: int, generator: torch.Generator, enabled: bool = True):
        self.data = data
        self.batch_size = batch_size
        self.generator = generator
        self.enabled = enabled
        self.device = data.device
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._ready = None
        if enabled and self.device.type == "cuda":  # the side stream starts after the work queued so far
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(self.device))
        if enabled:
            self._thread = threading.Thread(target=self._work, name="audiopg-prefetch", daemon=True)
            self._thread.start()

    def _draw(self):
        before = self.generator.get_state()
        batch = self.data.draw(self.batch_size, self.generator)
        return batch, before, self.generator.get_state()

    def _work(self) -> None:
        try:
            stream = None
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(device=self.device)
                stream.wait_event(self._ready)
            while not self._stop.is_set():
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    item = self._draw()
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                while not self._stop.is_set():
                    try:
                        self._queue.put((item, event, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the training thread
            self._queue.put((None, None, err))

    def next(self):
        if not self.enabled:
            return self._draw()
        item, event, err = self._queue.get()
        if err is not None:
            raise err
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in (item[0].spec, *item[0].factors.values()):
                t.record_stream(current)
        return item

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
            self._thread.join()
            self._thread = None
