"""Sums of integrate-and-fire spike counts over many candidate thresholds at once (pure numpy).

The per-channel search (:func:`onnx_snn.scales.search_channels`) scores hundreds of
threshold candidates per channel, and for each it needs three sums over the channel's sampled
neurons of the spike count ``N`` of a soft-reset IF neuron (leak 1) under the neuron's
recorded currents ``x_1..x_T``: ``sum N``, ``sum N^2`` and ``sum N d`` (``d`` the DNN's
activation). Simulating every candidate costs ``O(candidates x n x T)``.

In exact arithmetic a neuron with threshold ``th`` and initial membrane ``f th`` (``f < 1``)
fires at step ``t`` after ``k`` spikes iff ``S_t >= th (k + 1 - f)``, with ``S_t`` the
cumulative current: its count is a step function of ``th`` that can change only at the
``T (T + 1) / 2`` breakpoints ``S_t / (k + 1 - f)``, ``k < t``. So per neuron the count is
evaluated once per interval between its sorted breakpoints (``T (T + 1) / 2 + 1`` short
simulations), each change is added at the first candidate above its breakpoint, and a
cumulative sum over the (sorted) candidates gives every candidate's sums:
``O(n T^3 + n T^2 log candidates)``.

The search itself compares the float32 simulation (``simulate_counts``, the arithmetic of
``LIFNeuron``), which rounds. A (neuron, candidate) pair whose threshold lies within a bound
of that rounding from one of the neuron's breakpoints is simulated in float32 and its
contribution replaced, so the sums are those of the float32 simulation: the counts are
identical, and the sums differ from the simulation's by float64 summation order at most
(``tests/test_count_sums.py`` checks both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

#: above this T the breakpoints (T (T + 1) / 2 per neuron) cost more than they save: at T = 4
#: the search took 1.5x the simulation's time (200 000 neurons, 128 channels)
MAX_TIMESTEPS = 2
#: relative bound on float32 rounding per step in the margin test (2^-24 is one rounding;
#: this is 8 of them, times T + 1 steps)
_ROUNDING = 2.0 ** -21


def applies(timesteps: int, fraction: float, thresholds: np.ndarray) -> bool:
    """Whether :func:`count_sums` can stand in for simulation: a small T, an initial
    membrane below the threshold, positive thresholds."""
    return timesteps <= MAX_TIMESTEPS and fraction < 1.0 and bool(np.all(thresholds > 0))


def _breakpoints(cum: np.ndarray, fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """Per step ``t`` and count ``k < t``: the threshold below which the neuron fires
    (``S_t / (k + 1 - f)``; 0 when ``S_t <= 0``, it never fires at a positive threshold),
    as [B, n] with B = T (T + 1) / 2, and the flat index of (t, k) in it."""
    T, n = cum.shape
    rows, index = [], np.zeros((T, T), np.int64)
    for t in range(T):
        for k in range(t + 1):
            index[t, k] = len(rows)
            rows.append(np.where(cum[t] > 0, cum[t] / (k + 1.0 - fraction), 0.0))
    return np.stack(rows), index


def _interval_counts(b: np.ndarray, index: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The count on each interval below ``bounds`` [J, n]: for a threshold just below
    ``bounds[j]`` (and above the breakpoint before it) the neuron fires at (t, k) iff its
    breakpoint there is at least ``bounds[j]``. Returns [J, n] (int64)."""
    T = index.shape[0]
    J, n = bounds.shape
    flat = b.ravel()
    cols = np.arange(n)[None, :]
    counts = np.zeros((J, n), np.int64)
    for t in range(T):
        at = np.take(flat, (index[t, 0] + counts) * n + cols)    # breakpoint at (t, N)
        counts += at >= bounds
    return counts


def simulate_pairs(x: np.ndarray, th64: np.ndarray, fraction: float) -> np.ndarray:
    """Float32 spike counts of neurons ``x`` [T, p], each with its own threshold ``th64``
    [p]: the arithmetic of ``simulate_counts`` (threshold and initial membrane rounded from
    float64 to float32 as there). Returns int64 [p]."""
    th = th64.astype(np.float32)
    v = (fraction * th64).astype(np.float32)
    k = np.zeros(th.shape, np.int64)
    for xt in np.asarray(x, np.float32):
        v = v + xt
        s = v >= th
        k += s
        v = v - np.where(s, th, np.float32(0))
    return k


@dataclass(frozen=True)
class Neurons:
    """A site's sampled neurons, sorted by group, identical ones (the same group and the
    same currents, e.g. a background patch of the image) merged: ``x`` [T, u] float32,
    ``weight`` [u] their multiplicity, ``target`` [u] the sum of their DNN activations,
    ``starts``/``sizes`` the groups (P of them, in order)."""

    x: np.ndarray
    weight: np.ndarray
    target: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray


