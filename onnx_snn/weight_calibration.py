"""Layer-wise weight calibration (pure numpy): refit a layer that reads spikes so that, on
the calibration set, its time-averaged output best matches the DNN's output of the same layer.

After the sites before a layer are converted, the layer's input in the spiking network is no
longer the DNN's activation ``a`` but the time-averaged spike train ``r`` (quantized, with
the earlier layers' errors in it). The layer is linear, so its time-averaged output is
``W r + b``; the calibration replaces ``(W, b)`` by the ridge-regression solution of

    min_{W', b'}  sum over calibration samples  ||W' r + b' - (W a + b)||^2  +  lam ||W'||^2

(one regression per convolution group; a Conv's rows are its im2col patches). It is the
"weight calibration" step of Li et al. (ICML 2021), solved in closed form rather than by
gradient descent, and it keeps the layer's shape: the spiking graph is unchanged, only the
values of its weights and bias differ. ``lam = ridge * mean(diag(R^T R))`` keeps the fit from
chasing the noise of a small calibration set; in the refinement the penalty is
``lam ||W' - W||^2`` (:attr:`LayerFit.to_original`): where the calibration set says little,
the refit stays near the trained weights instead of shrinking toward zero (top-1 at T = 1
and 2 higher in all 12 cells measured, three networks and two seeds: docs/FORMAT.md).
Every second calibration image is held out
(images 1, 3, 5, ...): a layer keeps its own weights unless the refit on the other half
predicts the held-out DNN outputs better, and keeps them when the calibration set is a single
image, with nothing to check the refit on. A layer that passes is refitted on all images.
The split, and the patches a convolution's rows are drawn from, go by the image's place in
the calibration set, not by batch, so the refit is the same at any ``--batch-size`` (until
2026-12-05 every second batch was held out: a set run as one batch refitted nothing, and
each batch size drew other rows).
Half the set held out, rather than every fifth batch (one of the default 512 images' eight),
gave a steadier verdict: top-1 as high or higher in all 12 cells measured at T = 1 and 2
(three networks, two refinement seeds; +0.25 points on average, up to +0.88), and within
0.12 of it at T = 4 (docs/MEASUREMENTS.md, deep networks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph.ir import auto_pads

CALIBRATED_OPS = ("Conv", "Gemm")
#: rows (patches) that enter the normal equations: at most max(MAX_ROWS, 20 x inputs) per
#: ROW_IMAGES calibration images, the same number from each image (:func:`_row_cap`)
MAX_ROWS = 8192
ROW_IMAGES = 64
#: a layer with more inputs per output (per group) is not refitted: its normal equations are
#: two (d+1)^2 float64 matrices (1 GiB at this limit, and a float32 one for a chunk's
#: product of spike counts, 0.25 GiB; 10 GiB for the 25 088 inputs of an
#: ImageNet VGG's first FC layer), and a calibration set of hundreds of images cannot
#: determine so many weights per output anyway
MAX_INPUTS = 8192
#: a layer with at least this many inputs per output keeps its patches while it has seen fewer
#: of them than it has inputs, and then solves the ridge regression in its dual form (an n x n
#: system for n rows instead of (d+1) x (d+1)): the same minimizer, for a fraction of the
#: arithmetic on the wide layers of small feature maps (CIFAR's 512-channel 2 x 2 layers: 2048
#: rows, 4608 inputs) and on an ImageNet VGG's 4096-wide FC layers (one row per image: with 64
#: images each primal step of their ridge walk was a 4097^2 solve for 4096 outputs, 5-8 s),
#: and on a small network's first FC layer (the shipped model's 3136 inputs, one row per
#: image: each of the 7 steps of its ridge walk was a 3137^2 solve, 0.3-1 s, where the dual
#: one of its 256 fitting rows takes milliseconds; 4096 until 2026-12-06). Below it the
#: (d+1)^2 solve takes tens of milliseconds, and the normal equations are kept from the first
#: batch. A layer that sees more rows than inputs (a convolution's patches) folds its kept
#: rows into the normal equations in the order they came, the same sums as without them.
DUAL_MIN_INPUTS = 1024
#: a layer with more inputs per output keeps the start ridge (SearchConfig.weight_ridge,
#: 0.01) instead of walking the grid: each step is a (d+1)^2 solve of seconds (the CIFAR
#: VGG-16's 4608-input layers took its refined conversion from 55.8 to 81.6 s when they
#: walked); the trained networks' layers, of at most 1152 inputs, all walk
RIDGE_WALK_MAX_INPUTS = 4096
#: spike counts are summed exactly in float32 in chunks of 2^24 / max(count)^2 rows; counts
#: so large that a chunk would hold fewer rows than this (T > 64) take the float64 path
MIN_EXACT_ROWS = 4096


@dataclass
class LayerFit:
    """Accumulates R^T R, R^T Y of one layer over batches, then solves."""

    node: onnx.NodeProto
    weight: np.ndarray
    bias: Optional[np.ndarray]
    attrs: dict
    groups: int = 1
    #: per group: [R^T R, R^T Y, Y^T Y] of the fitting rows and of the held-out rows (read
    #: through :attr:`fit` and :attr:`held`, which add the pending counts' sums first)
    fit_sums: List[list] = field(default_factory=list)
    held_sums: List[list] = field(default_factory=list)
    #: {(group, held out?): [K^T K, K^T Y, quantum per column]}: whole-number rows' sums not
    #: yet scaled (:meth:`_accumulate`)
    pending: Dict[tuple, list] = field(default_factory=dict, repr=False)
    rows: int = 0
    #: images added so far: the next batch's first image's place in the calibration set
    images: int = 0
    #: per group, the batches' (held out?, rows with the bias column, targets, the columns'
    #: quantum or None: see :meth:`add`) while the dual form is possible (fewer rows than
    #: inputs, at least DUAL_MIN_INPUTS inputs);
    #: None once they are folded into the normal equations
    kept: Optional[List[list]] = None
    #: rows of the batch being added, with the bias column (see :meth:`_buffer`)
    scratch: Optional[np.ndarray] = field(default=None, repr=False)
    #: how many images the calibration set has, when known: a single image is not held
    #: out (the layer then keeps its weights)
    n_images: Optional[int] = None
    #: every ``holdout``-th image is held out (``SearchConfig.weight_holdout``; until
    #: 2026-12-05 every ``holdout``-th batch, every fifth until 2026-12-03)
    holdout: int = 2
    #: the ridge pulls the refit toward the layer's own weights W0 (lam ||W - W0||^2), not
    #: toward zero (SearchConfig.weight_ridge_to_original, on in the refinement since
    #: 2026-12-04; False here gives the plain ridge regression)
    to_original: bool = False
    #: the ridge walk's per-group invariants (:meth:`_walk_terms`) and the ``to_original``
    #: they were computed for, dropped by :meth:`add`
    walk: Optional[tuple] = field(default=None, repr=False)
    originals: Optional[List[np.ndarray]] = field(default=None, repr=False)

    def __post_init__(self):
        if self.inputs >= DUAL_MIN_INPUTS:
            self.kept = []

    def add(self, r: Optional[np.ndarray], y: np.ndarray,
            counts: Optional[Tuple[np.ndarray, np.ndarray]] = None,
            first: Optional[int] = None, gathered: bool = False) -> None:
        """A batch of images, the next ones of the calibration set: the layer's time-averaged
        spiking input ``r`` and the DNN's output ``y``. Every ``holdout``-th image is held out
        to check the refit (:meth:`held_out`). A convolution's rows (patches) are drawn at
        most :func:`_row_cap` per image, by the image's place in the set (:func:`_design`).
        ``counts``: the input as (whole-number array K, per-channel quantum q) instead, with
        ``r = K * q`` along axis 1 (:func:`integer_form`; ``r`` is then not needed); its
        normal equations are then summed exactly (see :meth:`_accumulate`). ``first``: the
        batch's first image's place in the calibration set (default: after the images added
        so far). ``gathered``: ``y`` holds only the outputs the rows are drawn at, as
        :meth:`targets` gave them for the same images, not the layer's whole output."""
        self.walk = None
        values, q = counts if counts is not None else (r, None)
        first = self.images if first is None else int(first)
        n = int(values.shape[0])
        # at most ROW_IMAGES images' rows at a time (a large batch's rows, and their split into
        # fitting and held-out ones, would take memory in proportion to the batch), in parts
        # cut at the set's multiples of ROW_IMAGES, the same whatever the batch
        cuts = [0] + list(range((first // ROW_IMAGES + 1) * ROW_IMAGES - first, n, ROW_IMAGES)) + [n]
        for a, b in zip(cuts, cuts[1:]):
            self._add_images(values[a:b], y[a:b], q, first + a, gathered)
        self.images = first + n

    def targets(self, y: np.ndarray, first: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The part of the layer's output ``y`` (the DNN's, for a batch of images whose first
        is the ``first``-th of the calibration set) that its rows are paired with: for a
        convolution, the outputs at the positions it draws patches from (:func:`_picks`),
        [N, positions per image, outputs]; for a Gemm, ``y`` as [N, outputs]. Gathered in
        one pass of the DNN, :meth:`add` takes them (``gathered=True``) instead of the whole
        output, which the refinement would otherwise compute layer by layer. Written to
        ``out`` when given (no copy of ``y`` is made on the way)."""
        if self.node.op_type == "Gemm":
            got = y.reshape(y.shape[0], -1)
        else:
            n, m, oh, ow = y.shape
            pick = _picks(self, n, oh * ow, first)
            flat = y.reshape(n, m, oh * ow)                        # a view: NCHW is contiguous
            if pick is not None:
                flat = np.take_along_axis(flat, pick[:, None, :], axis=2)
            got = flat.transpose(0, 2, 1)                            # [N, positions, M]
        if out is None:
            return np.array(got, np.float32)
        np.copyto(out, got)
        return out

    def targets_per_image(self, shape) -> int:
        """How many values of one image's output (per-sample ``shape``) :meth:`targets`
        keeps."""
        if self.node.op_type == "Gemm":
            return int(np.prod(shape))
        per = int(np.prod(shape[1:]))
        return int(shape[0]) * min(per, _row_cap(self.inputs))

    def _add_images(self, values: np.ndarray, y: np.ndarray, q: Optional[np.ndarray],
                    first: int, gathered: bool = False) -> None:
        """:meth:`add` of at most ROW_IMAGES images."""
        for g, (x, yg, image) in enumerate(_design(self, values, y, first, self._buffer,
                                                   gathered)):
            yg = yg.astype(np.float32)
            scale = None if q is None else self._column_scale(q, g)
            if g == 0:           # every group's rows are of the same images, in the same order
                held = self.held_out(first + image)
                self.rows += len(x)
            parts = ([(False, x, yg)] if not held.any() else [(True, x, yg)] if held.all()
                     else [(False, x[~held], yg[~held]), (True, x[held], yg[held])])
            for h, xp, yp in parts:
                if self.kept is not None:
                    while len(self.kept) <= g:
                        self.kept.append([])
                    if sum(len(k[1]) for k in self.kept[g]) + len(xp) < self.inputs:
                        self.kept[g].append((h, xp.copy(), yp, scale))
                        continue
                    self._fold()      # as many rows as inputs: the normal equations from now on
                self._accumulate(g, h, xp, yp, scale)

    def add_steps(self, steps: List[np.ndarray], y: np.ndarray,
                  first: Optional[int] = None, gathered: bool = False) -> None:
        """:meth:`add` from the input's values at each step (spikes times amplitudes, as the
        step graph computed them): their mean is ``r``; when every step's values are 0 or
        plus or minus one value per channel (spikes, max-pooled spikes), the normal
        equations are summed from the spike counts exactly."""
        counts = integer_form(steps)
        self.add(np.mean(steps, axis=0) if counts is None else None, y, counts, first, gathered)

    def _column_scale(self, q: np.ndarray, g: int) -> np.ndarray:
        """The quantum of each column of group ``g``'s rows (its input channel's; 1 for the
        bias column), float64."""
        if self.node.op_type == "Conv":
            cin = int(self.weight.shape[1])
            per = int(np.prod(self.weight.shape[2:]))
            cols = np.repeat(q[g * cin:(g + 1) * cin], per)
        else:
            cols = q
        return np.concatenate([np.asarray(cols, np.float64).reshape(-1), [1.0]])

    def held_out(self, image) -> np.ndarray:
        """Whether each image (its place in the calibration set) is held out: every
        ``holdout``-th (the default 2: images 1, 3, 5, ...); the last one of a set of fewer
        images than that, none of a single image."""
        image = np.asarray(image, np.int64)
        if self.n_images is not None:
            if self.n_images < 2:
                return np.zeros(image.shape, bool)
            if self.n_images < self.holdout:
                return image == self.n_images - 1
        return image % self.holdout == self.holdout - 1

    def _buffer(self, rows: int, cols: int) -> np.ndarray:
        """A float32 [rows, cols] scratch array, reused from batch to batch (a fresh array of
        tens of MB per batch costs more in page faults than the copy into it)."""
        if self.scratch is None or self.scratch.size < rows * cols:
            self.scratch = np.empty(rows * cols, np.float32)
        return self.scratch[:rows * cols].reshape(rows, cols)

    @property
    def fit(self) -> List[list]:
        self._flush()
        return self.fit_sums

    @property
    def held(self) -> List[list]:
        self._flush()
        return self.held_sums

    def _flush(self) -> None:
        """Scale the pending whole-number sums by their columns' quanta into the sums (a
        group's first become its sums, no copy), and give the sums nothing was added to
        their zeros."""
        for key in sorted(self.pending):
            g, held = key
            kk, ky, q = self.pending.pop(key)
            sums = (self.held_sums if held else self.fit_sums)[g]
            kk *= q
            kk *= q[:, None]
            ky *= q[:, None]
            for i, v in ((0, kk), (1, ky)):
                if sums[i] is None:
                    sums[i] = v
                else:
                    sums[i] += v
        for sums in self.fit_sums + self.held_sums:
            if sums[0] is None:
                sums[0], sums[1] = np.zeros(sums[3]), np.zeros(sums[4])

    def _sums(self, g: int, held: bool, x: np.ndarray, y: np.ndarray) -> list:
        """Group ``g``'s [R^T R, R^T Y, Y^T Y, their shapes] (the matrices None until first
        added to: a pending sum may become them)."""
        for acc in (self.fit_sums, self.held_sums):
            while len(acc) <= g:
                acc.append([None, None, 0.0, (x.shape[1], x.shape[1]), (x.shape[1], y.shape[1])])
        return (self.held_sums if held else self.fit_sums)[g]

    def _accumulate(self, g: int, held: bool, x: np.ndarray, y: np.ndarray,
                    scale: Optional[np.ndarray] = None) -> None:
        """Add rows ``x`` (with the bias column) and targets ``y`` to group ``g``'s sums;
        with ``scale``, ``x`` holds whole numbers and the rows are ``x * scale``."""
        sums = self._sums(g, held, x, y)
        top = float(np.max(np.abs(x))) if x.size and scale is not None else 1.0
        if scale is not None and top * top * MIN_EXACT_ROWS > (1 << 24):
            x, scale = (x * scale).astype(np.float32), None     # large counts: the float path
        # float64 products and sums: float32 products are summed in an order that depends on
        # the BLAS thread count, and the last bits they moved changed later sites' choices
        # (the same conversion on 1 and 2 cores gave different files); in float64 it does not.
        # In chunks of at most 32 MB, so that a wide layer's rows are not all copied at once
        step = max(256, (1 << 22) // max(1, x.shape[1]))
        if scale is not None:
            # whole numbers: their float32 products and sums are exact while every sum stays
            # below 2**24, so X^T X of a chunk of at most 2**24 / max(x)**2 rows is the
            # same whatever order BLAS adds it in (and twice as fast as in float64); it is
            # summed in float64 (exact) over the batches whose columns have the same
            # quanta (a column that is all zeros takes any), and scaled per column once
            pend = self.pending.get((g, held))
            if pend is not None and np.any((pend[2] != scale) & (pend[2] != 0) & (scale != 0)):
                self._flush()                        # another quantum: the sums so far first
                pend = None
            if pend is None:
                pend = self.pending[(g, held)] = [np.zeros(sums[3]), np.zeros(sums[4]),
                                                  np.zeros(x.shape[1])]
            np.copyto(pend[2], scale, where=pend[2] == 0)
            exact = max(1, int((1 << 24) // max(1.0, top * top)))
            for i in range(0, len(x), exact):
                c = x[i:i + exact]
                pend[0] += c.T @ c
            for i in range(0, len(x), step):
                pend[1] += x[i:i + step].astype(np.float64).T @ y[i:i + step].astype(np.float64)
        else:
            if sums[0] is None:
                sums[0], sums[1] = np.zeros(sums[3]), np.zeros(sums[4])
            for i in range(0, len(x), step):
                c = x[i:i + step].astype(np.float64)
                sums[0] += c.T @ c
                sums[1] += c.T @ y[i:i + step].astype(np.float64)
        sums[2] += float(np.sum(y.astype(np.float64) ** 2))

    def _fold(self) -> None:
        """Add the kept rows to the normal equations, in the order they came, and keep no more."""
        kept, self.kept = self.kept, None
        for g, batches in enumerate(kept):
            for held, x, y, scale in batches:
                self._accumulate(g, held, x, y, scale)

    def _rows(self, g: int, held: bool) -> Tuple[np.ndarray, np.ndarray]:
        """The kept rows of group ``g`` (held out or fitting) and their targets."""
        parts = [(x if scale is None else (x * scale).astype(np.float32), y)
                 for h, x, y, scale in self.kept[g] if h == held]
        if not parts:
            out = self._original()[g].shape[1]
            return np.zeros((0, self.inputs + 1), np.float32), np.zeros((0, out), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    @property
    def inputs(self) -> int:
        """Inputs per output of one group (the size d of the normal equations, less the bias)."""
        if self.node.op_type == "Conv":
            return int(np.prod(self.weight.shape[1:]))
        return int(self.weight.shape[0 if int(self.attrs.get("transB", 0)) == 0 else 1])

    def _original(self) -> List[np.ndarray]:
        """The layer's own weights per group as [d+1, out] (bias last), built once."""
        if self.originals is None:
            self.originals = self._build_original()
        return self.originals

    def _build_original(self) -> List[np.ndarray]:
        if self.node.op_type == "Conv":
            w = self.weight.reshape(self.weight.shape[0], -1).astype(np.float64)   # [M, d]
        elif int(self.attrs.get("transB", 0)):
            w = self.weight.astype(np.float64)
        else:
            w = self.weight.T.astype(np.float64)
        m = w.shape[0]
        b = np.zeros(m) if self.bias is None else np.broadcast_to(
            np.asarray(self.bias, np.float64).reshape(-1), (m,)) * float(self.attrs.get("beta", 1.0))
        per = m // self.groups
        return [np.concatenate([w[i * per:(i + 1) * per].T, b[None, i * per:(i + 1) * per]])
                for i in range(self.groups)]

    def improves(self, ridge: float) -> Tuple[bool, float, float]:
        """Whether the refit on the fitting rows beats the layer's own weights on the held-out
        rows; (verdict, held-out SSE of the refit, of the original)."""
        if self.n_images is not None and self.n_images < 2:
            return False, float("nan"), float("nan")   # nothing to check the refit on: kept
        if self.kept is not None:
            return self._dual_improves(ridge)
        if not any(h[2] for h in self.held):
            return True, float("nan"), float("nan")
        new = old = 0.0
        for (g, c, *_), (hg, hc, hy, *_), w0, (residual, sse0) in zip(
                self.fit, self.held, self._original(), self._walk_terms()):
            w = self._primal(g, c, ridge, w0, residual)
            new += float(np.sum(w * (hg @ w)) - 2 * np.sum(w * hc) + hy)
            old += sse0
        return new < old, new, old

    def _walk_terms(self) -> list:
        """Per group, what every ridge of the walk shares: the fitting rows' residual
        ``X^T Y - X^T X W0`` (None without :attr:`to_original`) and the original weights'
        held-out SSE (computed once per layer, not once per ridge: two of the five
        products of the size of the normal equations that each step took)."""
        if self.walk is None or self.walk[0] != self.to_original:
            terms = []
            for (g, c, *_), (hg, hc, hy, *_), w0 in zip(self.fit, self.held, self._original()):
                residual = c - g @ w0 if self.to_original else None
                sse0 = float(np.sum(w0 * (hg @ w0)) - 2 * np.sum(w0 * hc) + hy)
                terms.append((residual, sse0))
            self.walk = (self.to_original, terms)
        return self.walk[1]

    def choose_ridge(self, grid, start: float) -> Tuple[float, bool, float, float]:
        """The ridge of ``grid`` whose refit on the fitting rows predicts the held-out rows
        best (``start`` alone for a layer of more than RIDGE_WALK_MAX_INPUTS inputs), found by
        walking the sorted grid from ``start`` (its nearest value) toward the
        lower held-out SSE until it rises (each step is one solve; the SSE is unimodal in the
        ridge in practice); (that ridge, whether it beats the layer's own weights, its held-out
        SSE, the original's)."""
        grid = sorted(float(g) for g in grid)
        if self.inputs > RIDGE_WALK_MAX_INPUTS:
            grid = [float(start)]          # one solve: see RIDGE_WALK_MAX_INPUTS
        at = int(np.argmin([abs(np.log(g / start)) for g in grid]))
        seen = {}

        def score(i):
            if i not in seen:
                seen[i] = self.improves(grid[i])
            new = seen[i][1]
            return new if np.isfinite(new) else np.inf

        best = at
        for step in (-1, 1):
            i = at
            while 0 <= i + step < len(grid) and score(i + step) < score(best):
                i += step
                best = i
            if best != at:
                break
        better, new, old = seen.get(best) or self.improves(grid[best])
        return grid[best], better, new, old

    def _dual_improves(self, ridge: float) -> Tuple[bool, float, float]:
        """:meth:`improves` from the kept rows."""
        held = [self._rows(g, True) for g in range(len(self.kept))]
        if not any(np.any(yh) for _, yh in held):
            return True, float("nan"), float("nan")
        new = old = 0.0
        for g, ((xh, yh), w0) in enumerate(zip(held, self._original())):
            xf, yf = self._rows(g, False)
            w = self._dual(xf, yf, ridge, w0)
            new += float(np.sum((xh @ w - yh) ** 2))
            old += float(np.sum((xh @ w0 - yh) ** 2))
        return new < old, new, old

    def _solutions(self, ridge: float) -> List[np.ndarray]:
        """Per group, the ridge solution on all rows, [d+1, out] (bias last)."""
        if self.kept is not None:
            out = []
            for g, w0 in enumerate(self._original()):
                (xf, yf), (xh, yh) = self._rows(g, False), self._rows(g, True)
                out.append(self._dual(np.concatenate([xf, xh]), np.concatenate([yf, yh]), ridge, w0))
            return out
        return [self._primal(g + hg, c + hc, ridge, w0)
                for (g, c, *_), (hg, hc, *_), w0 in zip(self.fit, self.held, self._original())]

    def _primal(self, gram, cross, ridge, w0, residual=None):
        """The ridge solution from the normal equations; with :attr:`to_original`, the
        original weights plus the ridge solution of what they leave (the minimizer of
        ``||X W - Y||^2 + lam ||W - W0||^2``, the bias free); ``residual``: ``cross - gram @
        w0`` when already computed."""
        if not self.to_original:
            return _ridge(gram, cross, ridge)
        return w0 + _ridge(gram, cross - gram @ w0 if residual is None else residual, ridge)

    def _dual(self, x, y, ridge, w0):
        """:meth:`_primal` from the rows."""
        if not self.to_original:
            return _dual_ridge(x, y, ridge)
        return w0 + _dual_ridge(x, y - x @ w0, ridge)      # the residual in float64

    def solve(self, ridge: float) -> Tuple[np.ndarray, np.ndarray]:
        """The refitted (weight, bias) on all rows, in the layer's own layout."""
        ws, bs = [], []
        for sol in self._solutions(ridge):                                      # [d+1, out]
            d = sol.shape[0] - 1
            ws.append(sol[:d].T)
            bs.append(sol[d])
        w = np.concatenate(ws, axis=0)                                         # [out, d]
        b = np.concatenate(bs)
        if self.node.op_type == "Conv":
            w = w.reshape(self.weight.shape)
        elif int(self.attrs.get("transB", 0)):
            w = w.reshape(self.weight.shape)
        else:
            w = w.T.reshape(self.weight.shape)
        b = b / float(self.attrs.get("beta", 1.0)) if self.node.op_type == "Gemm" else b
        return w.astype(self.weight.dtype), b.astype(np.float32)


