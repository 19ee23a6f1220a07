"""The conversion math: closed forms and the exact vectorized (alpha, beta) search."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_snn.scales import (SearchConfig, alpha_candidates, choose_params, objective_value,
                             search_datta, search_dynamic, simulate_counts, spike_count,
                             staircase)


def simulate_if(h, threshold, T, v0=0.0, leak=1.0):
    """Reference IF neuron with soft reset, step by step, in float64."""
    h = np.asarray(h, np.float64)
    v = np.full_like(h, v0)
    n = np.zeros_like(h)
    for _ in range(T):
        u = leak * v + h
        s = (u >= threshold).astype(np.float64)
        v = u - s * threshold
        n += s
    return n


@pytest.mark.parametrize("T", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("v_frac", [0.0, 0.5])
def test_spike_count_matches_simulation(T, v_frac):
    th = 1.0
    h = np.arange(-32, 96) / 16.0  # exact binary fractions: no rounding anywhere
    assert np.array_equal(spike_count(h, th, T, v_frac * th), simulate_if(h, th, T, v_frac * th))


def test_staircase_shape():
    h = np.linspace(-1, 5, 601)
    y = staircase(h, mu=4.0, alpha=0.5, beta=0.8, timesteps=2)
    assert set(np.round(np.unique(y), 6)) == {0.0, 1.6, 3.2}
    assert y[h < 1.0].max() == 0 and y[h >= 2.0].min() == pytest.approx(3.2)


def brute_force(h, mu, T, cfg):
    alphas = alpha_candidates(h, mu, cfg.percentile_step)
    betas = np.arange(1, int(round(cfg.beta_max / cfg.beta_step)) + 1) * cfg.beta_step
    best = (np.inf, None, None)
    for a in alphas:
        k = spike_count(h, a * mu, T)
        d = np.clip(h, 0, mu)
        for b in betas:
            diff = b * mu / T * k - d
            v = {"mse": np.mean(diff ** 2), "l1": np.mean(np.abs(diff)),
                 "mean": abs(np.mean(diff))}[cfg.objective]
            if v < best[0] - 1e-15:
                best = (v, a, b)
    return best


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 4), objective=st.sampled_from(["mse", "l1"]),
       mu=st.floats(0.5, 6.0))
def test_search_is_exact_on_the_sample(seed, T, objective, mu):
    rng = np.random.default_rng(seed)
    h = np.sort(rng.gamma(1.5, 1.0, 300) - 0.7)
    cfg = SearchConfig(objective=objective, percentile_step=10.0, beta_step=0.05, beta_max=2.0)
    alpha, beta, value = search_datta(h, mu, T, cfg)
    ref_value, _, _ = brute_force(h, mu, T, cfg)
    assert value == pytest.approx(ref_value, rel=1e-9, abs=1e-12)
    assert objective_value(h, mu, alpha, beta, T, 0.0, objective) == pytest.approx(ref_value, rel=1e-9, abs=1e-12)


def test_datta_beats_max_and_improves_with_T():
    rng = np.random.default_rng(0)
    h = np.sort(rng.gamma(1.0, 0.6, 200_000) - 0.3)  # skewed, mostly far below mu
    mu = 4.0
    values = []
    for T in (1, 2, 4):
        d = choose_params(h, mu, T, "datta")
        m = choose_params(h, mu, T, "max")
        assert d.objective_value < 0.5 * m.objective_value
        assert 0 < d.alpha <= 1 and d.v_init_fraction == 0.0
        values.append(d.objective_value)
    assert values[0] > values[1] > values[2]


def test_baselines():
    h = np.sort(np.random.default_rng(1).random(10_000) * 3)
    m = choose_params(h, 4.0, 2, "max")
    assert (m.alpha, m.beta, m.v_init_fraction) == (1.0, 1.0, 0.0)
    d = choose_params(h, 4.0, 2, "deng")
    assert (d.alpha, d.beta, d.v_init_fraction) == (1.0, 1.0, 0.5)
    p = choose_params(h, 4.0, 2, "percentile", SearchConfig(percentile=99.0))
    assert p.alpha * 4.0 == pytest.approx(np.percentile(h[h > 0], 99.0))
    assert p.beta == p.alpha


def test_deng_objective_uses_half_threshold_start():
    h = np.array([1.0, 2.0, 3.0])
    d = choose_params(h, 4.0, 1, "deng")
    # T=1, v0=2: h >= 2 fires (2, 3), h=1 does not -> outputs 0, 4, 4 vs 1, 2, 3
    assert d.objective_value == pytest.approx(np.mean([1.0, 4.0, 1.0]))


def test_search_on_all_values_and_on_a_sample_agree():
    rng = np.random.default_rng(2)
    h = rng.gamma(1.2, 0.8, 2_000_000) - 0.4
    full = np.sort(h)
    sample = np.sort(rng.choice(h, 200_000, replace=False))
    a1, b1, _ = search_datta(full, 4.0, 2)
    a2, b2, _ = search_datta(sample, 4.0, 2)
    assert abs(a1 - a2) < 0.02 and abs(b1 - b2) < 0.02


def test_unknown_method_and_objective():
    h = np.sort(np.random.default_rng(0).random(100))
    with pytest.raises(ValueError, match="unknown method"):
        choose_params(h, 1.0, 2, "nope")
    with pytest.raises(ValueError, match="unknown objective"):
        SearchConfig(objective="nope")


def test_mean_objective_prefers_low_mse_among_ties():
    rng = np.random.default_rng(4)
    h = np.sort(rng.gamma(1.0, 0.7, 20_000) - 0.2)
    for T in (2, 4):
        a, b, v = search_datta(h, 4.0, T, SearchConfig(objective="mean"))
        am, bm, vm = search_datta(h, 4.0, T, SearchConfig(objective="mse"))
        assert v <= 1e-3 * np.clip(h, 0, 4).mean() + 1e-9
        # the chosen pair is far closer to the mse optimum than an arbitrary zero-mean pair
        assert objective_value(h, 4.0, a, b, T) < 2.0 * vm


def test_config_validation():
    for bad in (dict(beta_step=5.0), dict(percentile=150), dict(relu_percentile=0),
                dict(percentile_step=150)):
        with pytest.raises(ValueError):
            SearchConfig(**bad)


def test_site_that_never_fires_keeps_plain_scales():
    p = choose_params(np.sort(-np.random.default_rng(0).random(100)), 4.0, 2, "datta")
    assert (p.alpha, p.beta) == (1.0, 1.0) and p.objective_value == 0.0


# ------------------------------------------------------------------ the spiking-aware search

@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("v_frac", [0.0, 0.5])
def test_simulated_counts_match_the_reference_neuron(T, v_frac):
    rng = np.random.default_rng(T)
    x = (rng.integers(-16, 48, size=(T, 500)) / 16.0).astype(np.float32)  # exact binary fractions
    th = np.array([1.0, 0.75])
    k = simulate_counts(x, th, v_frac * th)
    for c, t in enumerate(th):
        v = np.full(500, v_frac * t)
        ref = np.zeros(500)
        for step in x.astype(np.float64):
            v = v + step
            s = v >= t
            v = v - s * t
            ref += s
        assert np.array_equal(k[c], ref)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 4), mu=st.floats(0.5, 6.0))
def test_dynamic_search_on_constant_currents_is_algorithm_1(seed, T, mu):
    """A constant input every step with a zero initial membrane is the staircase's case: the
    simulated search must then find Algorithm 1's optimum. The simulation runs in float32
    (like the ONNX neuron) and the staircase in float64, so a value within rounding of a step
    edge may land on the other side: at most a couple of neurons' worth of objective."""
    rng = np.random.default_rng(seed)
    h = np.sort(rng.gamma(1.5, 1.0, 400) - 0.7).astype(np.float32).astype(np.float64)
    cfg = SearchConfig(percentile_step=10.0, beta_step=0.05, v_init_fractions=(0.0,))
    a0, b0, v0 = search_datta(h, mu, T, cfg)
    a1, b1, f1, v1 = search_dynamic(np.tile(h, (T, 1)), np.clip(h, 0, mu), mu, T, cfg)
    assert f1 == 0.0
    one_flip = (cfg.beta_max * mu) ** 2 / h.size      # one neuron moved by a whole step
    assert abs(v1 - v0) <= 2 * one_flip