def distinct(currents: np.ndarray, target: np.ndarray, groups: np.ndarray) -> Neurons:
    """Merge identical neurons. ``currents`` [T, n], ``target`` [n], ``groups`` [n] sorted."""
    x = np.asarray(currents, np.float32)
    g = np.asarray(groups, np.int64)
    order = np.lexsort(tuple(x[::-1]) + (g,))          # by group, then x_1, x_2, ...
    xs, gs = x[:, order], g[order]
    new = np.ones(order.size, bool)
    new[1:] = (gs[1:] != gs[:-1]) | np.any(xs[:, 1:] != xs[:, :-1], axis=0)
    first = np.flatnonzero(new)
    inverse = np.cumsum(new) - 1                       # each sorted neuron's distinct row
    weight = np.bincount(inverse).astype(np.float64)
    tsum = np.bincount(inverse, weights=np.asarray(target, np.float64)[order])
    _, starts, sizes = np.unique(gs[first], return_index=True, return_counts=True)
    return Neurons(np.ascontiguousarray(xs[:, first]), weight, tsum, starts, sizes)


def count_sums(neurons: Neurons, thresholds: np.ndarray, fraction: float
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sum N^2, sum N d, sum N)`` [C, P] over each group's neurons (with their
    multiplicities), per candidate row: group g's candidate c is ``thresholds[c, g]``
    (float64; the simulation rounds it to float32, and the initial membrane is
    ``float32(fraction * threshold)``)."""
    x32, w, ds = neurons.x, neurons.weight, neurons.target
    th64 = np.asarray(thresholds, np.float64)
    T, n = x32.shape
    C, P = th64.shape
    th = th64.astype(np.float32).astype(np.float64)    # what the float32 simulation compares
    cum = np.cumsum(x32.astype(np.float64), axis=0)    # exact: a few float32 terms
    b, index = _breakpoints(cum, fraction)             # [B, n]
    bs = np.sort(b, axis=0)
    counts = _interval_counts(b, index, bs)            # [B, n]: below each sorted breakpoint
    counts = np.concatenate([counts, np.zeros((1, n), np.int64)])   # above all of them: none
    delta = np.diff(counts, axis=0)                    # [B, n]: the change crossing bs[j]
    square = np.diff(counts * counts, axis=0)
    # the rounding bound of each neuron's margins, as a distance in threshold (k + 1 - f
    # >= 1 - f divides the margin; the membrane's own rounding, 2^-23 th, is inside it)
    slack = _ROUNDING * (T + 1) / (1.0 - fraction)

    order = np.argsort(th, axis=0, kind="stable")                     # [C, P]
    cand = np.take_along_axis(th, order, axis=0).T                    # [P, C], each sorted
    group = np.repeat(np.arange(P), neurons.sizes)                    # [n]
    pos = np.empty(bs.shape, np.int64)                                # first candidate above
    for g, (s0, m) in enumerate(zip(neurons.starts, neurons.sizes)):
        pos[:, s0:s0 + m] = np.searchsorted(cand[g], bs[:, s0:s0 + m], side="right")
    # every change, added at its group's first candidate above the breakpoint (bin C of a
    # group: above all of them, dropped), then summed over the sorted candidates
    keep = delta != 0
    flat = (group[None, :] * (C + 1) + pos)[keep]
    base = counts[0].astype(np.float64)

    def cumulative(start: np.ndarray, change: np.ndarray) -> np.ndarray:
        acc = np.bincount(flat, weights=change[keep], minlength=P * (C + 1))
        per_group = np.bincount(group, weights=start, minlength=P)
        return per_group[:, None] + np.cumsum(acc.reshape(P, C + 1)[:, :C], axis=1)   # [P, C]

    col_k = cumulative(base * w, delta * w[None, :])
    col_2 = cumulative(base * base * w, square * w[None, :])
    col_d = cumulative(base * ds, delta * ds[None, :])
    # pairs where float32 rounding could decide: simulate those exactly
    tol = slack * (np.abs(x32.astype(np.float64)).sum(0)[None, :] + (T + 2) * np.abs(bs)) + 1e-300
    row = (group * C)[None, :]                                        # [1, n]
    cf = cand.ravel()
    gap = np.minimum(np.abs(np.take(cf, row + np.maximum(pos - 1, 0)) - bs),
                     np.abs(np.take(cf, row + np.minimum(pos, C - 1)) - bs))   # nearest candidate
    j, i = np.nonzero(gap <= tol)
    if i.size:
        gi, lo_b, hi_b = group[i], bs[j, i] - tol[j, i], bs[j, i] + tol[j, i]
        span = (cand[gi] <= hi_b[:, None]).sum(1) - (cand[gi] < lo_b[:, None]).sum(1)
        lo = (cand[gi] < lo_b[:, None]).sum(1)
        r = np.repeat(lo, span) + (np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span))
        key = np.unique(np.repeat(i, span) * C + r)        # each (neuron, candidate) once
        i, r = key // C, key % C
        gi = group[i]
        got = simulate_pairs(x32[:, i], th64[order[r, gi], gi], fraction)
        assumed = counts[(bs[:, i] < cand[gi, r][None, :]).sum(0), i]
        fix = got != assumed
        if fix.any():
            i, r, gi, got, assumed = i[fix], r[fix], gi[fix], got[fix], assumed[fix]
            np.add.at(col_k, (gi, r), (got - assumed) * w[i])
            np.add.at(col_2, (gi, r), (got * got - assumed * assumed) * w[i])
            np.add.at(col_d, (gi, r), (got - assumed) * ds[i])
    q2, q1, qk = (np.empty((C, P)) for _ in range(3))
    for q, col in ((q2, col_2), (q1, col_d), (qk, col_k)):
        np.put_along_axis(q, order, col.T, axis=0)
    return q2, q1, qk
