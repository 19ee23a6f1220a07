"""The neuron rule once per backend, held together: the same time-varying currents through the
ONNX function (onnxruntime), the numpy reference, the torch neuron and the simulation behind
the sequential search give identical spikes and membranes; under constant currents the
closed-form staircase gives the same counts."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_snn.calibrate import make_session
from onnx_snn.scales import simulate_counts, spike_count
from onnx_snn.spiking.neuron import DOMAIN, NEURON_OP, lif_run, lif_step, neuron_function

N = 257   # neurons


def _onnx_step(opset: int):
    """A model that is one call of the format's LIFNeuron function."""
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    node = helper.make_node(NEURON_OP, ["x", "v", "th", "amp", "leak"], ["y", "v_next"],
                            domain=DOMAIN)
    g = helper.make_graph([node], "lif", [vi("x", [N]), vi("v", [N]), vi("th", []), vi("amp", []),
                                          vi("leak", [])], [vi("y", [N]), vi("v_next", [N])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                            helper.make_opsetid(DOMAIN, 1)],
                          functions=[neuron_function(opset)])
    onnx.checker.check_model(m, full_check=True)
    return make_session(m)


CASES = [  # (T, leak, initial membrane as a fraction of the threshold, seed)
    (1, 1.0, 0.0, 0), (2, 1.0, 0.5, 1), (4, 1.0, 0.25, 2), (6, 1.0, 0.75, 3),
    (3, 0.9, 0.0, 4), (4, 0.5, 0.5, 5), (5, 0.999, 0.3, 6),
]


@pytest.fixture(scope="module", params=[13, 17])
def session(request):
    return _onnx_step(request.param)


@pytest.mark.parametrize("T,leak,frac,seed", CASES)
def test_backends_agree_on_time_varying_currents(session, T, leak, frac, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.8, (T, N)).astype(np.float32)      # changes every step, some negative
    th = np.float32(rng.uniform(0.4, 1.6))
    amp = np.float32(rng.uniform(0.5, 2.0))
    v0 = np.full(N, frac * th, np.float32)

    ref_y, ref_v, ref_s = lif_run(x, v0, th, amp, leak)
    assert 0 < ref_s.mean() < 1                                  # the case exercises both

    # onnxruntime, the format's function, step by step
    v = v0
    for t in range(T):
        y, v = session.run(None, {"x": x[t], "v": v, "th": np.array(th), "amp": np.array(amp),
                                  "leak": np.array(leak, np.float32)})
        np.testing.assert_array_equal(y, ref_y[t])
        np.testing.assert_array_equal(v, ref_v[t])

    # the torch runtime's neuron
    torch = pytest.importorskip("torch")
    from onnx_snn.runtimes.torch.neuron import lif_step as torch_step
    v = torch.from_numpy(v0)
    for t in range(T):
        y, v, s = torch_step(torch.from_numpy(x[t]), v, torch.tensor(th), torch.tensor(amp),
                             torch.tensor(np.float32(leak)))
        np.testing.assert_array_equal(y.numpy(), ref_y[t])
        np.testing.assert_array_equal(v.numpy(), ref_v[t])
        np.testing.assert_array_equal(s.numpy(), ref_s[t])


@pytest.mark.parametrize("T,leak,frac,seed", [c for c in CASES if c[1] == 1.0])
def test_search_simulation_counts_the_same_spikes(T, leak, frac, seed):
    """``scales.simulate_counts`` (leak 1, several candidate thresholds at once)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.8, (T, N)).astype(np.float32)
    ths = np.float32([0.3, 0.7, 1.1, 2.3])
    counts = simulate_counts(x, ths, frac * ths)
    for c, th in enumerate(ths):
        _, _, s = lif_run(x, np.full(N, frac * th, np.float32), th, 1.0, 1.0)
        np.testing.assert_array_equal(counts[c], s.sum(0))


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("frac", [0.0, 0.25, 0.5])
def test_constant_currents_follow_the_closed_form_staircase(T, frac):
    """Exact binary fractions, so that float32 steps and the float64 formula agree."""
    h = (np.arange(-40, 200, dtype=np.float32) / 64.0)
    th = np.float32(0.625)
    v0 = np.float32(frac) * th
    _, _, s = lif_run(np.tile(h, (T, 1)), np.full(h.size, v0, np.float32), th, 1.0, 1.0)
    np.testing.assert_array_equal(s.sum(0), spike_count(h, float(th), T, float(v0)))
    np.testing.assert_array_equal(simulate_counts(np.tile(h, (T, 1)), [th], [v0])[0], s.sum(0))


def test_reference_step_is_the_documented_rule():
    y, v, s = lif_step([0.2, 1.0, 3.0], [0.5, 0.0, 0.0], 1.0, 2.0, 0.5)
    np.testing.assert_array_equal(s, [0, 1, 1])        # u = 0.45, 1.0, 3.0
    np.testing.assert_array_equal(y, [0, 2, 2])
    np.testing.assert_allclose(v, [0.45, 0.0, 2.0])     # soft reset keeps the excess


# ------------------------------------------------------------------ the signed neuron

def _onnx_signed_step(opset: int):
    """A model that is one call of the format's SignedIFNeuron function."""
    from onnx_snn.spiking.neuron import SIGNED_NEURON_OP, signed_neuron_function
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    node = helper.make_node(SIGNED_NEURON_OP, ["x", "v", "c", "th", "amp", "leak"],
                            ["y", "v_next", "c_next"], domain=DOMAIN)
    g = helper.make_graph([node], "signed", [vi("x", [N]), vi("v", [N]), vi("c", [N]), vi("th", []),
                                             vi("amp", []), vi("leak", [])],
                          [vi("y", [N]), vi("v_next", [N]), vi("c_next", [N])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                            helper.make_opsetid(DOMAIN, 1)],
                          functions=[signed_neuron_function(opset)])
    onnx.checker.check_model(m, full_check=True)
    return make_session(m)