def test_dynamic_search_finds_the_initial_membrane_that_rounds():
    """Targets that a rounding quantizer matches exactly: the search must pick v0 = threshold/2."""
    rng = np.random.default_rng(0)
    T, mu = 2, 1.0
    h = rng.uniform(0, 1, 20_000)
    target = np.clip(np.floor(h * T + 0.5), 0, T) * mu / T      # round(h*T)/T
    cfg = SearchConfig(v_init_fractions=(0.0, 0.25, 0.5, 0.75))
    alpha, beta, frac, value = search_dynamic(np.tile(h, (T, 1)), target, mu, T, cfg)
    assert frac == 0.5 and beta == pytest.approx(1.0) and value < 1e-4
    assert 0.98 < alpha <= 1.0


def _simulated_mse(currents, target, mu, T, alpha, beta, frac=0.0):
    k = simulate_counts(currents, np.array([alpha * mu]), np.array([frac * alpha * mu]))[0]
    return float(np.mean((beta * mu / T * k - target) ** 2))


def test_dynamic_search_sees_spikes_that_arrive_late():
    """Input that all comes at the last step gives at most one spike at T=2, where the
    constant-input staircase of Algorithm 1 promises two: the simulated search must do
    clearly better than Algorithm 1's parameters on such currents."""
    T, mu = 2, 1.0
    h = np.linspace(0.01, 1.0, 2000)
    late = np.stack([np.zeros_like(h), T * h])                  # same mean, all at step 2
    target = np.clip(h, 0, mu)
    cfg = SearchConfig(v_init_fractions=(0.0,))
    a0, b0, _ = search_datta(h, mu, T, cfg)
    alpha, beta, _, value = search_dynamic(late, target, mu, T, cfg)
    assert value == pytest.approx(_simulated_mse(late, target, mu, T, alpha, beta))
    assert value < 0.8 * _simulated_mse(late, target, mu, T, a0, b0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 4))