def integer_form(steps: List[np.ndarray]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """A layer input's per-step values [N, C, ...] (one array per step) as (K, q): the whole
    numbers K (float32, the input's shape) and the per-channel quantum q (float64, [C]) with
    ``mean(steps) = K * q`` along axis 1, when every value of channel c at every step is 0 or
    plus or minus the channel's largest magnitude (spikes of one amplitude per channel, and
    their max pools): K is then the signed spike count and q = amplitude / T. None otherwise
    (an average pool or a sum of spikes), and for inputs of fewer than two axes."""
    if not steps or steps[0].ndim < 2:
        return None
    axes = tuple(i for i in range(steps[0].ndim) if i != 1)
    top = np.max([np.max(np.abs(v), axis=axes) for v in steps], axis=0)      # [C]
    shape = [1] * steps[0].ndim
    shape[1] = -1
    m = top.reshape(shape)
    for v in steps:
        if not np.all((v == 0) | (np.abs(v) == m)):
            return None
    k = np.zeros(steps[0].shape, np.float32)
    for v in steps:
        k += np.sign(v)
    return k, top.astype(np.float64) / len(steps)


def _ridge(gram: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
    """argmin_W ||X W - Y||^2 + lam ||W without its bias row||^2 from X^T X and X^T Y."""
    d = gram.shape[0] - 1
    lam = ridge * max(float(np.mean(np.diag(gram)[:d])), 1e-12)
    diag = gram.diagonal().copy()              # gram + lam I (the bias not shrunk) + 1e-9 I,
    i = np.arange(d)                           # on the diagonal alone, in place (solve makes
    gram[i, i] = (gram[i, i] + lam) + 1e-9     # its own copy), then the diagonal is put back
    gram[d, d] = gram[d, d] + 1e-9
    try:
        return np.linalg.solve(gram, cross)
    finally:
        gram[np.arange(d + 1), np.arange(d + 1)] = diag


def _dual_ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """:func:`_ridge`'s minimizer from the rows ``x`` [n, d+1] (the bias column last) and
    targets ``y`` [n, out], through the n x n system: with the bias unpenalized, it is the
    mean target less the mean input times ``W``, and ``W = Xc^T (Xc Xc^T + lam I)^-1 Yc`` on
    the centered rows (lam from the uncentered inputs, as there)."""
    xs = x[:, :-1].astype(np.float64)
    ys = y.astype(np.float64)
    d = xs.shape[1]
    if len(xs) == 0:
        return np.zeros((d + 1, ys.shape[1]))
    lam = ridge * max(float(np.mean(np.einsum("ij,ij->j", xs, xs))), 1e-12)
    xm, ym = xs.mean(0), ys.mean(0)
    xs -= xm
    k = xs @ xs.T
    i = np.arange(len(k))
    k[i, i] += lam + 1e-9
    w = xs.T @ np.linalg.solve(k, ys - ym)                               # [d, out]
    return np.concatenate([w, (ym - xm @ w)[None]])


def _row_cap(inputs: int) -> int:
    """The most rows (patches) of one image that enter the normal equations:
    max(MAX_ROWS, 20 x inputs) per ROW_IMAGES images."""
    return -(-max(MAX_ROWS, 20 * inputs) // ROW_IMAGES)


def _keys(index: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 for each non-negative whole number (splitmix64's
    finalizer): the patches drawn from an image depend on its place in the calibration set
    alone, not on the batch it came in."""
    z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _picks(fit: LayerFit, n: int, per: int, first: Optional[int]) -> Optional[np.ndarray]:
    """The output positions (flat, in row order) a convolution draws its rows at from ``n``
    images of ``per`` positions each, the first of them the ``first``-th of the calibration
    set: [n, _row_cap] when an image has more positions than that, else None (all of them).
    They depend on each image's place in the set alone (:func:`_keys`), not on its batch."""
    cap = _row_cap(fit.inputs)
    if first is None or per <= cap:
        return None
    keys = _keys((first + np.arange(n, dtype=np.int64))[:, None] * per + np.arange(per))
    return np.sort(np.argpartition(keys, cap - 1, axis=1)[:, :cap], axis=1)


def _design(fit: LayerFit, r: np.ndarray, y: np.ndarray, first: Optional[int] = None,
            buffer=None, gathered: bool = False):
    """Per group: (rows of inputs with a last column of ones for the bias, float32; rows of
    targets; each row's image, within the batch). With ``first`` (the batch's first image's
    place in the calibration set), a convolution with more patches per image than
    :func:`_row_cap` keeps that many of each image's, the same ones whatever the batch
    (:func:`_keys` of the patch's place in the set), in row order, and builds its patches
    there only (a 32 x 32 layer's image has 1 024 patches, of which 128 are kept).
    ``buffer(rows, cols)`` gives the array the rows are written to (default: a new one);
    each group's rows are used before the next group's are written. ``gathered``: ``y`` is
    :meth:`LayerFit.targets`'s part of the output, not the whole of it."""
    buffer = buffer or (lambda rows, cols: np.empty((rows, cols), np.float32))

    def with_bias(rows: int, d: int):
        x = buffer(rows, d + 1)
        x[:, d] = 1.0
        return x

    if fit.node.op_type == "Gemm":               # one row per image
        rows, target = r.reshape(r.shape[0], -1), y.reshape(y.shape[0], -1)
        x = with_bias(*rows.shape)
        x[:, :-1] = rows
        yield x, target, np.arange(len(rows))
        return
    g = fit.groups
    cin, kh, kw = (int(v) for v in fit.weight.shape[1:])
    cout = fit.weight.shape[0] // g
    n = r.shape[0]
    if gathered:
        _, _, oh, ow = _output_size(fit, r.shape)
    else:
        _, _, oh, ow = y.shape
    per, d = oh * ow, cin * kh * kw
    pick = _picks(fit, n, per, first)
    yt = None
    if gathered:                                                        # [rows, M]
        if y.shape[1] != (per if pick is None else pick.shape[1]):
            raise ValueError(f"{fit.node.name}: gathered targets of {y.shape[1]} positions per "
                             f"image, where its rows are drawn at "
                             f"{per if pick is None else pick.shape[1]}")
        yt = y.reshape(-1, y.shape[-1])
    if pick is None:
        p = n * per
        win = _windows(r, fit.weight.shape, fit.attrs)                  # [N, C, OH, OW, kh, kw]
        if yt is None:
            yt = np.moveaxis(y, 1, -1).reshape(p, -1)                    # [P, M]
        image = np.repeat(np.arange(n), per)
        for i in range(g):
            x = with_bias(p, d)
            np.copyto(x[:, :d].reshape(n, oh, ow, cin, kh, kw),
                      win[:, i * cin:(i + 1) * cin].transpose(0, 2, 3, 1, 4, 5))
            yield x, yt[:, i * cout:(i + 1) * cout], image
        return
    b = np.repeat(np.arange(n), pick.shape[1])
    yo, xo = np.divmod(pick.reshape(-1), ow)
    padded = _padded_nhwc(r, fit.weight.shape, fit.attrs)
    for i in range(g):
        x = with_bias(len(b), d)
        patches_at(padded, fit.weight.shape, fit.attrs, b, yo, xo, slice(i * cin, (i + 1) * cin),
                   out=x[:, :d].reshape(len(b), cin, kh, kw))
        yield x, (yt[:, i * cout:(i + 1) * cout] if gathered
                  else y[b, i * cout:(i + 1) * cout, yo, xo]), b


def _pads(attrs: dict, size: Tuple[int, int], kernel: Tuple[int, int], strides, dilations):
    mode = attrs.get("auto_pad", "NOTSET")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode in ("NOTSET",):
        p = list(attrs.get("pads", [0, 0, 0, 0]))
        return p[0], p[1], p[2], p[3]
    return tuple(auto_pads(mode, size, kernel, strides, dilations))


def _strides_dilations(attrs: dict):
    return list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))


def _output_size(fit: LayerFit, x_shape) -> Tuple[int, int, int, int]:
    """The convolution's output shape [N, M, OH, OW] for an input of ``x_shape``."""
    kh, kw = int(fit.weight.shape[2]), int(fit.weight.shape[3])
    (t, l, b, r), strides, dil = _geometry(fit.attrs, x_shape[2:], fit.weight.shape)
    oh = (int(x_shape[2]) + t + b - (kh - 1) * dil[0] - 1) // strides[0] + 1
    ow = (int(x_shape[3]) + l + r - (kw - 1) * dil[1] - 1) // strides[1] + 1
    return int(x_shape[0]), int(fit.weight.shape[0]), oh, ow


def _geometry(attrs: dict, size, w_shape):
    """(pads t, l, b, r; strides; dilations) of a 2-D convolution on ``size`` (H, W)."""
    kh, kw = int(w_shape[2]), int(w_shape[3])
    strides, dil = _strides_dilations(attrs)
    return _pads(attrs, size, (kh, kw), strides, dil), strides, dil


def _windows(x: np.ndarray, w_shape, attrs: dict) -> np.ndarray:
    """A view of the 2-D convolution's windows of ``x`` [N, C, H, W] (padded):
    [N, C, OH, OW, kh, kw]."""
    kh, kw = int(w_shape[2]), int(w_shape[3])
    (t, l, b, r), strides, dil = _geometry(attrs, x.shape[2:], w_shape)
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    eh, ew = (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
    return win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]


def im2col(x: np.ndarray, w_shape, attrs: dict) -> np.ndarray:
    """2-D convolution patches of ``x`` [N, C, H, W]: [N, OH, OW, C, kh, kw], so that
    ``patches.reshape(-1, C*kh*kw) @ W.reshape(M, -1).T`` is the convolution (one group)."""
    return np.ascontiguousarray(_windows(x, w_shape, attrs).transpose(0, 2, 3, 1, 4, 5))


def _padded_nhwc(x: np.ndarray, w_shape, attrs: dict) -> np.ndarray:
    """``x`` [N, C, H, W] zero-padded for the convolution, as [N, H', W', C]."""
    (t, l, b, r), _, _ = _geometry(attrs, x.shape[2:], w_shape)
    return np.pad(np.moveaxis(x, 1, -1), ((0, 0), (t, b), (l, r), (0, 0)))


def patches_at(padded: np.ndarray, w_shape, attrs: dict, b, yo, xo, channels=slice(None),
               out: Optional[np.ndarray] = None):
    """The patches of output positions (``b``, ``yo``, ``xo``) (equal-length index arrays),
    from :func:`_padded_nhwc`'s array: [P, C, kh, kw] for the ``channels`` given, the same
    values as :func:`im2col`'s rows at those positions (written to ``out`` when given)."""
    kh, kw = int(w_shape[2]), int(w_shape[3])
    strides, dil = _strides_dilations(attrs)
    if out is None:
        c = np.arange(padded.shape[-1])[channels].size
        out = np.empty((len(b), c, kh, kw), padded.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i, j] = padded[b, yo * strides[0] + i * dil[0], xo * strides[1] + j * dil[1], channels]
    return out


def layer_fit(node: onnx.NodeProto, inits: Dict[str, onnx.TensorProto]) -> Optional[LayerFit]:
    """A fit for ``node`` when it is a layer this module can refit (a 2-D Conv or a Gemm
    with constant weight and bias and an untransposed data input), else None."""
    if node.op_type not in CALIBRATED_OPS or len(node.input) < 2 or node.input[1] not in inits:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = numpy_helper.to_array(inits[node.input[1]])
    bias = None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:
            return None
        bias = numpy_helper.to_array(inits[node.input[2]])
    if node.op_type == "Conv":
        if w.ndim != 4:
            return None
        if bias is not None and bias.size != w.shape[0]:
            return None
        return LayerFit(node, w, bias, attrs, groups=int(attrs.get("group", 1)))
    if int(attrs.get("transA", 0)) or w.ndim != 2 or float(attrs.get("alpha", 1.0)) != 1.0 \
            or float(attrs.get("beta", 1.0)) == 0.0:
        return None
    out = w.shape[0] if int(attrs.get("transB", 0)) else w.shape[1]
    if bias is not None and bias.size not in (1, out):
        return None
    return LayerFit(node, w, bias, attrs)
