"""A site's spikes at every step for all calibration images, as the refinement keeps them
(:mod:`onnx_snn.sequential`: later sites are run from them, one layer at a time, and the
weight calibration reads their counts).

Binary spikes are kept one bit each (``numpy.packbits`` over each sample's neurons): a byte
per spike had been the refinement's largest memory on networks of large feature maps (512
calibration images of a 32 x 56 x 56 site at T = 2: 103 MB a site as bytes, 13 MB as bits).
Signed spikes (-1, 0, +1) are kept a byte each. Reading gives the same 0/1 (or -1/0/1) values
that were written, so the refinement computes the same numbers either way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class RecordedSpikes:
    """Spikes ``[T, N, *shape]`` of one site, written and read by ranges of samples."""

    def __init__(self, timesteps: int, samples: int, shape: Sequence[int], signed: bool = False):
        self.timesteps, self.samples = int(timesteps), int(samples)
        self.shape = tuple(int(d) for d in shape)
        self.signed = bool(signed)
        self.per_sample = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if self.signed:
            self._data = np.zeros((self.timesteps, self.samples, self.per_sample), np.int8)
        else:
            self._data = np.zeros((self.timesteps, self.samples, (self.per_sample + 7) // 8),
                                  np.uint8)

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    @staticmethod
    def bytes_for(timesteps: int, samples: int, neurons: int, signed: bool = False) -> int:
        """What :attr:`nbytes` is for a site of ``neurons`` per sample (the memory estimate's)."""
        return int(timesteps) * int(samples) * (int(neurons) if signed else (int(neurons) + 7) // 8)

    def write(self, start: int, values: np.ndarray) -> None:
        """Record the steps' outputs ``values`` ``[T, nb, *shape]`` of samples ``start`` ..
        ``start + nb``: a spike wherever a value is not 0 (its sign for signed spikes)."""
        v = np.asarray(values).reshape(self.timesteps, -1, self.per_sample)
        nb = v.shape[1]
        if self.signed:
            self._data[:, start:start + nb] = np.sign(v)
        else:
            self._data[:, start:start + nb] = np.packbits(v != 0, axis=-1)

    def read(self, start: int, stop: int, step=None) -> np.ndarray:
        """The spikes of samples ``start`` .. ``stop`` at every step ``[T, nb, *shape]`` (or
        at step ``step``: ``[nb, *shape]``): uint8 0/1, int8 -1/0/1 for signed spikes."""
        d = self._data[:, start:stop] if step is None else self._data[step, start:stop]
        if not self.signed:
            d = np.unpackbits(d, axis=-1, count=self.per_sample)
        return d.reshape(*d.shape[:-1], *self.shape)