def test_dynamic_search_is_never_worse_than_its_start(seed, T):
    rng = np.random.default_rng(seed)
    mu = 2.0
    h = rng.gamma(1.5, 0.8, 3000) - 0.5
    noisy = h[None, :] + rng.normal(0, 0.4, (T, h.size))         # what a spiking input looks like
    target = np.clip(h, 0, mu)
    cfg = SearchConfig(percentile_step=5.0, beta_step=0.01)
    a0, b0, _ = search_datta(np.sort(h), mu, T, cfg)
    _, _, _, value = search_dynamic(noisy, target, mu, T, cfg, start=(a0, b0))
    assert value <= _simulated_mse(noisy, target, mu, T, a0, b0) + 1e-12


def test_dynamic_search_keeps_plain_scales_where_the_dnn_never_fires():
    x = np.random.default_rng(0).normal(0, 1, (2, 500))
    assert search_dynamic(x, np.zeros(500), 1.0, 2) == (1.0, 1.0, 0.0, 0.0)


def test_dynamic_search_checks_shapes_and_config():
    with pytest.raises(ValueError, match=r"\[T=2"):
        search_dynamic(np.zeros((3, 10)), np.zeros(10), 1.0, 2)
    with pytest.raises(ValueError, match="initial membrane"):
        SearchConfig(v_init_fractions=(0.0, 1.0))
    with pytest.raises(ValueError, match="sequential"):
        SearchConfig(sequential=True, objective="l1")


# ------------------------------------------------------------------ the per-channel search

def _channel_problem(seed, T, P=12, n=6000):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, P, n)
    h = (rng.gamma(1.5, 0.6, n) - 0.4) * rng.uniform(0.5, 1.5, P)[g]
    x = (h[None, :] + rng.normal(0, 0.3, (T, n))).astype(np.float32)
    return x, np.clip(h, 0, 1.5), g, P


def _channel_sse(x, d, g, P, mu, T, ch, signed=False):
    """The objective of a choice, simulated from scratch (every neuron with its channel's
    threshold, initial membrane and amplitude)."""
    from onnx_snn.scales import simulate_counts
    th = (ch.alpha * mu)[g].astype(np.float32)
    k = simulate_counts(x, th[None, :], (ch.v_init_fraction * ch.alpha * mu)[g].astype(np.float32)[None, :],
                        signed)[0]
    return float(np.sum((ch.beta[g] * mu / T * k - d) ** 2)) / d.size


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 4), signed=st.booleans())
def test_channel_search_coarse_to_fine_is_close_to_every_candidate(seed, T, signed):
    """search_stride 4 scores a subset of the exhaustive search's candidates (every 4th
    percentile, then the ones around each channel's best): never better than it, and within
    a fraction of a percent; both report the objective their choice really has."""
    from onnx_snn.scales import search_channels
    x, d, g, P = _channel_problem(seed, T)
    full = search_channels(x, d, 1.5, T, SearchConfig(search_stride=1), g, P, start=(0.7, 0.9),
                           min_group=16, signed=signed)
    fast = search_channels(x, d, 1.5, T, SearchConfig(search_stride=4), g, P, start=(0.7, 0.9),
                           min_group=16, signed=signed)
    assert full.objective_value <= fast.objective_value + 1e-12
    assert fast.objective_value <= 1.01 * full.objective_value
    for ch in (full, fast):
        assert ch.objective_value == pytest.approx(_channel_sse(x, d, g, P, 1.5, T, ch, signed),
                                                   rel=1e-9)