@pytest.fixture(scope="module", params=[13, 17, 21, 23])
def signed_session(request):
    return _onnx_signed_step(request.param)


@pytest.mark.parametrize("T,leak,frac,seed", CASES)
def test_signed_backends_agree_on_time_varying_currents(signed_session, T, leak, frac, seed):
    from onnx_snn.spiking.neuron import signed_step
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.8, (T, N)).astype(np.float32)
    th = np.float32(rng.uniform(0.4, 1.6))
    amp = np.float32(rng.uniform(0.5, 2.0))
    v0 = np.full(N, frac * th, np.float32)

    ref_y, ref_v, ref_s = lif_run(x, v0, th, amp, leak, signed=True)
    if T > 1:
        assert (ref_s < 0).any() and (ref_s > 0).any()      # both signs are exercised
    assert (np.cumsum(ref_s, 0) >= 0).all()                 # the net count never drops below 0

    v, c = v0, np.zeros(N, np.float32)
    for t in range(T):
        y, v, c = signed_session.run(None, {"x": x[t], "v": v, "c": c, "th": np.array(th),
                                            "amp": np.array(amp), "leak": np.array(leak, np.float32)})
        np.testing.assert_array_equal(y, ref_y[t])
        np.testing.assert_array_equal(v, ref_v[t])
        np.testing.assert_array_equal(c, ref_s[:t + 1].sum(0))

    torch = pytest.importorskip("torch")
    from onnx_snn.runtimes.torch.neuron import signed_step as torch_step
    v, c = torch.from_numpy(v0), torch.zeros(N)
    for t in range(T):
        y, v, c, s = torch_step(torch.from_numpy(x[t]), v, c, torch.tensor(th), torch.tensor(amp),
                                torch.tensor(np.float32(leak)))
        np.testing.assert_array_equal(y.numpy(), ref_y[t])
        np.testing.assert_array_equal(v.numpy(), ref_v[t])
        np.testing.assert_array_equal(s.numpy(), ref_s[t])

    if leak == 1.0:      # the search's simulation: the same net counts
        counts = simulate_counts(x, [th], [frac * th], signed=True)[0]
        np.testing.assert_array_equal(counts, ref_s.sum(0))
    # numpy's one step is the documented rule
    y1, v1, c1, s1 = signed_step(x[0], v0, np.zeros(N), th, amp, leak)
    np.testing.assert_array_equal(s1, ref_s[0])


def test_signed_reference_step_is_the_documented_rule():
    from onnx_snn.spiking.neuron import signed_step
    # u = -0.5 with a spike to take back, -0.5 without, 0.0 (not below zero), 1.5 (fires)
    y, v, c, s = signed_step([-0.5, -0.5, -0.2, 1.5], [0.0, 0.0, 0.2, 0.0], [1, 0, 1, 1], 1.0, 2.0)
    np.testing.assert_array_equal(s, [-1, 0, 0, 1])
    np.testing.assert_array_equal(y, [-2, 0, 0, 2])
    np.testing.assert_array_equal(c, [0, 0, 1, 2])
    np.testing.assert_allclose(v, [0.5, -0.5, 0.0, 0.5])


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.given(T=st.integers(1, 6), v0=st.integers(0, 3),
                  steps=st.lists(st.integers(-12, 12), min_size=6, max_size=6))
@hypothesis.settings(max_examples=200, deadline=None)
def test_signed_count_moves_one_step_toward_the_summed_input(T, v0, steps):
    """In exact arithmetic (quarter units, threshold 1) the signed neuron's net count moves
    each step one spike toward q_t = max(floor(sum of its input so far / threshold), 0): it
    rises when q_t is above it, falls when below, so it depends on the input's sum, not its
    timing, wherever q_t moves by at most one per step. A plain neuron's count never falls."""
    x = np.asarray(steps[:T], np.float32)[:, None] / 4
    _, _, s = lif_run(x, np.float32(v0 / 4), 1.0, 1.0, signed=True)
    _, _, plain = lif_run(x, np.float32(v0 / 4), 1.0, 1.0)
    c = 0
    acc = v0 / 4
    for t in range(T):
        acc += float(x[t, 0])
        q = max(int(np.floor(acc)), 0)
        c += int(np.sign(q - c))
        assert int(s[:t + 1].sum()) == c
    assert (plain >= 0).all()
