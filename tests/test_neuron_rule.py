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