def test_the_automatic_search_stride_is_coarse_above_four_steps_only():
    """search_stride 0 (the default): every percentile up to T = 4 (the trained networks'
    conversions are the same), every 4th then the neighbours of each channel's best above;
    a stride given is used at every T."""
    from onnx_snn.scales import AUTO_STRIDE, search_channels
    auto = SearchConfig()
    assert [auto.stride_at(t) for t in (1, 2, 3, 4, 5, 8, 64)] == [1, 1, 1, 1] + [AUTO_STRIDE] * 3
    assert [SearchConfig(search_stride=1).stride_at(t) for t in (2, 16)] == [1, 1]
    assert [SearchConfig(search_stride=3).stride_at(t) for t in (2, 16)] == [3, 3]
    rng = np.random.default_rng(4)
    x = rng.normal(0.4, 0.5, (8, 3000)).astype(np.float32)
    d = np.clip(x.mean(0), 0, 1.5)
    g = np.repeat(np.arange(3), 1000)
    for T, same_as in ((4, 1), (8, AUTO_STRIDE)):
        got = search_channels(x[:T], d, 1.5, T, SearchConfig(), g, 3, start=(0.7, 0.9))
        want = search_channels(x[:T], d, 1.5, T, SearchConfig(search_stride=same_as), g, 3,
                               start=(0.7, 0.9))
        np.testing.assert_array_equal(got.alpha, want.alpha)
        np.testing.assert_array_equal(got.v_init_fraction, want.v_init_fraction)


def test_search_stride_is_checked():
    with pytest.raises(ValueError, match="search stride"):
        SearchConfig(search_stride=-1)
    with pytest.raises(ValueError, match="search_stride must be a whole number"):
        SearchConfig(search_stride=2.5)


@pytest.mark.parametrize("field,value", [("weight_ridge", 0), ("weight_ridge", -0.01),
                                         ("weight_ridge", float("nan")),
                                         ("weight_ridge_grid", ()), ("weight_ridge_grid", (0.01, 0.0))])
def test_weight_calibration_ridges_must_be_positive(field, value):
    """A ridge of 0 or less (or an empty grid) is refused up front: the walk starts from
    weight_ridge on a log scale, and a zero ridge leaves a singular fit."""
    from onnx_snn.scales import SearchConfig
    with pytest.raises(ValueError, match=field):
        SearchConfig(**{field: value})



@pytest.mark.parametrize("timesteps", [2, 3, 4])
def test_searched_thresholds_leave_no_membrane_on_the_threshold(timesteps):
    """Spike inputs make currents of a few discrete values. A threshold at the midpoint of
    two neighbouring ones, (a + b) / 2, puts the membrane of a neuron that gets b then a
    exactly on it after two steps (b fires, b - th + a = th), where the last bit of the sum
    (torch against onnxruntime) decided the spike. With the threshold elsewhere in the gap,
    no sequence of those currents brings a membrane within 1e-6 of it, at any step."""
    import itertools
    from onnx_snn.scales import search_channels
    rng = np.random.default_rng(3)
    levels = np.array([0.0, 0.3552, 0.6, 1.1807, 1.5], np.float64)
    n, mu = 4000, 1.6
    x = np.repeat(levels[rng.integers(0, levels.size, n)][None], timesteps, 0)   # constant
    target = np.clip(x[0] + 0.02 * rng.standard_normal(n), 0, mu)
    choice = search_channels(x.astype(np.float32), target, mu, timesteps,
                             SearchConfig(v_init_fractions=(0.0,)))
    th = float(choice.alpha[0]) * mu
    assert not np.any(np.isclose(th, levels))                # inside a gap, as before
    seqs = np.array(list(itertools.product(levels, repeat=timesteps))).T        # [T, k]
    u = np.zeros(seqs.shape[1])
    for t in range(timesteps):
        u = u + seqs[t]
        assert np.min(np.abs(u - th)) > 1e-6 * th, f"a membrane on the threshold at step {t}"
        u = np.where(u >= th, u - th, u)


