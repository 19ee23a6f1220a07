"""Sites whose spikes only a max pool reads, and the pool's windows over their neurons.

A rate-exact spiking max pool (docs/FORMAT.md) outputs, over the T steps, the largest spike
count of each window. A neuron's count is a non-decreasing function of its input, so the
pooled rate is the site's quantization applied to each window's largest DNN activation:
what the layer after the pool reads is ``q(max(a))``, not ``q(a)``. The refinement's search
(:func:`onnx_snn.scales.search_channels` with ``window``) then compares the pooled values,
on whole windows sampled here (:func:`sample_windows`). On a site that a global max pool
reads, the site's own distribution is mostly small values, and its percentiles put the
quantization's few levels (3 at T = 2) where the pooled maxima never are.

Only a site whose output is read by one pool alone (a MaxPool or GlobalMaxPool of the
normalized DNN, not a graph output) is treated so; a site that feeds anything else too keeps
the search per neuron.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from .calibrate import StratifiedStream
from .graph.ir import pool_windows

#: the fewest windows sampled per site where there are as many (the sample of neurons,
#: ``SearchConfig.sequential_sample``, divided by the window's size, may leave few: a global
#: pool has one window per channel and image)
MIN_WINDOWS = 25_000
#: the most neurons the windows sampled at a site may hold together (the search simulates
#: each candidate on all of them)
MAX_NEURONS = 1_000_000
#: the most neurons a window may hold (a global pool of a large map: its windows are not
#: sampled, the site keeps the search per neuron)
MAX_WINDOW = 4096


@dataclass(frozen=True)
class PoolWindows:
    """The windows of a max pool over a site's per-sample neurons ``in_shape`` (C, *spatial):
    ``out_spatial`` windows per channel along each axis, each ``kernel`` positions ``dilations``
    apart, starting at ``o * strides - pads_lo``."""

    node: str
    in_shape: Tuple[int, ...]
    out_spatial: Tuple[int, ...]
    kernel: Tuple[int, ...]
    strides: Tuple[int, ...]
    pads_lo: Tuple[int, ...]
    dilations: Tuple[int, ...]

    @property
    def size(self) -> int:
        """Neurons per window."""
        return int(np.prod(self.kernel, dtype=np.int64))

    @property
    def per_sample(self) -> int:
        """Windows per sample (the pool's output elements)."""
        return int(self.in_shape[0]) * int(np.prod(self.out_spatial, dtype=np.int64))

    def neurons(self, windows: np.ndarray) -> np.ndarray:
        """The site's flat neuron positions (within a sample) of each window ``windows`` (flat
        positions of the pool's output within a sample): [len(windows), size]. A position in
        the padding is replaced by the window's first position inside the map (a max pool's
        padding never wins: the window's largest is the same)."""
        j = np.asarray(windows, np.int64)
        spatial = self.in_shape[1:]
        coords = []
        rest = j
        for o in reversed(self.out_spatial):
            coords.append(rest % o)
            rest = rest // o
        channel = rest
        coords = coords[::-1]
        # every kernel offset, per axis, as a grid: [size, axes]
        grid = np.stack(np.meshgrid(*[np.arange(k) for k in self.kernel], indexing="ij"),
                        -1).reshape(-1, len(self.kernel))
        flat = np.broadcast_to(channel[:, None], (j.size, self.size)).copy()
        inside = np.ones((j.size, self.size), bool)
        for a, size in enumerate(spatial):
            i = (coords[a][:, None] * self.strides[a] - self.pads_lo[a]
                 + grid[None, :, a] * self.dilations[a])
            inside &= (i >= 0) & (i < size)
            flat = flat * size + np.clip(i, 0, size - 1)
        first = flat[np.arange(j.size), np.argmax(inside, axis=1)]
        return np.where(inside, flat, first[:, None])


def _ints(node: onnx.NodeProto, name: str, default: Sequence[int]) -> Tuple[int, ...]:
    for a in node.attribute:
        if a.name == name:
            return tuple(int(v) for v in helper.get_attribute_value(a))
    return tuple(int(v) for v in default)


def site_pool(model: onnx.ModelProto, site_output: str,
              shape: Sequence[int]) -> Optional[PoolWindows]:
    """The windows of the max pool that alone reads ``site_output`` (per-sample ``shape``,
    channels first), or None: read by anything else, a graph output, a pool of a layout
    this does not know (explicit ``auto_pad``: the normalization writes it out), or a window
    of more than :data:`MAX_WINDOW` neurons."""
    g = model.graph
    if site_output in {o.name for o in g.output} or len(shape) < 2:
        return None
    readers = [n for n in g.node if site_output in n.input]
    if len(readers) != 1:
        return None
    node = readers[0]
    if node.input[0] != site_output or len([o for o in node.output if o]) != 1:
        return None
    spatial = tuple(int(d) for d in shape[1:])
    axes = len(spatial)
    if node.op_type == "GlobalMaxPool":
        win = PoolWindows(node.name, tuple(int(d) for d in shape), (1,) * axes, spatial,
                          (1,) * axes, (0,) * axes, (1,) * axes)
    elif node.op_type == "MaxPool":
        auto = next((helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "auto_pad"), b"NOTSET")
        if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", ""):
            return None
        kernel = _ints(node, "kernel_shape", ())
        if len(kernel) != axes:
            return None
        strides = _ints(node, "strides", (1,) * axes)
        dil = _ints(node, "dilations", (1,) * axes)
        pads = _ints(node, "pads", (0,) * 2 * axes)
        ceil = any(a.name == "ceil_mode" and a.i for a in node.attribute)
        out = tuple(pool_windows(spatial[a], dil[a] * (kernel[a] - 1) + 1, strides[a],
                                 pads[a], pads[a + axes], ceil) for a in range(axes))
        if min(out) < 1:
            return None
        win = PoolWindows(node.name, tuple(int(d) for d in shape), out, kernel, strides,
                          pads[:axes], dil)
    else:
        return None
    return win if 1 < win.size <= MAX_WINDOW else None


def sample_windows(rng: np.random.Generator, win: PoolWindows, n_total: int,
                   sizes: List[int], sample: int) -> List[np.ndarray]:
    """For every batch (``sizes``), the flat neuron positions (relative to the batch's first
    neuron) of a stratified sample of the pool's windows over all ``n_total`` samples, window
    after window (``win.size`` positions each): ``sample / win.size`` windows, at least
    :data:`MIN_WINDOWS` where there are as many and they hold at most :data:`MAX_NEURONS`;
    the same windows at any batch size."""
    total = win.per_sample * n_total
    k = min(total, max(sample // win.size, min(MIN_WINDOWS, MAX_NEURONS // win.size)))
    stream = StratifiedStream(rng, total, k)
    per_in = int(np.prod(win.in_shape, dtype=np.int64))
    out = []
    for nb in sizes:
        j = stream.take(nb * win.per_sample)
        image, within = np.divmod(j, win.per_sample)
        out.append((image[:, None] * per_in + win.neurons(within)).reshape(-1))
    return out
