"""The windows of the max pool that alone reads a site: which of the site's neurons the
refinement's search scores together (``SearchConfig.pooled_search``).

Only a max pool reads such a site, and the rate-exact spiking pool passes on each window's
largest spike count (docs/FORMAT.md, max pooling). Fitting every neuron's count to its own
DNN activation weighs all neurons alike, while the next layer sees only each window's
largest, whose activations lie higher; and a neuron whose count overshoots lifts its
window's maximum, one that undershoots usually does not. The search then samples whole
windows and scores the largest count of each against the DNN's pooled activation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import onnx
from onnx import helper

from .graph import walk
from .graph.ir import pool_windows

#: a window sample holds at most this many times the per-site neuron sample (a global max
#: pool's windows are whole maps: 49 to thousands of neurons each)
MAX_SAMPLE_FACTOR = 4
#: windows sampled per channel at least (within MAX_SAMPLE_FACTOR): the search's groups need
#: min_group (64) windows each
WINDOWS_PER_CHANNEL = 256


@dataclass(frozen=True)
class PoolWindows:
    """A max pool's windows over one channel's map of ``spatial`` cells: ``cells[o]`` are the
    flat indices (within the map) of output ``o``'s window, a padding cell repeated as the
    window's first cell inside the map (a repeat does not change a maximum)."""

    node: str
    spatial: int
    cells: np.ndarray          # [outputs per channel, window size], int64

    @property
    def size(self) -> int:
        return int(self.cells.shape[1])

    @property
    def outputs(self) -> int:
        return int(self.cells.shape[0])


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _axis_cells(size: int, kernel: int, stride: int, lo: int, hi: int, dilation: int,
                ceil: bool):
    """Per window along one axis: its cells' positions [outputs, kernel] and which lie inside."""
    span = dilation * (kernel - 1) + 1
    n = pool_windows(size, span, stride, lo, hi, ceil)
    pos = np.arange(n)[:, None] * stride - lo + np.arange(kernel)[None, :] * dilation
    return pos, (pos >= 0) & (pos < size)


def windows(node: onnx.NodeProto, shape: List[int]) -> Optional[PoolWindows]:
    """The windows of a MaxPool or GlobalMaxPool ``node`` over a site of per-sample ``shape``
    [C, *spatial]; None where they cannot be listed (no spatial axes, an auto_pad the graph
    did not resolve, a window wholly in the padding)."""
    spatial = [int(s) for s in shape[1:]]
    if not spatial or any(s <= 0 for s in spatial):
        return None
    total = int(np.prod(spatial))
    if node.op_type == "GlobalMaxPool":
        return PoolWindows(node.name, total, np.arange(total, dtype=np.int64)[None, :])
    if node.op_type != "MaxPool" or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    n = len(spatial)
    kernel = list(_attr(node, "kernel_shape", []))
    if len(kernel) != n:
        return None
    strides = list(_attr(node, "strides", [1] * n))
    pads = list(_attr(node, "pads", [0] * (2 * n)))
    dil = list(_attr(node, "dilations", [1] * n))
    ceil = bool(_attr(node, "ceil_mode", 0))
    flat = np.zeros((1, 1), np.int64)
    inside = np.ones((1, 1), bool)
    for i in range(n):
        pos, ok = _axis_cells(spatial[i], kernel[i], strides[i], pads[i], pads[n + i], dil[i], ceil)
        # outer product with the axes so far: windows [O, K] x [o, k] -> [O*o, K*k]
        flat = (flat[:, None, :, None] * spatial[i] + np.clip(pos, 0, spatial[i] - 1)[None, :, None, :])
        inside = inside[:, None, :, None] & ok[None, :, None, :]
        flat = flat.reshape(flat.shape[0] * flat.shape[1], -1)
        inside = inside.reshape(flat.shape)
    if not inside.any(1).all():
        return None
    first = flat[np.arange(flat.shape[0]), inside.argmax(1)]
    cells = np.where(inside, flat, first[:, None]).astype(np.int64)
    return PoolWindows(node.name, total, cells)


def reading_pool(model: onnx.ModelProto, tensor: str, shape: List[int]) -> Optional[PoolWindows]:
    """The windows of the max pool that is the only reader of ``tensor`` (a site's output, of
    per-sample ``shape``), None where anything else reads it (a graph output, a second node,
    a subgraph)."""
    if any(o.name == tensor for o in model.graph.output):
        return None
    readers = [n for n in model.graph.node if tensor in walk.node_inputs(n)]
    if len(readers) != 1 or readers[0].op_type not in ("MaxPool", "GlobalMaxPool"):
        return None
    if len(readers[0].output) > 1 and readers[0].output[1]:   # MaxPool's Indices are read
        return None
    return windows(readers[0], shape)


def window_count(pw: PoolWindows, channels: int, n_images: int, sample: int) -> int:
    """How many windows to sample from ``n_images`` images: ``sample`` neurons' worth, and at
    least WINDOWS_PER_CHANNEL per channel within MAX_SAMPLE_FACTOR times ``sample``
    neurons; never more than there are."""
    per_window = pw.size
    want = max(sample // per_window,
               min(WINDOWS_PER_CHANNEL * channels, MAX_SAMPLE_FACTOR * sample // per_window))
    return max(1, min(int(want), channels * pw.outputs * n_images))


def expand(pw: PoolWindows, channels: int, picked: np.ndarray) -> np.ndarray:
    """The flat positions (within a batch of the site's [N, C, *spatial] values) of the cells
    of windows ``picked`` (flat positions within the batch's pooled [N, C, outputs]), each
    window's cells together: [len(picked) * window size]."""
    picked = np.asarray(picked, np.int64)
    o = picked % pw.outputs
    nc = picked // pw.outputs            # image * C + channel
    return (nc[:, None] * pw.spatial + pw.cells[o]).reshape(-1)