@pytest.mark.parametrize("timesteps", [1, 2, 3, 4])
def test_currents_a_few_float_steps_apart_are_one_value_to_the_threshold(timesteps):
    """The same spike pattern gives currents a few float32 steps apart where the kernel sums
    in another order (another place in a batch): a threshold placed in such a "gap" sat on
    the currents themselves, and PyTorch and onnxruntime fired differently (an outside
    sweep: ResNets 0.1-0.3 apart). Values within SAME_CURRENT are one run: no threshold comes
    within 1e-5 of a current, nor a membrane within 1e-6 of it at any step."""
    import itertools
    from onnx_snn.scales import SAME_CURRENT, search_channels
    assert SAME_CURRENT > 1e-5
    rng = np.random.default_rng(4)
    levels = np.array([0.0, 0.3552, 0.6, 1.1807, 1.4866863, 1.5], np.float32)
    n, mu = 6000, 1.6
    pick = levels[rng.integers(0, levels.size, n)]
    ulps = rng.integers(-3, 4, n).astype(np.float32)
    cur = (pick + ulps * np.spacing(pick)).astype(np.float32)   # each level +- 3 float steps
    x = np.repeat(cur[None], timesteps, 0)
    target = np.clip(cur + 0.02 * rng.standard_normal(n), 0, mu)
    for frac in (0.0, 0.5):
        choice = search_channels(x, target, mu, timesteps, SearchConfig(v_init_fractions=(frac,)))
        th = float(choice.alpha[0]) * mu
        vals = np.unique(cur)
        assert np.min(np.abs(vals - th)) > 1e-5 * th, "a threshold on a current"
        seqs = np.array(list(itertools.product(np.unique(cur)[::3], repeat=min(timesteps, 2)))).T
        u = np.full(seqs.shape[1], frac * th)
        for t in range(seqs.shape[0]):
            u = u + seqs[t]
            assert np.min(np.abs(u - th)) > 1e-6 * th, f"a membrane on the threshold at step {t}"
            u = np.where(u >= th, u - th, u)


@pytest.mark.parametrize("timesteps", [1, 2])
def test_dense_currents_keep_candidates_that_follow_their_percentiles(timesteps):
    """Values closer than SAME_CURRENT to their neighbours are not chained into one run (an
    outside review: 200 000 values of N(0.5, 0.02) gave 2 distinct candidates, all at the
    bottom of the bulk): each percentile's candidate stays within 1 % of it."""
    from onnx_snn.scales import _gap_candidates
    qs = np.arange(5, 96.0)
    rng = np.random.default_rng(5)
    for pos in (np.sort(np.abs(rng.normal(0.5, 0.02, 200_000))),
                np.sort(rng.normal(0.5, 0.005, 12_500))):
        c = _gap_candidates(pos, qs, timesteps)
        pct = np.percentile(pos, qs)
        assert np.unique(c).size >= 0.9 * qs.size
        assert np.max(np.abs(c - pct) / pct) < 0.01


@pytest.mark.parametrize("field,value", [
    ("mean_tolerance", float("nan")), ("mean_tolerance", -5.0), ("bias_correction", "False"),
    ("percentile", "99"), ("v_init_fractions", 0.5), ("search_stride", "2"),
    ("beta_max", float("inf")), ("sequential_sample", 2.5), ("per_channel", 1)])
def test_search_config_refuses_wrong_types_naming_the_field(field, value):
    """A string "False" was a true flag, a NaN tolerance gave thresholds 40x too low: each
    field is its type or a UsageError naming it."""
    from onnx_snn.errors import UsageError
    with pytest.raises(UsageError, match=f"SearchConfig.{field}"):
        SearchConfig(**{field: value})


def test_search_config_takes_numpy_scalars_as_their_python_values():
    """numpy scalars (np.bool_, np.int64, np.float32) become bool, int and float: they failed
    at the end of a conversion, writing its JSON record."""
    import json
    c = SearchConfig(per_channel=np.bool_(False), sequential_sample=np.int64(1000),
                     weight_ridge=np.float32(0.5), v_init_fractions=np.array([0.0, 0.5]))
    assert (c.per_channel, c.sequential_sample, c.weight_ridge) == (False, 1000, 0.5)
    assert type(c.per_channel) is bool and type(c.sequential_sample) is int
    assert SearchConfig(search_stride=2.0, sequential_sample=2e5).sequential_sample == 200_000
    json.dumps(c.__dict__)
