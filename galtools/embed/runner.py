"""Running the session on prepared batches.

On the CPU, ``session.run`` reads the numpy batch in place.  On a GPU the input goes through I/O binding: the
preparing thread copies each batch into one of a small ring of device buffers (``stage``) while the GPU still runs
the previous batch, and the run itself only binds that buffer, so the host-to-device copy is off the critical path.
"""
from __future__ import annotations

import numpy as np

from galtools.embed.model import INPUT_NAME, OUTPUT_NAME

# Device buffers in flight: one being filled by the preparing thread, one waiting in the queue, one being run.
RING = 3


class CpuRunner:
    max_queued = 2     # prepared batches waiting for the session (each one is the caller's own numpy array)

    def __init__(self, session):
        self.session = session

    def stage(self, prepared: np.ndarray):
        return prepared

    def run(self, staged) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: staged})[0]


class IoBindingRunner:
    """Inputs staged in a ring of device buffers; outputs left on the device during the run, then copied back."""

    max_queued = RING - 2   # with one buffer being filled and one being run, this many can wait in between

    def __init__(self, session, device_index: int, batch_shape: tuple[int, int, int, int], device_type: str = "cuda"):
        import onnxruntime as ort

        self.session, self.device_index, self.batch_shape = session, device_index, tuple(batch_shape)
        self.device_type = device_type   # "cuda"; "cpu" runs the same code in the tests of machines without a GPU
        self._ort = ort
        self._ring = [ort.OrtValue.ortvalue_from_shape_and_type(self.batch_shape, np.float32, device_type, device_index)
                      for _ in range(RING)]
        self._next = 0

    def stage(self, prepared: np.ndarray):
        """Copy a prepared batch to the GPU (called from the preparing thread)."""
        prepared = np.ascontiguousarray(prepared, dtype=np.float32)
        if prepared.shape == self.batch_shape:
            buffer = self._ring[self._next]
            self._next = (self._next + 1) % RING
            buffer.update_inplace(prepared)
            return buffer
        # the last, shorter batch: a buffer of its own
        return self._ort.OrtValue.ortvalue_from_numpy(prepared, self.device_type, self.device_index)

    def run(self, staged) -> np.ndarray:
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, staged)
        binding.bind_output(OUTPUT_NAME, self.device_type, self.device_index)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def make_runner(session, gpu_index: int | None, batch_shape):
    if gpu_index is None:
        return CpuRunner(session)
    runner = IoBindingRunner(session, gpu_index, batch_shape)
    # The first run of a shape searches cuDNN's convolution algorithms (EXHAUSTIVE) and grows the memory arena:
    # seconds for a ResNet-50.  Pay it here, before the first real batch, not in the middle of the reading.
    runner.run(runner.stage(np.zeros(batch_shape, np.float32)))
    return runner
