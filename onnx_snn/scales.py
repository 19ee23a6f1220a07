"""Choosing each site's threshold scale alpha and output scale beta (pure numpy).

For pre-activations ``h``, trained threshold ``mu`` and ``T`` time steps the DNN gives
``clip(h, 0, mu)``; an integrate-and-fire neuron with threshold ``alpha*mu``, spike amplitude
``beta*mu``, soft reset and initial membrane ``v0`` gives under constant input ``h`` on average

    snn(h) = (beta*mu/T) * clip(floor((T*h + v0) / (alpha*mu)), 0, T)

Methods (all on the same code path, for honest comparisons):

* ``datta`` — Datta & Beerel 2022, Algorithm 1: alpha over the layer's own percentiles
  ``P_i/mu`` (percentiles of the positive pre-activations that are ``<= mu``, plus alpha = 1),
  beta over a fine grid; keep the pair that minimizes the objective. Objectives: ``mse``
  (default, mean squared difference), ``mean`` (absolute value of the mean signed difference,
  ties broken by mse) and ``l1`` (mean absolute difference).
* ``max`` — threshold = mu, alpha = beta = 1 (plain rate coding).
* ``deng`` — Deng et al. 2021: threshold = mu, initial membrane threshold/2.
* ``percentile`` — Rueckauer et al. 2017: threshold = amplitude = the p-th percentile of
  the positive pre-activations (capped at mu).

The search is exact on the recorded sample and needs no pass over the data per (alpha, beta)
pair: on the sorted sample, the staircase puts values into T+1 contiguous bins whose counts
and sums come from prefix sums, so every objective is a closed form in beta per alpha.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import count_sums
from .flags import checks_arguments

#: ``refined``: Algorithm 1 (``datta``), then every site refined on the spiking network's own
#: input currents (see onnx_snn.sequential); the others are single-pass searches.
METHODS = ("refined", "datta", "deng", "max", "percentile")
OBJECTIVES = ("mse", "mean", "l1")
DEFAULT_METHOD = "refined"
REFINED = "refined"
#: the methods whose parameters are searched for the conversion's T (the others', alpha =
#: beta = 1 or a percentile, hold at any T): run at another T they are not rate-exact
T_DEPENDENT_METHODS = (REFINED, "datta")
DEFAULT_TIMESTEPS = 2


#: the automatic search stride (``SearchConfig.search_stride`` = 0): every percentile below
#: T = AUTO_STRIDE_FROM, every AUTO_STRIDE-th (then the ones around each channel's best) from there
AUTO_STRIDE, AUTO_STRIDE_FROM = 4, 5


@dataclass
class SearchConfig:
    objective: str = "mse"
    percentile_step: float = 1.0     # alpha candidates: percentiles step, 2*step, ..., 100
    beta_step: float = 0.001         # beta grid: beta_step, 2*beta_step, ..., beta_max
    beta_max: float = 2.0
    percentile: float = 99.9         # for method "percentile"
    relu_percentile: float = 99.99   # mu estimate for plain ReLU sites
    mean_tolerance: float = 1e-3     # "mean": pairs within this fraction of E[DNN] of the
                                     # best |mean difference| count as ties; least mse wins
    sequential: bool = False         # datta: refine site by site on the spiking network
                                     # (always on for the "refined" method)
    v_init_fractions: tuple = (0.0, 0.25, 0.5, 0.75)  # sequential: initial membrane / threshold
    sequential_sample: int = 200_000  # sequential: (input, target) pairs per site
    per_channel: bool = True         # sequential: alpha, beta, initial membrane per channel
    bias_correction: bool = True     # sequential: per-channel current offset (Li et al. 2021)
    weight_calibration: bool = True   # sequential: refit the layers that read spikes
    weight_ridge: float = 0.01       # weight calibration: ridge / mean diagonal of R^T R
    weight_holdout: int = 2          # weight calibration: every k-th image checks the refits
    #: weight calibration at T = 1: a layer that feeds a site alone is fitted to min(h, mu)
    #: (the DNN's activation saturates at mu, and one step fires one spike at most;
    #: docs/FORMAT.md)
    one_step_ceiling: bool = True
    weight_target_floor: Optional[float] = None   # weight calibration: a layer that feeds a
                                     # site alone is fitted to max(h, -floor * mu), not h
                                     # (None: h; an experiment, tools/bench_deep.py)
    #: weight calibration: each layer's ridge is chosen from these by its held-out images,
    #: walking from weight_ridge (None: weight_ridge for every layer, the default until
    #: 2026-12-04; docs/FORMAT.md)
    weight_ridge_grid: Optional[tuple] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    #: per-channel search: every stride-th percentile, then the ones around each channel's
    #: best (1: all of them; 0, the default: :meth:`stride_at`, all of them up to T = 4)
    search_stride: int = 0
    signed_spikes: bool = False      # signed neurons (SignedIFNeuron) at every site
    #: weight calibration: the ridge pulls the refit toward the layer's own weights, not
    #: toward zero (False: the default until 2026-12-04; docs/FORMAT.md)
    weight_ridge_to_original: bool = True

    def stride_at(self, timesteps: int) -> int:
        """The search stride at ``timesteps``: ``search_stride`` when set, else 1 (every
        percentile) up to ``AUTO_STRIDE_FROM`` - 1 steps and ``AUTO_STRIDE`` from there: above
        T = 4 the simulated search dominates the build (VGG-16 at T = 16: 170 s), and the
        coarse one chose within 0.1 point of top-1 (docs/FORMAT.md)."""
        if self.search_stride:
            return int(self.search_stride)
        return AUTO_STRIDE if int(timesteps) >= AUTO_STRIDE_FROM else 1

    def caps_fit_targets(self, timesteps: int) -> bool:
        """Whether the weight calibration fits a layer that feeds a site alone to min(h, mu)
        (``one_step_ceiling`` at T = 1)."""
        return bool(self.one_step_ceiling) and int(timesteps) == 1

    _BOOLS = ("sequential", "per_channel", "bias_correction", "weight_calibration",
              "one_step_ceiling", "signed_spikes", "weight_ridge_to_original")
    _INTS = ("sequential_sample", "weight_holdout", "search_stride")
    _FLOATS = ("percentile_step", "beta_step", "beta_max", "percentile", "relu_percentile",
               "mean_tolerance", "weight_ridge")

    def _normalize_types(self) -> None:
        """Each field as its type (numpy scalars too: np.bool_, np.int64, np.float32), or a
        UsageError naming it: a string "False" was a true flag, and numpy scalars failed
        at the end of a conversion, writing its JSON record."""
        from .errors import UsageError

        def bad(name, v, what):
            return UsageError(f"SearchConfig.{name} must be {what}, not {v!r} ({type(v).__name__})")

        from .values import is_real as number   # int, float and numpy's, not a bool
        for name in self._BOOLS:
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise bad(name, v, "True or False")
            setattr(self, name, bool(v))
        for name in self._INTS:      # 2.0 and 2e5 are whole numbers too
            v = getattr(self, name)
            if not number(v) or not np.isfinite(v) or int(v) != v:
                raise bad(name, v, "a whole number")
            setattr(self, name, int(v))
        for name in self._FLOATS + (("weight_target_floor",) if self.weight_target_floor is not None
                                    else ()):
            v = getattr(self, name)
            if not number(v) or not np.isfinite(v):
                raise bad(name, v, "a finite number")
            setattr(self, name, float(v))
        if not isinstance(self.objective, str):
            raise bad("objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        for name in ("v_init_fractions", "weight_ridge_grid"):
            v = getattr(self, name)
            if v is None and name == "weight_ridge_grid":
                continue
            try:
                items = tuple(v)
            except TypeError:
                raise bad(name, v, "a sequence of numbers") from None
            if not all(number(f) for f in items):
                raise bad(name, v, "a sequence of numbers")
            setattr(self, name, tuple(float(f) for f in items))
        if self.mean_tolerance < 0:
            raise bad("mean_tolerance", self.mean_tolerance, "a number >= 0")

    def __post_init__(self):
        from .errors import UsageError
        self._normalize_types()
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if not 0 < self.percentile_step <= 100:
            raise UsageError(f"percentile step must be in (0, 100], not {self.percentile_step}")
        if not 0 < self.beta_step < self.beta_max:
            raise UsageError(f"beta step ({self.beta_step}) must be positive and below beta max "
                             f"({self.beta_max})")
        if self.sequential and self.objective not in ("mse", "mean"):
            raise UsageError(f"the sequential refinement supports the objectives mse and mean, "
                             f"not {self.objective!r}")
        fr = self.v_init_fractions
        if not fr or any(not 0 <= f < 1 for f in fr):
            raise UsageError(f"initial membrane fractions must be in [0, 1), not {list(fr)}")
        if self.search_stride < 0:
            raise UsageError(f"search stride must be a whole number >= 1 (0: automatic), not "
                             f"{self.search_stride}")
        if self.weight_holdout < 2:
            raise UsageError(f"weight_holdout (every k-th calibration image held out) must be a "
                             f"whole number >= 2, not {self.weight_holdout}")
        if self.weight_target_floor is not None and not self.weight_target_floor >= 0:
            raise UsageError(f"weight_target_floor must be >= 0 (a fraction of mu), not "
                             f"{self.weight_target_floor}")
        if not self.weight_ridge > 0:
            raise UsageError(f"weight_ridge must be a positive finite number, not "
                             f"{self.weight_ridge!r}")
        grid = self.weight_ridge_grid
        if grid is not None and (not grid or not all(np.isfinite(g) and g > 0 for g in grid)):
            raise UsageError(f"weight_ridge_grid must be positive finite ridges, not {list(grid)}")
        if self.sequential_sample < 1:
            raise UsageError(f"sequential sample must be positive, not {self.sequential_sample}")
        for name in ("percentile", "relu_percentile"):
            v = getattr(self, name)
            if not 0 < v <= 100:
                raise UsageError(f"{name.replace('_', ' ')} must be in (0, 100], not {v}")


# a misspelt field: a UsageError naming the fields, not a TypeError (__post_init__ checks values)
SearchConfig.__init__ = checks_arguments(SearchConfig.__init__)


@dataclass(frozen=True)
class Scales:
    """What a search chose for one site: threshold scale ``alpha``, output scale ``beta``
    and the initial membrane as a fraction of the threshold (the site record derives
    ``threshold = alpha*mu`` and ``amplitude = beta*mu``)."""

    alpha: float
    beta: float
    v_init_fraction: float = 0.0
    objective_value: float = 0.0


# ------------------------------------------------------------------ closed forms

def dnn_activation(h: np.ndarray, mu: float) -> np.ndarray:
    return np.clip(h, 0.0, mu)


def step_edges(threshold, timesteps: int, v_init: float = 0.0) -> np.ndarray:
    """Inputs at which the spike count steps up: ``(j*threshold - v0)/T`` for j = 1..T.

    ``threshold`` may be an array (one row of edges per threshold)."""
    j = np.arange(1, timesteps + 1, dtype=np.float64)
    th = np.asarray(threshold, dtype=np.float64)[..., None]
    return (j * th - v_init) / timesteps


def spike_count(h: np.ndarray, threshold: float, timesteps: int, v_init: float = 0.0) -> np.ndarray:
    """Spikes of an IF neuron with soft reset after ``timesteps`` steps of constant input h:
    ``clip(floor((T*h + v0)/threshold), 0, T)``, computed as the number of step edges <= h
    (the same comparisons the vectorized search makes, so both agree bit for bit)."""
    edges = step_edges(threshold, timesteps, v_init)
    return np.searchsorted(edges, np.asarray(h, np.float64), side="right").astype(np.float64)


def staircase(h: np.ndarray, mu: float, alpha: float, beta: float, timesteps: int,
              v_init: float = 0.0) -> np.ndarray:
    """Time-averaged output of the IF neuron under constant input (see module docstring)."""
    return beta * mu / timesteps * spike_count(h, alpha * mu, timesteps, v_init)


def objective_value(h: np.ndarray, mu: float, alpha: float, beta: float, timesteps: int,
                    v_init: float = 0.0, objective: str = "mse") -> float:
    """The objective of one (alpha, beta) pair, computed directly (used for reports/tests)."""
    diff = staircase(h, mu, alpha, beta, timesteps, v_init) - dnn_activation(np.asarray(h, np.float64), mu)
    if objective == "mse":
        return float(np.mean(diff ** 2))
    if objective == "mean":
        return float(abs(np.mean(diff)))
    if objective == "l1":
        return float(np.mean(np.abs(diff)))
    raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")


# ------------------------------------------------------------------ the datta search

def alpha_candidates(sorted_h: np.ndarray, mu: float, step: float = 1.0) -> np.ndarray:
    """alpha = P_i / mu for the percentiles P_i of the positive values with 0 < P_i <= mu,
    always including alpha = 1."""
    pos = sorted_h[np.searchsorted(sorted_h, 0.0, side="right"):]
    qs = np.arange(step, 100.0 + 1e-9, step)
    cands = [1.0]
    if pos.size:
        p = np.percentile(pos, qs)
        cands += list(p[(p > 0) & (p <= mu)] / mu)
    return np.unique(np.asarray(cands, dtype=np.float64))


def _bins(sorted_h: np.ndarray, mu: float, alphas: np.ndarray, timesteps: int):
    """Bin boundaries: values with k spikes sit at [b[:, k], b[:, k+1]) of the sorted sample."""
    n = sorted_h.size
    edges = step_edges(alphas * mu, timesteps)                         # [A, T]
    # values >= edge j have at least j spikes (the comparison spike_count makes)
    b = np.searchsorted(sorted_h, edges.reshape(-1), side="left").reshape(edges.shape)
    b = b.astype(np.int64)
    zeros = np.zeros((len(alphas), 1), np.int64)
    full = np.full((len(alphas), 1), n, np.int64)
    return np.concatenate([zeros, b, full], axis=1)                   # [A, T+2]


def search_datta(sorted_h: np.ndarray, mu: float, timesteps: int,
                 config: Optional[SearchConfig] = None):
    """Return (alpha, beta, objective value) minimizing the objective on the sample."""
    cfg = config or SearchConfig()
    h = np.asarray(sorted_h, dtype=np.float64)
    n = h.size
    if n == 0 or h[-1] <= 0:  # nothing ever fires in the DNN: keep the plain conversion
        return 1.0, 1.0, (float(objective_value(h, mu, 1.0, 1.0, timesteps, 0.0, cfg.objective))
                          if n else 0.0)
    d = np.clip(h, 0.0, mu)
    p1 = np.concatenate([[0.0], np.cumsum(d)])
    p2 = np.concatenate([[0.0], np.cumsum(d * d)])
    alphas = alpha_candidates(h, mu, cfg.percentile_step)
    betas = np.arange(1, int(round(cfg.beta_max / cfg.beta_step)) + 1) * cfg.beta_step
    b = _bins(h, mu, alphas, timesteps)                               # [A, T+2]
    counts = np.diff(b, axis=1).astype(np.float64)                     # [A, T+1]
    s1 = np.diff(p1[b], axis=1)                                         # sum of d per bin
    k = np.arange(timesteps + 1, dtype=np.float64)
    c = mu / timesteps                                                  # output = beta*c*k
    q2 = (counts * k ** 2).sum(1)                                       # [A]
    q1 = (s1 * k).sum(1)
    q0 = p2[-1]
    mse = (betas[None, :] ** 2 * c ** 2 * q2[:, None]
           - 2 * betas[None, :] * c * q1[:, None] + q0) / n             # [A, B]
    if cfg.objective == "mse":
        obj = mse
    elif cfg.objective == "mean":
        qk = (counts * k).sum(1)
        mean_abs = np.abs(betas[None, :] * c * qk[:, None] - p1[-1]) / n
        # many pairs reach a zero mean difference: among the near-ties take the least mse
        tol = mean_abs.min() + cfg.mean_tolerance * p1[-1] / n
        obj = np.where(mean_abs <= tol, mse, np.inf)
    else:  # l1
        obj = _l1_table(d, p1, b, betas, c, k)
    ia, ib = np.unravel_index(np.argmin(obj), obj.shape)
    alpha, beta = float(alphas[ia]), float(betas[ib])
    value = float(mse[ia, ib]) if cfg.objective == "mse" else float(
        objective_value(h, mu, alpha, beta, timesteps, 0.0, cfg.objective))
    return alpha, beta, value


def _l1_table(d, p1, b, betas, c, k):
    """Mean |beta*c*k - d| over bins, for every alpha (rows of b) and beta."""
    n = d.size
    a_n, tp1 = b.shape[0], b.shape[1] - 1
    lo = b[:, :-1][:, None, :]                                          # [A, 1, T+1]
    hi = b[:, 1:][:, None, :]
    o = betas[None, :, None] * c * k[None, None, :]                     # [1, B, T+1]
    o = np.broadcast_to(o, (a_n, betas.size, tp1))
    m = np.searchsorted(d, o.reshape(-1), side="left").reshape(o.shape)
    m = np.clip(m, lo, hi)
    below = o * (m - lo) - (p1[m] - p1[lo])
    above = (p1[hi] - p1[m]) - o * (hi - m)
    return (below + above).sum(-1) / n


# ------------------------------------------------------------------ the spiking-aware search

def simulate_counts(currents: np.ndarray, threshold: np.ndarray, v_init: np.ndarray,
                    signed: bool = False) -> np.ndarray:
    """Spike counts of IF neurons with soft reset over ``T`` steps of the given input currents.

    ``currents``: [T, n]; ``threshold`` and ``v_init``: [C] (one candidate each) or [C, n]
    (one value per candidate and neuron). Returns [C, n]: the same float32 arithmetic as
    ``LIFNeuron`` with leak 1 (``signed``: as ``SignedIFNeuron``; the net counts)."""
    th = np.asarray(threshold, np.float32)
    th = th[:, None] if th.ndim == 1 else th
    v0 = np.asarray(v_init, np.float32)
    v0 = v0[:, None] if v0.ndim == 1 else v0
    steps = np.asarray(currents, np.float32)
    shape = (th.shape[0], steps.shape[1])
    v = np.empty(shape, np.float32)
    k = np.zeros(shape, np.float32)
    fired = np.empty(shape, bool)
    reset = np.empty(shape, np.float32) if len(steps) > 1 else None
    for t, x in enumerate(steps):
        np.add(v0 if t == 0 else v, x, out=v)
        np.greater_equal(v, th, out=fired)
        if signed:   # +1, or -1 below zero with a spike to take back
            s = fired.astype(np.float32) - ((v < 0) & (k > 0))
        else:
            s = fired
        if t + 1 < len(steps):   # the membrane after the last step is not needed
            np.multiply(s, th, out=reset)
            np.subtract(v, reset, out=v)
        np.add(k, s, out=k)
    return k


def search_dynamic(currents: np.ndarray, target: np.ndarray, mu: float, timesteps: int,
                   config: Optional[SearchConfig] = None, chunk: int = 16,
                   start: Optional[tuple] = None, signed: bool = False):
    """(alpha, beta, v_init fraction, objective value) for one site from its per-step input
    currents ``currents`` [T, n] in the spiking network and the DNN's activations ``target``
    [n] of the same neurons. alpha runs over the percentiles of the time-averaged current (as
    in Algorithm 1), the initial membrane over ``v_init_fractions`` of the threshold, beta
    over the grid; the objective (mse or mean) compares ``beta*mu/T * count`` to the target.
    ``start``: the (alpha, beta) to refine (Algorithm 1's); its alpha is a candidate with
    v0 = 0, so the result is never worse than it on these currents. A site whose target is
    never positive keeps the plain scales (1, 1), as in ``search_datta``."""
    cfg = config or SearchConfig()
    x = np.asarray(currents, np.float32)
    d = np.asarray(target, np.float64)
    if x.ndim != 2 or x.shape[0] != timesteps or x.shape[1] != d.size:
        raise ValueError(f"currents must be [T={timesteps}, n={d.size}], not {list(x.shape)}")
    n = d.size
    if n == 0 or d.max() <= 0:
        return 1.0, 1.0, 0.0, 0.0
    alphas = alpha_candidates(np.sort(x.mean(0, dtype=np.float64)), mu, cfg.percentile_step)
    fracs = np.asarray(cfg.v_init_fractions, np.float64)
    cand_a = np.repeat(alphas, fracs.size)
    cand_f = np.tile(fracs, alphas.size)
    if start is not None:
        cand_a = np.append(cand_a, float(start[0]))
        cand_f = np.append(cand_f, 0.0)
    betas = np.arange(1, int(round(cfg.beta_max / cfg.beta_step)) + 1) * cfg.beta_step
    c = mu / timesteps
    q2 = np.empty(cand_a.size)
    q1 = np.empty(cand_a.size)
    qk = np.empty(cand_a.size)
    for s in range(0, cand_a.size, chunk):   # only three sums per candidate are kept
        a, f = cand_a[s:s + chunk], cand_f[s:s + chunk]
        k = simulate_counts(x, a * mu, f * a * mu, signed)               # [C, n]
        q2[s:s + chunk] = np.einsum("cn,cn->c", k, k, dtype=np.float64)
        q1[s:s + chunk] = k.astype(np.float64) @ d
        qk[s:s + chunk] = k.sum(1, dtype=np.float64)
    mse = (betas[None, :] ** 2 * c ** 2 * q2[:, None] - 2 * betas[None, :] * c * q1[:, None]
           + float(d @ d)) / n                                           # [C, B]
    if cfg.objective == "mean":
        mean_abs = np.abs(betas[None, :] * c * qk[:, None] - d.sum()) / n
        tol = mean_abs.min() + cfg.mean_tolerance * d.sum() / n
        ic, ib = np.unravel_index(np.argmin(np.where(mean_abs <= tol, mse, np.inf)), mse.shape)
        value = float(mean_abs[ic, ib])
    else:
        ic, ib = np.unravel_index(np.argmin(mse), mse.shape)
        value = float(mse[ic, ib])
    alpha, beta, frac = float(cand_a[ic]), float(betas[ib]), float(cand_f[ic])
    return alpha, beta, frac, value


@dataclass(frozen=True)
class ChannelChoice:
    """What :func:`search_channels` chose: one value per group of neurons (channel), or one
    group for the whole site."""

    alpha: np.ndarray
    beta: np.ndarray
    v_init_fraction: np.ndarray
    objective_value: float


def channel_offsets(currents: np.ndarray, preact: np.ndarray, groups: np.ndarray,
                    n_groups: int) -> np.ndarray:
    """Bias correction (Li et al., ICML 2021): per group (channel), the current to add every
    step so that the spiking neurons' mean input equals the DNN's mean pre-activation,
    ``mean(h) - mean(mean_t x_t)``. Groups with no sampled neuron get 0."""
    xm = np.asarray(currents, np.float64).mean(0)
    g = np.asarray(groups, np.int64)
    diff = np.bincount(g, weights=np.asarray(preact, np.float64) - xm, minlength=n_groups)
    count = np.bincount(g, minlength=n_groups)
    return np.where(count > 0, diff / np.maximum(count, 1), 0.0)


def _group_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row-wise sums of ``values`` [C, n] over contiguous groups starting at ``starts``."""
    return np.add.reduceat(values, starts, axis=1)


#: where in the gap between two neighbouring calibration currents a searched threshold sits
#: at T >= 2: sqrt(5) / 4, an irrational fraction near the midpoint, so that no small
#: whole-number mix of the currents (the membrane after a few steps) is a whole multiple of
#: it (the midpoint, 0.5, made ties). At T = 1 a membrane holds one step's current, which no
#: point inside a gap can equal: the midpoint stays there, and so does a candidate on a run
#: of equal currents, which measured higher on the deep networks than one below the run
#: (docs/FORMAT.md)
GAP_FRACTION = 0.5590169943749475


#: currents closer than this (relative) are one value to the threshold placement: the same
#: spike pattern gives currents a few float32 steps apart where the kernel sums in another
#: order (another position in a batch, another runtime), and a threshold placed in such a
#: "gap" lands on the currents themselves (an outside sweep: a third of the ResNets'
#: refined conversions then fired differently in PyTorch and onnxruntime, 0.1-0.3 apart)
SAME_CURRENT = 2.0 ** -14


def _gap_candidates(pos: np.ndarray, qs: np.ndarray, timesteps: int) -> np.ndarray:
    """One threshold per percentile ``qs`` of the sorted positive mean currents ``pos``: a
    point inside a gap between neighbouring values (the widest among the nearest few), not
    on a value, where a spike would depend on the last bit of the sum. A gap narrower than
    ``SAME_CURRENT`` (relative) is none: the values either side of it may be one current.

    Where the nearest values leave no gap (a run of equal currents, or dense ones), the
    values within ``SAME_CURRENT`` of the percentile's value are taken as one run, and the
    threshold goes below it: at T = 1 just below (``SAME_CURRENT`` of its lowest value, or
    half the gap to the next smaller value), so that the run's neurons fire as they did
    with the threshold on them; over several steps into the gap below the run, as between
    values. Over several steps never at a gap's midpoint: with currents of a few discrete
    values (spike inputs), steps of b then a put the membrane exactly on (a + b) / 2
    (GAP_FRACTION)."""
    n = pos.size
    d = np.diff(pos)
    d = np.where(d > SAME_CURRENT * pos[1:], d, 0.0)          # too narrow: no gap
    idx = np.minimum((qs / 100.0 * (n - 1)).astype(np.int64), n - 2)
    near = np.clip(idx[:, None] + np.arange(-2, 3)[None, :], 0, n - 2)
    gap = d[near]
    best = near[np.arange(idx.size), np.argmax(gap, axis=1)]
    on_run = gap.max(axis=1) <= 0
    lo, hi = pos[best], pos[best + 1]
    # the run around the percentile's value: from its lowest value within SAME_CURRENT
    # (measured from the value itself, not chained from neighbour to neighbour)
    v = pos[idx]
    bottom = np.searchsorted(pos, v * (1.0 - SAME_CURRENT), side="left")
    run_lo = pos[bottom]
    below = np.where(bottom > 0, pos[np.maximum(bottom - 1, 0)], 0.0)
    if timesteps == 1:
        under = run_lo - np.minimum(SAME_CURRENT * run_lo, 0.5 * (run_lo - below))
        return np.where(on_run, under, 0.5 * (lo + hi))
    lo, hi = np.where(on_run, below, lo), np.where(on_run, run_lo, hi)
    return lo + GAP_FRACTION * (hi - lo)


def search_channels(currents: np.ndarray, target: np.ndarray, mu: float, timesteps: int,
                    config: Optional[SearchConfig] = None, groups: Optional[np.ndarray] = None,
                    n_groups: int = 1, start: Optional[tuple] = None, chunk: int = 16,
                    min_group: int = 64, signed: bool = False) -> ChannelChoice:
    """The spiking-aware search of one site, per group of neurons (``groups``: the channel of
    every sampled neuron, ``0..n_groups-1``; None: one group).

    ``currents`` [T, n] are the neurons' input currents in the spiking network, ``target`` [n]
    the DNN's activations ``clip(h, 0, mu)`` of the same neurons. Per group:

    1. alpha runs over the group's own percentiles of the time-averaged current (Algorithm 1's
       candidates, plus ``start``'s alpha and 1), the initial membrane over
       ``config.v_init_fractions`` of the threshold; the neurons are simulated exactly;
    2. beta is the closed-form least-squares scale snapped to the grid (the objective is
       quadratic in beta, so the nearest grid point is the grid's best); ``mean`` picks beta
       that zeroes the mean difference and ranks candidates by mse.

    A group with fewer than ``min_group`` neurons or that the DNN never activates keeps the
    ``start`` scales (with a zero initial membrane). ``signed``: the neurons are signed
    (``SignedIFNeuron``)."""
    cfg = config or SearchConfig()
    x = np.asarray(currents, np.float32)
    d = np.asarray(target, np.float64)
    n = d.size
    if x.ndim != 2 or x.shape[0] != timesteps or x.shape[1] != n:
        raise ValueError(f"currents must be [T={timesteps}, n={n}], not {list(x.shape)}")
    g = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64)
    G = int(n_groups) if groups is not None else 1
    order = np.argsort(g, kind="stable")
    x, d, g = x[:, order], d[order], g[order]
    present, starts, sizes = np.unique(g, return_index=True, return_counts=True)
    P = present.size
    xm = x.mean(0, dtype=np.float64)

    # candidates: per group, the percentiles of its positive mean currents <= mu (as alpha)
    qs = np.arange(cfg.percentile_step, 100.0 + 1e-9, cfg.percentile_step)
    layer = alpha_candidates(np.sort(xm), mu, cfg.percentile_step)
    extra = [1.0] + ([float(start[0])] if start is not None else [])
    A = np.empty((qs.size + len(extra), P))
    for j, (s0, m) in enumerate(zip(starts, sizes)):
        pos = np.sort(xm[s0:s0 + m])
        pos = pos[pos > 0]
        if pos.size >= 2 and m >= min_group:
            p = _gap_candidates(pos, qs, timesteps) / mu
            p = np.where((p > 0) & (p <= 1.0), p, 1.0)
        else:  # too few: the layer's candidates, padded
            p = np.resize(layer, qs.size)
        A[:, j] = np.concatenate([p, extra])
    fracs = np.asarray(cfg.v_init_fractions, np.float64)
    c = mu / timesteps
    dd = np.add.reduceat(d * d, starts)
    sd = np.add.reduceat(d, starts)

    merged = []   # the site's distinct neurons, once (count_sums)

    def score(alphas: np.ndarray):
        """(candidates' alpha [C, P], v_init fraction [C], beta [C, P], sse [C, P]) of every
        row of ``alphas`` [R, P] with every initial-membrane fraction."""
        cand_a = np.repeat(alphas, fracs.size, axis=0)                  # [C, P]
        cand_f = np.tile(fracs, alphas.shape[0])                        # [C]
        C = cand_a.shape[0]
        q2, q1, qk = (np.empty((C, P)) for _ in range(3))
        scored = np.zeros(C, bool)   # candidates scored from breakpoints; the others simulated
        for f in (() if signed else np.unique(cand_f)):
            sel = cand_f == f
            th = cand_a[sel] * mu
            if count_sums.applies(timesteps, f, th):
                if not merged:
                    merged.append(count_sums.distinct(x, d, g))
                q2[sel], q1[sel], qk[sel] = count_sums.count_sums(merged[0], th, f)
                scored |= sel
        todo = np.flatnonzero(~scored)
        for s0 in range(0, todo.size, chunk):
            idx = todo[s0:s0 + chunk]
            th = cand_a[idx] * mu                                       # [c, P]
            v0 = cand_f[idx, None] * th
            # per neuron, in float32 (one value per group, repeated over its neurons)
            k = simulate_counts(x, np.repeat(th.astype(np.float32), sizes, axis=1),
                                np.repeat(v0.astype(np.float32), sizes, axis=1), signed)  # [c, n]
            # counts are small whole numbers: their sums are exact in float64 in any order
            q2[idx] = np.add.reduceat(k * k, starts, axis=1, dtype=np.float64)
            q1[idx] = _group_sums(k * d[None, :], starts)
            qk[idx] = np.add.reduceat(k, starts, axis=1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = (q1 / (c * q2)) if cfg.objective != "mean" else (sd[None, :] / (c * qk))
        raw = np.where(np.isfinite(raw), raw, 1.0)
        beta = np.clip(np.round(raw / cfg.beta_step) * cfg.beta_step, cfg.beta_step, cfg.beta_max)
        return cand_a, cand_f, beta, beta ** 2 * c ** 2 * q2 - 2 * beta * c * q1 + dd[None, :]

    Q, stride = qs.size, cfg.stride_at(timesteps)
    if stride <= 1 or Q <= 2 * stride:   # every candidate
        cand_a, cand_f, beta, sse = score(A)
    else:
        # coarse to fine: every stride-th percentile (and the extra alphas) first, then, per
        # group, the percentiles between the best coarse one and its coarse neighbours
        coarse = np.unique(np.r_[np.arange(stride - 1, Q, stride), Q - 1])
        a1, f1, b1, e1 = score(A[np.r_[coarse, np.arange(Q, A.shape[0])]])
        pct = e1[:coarse.size * fracs.size].reshape(coarse.size, fracs.size, P).min(1)  # [K, P]
        centre = coarse[np.argmin(pct, axis=0)]                                        # [P]
        near = np.r_[np.arange(-(stride - 1), 0), np.arange(1, stride)]
        rows = np.clip(centre[None, :] + near[:, None], 0, Q - 1)                       # [J, P]
        a2, f2, b2, e2 = score(A[rows, np.arange(P)[None, :]])
        cand_a, cand_f = np.concatenate([a1, a2]), np.concatenate([f1, f2])
        beta, sse = np.concatenate([b1, b2]), np.concatenate([e1, e2])
    best = np.argmin(sse, axis=0)
    cols = np.arange(P)
    out_a, out_b, out_f = cand_a[best, cols], beta[best, cols], cand_f[best]
    value = float(sse[best, cols].sum()) / n
    if G == 1:
        if sd[0] <= 0:  # the DNN never activates the site: keep the plain scales
            return ChannelChoice(np.ones(1), np.ones(1), np.zeros(1), value)
        return ChannelChoice(out_a, out_b, out_f, value)
    # groups that are sparse, silent or absent from the sample take the starting (Algorithm
    # 1's) scales, or the plain ones without a start
    weak = (sizes < min_group) | (np.add.reduceat((d > 0).astype(np.int64), starts) == 0)
    fa, fb = (float(start[0]), float(start[1])) if start is not None else (1.0, 1.0)
    res = []
    for got, fallback in ((out_a, fa), (out_b, fb), (out_f, 0.0)):
        arr = np.full(G, fallback)
        arr[present] = np.where(weak, fallback, got)
        res.append(arr)
    return ChannelChoice(*res, objective_value=value)


# ------------------------------------------------------------------ front door

def estimate_mu(sorted_h: np.ndarray, percentile: float) -> float:
    pos = sorted_h[np.searchsorted(sorted_h, 0.0, side="right"):]
    if pos.size == 0:
        return 1.0
    return float(np.percentile(pos, percentile))


def choose_params(sorted_h: np.ndarray, mu: float, timesteps: int, method: str = "datta",
                  config: Optional[SearchConfig] = None) -> Scales:
    """(alpha, beta, initial membrane fraction) of one site for ``method``."""
    cfg = config or SearchConfig()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if timesteps < 1:
        raise ValueError("timesteps must be at least 1")
    v_frac = 0.0
    if method in ("datta", REFINED):  # refined starts from Algorithm 1
        alpha, beta, _ = search_datta(sorted_h, mu, timesteps, cfg)
    elif method == "max":
        alpha, beta = 1.0, 1.0
    elif method == "deng":
        alpha, beta, v_frac = 1.0, 1.0, 0.5
    else:  # percentile
        p = float(min(estimate_mu(sorted_h, cfg.percentile), mu))
        alpha = beta = (p / mu) if p > 0 else 1.0
    v_init = v_frac * (alpha * mu)
    value = objective_value(sorted_h, mu, alpha, beta, timesteps, v_init, cfg.objective) \
        if np.size(sorted_h) else 0.0
    return Scales(alpha=float(alpha), beta=float(beta), v_init_fraction=float(v_frac),
                  objective_value=value)
