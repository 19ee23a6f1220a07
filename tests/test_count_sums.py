"""count_sums: every candidate's spike-count sums from each neuron's breakpoints must be the
float32 simulation's (simulate_counts), ties and rounding included."""
import numpy as np
import pytest

from onnx_snn import count_sums as cs
from onnx_snn import scales
from onnx_snn.scales import SearchConfig, search_channels, simulate_counts


def _simulated(x, d, g, th, f):
    """The sums the search took from the simulation before count_sums existed."""
    order = np.argsort(g, kind="stable")
    x, d, g = x[:, order], d[order], g[order]
    _, starts, sizes = np.unique(g, return_index=True, return_counts=True)
    k = simulate_counts(x, np.repeat(th.astype(np.float32), sizes, axis=1),
                        np.repeat((f * th).astype(np.float32), sizes, axis=1))
    return (np.add.reduceat(k * k, starts, axis=1, dtype=np.float64),
            np.add.reduceat(k * d[None, :], starts, axis=1),
            np.add.reduceat(k, starts, axis=1, dtype=np.float64)), (x, d, g)


def _case(rng, T, n=3000, P=5, C=40, grid=False):
    x = rng.normal(0.3, 0.6, (T, n)).astype(np.float32)
    if grid:   # currents and thresholds on a coarse grid: exact ties with the breakpoints
        x = (np.round(x * 4) / 4).astype(np.float32)
    x[:, : n // 10] = x[:, n // 10: n // 10 + 1]       # a tenth of the neurons identical
    g = rng.integers(0, P, n)
    d = np.clip(x.mean(0) + rng.normal(0, 0.1, n), 0, None)
    th = rng.uniform(0.02, 1.6, (C, P))
    if grid:
        th[: C // 2] = rng.integers(1, 7, (C // 2, P)) / 4
    th[-3:] = 1.0                                       # repeated candidates
    return x, d, g, th


@pytest.mark.parametrize("T", [1, 2, 3, 4])
@pytest.mark.parametrize("f", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("grid", [False, True])
def test_sums_equal_the_simulation(T, f, grid):
    rng = np.random.default_rng(100 * T + int(8 * f) + grid)
    x, d, g, th = _case(rng, T, grid=grid)
    (q2, q1, qk), (xs, ds, gs) = _simulated(x, d, g, th, f)
    got2, got1, gotk = cs.count_sums(cs.distinct(xs, ds, gs), th, f)
    np.testing.assert_array_equal(got2, q2)      # whole numbers: exact in any order
    np.testing.assert_array_equal(gotk, qk)
    np.testing.assert_allclose(got1, q1, rtol=1e-12, atol=1e-9)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.given(T=st.integers(1, 3), f=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
                  seed=st.integers(0, 2 ** 31), scale=st.sampled_from([1e-3, 1.0, 1e3]))
@hypothesis.settings(max_examples=60, deadline=None)
def test_sums_equal_the_simulation_property(T, f, seed, scale):
    """Any currents, any scale; thresholds drawn from the neurons' own breakpoints
    ``S_t / (k + 1 - f)``, any ``k < t`` (and next to them by one float32 step), where float32
    rounding decides the spike."""
    rng = np.random.default_rng(seed)
    n, P = 400, 3
    x = (rng.normal(0.2, 0.7, (T, n)) * scale).astype(np.float32)
    g = rng.integers(0, P, n)
    d = rng.random(n)
    cum = np.cumsum(x.astype(np.float64), axis=0)
    t = rng.integers(0, T, 30)
    k = rng.integers(0, t + 1)
    b = np.abs(cum[t, rng.integers(0, n, 30)]) / (k + 1.0 - f) + 1e-9 * scale
    th = np.concatenate([b, np.nextafter(b.astype(np.float32), np.float32(np.inf)).astype(np.float64),
                         rng.uniform(0.01, 2.0, 10) * scale])[:, None].repeat(P, 1)
    (q2, q1, qk), (xs, ds, gs) = _simulated(x, d, g, th, f)
    got2, got1, gotk = cs.count_sums(cs.distinct(xs, ds, gs), th, f)
    np.testing.assert_array_equal(gotk, qk)
    np.testing.assert_array_equal(got2, q2)
    np.testing.assert_allclose(got1, q1, rtol=1e-12, atol=1e-9)


def test_distinct_merges_identical_neurons_of_a_group_only():
    x = np.array([[1, 1, 1, 2], [3, 3, 3, 3]], np.float32)
    g = np.array([0, 0, 1, 1])
    d = np.array([0.5, 0.25, 1.0, 2.0])
    nr = cs.distinct(x, d, g)
    assert nr.x.shape == (2, 3)
    np.testing.assert_array_equal(nr.weight, [2, 1, 1])
    np.testing.assert_array_equal(nr.target, [0.75, 1.0, 2.0])
    np.testing.assert_array_equal(nr.starts, [0, 1])
    np.testing.assert_array_equal(nr.sizes, [1, 2])


def test_applies_only_where_the_breakpoints_are_valid_and_cheaper():
    th = np.ones((3, 2))
    assert cs.applies(1, 0.5, th) and cs.applies(cs.MAX_TIMESTEPS, 0.75, th)
    assert not cs.applies(cs.MAX_TIMESTEPS + 1, 0.0, th)      # costlier than simulating
    assert not cs.applies(2, 1.0, th)                          # the neuron fires at zero input
    assert not cs.applies(2, 0.0, -th)                         # a threshold that is not positive


@pytest.mark.parametrize("T", [1, 2])
def test_channel_search_chooses_the_same_with_and_without_breakpoints(T, monkeypatch):
    rng = np.random.default_rng(T)
    n, P = 20000, 8
    x = np.maximum(rng.normal(0.15, 0.3, (T, n)), -0.2).astype(np.float32)
    x[:, :3000] = 0.125                                       # a flat background patch
    g = rng.integers(0, P, n)
    d = np.clip(x.mean(0) + rng.normal(0, 0.05, n), 0, 1)
    cfg = SearchConfig()
    fast = search_channels(x, d, 1.0, T, cfg, g, P, start=(0.6, 0.8))
    monkeypatch.setattr(scales.count_sums, "applies", lambda *a: False)
    slow = search_channels(x, d, 1.0, T, cfg, g, P, start=(0.6, 0.8))
    for a, b in ((fast.alpha, slow.alpha), (fast.beta, slow.beta),
                 (fast.v_init_fraction, slow.v_init_fraction)):
        np.testing.assert_array_equal(a, b)
    assert fast.objective_value == pytest.approx(slow.objective_value, rel=1e-12)
