"""The PyTorch runtime: same numbers as onnxruntime, the paper's surrogate gradient,
fine-tuning, write-back in the same format, bad input, DDP."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import builders as B  # noqa: E402
import onnx_snn  # noqa: E402
from onnx_snn.runtimes.ort import run  # noqa: E402
from onnx_snn.runtimes.torch import SpikingNetwork, lif_step, spike_fn  # noqa: E402
from onnx_snn.spiking import format as F  # noqa: E402
from onnx_snn.spiking import format as fmt  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


def dyadic(model: onnx.ModelProto, bits: int = 4) -> onnx.ModelProto:
    """Round every float weight to a multiple of 2**-bits: sums of products of such numbers
    with dyadic inputs are exact in float32, so two runtimes must agree bit for bit."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in F.all_initializers(m).values():
        a = onnx.numpy_helper.to_array(init)
        if a.dtype == np.float32:
            init.CopyFrom(onnx.numpy_helper.from_array((np.round(a * 2 ** bits) / 2 ** bits).astype(np.float32), init.name))
    if F.is_spiking(m):
        F.sync_site_records(m)      # the sites' records: the rounded parameters
    return m


MODELS = {
    "vgg": lambda: B.vgg(13, "clip"),
    "resnet": lambda: B.resnet(13, "clip"),
    "plain_relu": lambda: B.vgg(17, "relu"),
    "global_maxpool": lambda: B.pooled_twin("MaxPool", global_pool=True),
    "vgg_op23": lambda: B.vgg(23, "clip"),                # the newest opset read
    "torch_legacy_vgg": lambda: os.path.join(DATA, "torch_legacy_vgg_clip_op11.onnx"),
    "torch_dynamo_resnet": lambda: os.path.join(DATA, "torch_dynamo_resnet_clip_op18.onnx"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("T", [1, 3])
def test_torch_and_onnxruntime_agree(name, T):
    x = B.rand_input(32)
    snn = onnx_snn.convert(MODELS[name](), x, timesteps=T, show_progress=False)
    for model in (snn.model, snn.step_model()):
        B.assert_runtimes_agree(model, x)


@pytest.mark.parametrize("method", ["max", "refined"])
def test_torch_and_onnxruntime_agree_on_tiny_thresholds(method):
    """A network whose activations are small gets thresholds and amplitudes far below 1e-4
    (the audit's mnasnet: 1e-8): the torch runtime runs them as written (it used to raise
    them to 1e-4: other spikes, other outputs), and writes them back unchanged."""
    from onnx import helper as oh
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(3)
    inits = [nh.from_array(rng.normal(0, 0.3, s).astype(np.float32), n)
             for n, s in (("w1", (6, 1, 3, 3)), ("w2", (6, 6, 3, 3)), ("w3", (10, 6)))]
    g = oh.make_graph([oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
                       oh.make_node("Relu", ["c1"], ["a1"]),
                       oh.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
                       oh.make_node("Relu", ["c2"], ["a2"]),
                       oh.make_node("GlobalAveragePool", ["a2"], ["p"]),
                       oh.make_node("Flatten", ["p"], ["f"]),
                       oh.make_node("Gemm", ["f", "w3"], ["y"], transB=1)], "tiny",
                      [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    dnn = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])
    x = (rng.standard_normal((32, 1, 8, 8)) * 1e-6).astype(np.float32)
    snn = onnx_snn.convert(dnn, x, timesteps=2, method=method, show_progress=False).model
    info = F.read_info(snn)
    assert max(float(np.max(s.threshold)) for s in info.sites) < 1e-4
    net = B.assert_runtimes_agree(snn, x, atol=1e-12)
    back = net.to_model()
    for s in info.sites:
        for p in ("threshold", "amplitude"):
            np.testing.assert_array_equal(
                nh.to_array(F.all_initializers(back)[F.param_name(s.name, p)]),
                nh.to_array(F.all_initializers(snn)[F.param_name(s.name, p)]))


def test_a_two_input_model_needs_a_dict_naming_every_input():
    import torch
    from onnx_snn.errors import DataError
    from onnx_snn.runtimes.torch import SpikingNetwork
    x = B.rand_input(8)
    net = SpikingNetwork(onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=1,
                                          show_progress=False).model)
    name = net.view.data_inputs[0]
    with pytest.raises(DataError, match="missing input"):
        net({"other": torch.from_numpy(x)})
    assert net({name: torch.from_numpy(x)}).shape == (8, 10)


def test_a_feed_names_only_the_models_inputs_and_its_timesteps():
    """A feed dict as onnxruntime takes it: the loop graph's 'timesteps' entry sets T (it was
    ignored: the model's T=2 ran where T=3 was fed); any other name is refused (a typo ran
    without a word)."""
    from onnx_snn.errors import DataError
    x = B.rand_input(8)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False)
    net = SpikingNetwork(snn.model).eval()
    name, t = net.view.data_inputs[0], torch.from_numpy(x)
    with torch.no_grad():
        fed = net({name: t, "timesteps": torch.tensor(3)})
        assert torch.equal(fed, net(t, 3)) and not torch.equal(fed, net(t))
        assert torch.equal(net({name: t, "timesteps": np.array(3, np.int64)}, 3), fed)
    ort_out = run(snn.model, x, timesteps=3).outputs[0]
    assert np.abs(ort_out - fed.numpy()).max() <= 1e-5
    with pytest.raises(DataError, match="typo"):
        net({name: t, "typo": t})
    with pytest.raises(DataError, match="differ"):
        net({name: t, "timesteps": torch.tensor(3)}, 4)
    with pytest.raises(DataError, match="one whole number"):
        net({name: t, "timesteps": torch.tensor([2, 3])})
    with pytest.raises(DataError, match="is None"):
        net({name: t, "timesteps": None})


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip"),
                                  lambda: B.vgg(17, "relu", bn=False)])
@pytest.mark.parametrize("options", [dict(per_channel=True), dict(bias_correction=True),
                                     dict(per_channel=True, bias_correction=True)])
def test_torch_and_onnxruntime_agree_on_per_channel_parameters_and_offsets(make, options):
    x = B.rand_input(48, seed=5)
    snn = onnx_snn.convert(make(), x, timesteps=2, sequential=True, show_progress=False,
                           **options)
    recs = list(snn.records.values())
    if options.get("per_channel"):
        assert any(isinstance(r.alpha, list) for r in recs)
    if options.get("bias_correction"):
        assert any(r.has_offset for r in recs)
    for model in (snn.model, snn.step_model()):
        B.assert_runtimes_agree(model, x)
    back = fmt.read_spiking(SpikingNetwork(snn.model).to_model())  # written back: same records
    for rec in back.info.sites:
        np.testing.assert_allclose(np.asarray(rec.threshold, np.float32),
                                   np.asarray(snn.records[rec.name].threshold, np.float32), rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip"),
                                  lambda: B.pooled_twin("MaxPool", global_pool=True)])
@pytest.mark.parametrize("T", [2, 4])
def test_torch_and_onnxruntime_agree_on_signed_neurons(make, T):
    """Signed neurons (refined, per channel, with offsets): the same outputs and the same
    spike counts (spikes of either sign) in both runtimes, and negative spikes do fire."""
    x = B.rand_input(48, seed=3)
    snn = onnx_snn.convert(make(), x, timesteps=T, signed_spikes=True, show_progress=False)
    assert all(r.signed for r in snn.records.values())
    for model in (snn.model, snn.step_model()):
        B.assert_runtimes_agree(model, x)
    net = SpikingNetwork(snn.model).eval()
    negative = []
    orig = net._run

    def spy(nodes, env, masks, spikes, *rest):
        orig(nodes, env, masks, spikes, *rest)
        negative.extend(float((env[n.outputs[0]] < 0).sum()) for n in nodes if n.op == fmt.SIGNED_NEURON_OP)
    net._run = spy
    with torch.no_grad():
        net(torch.from_numpy(x))
    assert sum(negative) > 0


def test_signed_neurons_train_and_write_back(tmp_path):
    """The negative spike's surrogate reaches the weights and thresholds; the written-back
    file keeps the signed neurons (format version 3) and onnxruntime agrees with it."""
    x = B.rand_input(16)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=3, signed_spikes=True,
                           show_progress=False)
    net = SpikingNetwork(snn.model).train()
    out = net(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(out, torch.zeros(16, dtype=torch.long)).backward()
    for site in ("lif0", "lif1", "lif2"):
        g = net.tensor(f"{site}.threshold").grad
        assert g is not None and torch.isfinite(g).all()
    assert all(w.grad is not None for w in net.parameter_groups()["weights"])
    path = tmp_path / "signed.snn.onnx"
    net.to_onnx(path, history={"note": "test"})
    m = onnx.load(str(path))
    info = F.read_info(m)
    assert info.format_version == F.SIGNED_FORMAT_VERSION and all(s.signed for s in info.sites)
    with torch.no_grad():
        y = net.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(run(m, x).outputs[0] - y).max() <= 1e-5


@pytest.mark.parametrize("make,signed", [(lambda: B.vgg(13, "clip"), False),
                                         (lambda: B.resnet(13, "clip"), False),
                                         (lambda: B.pooled_twin("MaxPool", global_pool=True), True)])
def test_site_outputs_are_the_runs_and_constant_currents_are_its_rounding(make, signed):
    """``site_outputs``: the first output is the forward pass's; each site's time-averaged
    output is its spike count times its amplitude over T; with ``constant`` every neuron is
    driven by a constant current, so at T = 1 (one step) it is the run itself, and at T = 2 a
    site fed the input directly (constant currents anyway) is the same as in the run, while
    later sites differ (their currents move between the steps)."""
    x = B.rand_input(32, seed=4)
    snn = onnx_snn.convert(make(), x, timesteps=2, signed_spikes=signed, show_progress=False)
    net = SpikingNetwork(snn.model).eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        ref = net(xt)
    out, sites = net.site_outputs(xt)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert list(sites) == [r.name for r in net.sites]
    for rec in net.sites:
        y = sites[rec.name].double().numpy()
        amp = np.asarray(rec.amplitude, np.float64)
        shape = [1, -1] + [1] * (y.ndim - 2)
        counts = y * 2 / (amp.reshape(shape) if amp.ndim else amp)
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)
        net_counts = np.abs(counts).sum(axis=tuple(range(1, y.ndim)))
        fired = net.last_spikes[rec.name].double().numpy()   # (signed: a spike taken back
        if signed:                                            # counts twice, nets to none)
            assert np.all(net_counts <= fired + 1e-3)
        else:
            assert net_counts == pytest.approx(fired, abs=1e-3)
    for T in (1, 2):
        run, per_run = net.site_outputs(xt, timesteps=T)
        const, per_const = net.site_outputs(xt, timesteps=T, constant=True)
        first = net.sites[0].name
        torch.testing.assert_close(per_const[first], per_run[first])
        if T == 1:
            torch.testing.assert_close(const, run)
        else:
            assert any(not torch.equal(per_const[r.name], per_run[r.name]) for r in net.sites[1:])


def test_retract_surrogate_is_the_mirrored_spike_surrogate():
    """d(negative spike)/du: minus the positive spike's surrogate moved to u = 0, zero where
    the neuron has no spike to take back."""
    from onnx_snn.runtimes.torch.neuron import _Retract, spike_fn
    th = torch.tensor(0.8)
    u = torch.linspace(-1.5, 1.5, 31, requires_grad=True)
    had = torch.arange(31) % 2 == 0
    for sur in ("sigmoid", "rectangle"):
        (gu,) = torch.autograd.grad(_Retract.apply(u, th, had, sur).sum(), u)
        w = (u.detach() + th).requires_grad_()
        (gs,) = torch.autograd.grad(spike_fn(w, th, sur).sum(), w)
        np.testing.assert_allclose(gu.numpy(), np.where(had.numpy(), -gs.numpy(), 0.0), atol=1e-6)


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip")])
def test_exact_agreement_on_dyadic_arithmetic(make):
    """With exactly representable weights, inputs and parameters no membrane potential can
    round differently: every spike must match exactly (outputs up to the final pooling's
    division, which is not exact in binary)."""
    x = (np.round(B.rand_input(32) * 16) / 16).astype(np.float32)
    snn = onnx_snn.convert(make(), x, timesteps=4, method="max", show_progress=False)
    model = dyadic(snn.model, bits=3)
    net = SpikingNetwork(model).eval()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    r = run(model, x)
    np.testing.assert_allclose(y, r.outputs[0], rtol=0, atol=1e-6)
    for k in r.spikes:
        np.testing.assert_array_equal(net.last_spikes[k].numpy(), r.spikes[k])
        assert r.spikes[k].sum() > 0
    # a module cast to another float type takes float32 inputs (they are cast to it; they
    # failed in the first convolution), and in exact arithmetic fires the same spikes
    for cast in (torch.float64, torch.bfloat16):
        other = SpikingNetwork(model).eval().to(cast)
        with torch.no_grad():
            y_cast = other(torch.from_numpy(x))
        assert y_cast.dtype == cast
        if cast == torch.float64:
            np.testing.assert_allclose(y_cast.numpy(), y, rtol=0, atol=1e-6)
            for k in r.spikes:
                np.testing.assert_array_equal(other.last_spikes[k].numpy(), r.spikes[k])


def test_spiking_max_pool_step_and_its_gradient():
    """Summed over T the pool's output is the max pool of the spike counts, and its gradient
    reaches the most active input of each window (as a DNN max pool's does)."""
    from onnx_snn.runtimes.torch.neuron import max_pool_step
    from onnx_snn.spiking.neuron import max_pool_step as np_step
    pool = lambda t: torch.nn.functional.max_pool2d(t, 2)  # noqa: E731
    spikes = torch.tensor([[1., 0., 1., 1.], [1., 0., 0., 1.], [0., 1., 1., 0.]])  # [T, 4 inputs]
    x = spikes.reshape(3, 1, 1, 2, 2).clone().requires_grad_(True)
    c, m, total = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1), 0
    for t in range(3):
        y, c, m_next = max_pool_step(x[t], c, m, pool)
        ref = np_step(x[t].detach().numpy(), c.detach().numpy() - x[t].detach().numpy(),
                      m.detach().numpy(), lambda a: pool(torch.from_numpy(a)).numpy())[0]
        np.testing.assert_array_equal(y.detach().numpy(), ref)
        assert float(y.detach()) in (0.0, 1.0)               # still one spike or none per step
        m, total = m_next, total + y
    assert float(total.detach()) == 2.0             # counts 2, 1, 2, 2: max 2
    total.backward()
    # d total / d x_t: 1 for every step of the input that leads at the end (the first one of
    # the tied counts, as max_pool2d picks), 0 elsewhere
    g = x.grad.reshape(3, 4)
    assert torch.equal(g, torch.tensor([[1., 0., 0., 0.]] * 3))


def test_surrogate_gradient_is_the_papers():
    th = torch.tensor(2.0, requires_grad=True)
    u = torch.tensor([-1.0, 0.5, 1.9, 2.0, 3.9, 4.1], requires_grad=True)
    s = spike_fn(u, th, "rectangle")
    assert s.tolist() == [0, 0, 0, 1, 1, 1]
    s.sum().backward()
    # ds/du = 1/threshold for 0 < u < 2*threshold, else 0
    assert u.grad.tolist() == pytest.approx([0, 0.5, 0.5, 0.5, 0.5, 0])
    # ds/dthreshold = -u/threshold^2 inside the window
    assert th.grad.item() == pytest.approx(-(0.5 + 1.9 + 2.0 + 3.9) / 4)


def test_sigmoid_surrogate_gradient():
    """The default: g(z) = k s(1-s), s = sigmoid(k(z-1)), k = 4, on z = u/threshold; the same
    forward spikes as the rectangle."""
    th = torch.tensor(2.0, requires_grad=True)
    u = torch.tensor([-1.0, 0.5, 1.9, 2.0, 3.9, 4.1], requires_grad=True)
    s = spike_fn(u, th)
    assert s.tolist() == [0, 0, 0, 1, 1, 1]
    s.sum().backward()
    z = u.detach() / 2.0
    sig = torch.sigmoid(4 * (z - 1))
    g = 4 * sig * (1 - sig)
    assert torch.allclose(u.grad, g / 2.0)
    assert u.grad[3].item() == pytest.approx(0.5)        # peak 1/threshold at the threshold
    assert th.grad.item() == pytest.approx(float(-(g * z).sum() / 2.0))
    with pytest.raises(ValueError, match="surrogate"):
        spike_fn(u, th, "triangle")


def test_cli_surrogate_choices_are_the_runtimes():
    from onnx_snn.cli import FINETUNE_SURROGATES
    from onnx_snn.runtimes.torch.neuron import DEFAULT_SURROGATE, SURROGATES
    assert FINETUNE_SURROGATES == SURROGATES and SURROGATES[0] == DEFAULT_SURROGATE


def test_network_takes_the_surrogate(tmp_path):
    """The rectangle and the sigmoid give the same forward pass and different gradients; an
    unknown one is refused."""
    from onnx_snn.errors import UsageError
    x = B.rand_input(8)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False)
    grads = {}
    for sur in ("rectangle", "sigmoid"):
        net = SpikingNetwork(snn.model, surrogate=sur).eval()   # no dropout: same forward
        out = net(torch.from_numpy(x))
        out.sum().backward()
        grads[sur] = (out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert torch.equal(grads["rectangle"][0], grads["sigmoid"][0])
    assert any(not torch.allclose(a, b) for a, b in zip(grads["rectangle"][1], grads["sigmoid"][1]))
    with pytest.raises(UsageError, match="surrogate"):
        SpikingNetwork(snn.model, surrogate="atan")


def test_neuron_parameters_are_prepared_once_per_forward_pass():
    """Each threshold and amplitude is floored (and each leak clamped) once per forward pass,
    not at every step: fewer kernels and gradient nodes (the outputs are the other tests':
    the same as onnxruntime's)."""
    x = B.rand_input(16, seed=2)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=4, show_progress=False)
    net = SpikingNetwork(snn.model).train()
    calls = []
    orig = net._floored

    def counted(name, t):
        calls.append(name)
        return orig(name, t)
    net._floored = counted
    out = net(torch.from_numpy(x), 4)
    assert len(calls) == 2 * len(net.sites) and len(set(calls)) == len(calls)
    out.sum().backward()
    assert all(net.tensor(fmt.param_name(s.name, "threshold")).grad is not None for s in net.sites)


def test_lif_step_soft_reset():
    y, v, s = lif_step(torch.tensor([0.6, 1.5]), torch.tensor([0.5, 0.0]), torch.tensor(1.0),
                       torch.tensor(3.0), torch.tensor(0.5))
    # u = 0.5*v + x = [0.85, 1.5] -> spikes [0, 1]
    assert s.tolist() == [0, 1] and y.tolist() == [0, 3.0]
    assert v.tolist() == pytest.approx([0.85, 0.5])


def test_gradients_reach_weights_thresholds_and_leaks():
    x = B.rand_input(16)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False)
    net = SpikingNetwork(snn.model).train()
    out = net(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(out, torch.zeros(16, dtype=torch.long)).backward()
    for site in ("lif0", "lif1", "lif2"):
        for p in ("threshold", "leak"):
            g = net.tensor(f"{site}.{p}").grad
            assert g is not None and torch.isfinite(g).all()
        assert net.tensor(f"{site}.threshold").grad.abs().sum().item() > 0
        # the converted leak is exactly 1, the bound: its gradient must pass there (clamp's
        # was 0, and the leaks never trained)
        assert net.tensor(f"{site}.leak").item() == 1.0
        assert net.tensor(f"{site}.leak").grad.abs().sum().item() > 0
    weights = net.parameter_groups()["weights"]
    assert weights and all(w.grad is not None for w in weights)
    assert not any(isinstance(b, torch.nn.Parameter) for b in net.buffers())


def test_initial_membranes_train_only_when_asked_and_are_written_back(tmp_path):
    """train_initial: every site's v_init is a parameter that gets a gradient, and the file
    written back holds the trained values (initializer and metadata), which onnxruntime runs
    as torch does; without it v_init is a buffer, as the file has it."""
    x = B.rand_input(16)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False)
    plain = SpikingNetwork(snn.model)
    assert not any(n.endswith(".v_init") for n in plain._trainable)
    net = SpikingNetwork(snn.model, train_initial=True).train()
    names = [f"lif{i}.v_init" for i in range(3)]
    assert all(n in net._trainable for n in names)
    assert all(any(p is net.tensor(n) for p in net.parameter_groups()["neurons"]) for n in names)
    out = net(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(out, torch.zeros(16, dtype=torch.long)).backward()
    assert all(net.tensor(n).grad is not None and net.tensor(n).grad.abs().sum() > 0
               for n in names)
    with torch.no_grad():
        net.tensor("lif1.v_init").add_(0.125)
    path = tmp_path / "t.snn.onnx"
    net.to_onnx(path, history={"note": "test"})
    m = onnx.load(str(path))
    want = np.asarray(snn.records["lif1"].v_init, np.float32) + 0.125
    np.testing.assert_allclose(F.read_spiking(m).param("lif1", "v_init").reshape(-1), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(F.read_info(m).site("lif1").v_init).reshape(-1), want, rtol=1e-6)
    with torch.no_grad():
        y = net.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(run(m, x).outputs[0] - y).max() <= 1e-5


def test_leak_is_clamped_to_one():
    x = B.rand_input(8)
    net = SpikingNetwork(onnx_snn.convert(B.vgg(13, "clip"), x, show_progress=False).model)
    with torch.no_grad():
        net.tensor("lif0.leak").fill_(1.7)
    net.project()
    assert net.tensor("lif0.leak").item() == 1.0
    with torch.no_grad():               # and at 0: a file holds leaks in [0, 1]
        net.tensor("lif0.leak").fill_(-0.3)
    net.project()
    assert net.tensor("lif0.leak").item() == 0.0


@pytest.mark.parametrize("surrogate", ["sigmoid", "rectangle"])
@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_lif_scan_is_lif_step_T_times(surrogate, T, per_channel):
    """The whole-layer scan (one autograd node): the same outputs and spikes as lif_step run
    T times, and the same gradient for the inputs, the initial membrane, the threshold, the
    amplitude and the leak (float64: equal to 1e-10)."""
    from onnx_snn.runtimes.torch.neuron import lif_scan
    g = torch.Generator().manual_seed(T)
    shape = (3, 4, 5, 5)
    pshape = (4, 1, 1) if per_channel else ()

    def leaves():
        return [torch.randn(T, *shape, generator=g, dtype=torch.float64),
                torch.rand(*shape, generator=g, dtype=torch.float64) * 0.5,
                torch.rand(pshape, generator=g, dtype=torch.float64) * 0.5 + 0.5,
                torch.rand(pshape, generator=g, dtype=torch.float64) + 0.5,
                torch.rand(pshape, generator=g, dtype=torch.float64) * 0.2 + 0.8]
    values = leaves()
    w = torch.randn(T, *shape, generator=g, dtype=torch.float64)    # a loss weighting each step
    results = []
    for scan in (True, False):
        X, v0, th, amp, leak = (t.clone().requires_grad_(True) for t in values)
        if scan:
            Y, S = lif_scan(X, v0, th, amp, leak, surrogate)
        else:
            v, ys, ss = v0, [], []
            for t in range(T):
                y, v, s = lif_step(X[t], v, th, amp, leak, surrogate)
                ys.append(y)
                ss.append(s)
            Y, S = torch.stack(ys), torch.stack(ss)
        (Y * w).sum().backward()
        results.append((Y.detach(), S.to(torch.float64), [t.grad for t in (X, v0, th, amp, leak)]))
    (ya, sa, ga), (yb, sb, gb) = results
    assert torch.equal(ya, yb) and torch.equal(sa, sb) and 0 < sa.sum() < sa.numel()
    for a, b in zip(ga, gb):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lif_scan_computes_in_the_membranes_precision():
    """Under autocast a convolution hands the neurons a half-precision current while the
    membranes and parameters are float32: the scan computes in float32 as lif_step does (the
    same spikes), and the current's gradient comes back in the current's dtype."""
    from onnx_snn.runtimes.torch.neuron import lif_scan
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(8, 4, 250, generator=g) * 0.7).to(torch.bfloat16).requires_grad_(True)
    v0 = torch.rand(4, 250, generator=g) * 0.5
    th, amp, leak = torch.tensor(0.61), torch.tensor(0.83), torch.tensor(1.0)
    Y, S = lif_scan(X, v0, th, amp, leak)
    v, ys, ss = v0, [], []
    for t in range(8):
        y, v, s = lif_step(X[t], v, th, amp, leak)
        ys.append(y)
        ss.append(s)
    assert Y.dtype == torch.float32 and torch.equal(Y.detach(), torch.stack(ys).detach())
    assert torch.equal(S, torch.stack(ss).detach())
    Y.sum().backward()
    assert X.grad.dtype == torch.bfloat16


FOLD_CASES = {
    "vgg_maxpool": (lambda: B.vgg(13, "clip", dropout=True), {}),
    "resnet": (lambda: B.resnet(13, "clip"), {}),
    "signed": (lambda: B.vgg(13, "clip"), {"signed_spikes": True}),
    "pool_first": (lambda: B.vgg(13, "relu"), {"pool_first": True}),
}


def _dyadic_spiking(model: onnx.ModelProto) -> onnx.ModelProto:
    """``dyadic(model, bits=6)`` with thresholds and amplitudes kept positive."""
    m = dyadic(model, bits=6)
    for init in F.all_initializers(m).values():
        if init.name.endswith((".threshold", ".amplitude")):
            a = np.maximum(onnx.numpy_helper.to_array(init), np.float32(2 ** -6))
            init.CopyFrom(onnx.numpy_helper.from_array(a.astype(np.float32), init.name))
    F.sync_site_records(m)
    return m


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
@pytest.mark.parametrize("T", [1, 3])
def test_time_folded_run_is_the_step_by_step_run(case, T):
    """Each layer once on a batch of T x N, neurons and spiking pools scanned over the steps
    (the default where the graph allows): on dyadic weights, whose sums are exact, the same
    outputs and spike counts bit for bit as running the steps one by one, in training (one
    dropout mask per sample, the same generator state) and in evaluation; the gradients of
    every parameter equal within float rounding (a T x N convolution's weight gradient sums
    in another order)."""
    make, opts = FOLD_CASES[case]
    x = (np.round(B.rand_input(12, seed=3) * 16) / 16).astype(np.float32)   # dyadic too
    snn = onnx_snn.convert(make(), x, timesteps=T, method="refined", show_progress=False,
                           **opts)
    net = SpikingNetwork(_dyadic_spiking(snn.model)).train()
    assert net._foldable is None
    folded = []
    real = net._forward_folded
    net._forward_folded = lambda *a: folded.append(real(*a)) or folded[-1]
    runs = []
    for fold in (True, False):
        net.fold_time = fold
        net.zero_grad()
        torch.manual_seed(0)
        out = net(torch.from_numpy(x))
        (out ** 2).sum().backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        with torch.no_grad():
            ev = net.eval()(torch.from_numpy(x)).numpy()
        net.train()
        runs.append((out.detach().numpy(), {k: v.numpy() for k, v in net.last_spikes.items()},
                     grads, ev))
    (a, sa, ga, ea), (b, sb, gb, eb) = runs
    assert len(folded) == 2 and all(f is not None for f in folded)   # the folded run, twice
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ea, eb)
    assert sa.keys() == sb.keys() and all((sa[k] == sb[k]).all() for k in sa)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for k in ga:
        np.testing.assert_allclose(ga[k].numpy(), gb[k].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["vgg_maxpool", "resnet", "signed"])
def test_per_step_outputs_are_the_steps_that_the_average_sums(case):
    """``per_step=True`` returns each output's T steps as ``[T, N, ...]``, from the folded run
    and the step-by-step one alike (the same values bit for bit on dyadic arithmetic), and
    their mean is the averaged output; gradients flow through every step."""
    make, opts = FOLD_CASES[case]
    # dyadic inputs too: the first layer's convolution on random floats rounds differently
    # on a batch of T x N than on N where the CPU's kernel for the two shapes differs
    x = (np.round(B.rand_input(6, seed=4) * 16) / 16).astype(np.float32)
    T = 3
    snn = onnx_snn.convert(make(), x, timesteps=T, method="refined", show_progress=False,
                           **opts)
    net = SpikingNetwork(_dyadic_spiking(snn.model)).eval()
    runs = []
    for fold in (True, False):
        net.fold_time = fold
        with torch.no_grad():
            avg, each = net(torch.from_numpy(x)), net(torch.from_numpy(x), per_step=True)
        assert each.shape == (T,) + tuple(avg.shape)
        np.testing.assert_allclose(each.mean(0).numpy(), avg.numpy(), rtol=1e-6, atol=1e-6)
        runs.append(each.numpy())
    # within a float32 step, not bit for bit: the ResNet's global average pool divides by
    # 36, so the classifier sums inexact values, in an order the CPU's kernel for a batch
    # of T x N may choose differently than for N (the spikes are compared bit for bit in
    # test_time_folded_run_is_the_step_by_step_run)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6, atol=1e-6)
    assert not np.array_equal(runs[0][0], runs[0][-1])     # the steps differ
    net.train()
    each = net(torch.from_numpy(x), per_step=True)
    each[0].sum().backward()                                # the first step alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.zero_grad()
    net(torch.from_numpy(x), per_step=True)[-1].sum().backward()   # and the last one
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_finetune_per_step_loss_trains_and_is_recorded(tmp_path):
    """``loss="per-step"`` (TET) trains on the mean of each step's cross-entropy: a run
    writes a model whose history names the loss; an unknown loss is refused before work."""
    from onnx_snn.errors import UsageError
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    x = B.rand_input(32)
    y = np.random.default_rng(0).integers(0, 10, 32)
    src = tmp_path / "m.snn.onnx"
    onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False).save(src)
    out = tmp_path / "t.snn.onnx"
    before = F.all_initializers(onnx.load(str(src)))
    asked, real = [], SpikingNetwork.forward

    def spy(self, *a, **k):        # what the training steps ask the network for
        asked.append(k.get("per_step", False) and self.training)
        return real(self, *a, **k)
    SpikingNetwork.forward = spy
    try:
        finetune(str(src), str(out), (x, y), FinetuneConfig(epochs=1, batch_size=8,
                                                            loss="per-step"),
                 show_progress=False, log=lambda *a: None)
    finally:
        SpikingNetwork.forward = real
    assert asked.count(True) == 4                  # every training batch of 8 of the 32
    tuned = onnx.load(str(out))
    steps = json.loads(F.metadata(tuned)[F.META_HISTORY])
    assert steps[-1].get("loss") == "per-step", steps[-1]
    after = F.all_initializers(tuned)
    assert any(not np.array_equal(onnx.numpy_helper.to_array(before[k]),
                                  onnx.numpy_helper.to_array(after[k])) for k in before)
    with pytest.raises(UsageError, match="loss must be one of mean, per-step"):
        FinetuneConfig(loss="tet")


def test_a_fine_tuned_model_is_fitted_for_its_T(tmp_path, caplog):
    """Fine-tuning fits a model for the T it trained at, whatever its method: a `max`
    conversion holds at any T, its fine-tuned file at its own T only (eval elsewhere warns);
    fine-tuning a refined model at another T than its conversion's warns first."""
    import logging
    from onnx_snn.convert import fitted_timesteps
    from onnx_snn.evaluate import evaluate
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    x = B.rand_input(32)
    y = np.random.default_rng(0).integers(0, 10, 32)
    quiet = dict(show_progress=False, log=lambda *a: None)
    for method in ("max", "refined"):
        src, out = tmp_path / f"{method}.snn.onnx", tmp_path / f"{method}.t.snn.onnx"
        onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method=method,
                         show_progress=False).save(src)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            finetune(str(src), str(out), (x, y), FinetuneConfig(epochs=1, batch_size=8,
                                                                timesteps=3), **quiet)
        said = [r.getMessage() for r in caplog.records if "rate-exact" in r.getMessage()]
        assert len(said) == (method == "refined"), said
        assert method == "max" or "fine-tuning starts at T=3" in said[0]
        tuned = onnx.load(str(out))
        assert fitted_timesteps(fmt.read_spiking(tuned).info) == 3
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            evaluate(tuned, x, timesteps=2, show_progress=False)
        assert any("fine-tuned for T=3; run at T=2" in r.getMessage() for r in caplog.records)


def test_both_runtimes_warn_once_when_run_at_another_t(caplog, tmp_path):
    """SpikingNetwork.forward(timesteps=) and ModelRunner.run(timesteps=), the API's own ways
    to run a model, warn like eval does when the model's parameters were fitted for another
    T: once per T, and not at its own T nor for a method that holds at any T."""
    import logging
    from onnx_snn.runtimes.ort import ModelRunner
    x = B.rand_input(16)
    for method, expect in (("refined", True), ("max", False)):
        path = tmp_path / f"{method}.snn.onnx"
        onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method=method,
                         show_progress=False).save(path)
        net, runner = SpikingNetwork.from_onnx(path).eval(), ModelRunner(str(path))
        feeds = runner.validate(x)
        for run in (lambda T: net(torch.from_numpy(x), T),
                    lambda T: runner.run(feeds, T)):
            said = []
            for T in (2, None, 4, 4, 3):
                caplog.clear()
                with caplog.at_level(logging.WARNING, logger="onnx_snn"), torch.no_grad():
                    run(T)
                said.append([r.getMessage() for r in caplog.records if "rate-exact" in r.getMessage()])
            if expect:
                assert [len(m) for m in said] == [0, 0, 1, 0, 1], said
                assert str(path) in said[2][0] and "for T=2; run at T=4" in said[2][0]
            else:
                assert not any(said), said


def test_cli_loss_choices_are_the_finetuners():
    from onnx_snn.cli import FINETUNE_LOSSES
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, LOSSES
    assert FINETUNE_LOSSES == LOSSES and LOSSES[0] == FinetuneConfig().loss


def test_cli_schedule_choices_are_the_finetuners():
    from onnx_snn.cli import FINETUNE_SCHEDULES, build_parser
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, SCHEDULES
    assert FINETUNE_SCHEDULES == SCHEDULES
    args = build_parser().parse_args(["finetune", "m.snn.onnx", "-o", "o.snn.onnx"])
    assert args.schedule == FinetuneConfig().schedule and args.warmup is None   # the config's


def test_learning_rate_schedules():
    """step: divided by lr_decay at 60, 80 and 90 % of the iterations; cosine: a linear
    warm-up to the full rate over the warm-up's share, then a cosine down to 0."""
    from onnx_snn.errors import UsageError
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, lr_factor
    step, total = FinetuneConfig(schedule="step"), 1000
    f = [lr_factor(i, total, step) for i in range(total)]
    assert f[0] == f[599] == 1 and f[600] == f[799] == pytest.approx(0.2)
    assert f[800] == pytest.approx(0.04) and f[999] == pytest.approx(0.008)
    cos = FinetuneConfig(schedule="cosine", warmup=0.05)
    f = np.array([lr_factor(i, total, cos) for i in range(total)])
    assert f[0] == pytest.approx(1 / 50) and f[49] == pytest.approx(1.0)
    assert np.all(np.diff(f[:50]) > 0) and np.all(np.diff(f[50:]) < 0)
    assert f[525] == pytest.approx(0.5, abs=0.01) and f[-1] < 1e-4
    none = FinetuneConfig(schedule="cosine", warmup=0)
    assert lr_factor(0, total, none) == 1.0 and lr_factor(1, 1, none) >= 0
    assert max(lr_factor(i, 3, cos) for i in range(3)) == 1.0     # a warm-up under one step
    for bad in ({"schedule": "linear"}, {"warmup": 1.0}, {"warmup": -0.1}, {"warmup": "0.1"}):
        with pytest.raises(UsageError):
            FinetuneConfig(**bad)


def test_inputs_of_any_numeric_type_run_as_float32_and_bad_ones_are_named(tmp_path):
    """float64, float16, integer pixels and numpy arrays run as the float32 the graph
    computes in (a raw dtype error before); None, lists and an empty batch are DataErrors,
    and so are NaN/Inf values (a NaN current fires no spike: the output would look like any
    other; onnxruntime's runner checks its feeds alike);
    a T that is not a whole number in range is refused, also when writing the model back."""
    from onnx_snn.errors import DataError, UsageError
    x = B.rand_input(4)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False)
    net = SpikingNetwork(snn.model).eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x))
        for v in (torch.from_numpy(x).double(), x, x.astype(np.float64), x.tolist()):
            assert torch.equal(net(v), want)                       # a nested list too
        for bad in (None, [1, 2], x[:0], [[1.0, 2.0], [3.0]], [["a"]]):
            with pytest.raises(DataError):
                net(bad)
        nan = x.copy()
        nan[2, 0, 3, 3] = np.nan
        huge = x.astype(np.float64)
        huge[2, 0, 3, 3] = 1e39                 # finite in float64, Inf in float32
        for bad in (nan, nan.tolist(), torch.from_numpy(nan), huge):  # as onnxruntime's are
            with pytest.raises(DataError, match="1 NaN/Inf values, the first in sample 2"):
                net(bad)
        for T in (0, 2.5, "2", True):
            with pytest.raises(UsageError):
                net(torch.from_numpy(x), timesteps=T)
    with pytest.raises(UsageError):
        net.to_model(timesteps=-1)
    with pytest.raises(UsageError, match="finite"):
        net.to_model(preprocess={"mean": [float("nan")], "std": [0.0]})


def test_integer_inputs_to_a_model_of_normalized_inputs_are_warned_about_once(caplog):
    """uint8 pixels fed to the torch module of a model that records a normalization run as
    their raw values: a warning says so, once (onnxruntime's path warns alike); a model of
    raw 0-255 pixels, or one that records nothing, takes them without a word."""
    import json
    import logging
    from onnx_snn.graph.inputs import PIXELS_255
    from onnx_snn.spiking import format as F
    x = B.rand_input(4)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False)
    pixels = (x * 255).astype(np.uint8)
    for pp, warned in (({"mean": [0.286], "std": [0.353]}, True), (PIXELS_255, False), (None, False)):
        m = onnx.ModelProto()
        m.CopyFrom(snn.model)
        kept = [p for p in m.metadata_props if p.key != F.META_PREPROCESS]
        del m.metadata_props[:]
        m.metadata_props.extend(kept)
        if pp is not None:
            m.metadata_props.add(key=F.META_PREPROCESS, value=json.dumps(pp))
        net = SpikingNetwork(m).eval()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"), torch.no_grad():
            net(pixels)
            net(torch.from_numpy(pixels))
            net(torch.from_numpy(x))
        said = [r for r in caplog.records if "holds integers" in r.getMessage()]
        assert len(said) == (1 if warned else 0), (pp, [r.getMessage() for r in said])


def test_a_fixed_batch_runs_step_by_step(tmp_path):
    """A constant Reshape that sets the batch, or a fixed batch, would mix the steps in a
    T x N batch: such a graph runs its steps one by one, and still as onnxruntime does."""
    x = B.rand_input(4)
    m = B.vgg(13, "clip")
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    snn = onnx_snn.convert(m, x, timesteps=2, show_progress=False)
    net = B.assert_runtimes_agree(snn.model, x)
    assert "fixed batch" in net._foldable
    from onnx_snn.errors import DataError
    with torch.no_grad(), pytest.raises(DataError, match="fixed batch of 4: feed batches of 4"):
        net(torch.from_numpy(B.rand_input(3)))
    with torch.no_grad(), pytest.raises(DataError, match=r"has shape \[4, 1, 10, 12\]; the model takes "
                                                         r"\[4, 1, 12, 12\]$"):
        net(torch.from_numpy(B.rand_input(4, (1, 10, 12))))


@pytest.mark.parametrize("op,attrs,consts,mixes", [
    ("Size", {}, {}, True),
    ("Reshape", {}, {"s": [8, -1]}, True),
    ("Reshape", {}, {"s": [0, -1]}, False),
    ("Reshape", {}, {"s": [-1, 16]}, False),
    ("Transpose", {"perm": [0, 2, 3, 1]}, {}, False),
    ("Transpose", {"perm": [1, 0, 2, 3]}, {}, True),
    ("Transpose", {}, {}, True),                        # no perm: every axis reversed
    ("Flatten", {"axis": 0}, {}, True),
    ("Flatten", {}, {}, False),
    ("Concat", {"axis": 0}, {}, True),
    ("Concat", {"axis": 1}, {}, False),
    ("Softmax", {"axis": 0}, {}, True),
    ("Softmax", {"axis": 1}, {}, False),
    ("Gather", {"axis": 0}, {}, True),
    ("Gather", {"axis": 0}, {"x": [1.0, 2.0]}, False),  # a lookup in a constant table
    ("Gather", {"axis": 1}, {}, False),
    ("ReduceMean", {"axes": [0]}, {}, True),
    ("ReduceMean", {}, {}, True),                       # every axis
    ("ReduceMean", {"axes": [2, 3]}, {}, False),
    ("ReduceSum", {}, {"s": [0]}, True),                # axes as an input (opset 13)
    ("ReduceSum", {}, {"s": [1]}, False),
    ("Slice", {}, {"s": [0]}, True),
    ("Slice", {}, {"s": [2]}, False),
    ("Slice", {"starts": [0], "ends": [2]}, {}, True),          # opset 9: every axis
    ("Slice", {"starts": [0], "ends": [2], "axes": [1]}, {}, False),
    ("Split", {}, {}, True),                                       # the default axis is 0
    ("Split", {"axis": 1}, {}, False),
    ("GatherND", {}, {}, True),
    ("Squeeze", {}, {}, True),                                     # every size-1 axis
    ("Pad", {}, {"s": [0, 0, 1, 1, 0, 0, 1, 1]}, False),
    ("Pad", {}, {"s": [1, 0, 0, 0, 0, 0, 0, 0]}, True),
    ("Squeeze", {"axes": [0]}, {}, True),
    ("Unsqueeze", {"axes": [1]}, {}, False),
    ("Tile", {}, {"s": [2, 1]}, True),
    ("Tile", {}, {"s": [1, 2]}, False),
    ("Relu", {}, {}, False),
])
def test_ops_that_read_axis_zero_do_not_fold(op, attrs, consts, mixes):
    """Each layer of a folded run sees T x N samples on axis 0: a node that counts, moves,
    reduces, slices or sets that axis would compute another function there, so its graph runs
    step by step (onnx_snn's converted graphs have none of these; a user's step may)."""
    from runtimes.torch.network import _Node, _mixes_batch
    inputs = ["x"] + (["s"] if "s" in consts else [])
    if op == "Slice" and "starts" not in attrs:
        inputs = ["x", "b", "e", "s"]
    node = _Node(op, "n", inputs, ["y"], attrs)
    why = _mixes_batch(node, lambda name: (np.asarray(consts[name]) if name in consts else None))
    assert (why is not None) == mixes, why


@pytest.mark.parametrize("op,attrs,consts,rank,mixes", [
    ("Concat", {"axis": -4}, {}, 4, True),              # -rank is axis 0
    ("Concat", {"axis": -3}, {}, 4, False),
    ("Concat", {"axis": -1}, {}, None, True),           # rank unknown: may be axis 0
    ("Softmax", {"axis": -2}, {}, 2, True),
    ("Softmax", {}, {}, 1, True),                       # opset 13's default -1 on a vector
    ("Softmax", {}, {}, 2, False),
    ("Flatten", {"axis": -4}, {}, 4, True),
    ("Flatten", {"axis": -3}, {}, 4, False),
    ("Gather", {"axis": -2}, {}, 2, True),
    ("ReduceMean", {"axes": [-4, -1]}, {}, 4, True),
    ("ReduceMean", {"axes": [-2, -1]}, {}, 4, False),
    ("Slice", {}, {"s": [-2]}, 2, True),
    ("Squeeze", {"axes": [-3]}, {}, 3, True),
    ("Unsqueeze", {"axes": [-3]}, {}, 2, True),         # counts the output's 3 axes
    ("Unsqueeze", {"axes": [-1]}, {}, 2, False),
    ("Split", {"axis": -2}, {}, 2, True),
    ("ArgMax", {}, {}, 2, True),                        # ArgMax's default axis is 0
    ("ArgMax", {"axis": 1}, {}, 2, False),
    ("TopK", {}, {}, 1, True),
    ("TopK", {}, {}, 2, False),
    ("LayerNormalization", {"axis": 0}, {}, 3, True),
    ("LayerNormalization", {}, {}, 3, False),
    ("LpNormalization", {"axis": -2}, {}, 2, True),
    ("CumSum", {}, {"s": [-2]}, 2, True),
    ("CumSum", {}, {"s": [1]}, 2, False),
    ("Compress", {}, {}, 2, True),                      # no axis: flattens
    ("MeanVarianceNormalization", {}, {}, 4, True),     # default axes 0, 2, 3
    ("MeanVarianceNormalization", {"axes": [2, 3]}, {}, 4, False),
    ("GatherElements", {"axis": -2}, {}, 2, True),
    ("OneHot", {"axis": 0}, {}, 1, True),
    ("OneHot", {}, {}, 1, False),
    ("Pad", {}, {"p": [1, 0, 1, 0], "a": [-2, -1]}, 2, True),   # opset 18's axes input
    ("Pad", {}, {"p": [0, 1, 0, 1], "a": [-2, -1]}, 2, False),
    ("Pad", {}, {"p": [1, 1]}, 2, True),                        # axes input not constant
])
def test_negative_axes_that_mean_axis_zero_do_not_fold(op, attrs, consts, rank, mixes):
    """An axis counted from the end names axis 0 when it is minus the input's rank (the
    output's for Unsqueeze and OneHot); where the rank is unknown, a negative axis may, and
    the graph runs step by step. Ops with an axis that defaults to 0 (ArgMax) or to -1 on a
    vector (Softmax, TopK) count too."""
    from runtimes.torch.network import _Node, _mixes_batch
    inputs = ["x"] + (["s"] if "s" in consts else [])
    if op == "Slice":
        inputs = ["x", "b", "e", "s"]
    if op == "Pad":
        inputs = ["x", "p", "", "a"]
    node = _Node(op, "n", inputs, ["y"], attrs)
    why = _mixes_batch(node, lambda name: (np.asarray(consts[name]) if name in consts else None),
                       lambda name: rank if name == "x" else None)
    assert (why is not None) == mixes, why


def test_a_negative_axis_still_folds_with_the_ranks_inferred():
    """time_foldable reads every tensor's rank from shape inference: a network that flattens
    with axis=-3 (axis 1 of its 4-D features) still folds, and equals the step-by-step run."""
    import torch
    from onnx_snn.runtimes.torch.network import SpikingNetwork
    model = B.vgg(13, "clip")
    flat = next(n for n in model.graph.node if n.op_type == "Flatten")
    del flat.attribute[:]
    flat.attribute.append(onnx.helper.make_attribute("axis", -3))
    x = B.rand_input(16)
    snn = onnx_snn.convert(model, x, timesteps=2, method="max", show_progress=False)
    net = SpikingNetwork(snn.model)
    assert any(n.op == "Flatten" and n.attrs.get("axis") == -3 for n in net.body)
    assert net._foldable is None, net._foldable
    outs = []
    for fold in (True, False):
        net.fold_time = fold
        outs.append(net(torch.from_numpy(x[:4])).detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)



def test_a_reshape_target_built_from_the_shape_still_folds():
    """Shape -> Gather(0) -> Concat(axis 0) -> Reshape (the dynamo exporter's flatten) works
    on 1-D shape vectors, not on the batch: the graph still folds, and equals the steps."""
    from onnx import TensorProto, helper
    m = B.vgg(13, "clip")
    g = m.graph
    flat = next(n for n in g.node if n.op_type == "Flatten")
    x, y = flat.input[0], flat.output[0]
    idx = list(g.node).index(flat)
    g.node.remove(flat)
    g.initializer.extend([helper.make_tensor("zero", TensorProto.INT64, [], [0]),
                          helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
                          helper.make_tensor("axes0", TensorProto.INT64, [1], [0])])
    new = [helper.make_node("Shape", [x], ["shp"], name="shape"),
           helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
           helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
           helper.make_node("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
           helper.make_node("Reshape", [x, "target"], [y], name="flatten")]
    for k, n in enumerate(new):
        g.node.insert(idx + k, n)
    xs = B.rand_input(6)
    snn = onnx_snn.convert(m, xs, timesteps=2, show_progress=False)
    net = SpikingNetwork(snn.model).train()
    assert net._foldable is None, net._foldable
    outs = []
    for fold in (True, False):
        net.fold_time = fold
        torch.manual_seed(0)
        outs.append(net(torch.from_numpy(xs)).detach().numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_one_dropout_mask_per_batch(monkeypatch):
    x = B.rand_input(8)
    snn = onnx_snn.convert(B.vgg(13, "clip", dropout=True), x, timesteps=4, show_progress=False)
    net = SpikingNetwork(snn.model).train()
    assert len(net.dropout) == 1
    calls = []
    real = torch.bernoulli
    monkeypatch.setattr(torch, "bernoulli", lambda t: calls.append(t.shape) or real(t))
    net(torch.from_numpy(x))
    assert len(calls) == 1  # not one per time step
    net.eval()
    calls.clear()
    net(torch.from_numpy(x))
    assert calls == []


def test_write_back_keeps_the_format(tmp_path):
    x = B.rand_input(16)
    snn = onnx_snn.convert(B.resnet(13, "clip"), x, timesteps=2, show_progress=False)
    net = SpikingNetwork(snn.model)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.1)
    path = tmp_path / "t.snn.onnx"
    net.to_onnx(path, history={"note": "test"})
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    info = F.read_info(m)
    assert info.history[-1]["step"] == "finetune"
    np.testing.assert_allclose(info.site("lif0").threshold,
                               np.asarray(snn.records["lif0"].threshold) * 1.1, rtol=1e-5)
    with torch.no_grad():
        y = net.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(run(m, x).outputs[0] - y).max() <= 1e-5
    assert [n.op_type for n in m.graph.node] == [n.op_type for n in snn.model.graph.node]


# ------------------------------------------------------------------ fine-tuning end to end

@pytest.fixture
def fmnist_snn(tmp_path, fmnist_train):
    m = B.vgg(13, "clip", in_shape=(1, 28, 28), softmax=False)
    src = tmp_path / "m.onnx"
    src.write_bytes(m.SerializeToString())
    snn = onnx_snn.convert(str(src), "fashion-mnist", timesteps=2, calib_samples=128, show_progress=False)
    out = tmp_path / "m.snn.onnx"
    snn.save(out)
    return out


def test_an_existing_output_is_replaced_only_by_an_epoch_that_beats_it_too(tmp_path, fmnist_snn,
                                                                          monkeypatch):
    """A rerun onto an existing, better fine-tune: its top-1 on the run's test data is
    measured, and an epoch must beat it as well as the starting top-1 (a weaker rerun
    replaced an 80.40 % file with a 76.00 % one, beating only the starting 75.20 %)."""
    import onnx_snn.runtimes.torch.finetune as FT
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    out = tmp_path / "tuned.snn.onnx"
    out.write_bytes(fmnist_snn.read_bytes())      # the starting model as the existing output
    cfg = FinetuneConfig(epochs=1, limit_train=64, limit_test=64)
    measured = []
    real = FT._existing_top1
    monkeypatch.setattr(FT, "_existing_top1", lambda *a: measured.append(real(*a)) or measured[-1])
    r = finetune(str(fmnist_snn), str(out), "fashion-mnist", cfg, show_progress=False)
    assert measured == [r.initial_top1] and r.existing_top1 == r.initial_top1   # the same model
    # the starting model scores 50 %, the epoch 60 % and the existing file 70 %: the epoch
    # beats the start (the old rule wrote it) but not the file, which stays
    before = out.read_bytes()
    scores = iter([50.0, 60.0])
    real_eval = FT.evaluate_torch
    monkeypatch.setattr(FT, "evaluate_torch", lambda *a, **k: (next(scores), real_eval(*a, **k)[1]))
    monkeypatch.setattr(FT, "_existing_top1", lambda *a: 70.0)
    logged = []
    r = finetune(str(fmnist_snn), str(out), "fashion-mnist", cfg, show_progress=False,
                 log=logged.append)
    assert (r.initial_top1, r.best_top1, r.best_epoch) == (50.0, 60.0, 1)
    assert not r.written and out.read_bytes() == before
    from onnx_snn.cli import finetune_outcome
    assert finetune_outcome(r) == (f"no epoch beat the top-1 of the existing {out} (70.00%), it "
                                   "was left as it was")
    assert any("not written" in m and "70.00%" in m for m in logged), logged
    # an existing file below the epoch is replaced
    scores = iter([50.0, 60.0])
    monkeypatch.setattr(FT, "_existing_top1", lambda *a: 55.0)
    r = finetune(str(fmnist_snn), str(out), "fashion-mnist", cfg, show_progress=False)
    assert r.written and out.read_bytes() != before


def test_the_named_dataset_is_remembered_by_the_files_written(tmp_path, fmnist_snn):
    """A DNN that records no dataset (a user's own export), converted on fashion-mnist: the
    spiking file records it, and eval needs no --data (it asked for it); a spiking file that
    records none, fine-tuned on fashion-mnist, records it too. A dataset a file records is
    kept."""
    from onnx_snn.cli import main
    assert fmt.metadata(onnx.load(str(fmnist_snn))).get(fmt.META_DATASET) == "fashion-mnist"
    p = run_cli("eval", str(fmnist_snn), "--limit", "64")     # the default is said
    assert p.returncode == 0 and "note: fashion-mnist, the dataset" in p.stderr, p.stderr
    m = onnx.load(str(fmnist_snn))
    kept = [p for p in m.metadata_props if p.key != fmt.META_DATASET]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    bare = tmp_path / "bare.snn.onnx"
    onnx.save(m, str(bare))
    p = run_cli("eval", str(bare), "--limit", "64")
    assert p.returncode == 5 and "records no dataset" in p.stderr, p.stderr
    out = tmp_path / "tuned.snn.onnx"
    assert main(["-q", "finetune", str(bare), "-o", str(out), "--data", "fashion-mnist",
                 "--limit-train", "64", "--limit-test", "64", "--epochs", "1"]) == 0
    assert fmt.metadata(onnx.load(str(out))).get(fmt.META_DATASET) == "fashion-mnist"
    from onnx_snn.convert import remember_dataset
    assert remember_dataset({fmt.META_DATASET: "cifar10"}, "fashion-mnist") == {}
    assert remember_dataset({}, "x.npz") == {} and remember_dataset({}, np.zeros(3)) == {}
    assert remember_dataset({}, "CIFAR10:train") == {fmt.META_DATASET: "cifar10"}


def test_finetune_resume_and_output(tmp_path, fmnist_snn):
    from onnx_snn.cli import main
    out = tmp_path / "tuned.snn.onnx"
    args = ["-q", "finetune", str(fmnist_snn), "-o", str(out), "--data", "fashion-mnist",
            "--limit-train", "256", "--limit-test", "128", "--lr", "1e-3", "--batch-size", "32"]
    assert main(args + ["--epochs", "1", "--json", str(tmp_path / "r1.json")]) == 0
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert len(r1["epochs"]) == 1 and r1["initial_top1"] is not None
    # the max pool's output rate is recorded beside the sites' (analyze charges the layer
    # after the pool at it), and is at least its input site's
    e = r1["epochs"][0]
    assert set(e["pool_spikes_per_neuron"]) == {"pool0"} and "pool0" not in e["spikes_per_neuron"]
    assert e["pool_spikes_per_neuron"]["pool0"] >= e["spikes_per_neuron"]["lif1"] > 0
    assert (tmp_path / "tuned.snn.onnx.ckpt.pt").exists()
    assert main(args + ["--epochs", "2", "--resume", "--json", str(tmp_path / "r2.json")]) == 0
    r2 = json.loads((tmp_path / "r2.json").read_text())
    assert [e["epoch"] for e in r2["epochs"]] == [1, 2]  # epoch 1 came from the checkpoint
    assert r2["resumed_after"] == 1 and r1["resumed_after"] is None
    # resumed again with no epoch left: nothing is written, and the result line says so
    before = out.read_bytes()
    p = run_cli(*args[1:], "--epochs", "2", "--resume", "--json", str(tmp_path / "r3.json"))
    assert p.returncode == 0, p.stderr
    assert "had run all 2 epochs" in p.stdout and "nothing was written" in p.stdout, p.stdout
    assert "wrote" not in p.stdout and out.read_bytes() == before
    # its record is the run's (its seconds per epoch those of the run's epochs, not 0)
    r3 = json.loads((tmp_path / "r3.json").read_text())
    assert r3["epochs"] == r2["epochs"] and not r3["written"]
    assert r3["seconds_per_epoch"] == pytest.approx(np.mean([e["seconds"] for e in r2["epochs"]]))
    # without the run's output (it holds the best model) there is nothing to resume: refused
    os.replace(out, tmp_path / "moved.snn.onnx")
    p = run_main(*args[1:], "--epochs", "3", "--resume")
    assert p.returncode == 2 and "--resume continues the run" in p.stderr, p.stderr
    assert not out.exists()
    os.replace(tmp_path / "moved.snn.onnx", out)
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    info = F.read_info(m)
    assert [h["step"] for h in info.history][0] == "convert" and info.history[-1]["step"] == "finetune"
    # the defaults, recorded: the sigmoid surrogate, no augmentation
    assert info.history[-1]["surrogate"] == "sigmoid" and info.history[-1]["augment"] is False
    assert run(m, np.zeros((2, 1, 28, 28), np.float32)).outputs[0].shape == (2, 10)
    out2 = tmp_path / "paper.snn.onnx"
    assert main(["-q", "finetune", str(fmnist_snn), "-o", str(out2), "--data", "fashion-mnist",
                 "--limit-train", "64", "--limit-test", "64", "--epochs", "1", "--augment",
                 "--surrogate", "rectangle", "--lr", "1e-3"]) == 0
    # written before the epoch (the starting model, its history included) or by it
    h = F.read_info(onnx.load(str(out2))).history[-1]
    assert h["surrogate"] == "rectangle" and h["augment"] is True


def test_finetune_resumes_with_its_data_file_typed_another_way(tmp_path, fmnist_snn, monkeypatch,
                                                                capsys):
    """--data d.npz, then --resume with --data ./d.npz (or its absolute path): the same file,
    resumed (the check compared the names as typed and refused it)."""
    from onnx_snn.cli import main
    from onnx_snn.datasets import load_dataset
    ds = load_dataset("fashion-mnist:test").take(64, seed=0)
    np.savez(tmp_path / "d.npz", x=ds.x, y=ds.y)
    monkeypatch.chdir(tmp_path)
    base = ["-q", "finetune", str(fmnist_snn), "-o", "t.snn.onnx", "--test-data", "d.npz",
            "--batch-size", "32"]
    assert main(base + ["--data", "d.npz", "--epochs", "1"]) == 0
    assert main(base + ["--data", "./d.npz", "--epochs", "2", "--resume", "--json", "r.json"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["resumed_after"] == 1
    other = tmp_path / "e.npz"
    np.savez(other, x=ds.x[:48], y=ds.y[:48])
    assert main(base + ["--data", str(other), "--epochs", "3", "--resume"]) == 2
    assert "--data" in capsys.readouterr().err


def test_finetune_remembers_the_preprocessing_it_trained_with(tmp_path, fmnist_snn):
    """--mean/--std other than the recorded ones: the output records them (and its history
    says so), so a later eval feeds the data as the model was trained; the same ones change
    nothing."""
    from onnx_snn.cli import main
    recorded = F.read_info(onnx.load(str(fmnist_snn))).preprocess
    out = tmp_path / "tuned.snn.onnx"
    base = ["-q", "finetune", str(fmnist_snn), "--data", "fashion-mnist", "--limit-train", "64",
            "--limit-test", "64", "--epochs", "1"]
    assert main(base + ["-o", str(out), "--mean", "0.25", "--std", "0.5"]) == 0
    info = F.read_info(onnx.load(str(out)))
    assert info.preprocess == {"mean": [0.25], "std": [0.5]} != recorded
    assert info.history[-1]["preprocess"] == {"mean": [0.25], "std": [0.5]}
    same = tmp_path / "same.snn.onnx"
    assert main(base + ["-o", str(same)]) == 0
    info = F.read_info(onnx.load(str(same)))
    assert info.preprocess == recorded and "preprocess" not in info.history[-1]


def test_finetune_reads_a_npz_named_after_the_model_input(tmp_path, fmnist_snn):
    """The documented .npz form with one array per model input, named after it."""
    from onnx_snn.cli import main
    name = F.read_spiking(onnx.load(str(fmnist_snn))).data_inputs[0]
    x = np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "d.npz", **{name: x}, y=np.arange(32) % 10)
    assert main(["-q", "finetune", str(fmnist_snn), "-o", str(tmp_path / "o.snn.onnx"), "--data",
                 str(tmp_path / "d.npz"), "--epochs", "1", "--batch-size", "16"]) == 0
    np.savez(tmp_path / "bad.npz", other=x, y=np.arange(32) % 10)
    p = run_cli("finetune", str(fmnist_snn), "-o", str(tmp_path / "p.snn.onnx"), "--data",
                str(tmp_path / "bad.npz"), "--epochs", "1")
    assert p.returncode == 5 and "Traceback" not in p.stderr, p.stderr


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "onnx_snn", *args], capture_output=True, text=True,
                          env={**os.environ, "ONNX_SNN_PROGRESS": "0", **(env or {})})


def run_main(*args):
    """:func:`run_cli` in this process (no fresh interpreter importing torch: seconds per
    call), for runs that are refused before any work: its exit code and what it printed
    (the error lines; warnings go through logging, which pytest holds)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from onnx_snn.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["-q", *args])
        except SystemExit as e:          # argparse's own refusals
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def test_finetune_bad_input(tmp_path, fmnist_snn):
    dnn = tmp_path / "dnn.onnx"
    dnn.write_bytes(B.vgg(13, "clip").SerializeToString())
    p = run_cli("finetune", str(dnn), "-o", str(tmp_path / "o.onnx"), "--data", "fashion-mnist")
    assert p.returncode == 8 and "not a spiking model" in p.stderr and "Traceback" not in p.stderr
    np.savez(tmp_path / "c.npz", x=np.zeros((8, 3, 32, 32), np.float32), y=np.zeros(8, int))
    p = run_cli("finetune", str(fmnist_snn), "-o", str(tmp_path / "o.onnx"), "--data", str(tmp_path / "c.npz"))
    assert p.returncode == 5 and "does not fit" in p.stderr and "Traceback" not in p.stderr
    assert "shape [8, 3, 32, 32]" in p.stderr      # the data's shape, not the first samples'
    assert not (tmp_path / "o.onnx").exists()


def test_finetune_refuses_a_first_output_that_is_not_logits(tmp_path):
    """A DNN that also outputs an inner activation, first: a clear error, no traceback."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    m = B.vgg(13, "clip", softmax=False)
    inner = next(n for n in m.graph.node if n.op_type == "Clip").output[0]
    m.graph.output.insert(0, h.make_tensor_value_info(inner, TP.FLOAT, ["N", 4, 12, 12]))
    x = B.rand_input(32)
    snn = onnx_snn.convert(m, x, timesteps=2, method="datta", show_progress=False)
    src = tmp_path / "m.snn.onnx"
    snn.save(str(src))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(32) % 10)
    p = run_cli("finetune", str(src), "-o", str(tmp_path / "o.onnx"), "--data",
                str(tmp_path / "d.npz"), "--epochs", "1")
    assert p.returncode == 5 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"first output '{inner}' has shape ['N', 4, 12, 12]" in p.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_diverging_loss_keeps_the_last_good_model(tmp_path, fmnist_snn, monkeypatch):
    from onnx_snn.errors import TrainingDivergedError
    from onnx_snn.runtimes.torch import finetune as ft

    real, calls = ft._loss, []

    def flaky(*a):  # the third batch's loss is NaN, as in a run whose lr is too high
        calls.append(1)
        loss = real(*a)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(ft, "_loss", flaky)
    out = tmp_path / "o.snn.onnx"
    cfg = ft.FinetuneConfig(epochs=1, batch_size=16, limit_train=128, limit_test=64)
    with pytest.raises(TrainingDivergedError, match="last good model is in"):
        ft.finetune(str(fmnist_snn), str(out), "fashion-mnist", cfg, show_progress=False, log=lambda *a: None)
    m = onnx.load(str(out))  # the model as it was before fine-tuning, complete and valid
    onnx.checker.check_model(m, full_check=True)
    assert F.read_info(m).history[-1]["epochs_done"] == 0


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not found")
@pytest.mark.slow   # 13 s: two training processes
def test_ddp_two_gloo_processes(tmp_path, fmnist_snn):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "ddp.snn.onnx"
    p = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "onnx_snn",
                        "finetune", str(fmnist_snn), "-o", str(out),
                        "--epochs", "1", "--limit-train", "256", "--limit-test", "64", "--device", "cpu",
                        "--json", str(tmp_path / "ddp.json")],
                       capture_output=True, text=True, env={**os.environ, "ONNX_SNN_PROGRESS": "0",
                                                            "OMP_NUM_THREADS": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    # one process speaks: the recorded dataset's note once (it was once per rank), and no
    # warning of torch's about DDP's arguments
    assert p.stderr.count("m.snn.onnx records (--data for another)") == 1, p.stderr[-3000:]
    assert "deprecated" not in p.stderr and p.stdout.count("fine-tuned T=2") == 1, p.stderr
    r = json.loads((tmp_path / "ddp.json").read_text())
    assert r["world_size"] == 2
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.mark.parametrize("op,attrs,shape", [("DepthToSpace", {"blocksize": 2, "mode": "DCR"}, (2, 8, 3, 3)),
                                            ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}, (2, 8, 3, 3)),
                                            ("SpaceToDepth", {"blocksize": 2}, (2, 2, 4, 4))])
def test_torch_ops_match_the_onnx_reference(op, attrs, shape):
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx.reference import ReferenceEvaluator
    from onnx_snn.runtimes.torch.ops import run_op
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    m = h.make_model(h.make_graph([h.make_node(op, ["x"], ["y"], **attrs)], "g",
                                  [h.make_tensor_value_info("x", TP.FLOAT, list(shape))],
                                  [h.make_tensor_value_info("y", TP.FLOAT, None)]))
    ref = ReferenceEvaluator(m).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run_op(op, attrs, [torch.from_numpy(x)])[0].numpy(), ref)


@pytest.mark.parametrize("fixed", [1, 4])
def test_finetune_a_model_with_a_fixed_batch(tmp_path, fixed):
    """A model whose batch is baked into its shapes (input [b, ...], Reshape to [b, -1], as
    onnx-simplifier or tf2onnx write it) trains and evaluates in batches of exactly b: the
    last test batch padded (its padding's results dropped: the top-1 equals onnxruntime's on
    the written model), a last incomplete training batch left out."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    from onnx_snn.evaluate import evaluate
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    rng = np.random.default_rng(0)
    inits = [nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             nh.from_array(np.zeros(4, np.float32), "b"),
             nh.from_array(np.array(0.0, np.float32), "lo"), nh.from_array(np.array(2.0, np.float32), "hi"),
             nh.from_array(np.array([fixed, -1], np.int64), "shape"),
             nh.from_array((rng.standard_normal((10, 4 * 144)) * 0.05).astype(np.float32), "w2"),
             nh.from_array(np.zeros(10, np.float32), "b2")]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4),
             h.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             h.make_node("Reshape", ["r", "shape"], ["f"]),
             h.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    g = h.make_graph(nodes, "fixed", [h.make_tensor_value_info("x", TP.FLOAT, [fixed, 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [fixed, 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    x = rng.random((30, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 30)
    snn = onnx_snn.convert(m, x[:28], timesteps=2, method="datta", show_progress=False)
    src, out = tmp_path / "m.snn.onnx", tmp_path / "t.snn.onnx"
    snn.save(str(src))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    logged = []
    r = finetune(str(src), str(out), str(tmp_path / "d.npz"),
                 FinetuneConfig(epochs=1, batch_size=8, lr=1e-3), show_progress=False,
                 log=logged.append)
    assert any(f"fixed batch size of {fixed}" in s for s in logged)
    assert len(r.epochs) == 1 and np.isfinite(r.epochs[0].loss)
    ort = evaluate(str(out) if r.best_epoch else str(src), (x, y), show_progress=False).top1
    assert r.best_top1 == pytest.approx(ort, abs=1e-9)


@pytest.mark.parametrize("global_pool", [False, True])
def test_torch_and_onnxruntime_agree_with_pools_moved_first(global_pool):
    """convert --pool-first: the neurons fire on the pooled map, after a pool of currents."""
    x = B.rand_input(32, seed=3)
    m = B.pooled_twin("MaxPool", global_pool=True) if global_pool else B.vgg(13, "clip")
    snn = onnx_snn.convert(m, x, timesteps=3, pool_first=True, show_progress=False)
    assert snn.normalized.pools_moved == 1
    history = json.loads(fmt.metadata(snn.model)[fmt.META_HISTORY])
    assert history[0]["pool_first"] is True
    pooled = next(p for p in snn.pools.values())
    assert any(r.input == pooled.output for r in snn.records.values())
    for model in (snn.model, snn.step_model()):
        B.assert_runtimes_agree(model, x)


def _two_input_model(tmp_path, n=256):
    """A DNN of two data inputs (an image through a Conv, a vector through a MatMul,
    concatenated), saved with a .npz of one array per input, labelled by the DNN's own top
    class: (model path, data, data path)."""
    from onnx import helper as oh
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.normal(0, .5, (4, 1, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.normal(0, .5, (5, 8)).astype(np.float32), "w2"),
             nh.from_array(rng.normal(0, .2, (264, 10)).astype(np.float32), "wh")]
    g = oh.make_graph([oh.make_node("Conv", ["x1", "w1"], ["c1"], pads=[1, 1, 1, 1]),
                       oh.make_node("Relu", ["c1"], ["a1"]),
                       oh.make_node("Flatten", ["a1"], ["f1"]),
                       oh.make_node("MatMul", ["x2", "w2"], ["m2"]),
                       oh.make_node("Relu", ["m2"], ["a2"]),
                       oh.make_node("Concat", ["f1", "a2"], ["cat"], axis=1),
                       oh.make_node("MatMul", ["cat", "wh"], ["y"])], "two",
                      [oh.make_tensor_value_info("x1", onnx.TensorProto.FLOAT, ["N", 1, 8, 8]),
                       oh.make_tensor_value_info("x2", onnx.TensorProto.FLOAT, ["N", 5])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)]), tmp_path / "two.onnx")
    data = {"x1": rng.random((n, 1, 8, 8)).astype(np.float32),
            "x2": rng.standard_normal((n, 5)).astype(np.float32)}
    labels = run(str(tmp_path / "two.onnx"), data).outputs[0].argmax(1)
    np.savez(tmp_path / "d.npz", **data, y=labels)
    return tmp_path / "two.onnx", data, tmp_path / "d.npz"


def test_a_two_input_model_runs_and_fine_tunes(tmp_path):
    """Two data inputs: the torch runtime runs them (a dict, as onnxruntime does), and
    fine-tuning trains on a .npz of one array per input: the training loss falls, the written
    model runs in onnxruntime, and distillation from the DNN takes both inputs."""
    import torch
    from onnx_snn.errors import DataError
    from runtimes.torch.finetune import FinetuneConfig, finetune
    dnn, data, npz = _two_input_model(tmp_path)
    snn = onnx_snn.convert(str(dnn), data, timesteps=2, show_progress=False)
    snn.save(tmp_path / "two.snn.onnx")
    net = SpikingNetwork(snn.model).eval()
    with pytest.raises(DataError, match="pass a dict"):
        net(torch.from_numpy(data["x1"]))
    with torch.no_grad():
        y = net({k: torch.from_numpy(v) for k, v in data.items()}).numpy()
    np.testing.assert_allclose(y, run(snn.model, data).outputs[0], atol=1e-5)
    for teacher in (None, str(dnn)):
        out = tmp_path / f"t{teacher is None}.snn.onnx"
        res = finetune(str(tmp_path / "two.snn.onnx"), str(out), str(npz),
                       FinetuneConfig(epochs=3, lr=1e-2, batch_size=32, teacher=teacher),
                       show_progress=False, log=lambda *a: None)
        losses = [e.loss for e in res.epochs]
        assert losses[-1] < losses[0], losses
        assert res.written and res.best_top1 >= res.initial_top1
        tuned = run(str(out), data)
        assert 100.0 * np.mean(tuned.outputs[0].argmax(1) == np.load(npz)["y"]) == \
            pytest.approx(res.best_top1, abs=1e-6)


def test_fine_tuning_a_two_input_model_checks_its_data_and_teacher(tmp_path):
    """The CLI: data without one of the inputs, or a teacher that takes other inputs, is a
    clear error naming them (no traceback); the full pair fine-tunes (exit 0)."""
    dnn, data, npz = _two_input_model(tmp_path, n=64)
    snn = onnx_snn.convert(str(dnn), data, timesteps=2, show_progress=False)
    snn.save(tmp_path / "two.snn.onnx")
    np.savez(tmp_path / "one.npz", x1=data["x1"], y=np.zeros(64, np.int64))
    p = run_cli("finetune", str(tmp_path / "two.snn.onnx"), "-o", str(tmp_path / "t.snn.onnx"),
                "--data", str(tmp_path / "one.npz"), "--epochs", "1")
    assert p.returncode != 0 and "x2" in p.stderr and "Traceback" not in p.stderr, p.stderr
    other = tmp_path / "other.onnx"
    m = onnx.load(dnn)
    for n in m.graph.node:
        n.input[:] = ["z2" if i == "x2" else i for i in n.input]
    m.graph.input[1].name = "z2"
    onnx.save(m, other)
    p = run_cli("finetune", str(tmp_path / "two.snn.onnx"), "-o", str(tmp_path / "t.snn.onnx"),
                "--data", str(npz), "--epochs", "1", "--teacher", str(other))
    assert p.returncode == 3 and "takes the student's inputs" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "t.snn.onnx").exists()
    p = run_cli("finetune", str(tmp_path / "two.snn.onnx"), "-o", str(tmp_path / "t.snn.onnx"),
                "--data", str(npz), "--epochs", "1")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "t.snn.onnx").exists()


def test_folded_binary_amplitudes_stay_one_through_training(tmp_path):
    """convert --binary-spikes folds each site's amplitude into the next layer (amplitude 1,
    0/1 spikes, recorded as "folded"): training must not move it off 1 while the file still
    says folded."""
    import torch
    from onnx_snn.cli import main
    x = B.rand_input(32)
    np.save(tmp_path / "c.npy", x)
    onnx.save(B.vgg(13, "clip"), tmp_path / "m.onnx")
    out = tmp_path / "b.snn.onnx"
    assert main(["-q", "convert", str(tmp_path / "m.onnx"), "-o", str(out), "--calib",
                 str(tmp_path / "c.npy"), "--binary-spikes", "--method", "datta"]) == 0
    model = onnx.load(str(out))
    folded = [k for k, v in json.loads(F.metadata(model)[F.META_BINARY]).items() if v == "folded"]
    assert folded
    p = run_cli("info", str(out))                # info says so in its text too
    assert p.returncode == 0 and f"amplitudes folded into the next layer at {folded[0]}" in p.stdout
    net = SpikingNetwork(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.from_numpy(x)).square().mean().backward()
    opt.step()
    tuned = net.to_model()
    inits = F.all_initializers(tuned)
    for site in folded:
        assert F.param_name(site, "amplitude") not in net._trainable
        np.testing.assert_array_equal(
            onnx.numpy_helper.to_array(inits[F.param_name(site, "amplitude")]), 1.0)
    assert any(F.param_name(s.name, "threshold") in net._trainable for s in net.sites)
    # the folded sites' records are kept as converted (beta was rewritten as 1 / mu)
    before = {s["name"]: s for s in json.loads(F.metadata(model)[F.META_SITES])}
    after = {s["name"]: s for s in json.loads(F.metadata(tuned)[F.META_SITES])}
    for site in folded:
        for key in ("amplitude", "beta", "folded_amplitude"):
            assert after[site][key] == before[site][key], key


def test_finetune_resume_refuses_another_T(tmp_path, fmnist_snn):
    """The checkpoint's best top-1 was measured at its T: resuming at another one would
    compare epochs across T, so it is refused (exit 2) and nothing is written."""
    from onnx_snn.cli import main
    out = tmp_path / "t.snn.onnx"
    args = ["finetune", str(fmnist_snn), "-o", str(out), "--data", "fashion-mnist",
            "--limit-train", "64", "--limit-test", "64"]
    assert main(["-q"] + args + ["--epochs", "1"]) == 0
    before = out.read_bytes()
    p = run_main(*args, "--epochs", "2", "--resume", "-T", "3")
    assert p.returncode == 2 and "trained at T=2, and would resume at T=3" in p.stderr, p.stderr
    assert out.read_bytes() == before
    # the same for the run's other settings, and for another model (the same network
    # converted with another seed: the state dict loads, its best top-1 is not this model's)
    assert args[-2:] == ["--limit-test", "64"]       # (an option may be given once)
    p = run_main(*args[:-2], "--epochs", "2", "--resume", "--lr", "0.02", "--limit-test", "32")
    assert p.returncode == 2 and "--lr 0.001 -> 0.02" in p.stderr and "--limit-test 64 -> 32" \
        in p.stderr, p.stderr
    p = run_main(*args, "--epochs", "2", "--resume", "--train-initial")   # other parameters
    assert p.returncode == 2 and "--train-initial off -> on" in p.stderr, p.stderr
    p = run_main(*args, "--epochs", "2", "--resume", "--no-dropout")   # a switch read as its flag
    assert p.returncode == 2 and "--no-dropout off -> on" in p.stderr, p.stderr
    p = run_main(*args, "--epochs", "2", "--resume", "--loss", "per-step")
    assert p.returncode == 2 and "--loss 'mean' -> 'per-step'" in p.stderr, p.stderr
    p = run_main(*args, "--epochs", "2", "--resume", "--schedule", "step")
    assert p.returncode == 2 and "--schedule 'cosine' -> 'step'" in p.stderr, p.stderr
    other = tmp_path / "other.snn.onnx"
    m = onnx.load(str(fmnist_snn))
    m.producer_version = "other"
    onnx.save(m, str(other))
    p = run_main("finetune", str(other), *args[2:], "--epochs", "2", "--resume")
    assert p.returncode == 2 and "the model (sha256)" in p.stderr, p.stderr
    assert out.read_bytes() == before
    # the inputs' normalization is a setting of the run too
    p = run_main(*args, "--epochs", "2", "--resume", "--mean", "0.5", "--std", "0.5")
    assert p.returncode == 2 and "--mean/--std" in p.stderr, p.stderr
    assert out.read_bytes() == before


def test_finetune_plot_draws_the_runs_curves_and_is_checked_before_the_work(tmp_path, fmnist_snn):
    """``finetune --plot FILE`` writes the curves (PNG by default, SVG by suffix) with the
    other outputs; a suffix it cannot write, a missing folder or no matplotlib is refused
    before any training (nothing written)."""
    from onnx_snn.cli import main
    out, png, svg = tmp_path / "t.snn.onnx", tmp_path / "curves.png", tmp_path / "c.svg"
    args = ["finetune", str(fmnist_snn), "-o", str(out), "--data", "fashion-mnist",
            "--limit-train", "64", "--limit-test", "64", "--epochs", "2"]
    assert main(["-q"] + args + ["--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(png.read_bytes()) > 5000
    out.unlink()
    for bad, code, said in ((tmp_path / "c.jpg", 2, ".png, .svg"),
                            (tmp_path / "no" / "c.png", 6, "no")):
        p = run_main(*args, "--plot", str(bad))
        assert p.returncode == code and said in p.stderr, p.stderr
        assert not out.exists() and not bad.exists()
    from runtimes.torch.curves import curves_png
    from runtimes.torch.finetune import EpochRecord, FinetuneResult
    r = FinetuneResult(str(out), 2, 80.0, 85.0, 2, [EpochRecord(1, 0.9, 70.0, 83.0, 1.0),
                                                    EpochRecord(2, 0.7, 75.0, 85.0, 1.0)],
                       1.0, 100.0, None, 1)
    svg.write_bytes(curves_png(r, "svg"))
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "best: epoch 2, 85.00%" in text
    r.epochs = []
    from onnx_snn.errors import DataError
    with pytest.raises(DataError, match="no epoch"):
        curves_png(r)


def test_finetune_never_overwrites_another_runs_checkpoint(tmp_path, fmnist_snn):
    """Started without --resume, a run writes its checkpoint over its own earlier one only:
    another run's checkpoint (another model or output) and a file that is no checkpoint are
    refused before any work (exit 2), left byte for byte."""
    from onnx_snn.cli import main
    ckpt = tmp_path / "run.ckpt.pt"
    base = ["finetune", str(fmnist_snn), "--data", "fashion-mnist", "--limit-train", "64",
            "--limit-test", "64", "--epochs", "1", "--checkpoint", str(ckpt)]
    assert main(["-q"] + base + ["-o", str(tmp_path / "a.snn.onnx")]) == 0
    saved = ckpt.read_bytes()
    p = run_main(*base, "-o", str(tmp_path / "b.snn.onnx"))         # another run's output
    assert p.returncode == 2 and "the checkpoint of another run" in p.stderr, p.stderr
    assert ckpt.read_bytes() == saved and not (tmp_path / "b.snn.onnx").exists()
    assert main(["-q"] + base + ["-o", str(tmp_path / "a.snn.onnx")]) == 0   # its own: again
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    p = run_main(*base[:-1], str(notes), "-o", str(tmp_path / "c.snn.onnx"))
    assert p.returncode == 2 and "not a fine-tuning checkpoint" in p.stderr, p.stderr
    assert notes.read_text() == "my notes"


def test_finetune_says_what_it_tests_on(tmp_path, fmnist_snn):
    """A named dataset with a split would train and test on the same images: refused. An
    array file has no test split: its samples are the test set too, with a warning (on
    stderr), unless --test-data gives one; the history records both."""
    from onnx_snn.datasets import load_fashion_mnist
    out = tmp_path / "t.snn.onnx"
    base = ["finetune", str(fmnist_snn), "-o", str(out), "--epochs", "1", "--limit-train", "64",
            "--limit-test", "64"]
    p = run_main(*base, "--data", "fashion-mnist:test")
    assert p.returncode == 2 and "drop the ':split'" in p.stderr, p.stderr
    assert not out.exists()
    test = load_fashion_mnist("test")
    pp = F.read_info(onnx.load(str(fmnist_snn))).preprocess
    x = ((test.x[:128] - np.float32(pp["mean"][0])) / np.float32(pp["std"][0])).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x[:64], y=test.y[:64])
    np.savez(tmp_path / "b.npz", x=x[64:], y=test.y[64:128])
    p = run_cli(*base, "--data", str(tmp_path / "a.npz"))
    assert p.returncode == 0 and "measured on training samples" in p.stderr, (p.stdout, p.stderr)
    h = F.read_info(onnx.load(str(out))).history[-1]
    assert h["test_is_train"] is True and h["train_data"] == h["test_data"]
    out.unlink()
    p = run_cli(*base, "--data", str(tmp_path / "a.npz"), "--test-data", str(tmp_path / "b.npz"))
    assert p.returncode == 0 and "measured on training samples" not in p.stderr, p.stderr
    h = F.read_info(onnx.load(str(out))).history[-1]
    assert h["test_is_train"] is False and h["test_data"].endswith("b.npz")
    out.unlink()      # a .npz with both splits, as Keras's datasets save them: each where it belongs
    np.savez(tmp_path / "k.npz", x_train=x[:64], y_train=test.y[:64], x_test=x[64:], y_test=test.y[64:128])
    p = run_cli(*base, "--data", str(tmp_path / "k.npz"))
    assert p.returncode == 0 and "measured on training samples" not in p.stderr, p.stderr
    h = F.read_info(onnx.load(str(out))).history[-1]
    assert h["test_is_train"] is False and (h["train_data"], h["test_data"]) == \
        (f"{tmp_path / 'k.npz'}:train", f"{tmp_path / 'k.npz'}:test")


def test_api_takes_what_convert_returns_and_paths(tmp_path):
    """deploy() takes the SpikingModel convert() returns; evaluate() takes (dict, labels) for
    a model's inputs and reports a pathlib path as the model; SpikingNetwork.to_onnx never
    writes over the file from_onnx read."""
    import pathlib
    from onnx_snn.errors import OnnxSnnError
    x = B.rand_input(64)
    snn = onnx_snn.convert(B.vgg(), x, 2, show_progress=False)
    dep = onnx_snn.deploy(snn, tmp_path / "d.onnx")
    assert (tmp_path / "d.onnx").exists() and F.read_info(dep).graph == F.GRAPH_DEPLOY
    path = pathlib.Path(tmp_path / "m.snn.onnx")
    snn.save(path)
    y = np.arange(len(x)) % 10
    name = F.read_spiking(snn.model).data_inputs[0]
    a = onnx_snn.evaluate(path, ({name: x}, y), show_progress=False)
    b = onnx_snn.evaluate(path, (x, y), show_progress=False)
    assert a.top1 == b.top1 and a.model == str(path)
    net = SpikingNetwork.from_onnx(path)
    before = path.read_bytes()
    with pytest.raises(OnnxSnnError):
        net.to_onnx(path)
    assert path.read_bytes() == before
    net.to_onnx(tmp_path / "back.snn.onnx")
    # nor over the DNN it was converted from, nor its calibration data (save() refuses
    # them; to_onnx replaced the DNN with a spiking model)
    onnx.save(B.vgg(), str(tmp_path / "dnn.onnx"))
    np.save(tmp_path / "calib.npy", x)
    snn = onnx_snn.convert(str(tmp_path / "dnn.onnx"), str(tmp_path / "calib.npy"), 2,
                           show_progress=False)
    net = SpikingNetwork(snn.model)
    for victim in ("dnn.onnx", "calib.npy"):
        before = (tmp_path / victim).read_bytes()
        with pytest.raises(OnnxSnnError, match="is an input"):
            net.to_onnx(tmp_path / victim)
        assert (tmp_path / victim).read_bytes() == before


def _adaptive_pool_by_gather_nd(opset=18):
    """conv -> relu -> 2x2 max pool -> AdaptiveAvgPool2d((3, 3)) of a 4x4 map as the dynamo
    exporter writes it when 3 does not divide 4: Transpose to [H, W, N, C], GatherND of each
    window's 2x2 cells (constant indices), Transpose back, ReduceMean over the window."""
    from onnx import helper as h
    b = B.GraphBuilder(opset)
    x = b.node("MaxPool", [b.node("Relu", [b.conv("input", 1, 4)])], kernel_shape=[2, 2],
               strides=[2, 2])
    idx = np.array([[[[(r, c) for c in range(j, j + 2)] for r in range(i, i + 2)]
                     for j in range(3)] for i in range(3)], np.int64)        # [3, 3, 2, 2, 2]
    t = b.node("Transpose", [x], perm=[2, 3, 0, 1])
    g = b.node("GatherND", [t, b.const(idx)], batch_dims=0)
    t = b.node("Transpose", [g], perm=[4, 5, 0, 1, 2, 3])
    m = b.node("ReduceMean", [t, b.const(np.array([4, 5], np.int64))], keepdims=0)
    y = b.gemm(b.node("Flatten", [m]), 4 * 9, 10)
    model = b.model("input", y, (1, 8, 8), 10)
    del model.opset_import[:]
    model.opset_import.append(h.make_opsetid("", opset))
    return model


@pytest.mark.parametrize("T", [2, 64])
def test_adaptive_average_pool_written_with_gather_nd_converts(T):
    """GatherND with constant indices only moves values: the spiking model runs it every
    step, the torch runtime and onnxruntime agree, and at large T it approaches the DNN."""
    model = _adaptive_pool_by_gather_nd()
    x = B.rand_input(32, (1, 8, 8))
    snn = B.converted(model, x, T, "deng")[2]
    B.assert_runtimes_agree(snn.model, x)
    if T == 64:
        dnn = run(model, x).outputs[0]
        got = run(snn.model, x).outputs[0]
        assert np.corrcoef(dnn.ravel(), got.ravel())[0, 1] > 0.98


def test_a_model_with_external_data_is_tuned_into_external_data(tmp_path):
    """A spiking model whose weights are in <name>.data is written so after fine-tuning too
    (it was written inline, unlike convert's and deploy's outputs); the tuned file runs."""
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    src = tmp_path / "src.onnx"
    onnx.save_model(B.vgg(13, "clip"), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="src.onnx.data", size_threshold=1024)
    x = B.rand_input(32)
    snn = onnx_snn.convert(str(src), x, timesteps=2, method="datta", show_progress=False)
    snn.save(tmp_path / "m.snn.onnx")
    assert (tmp_path / "m.snn.onnx.data").exists()
    np.savez(tmp_path / "d.npz", x=x, y=np.random.default_rng(0).integers(0, 10, 32))
    out = tmp_path / "t.snn.onnx"
    finetune(str(tmp_path / "m.snn.onnx"), str(out), str(tmp_path / "d.npz"),
             FinetuneConfig(epochs=1, batch_size=8), show_progress=False, log=lambda *a: None)
    assert (tmp_path / "t.snn.onnx.data").stat().st_size > 0
    head = onnx.load(str(out), load_external_data=False)
    from onnx_snn.graph import walk
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for g in walk.subgraphs(head.graph) for t in g.initializer)
    assert run(str(out), x).outputs[0].shape == (32, 10)


def test_ranks_come_from_shape_inference_and_initializers():
    """_ranks: every tensor's number of axes, the initializers' too (a small constant stays an
    initializer in the skeleton, and a Concat([c, x], axis=-1) reads it first)."""
    from onnx import TensorProto, helper, numpy_helper
    from runtimes.torch.network import _ranks
    c = numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    g = helper.make_graph([helper.make_node("Concat", ["c", "x"], ["y"], axis=-1),
                           helper.make_node("Relu", ["y"], ["z"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [c])
    ranks = _ranks(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    assert ranks["c"] == 2 and ranks["x"] == 2 and ranks["y"] == 2


def test_finetune_api_checks_its_flags_and_what_a_resumed_run_trains_on(tmp_path):
    """In-memory arrays are all named "array": a run resumed on other arrays is refused (it
    scored them against the first arrays' best and overwrote it); the flags are True or False
    ("False" ran as True); without the starting evaluation an existing output is said to be
    replaced by the first epoch."""
    from onnx_snn.errors import UsageError
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    x = B.rand_input(32)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    snn.save(tmp_path / "m.snn.onnx")
    y = np.random.default_rng(0).integers(0, 10, 32)
    out, quiet = tmp_path / "t.snn.onnx", dict(show_progress=False, log=lambda *a: None)
    finetune(str(tmp_path / "m.snn.onnx"), str(out), (x, y), FinetuneConfig(epochs=1, batch_size=8),
             **quiet)
    before = out.read_bytes()
    with pytest.raises(UsageError, match="training data's contents"):
        finetune(str(tmp_path / "m.snn.onnx"), str(out), (x[::-1].copy(), y),
                 FinetuneConfig(epochs=2, batch_size=8), resume=True, **quiet)
    assert out.read_bytes() == before
    res = finetune(str(tmp_path / "m.snn.onnx"), str(out), (x, y),
                   FinetuneConfig(epochs=2, batch_size=8), resume=True, **quiet)
    assert res.resumed_after == 1
    for field in ("augment", "initial_eval", "train_initial"):
        for bad in ("False", 0, None, float("nan")):
            with pytest.raises(UsageError, match=field):
                FinetuneConfig(**{field: bad})
    assert FinetuneConfig(augment=np.bool_(True)).augment is True
    for kw in (dict(spike_counts="no"), dict(unit_thresholds=1)):
        with pytest.raises(UsageError, match=next(iter(kw))):
            onnx_snn.deploy(snn, tmp_path / "d.onnx", **kw)
    said = []
    finetune(str(tmp_path / "m.snn.onnx"), str(tmp_path / "u.snn.onnx"), (x, y),
             FinetuneConfig(epochs=1, batch_size=8), show_progress=False, log=lambda *a: None)
    finetune(str(tmp_path / "m.snn.onnx"), str(tmp_path / "u.snn.onnx"), (x, y),
             FinetuneConfig(epochs=1, batch_size=8, initial_eval=False), show_progress=False,
             log=said.append)
    assert any("replaced by the first epoch" in s for s in said), said


def test_write_back_refuses_non_finite_values_and_takes_numpy_in_its_history(tmp_path):
    """A network holding NaN wrote a file its own reader refuses as damaged; now nothing is
    written. The history is strict JSON: numpy values as numbers, NaN as null."""
    from onnx_snn.errors import TrainingDivergedError, UsageError
    x = B.rand_input(8)
    net = SpikingNetwork(onnx_snn.convert(B.vgg(13, "clip"), x, show_progress=False).model)
    m = net.to_model({"loss": np.float32(0.5), "top1": float("nan"), "n": np.int64(3)})
    hist = json.loads(fmt.metadata(m)[fmt.META_HISTORY])[-1]
    assert hist["loss"] == 0.5 and hist["top1"] is None and hist["n"] == 3
    with pytest.raises(UsageError, match="history"):
        net.to_model(["not", "a", "mapping"])
    with torch.no_grad():
        net.tensor("lif1.threshold").fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="lif1.threshold"):
        net.to_onnx(tmp_path / "bad.snn.onnx")
    assert not (tmp_path / "bad.snn.onnx").exists()
    # a model's own infinite constant (a class masked by adding -inf) is not a divergence
    from onnx import helper as oh
    from onnx import numpy_helper as onh
    rng = np.random.default_rng(3)
    inits = [onh.from_array(rng.normal(0, 0.3, s).astype(np.float32), n)
             for n, s in (("w1", (6, 1, 3, 3)), ("w3", (10, 6)))]
    inits.append(onh.from_array(np.array([0.0] * 9 + [-np.inf], np.float32), "mask"))
    g = oh.make_graph([oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
                       oh.make_node("Relu", ["c1"], ["a1"]),
                       oh.make_node("GlobalAveragePool", ["a1"], ["p"]),
                       oh.make_node("Flatten", ["p"], ["f"]),
                       oh.make_node("Gemm", ["f", "w3"], ["g"], transB=1),
                       oh.make_node("Add", ["g", "mask"], ["y"])], "masked",
                      [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    xm = rng.random((32, 1, 8, 8)).astype(np.float32)
    masked = SpikingNetwork(onnx_snn.convert(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)]),
                                             xm, timesteps=2, show_progress=False).model)
    assert masked.turned_non_finite() == []
    masked.to_onnx(tmp_path / "masked.snn.onnx", history={})
    with torch.no_grad():
        masked.tensor("w1").view(-1)[0] = float("inf")
    assert masked.turned_non_finite() == ["w1"]
    assert masked.turned_non_finite(trainable_only=True) == ["w1"]   # the training step's check


def test_api_arguments_of_the_wrong_type_are_named(tmp_path):
    """A path where a ModelProto is taken, bytes or None where a path is: a UsageError naming
    the argument (they were AttributeErrors from deep inside, or 'None: no such file')."""
    from onnx_snn.analyze import analyze
    from onnx_snn.errors import OutputPathError, UsageError
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    from onnx_snn.spiking.binary import fold_amplitudes
    x = B.rand_input(16)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    path = tmp_path / "m.snn.onnx"
    snn.save(path)
    net = SpikingNetwork(str(path))               # a path is read, as from_onnx reads it
    assert [str(f) for f in net.source_files] == [str(path)]
    with pytest.raises(OutputPathError, match="is an input"):   # and never written over
        net.to_onnx(path)
    for bad in (path.read_bytes(), None, 3):
        with pytest.raises(UsageError, match=type(bad).__name__):
            SpikingNetwork.from_onnx(bad)
        with pytest.raises(UsageError, match=type(bad).__name__):
            onnx_snn.deploy(bad, tmp_path / "d.onnx")
        with pytest.raises(UsageError, match=type(bad).__name__):
            analyze(bad)
    with pytest.raises(UsageError, match="fold_amplitudes takes an onnx.ModelProto"):
        fold_amplitudes(str(path))
    with pytest.raises(UsageError, match="model_path is a file path"):
        finetune(snn.model, str(tmp_path / "t.onnx"), (x, np.zeros(16, np.int64)))
    with pytest.raises(UsageError, match="'learning_rate' not a FinetuneConfig field"):
        finetune(str(path), str(tmp_path / "t.onnx"), (x, np.zeros(16, np.int64)),
                 config={"learning_rate": 1e-3})
    with pytest.raises(UsageError, match="config is a FinetuneConfig"):
        finetune(str(path), str(tmp_path / "t.onnx"), (x, np.zeros(16, np.int64)), config=[1])
    cfg = FinetuneConfig(lr=np.int64(1), temperature=np.float32(2.0), weight_decay=np.int64(0))
    assert (cfg.lr, cfg.temperature, cfg.weight_decay) == (1.0, 2.0, 0.0)


def test_finetune_reads_a_keras_style_split_dict_and_names_a_bad_pair(tmp_path):
    """A dict {x_train, y_train, x_test, y_test} is read as the .npz of the same keys is
    (it was refused: 'fine-tuning needs labels'); (inputs, labels) of different lengths say
    so (it was 'cannot use tuple as data')."""
    from onnx_snn.errors import DataError
    from onnx_snn.runtimes.torch.finetune import finetune
    x = B.rand_input(48)
    y = np.random.default_rng(0).integers(0, 10, 48)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    snn.save(tmp_path / "m.snn.onnx")
    split = {"x_train": x[:32], "y_train": y[:32], "x_test": x[32:], "y_test": y[32:]}
    said = []
    res = finetune(str(tmp_path / "m.snn.onnx"), str(tmp_path / "t.snn.onnx"), split,
                   {"epochs": 1, "batch_size": 16}, show_progress=False, log=said.append)
    assert res.best_top1 >= 0 and not any("no separate test set" in s for s in said), said
    assert onnx_snn.evaluate(snn, split, show_progress=False).samples == 16   # the test split
    with pytest.raises(DataError, match=r"one label per sample.*\[48, 1, 12, 12\], \[10\]"):
        finetune(str(tmp_path / "m.snn.onnx"), str(tmp_path / "u.snn.onnx"), (x, y[:10]),
                 show_progress=False, log=lambda *a: None)


def test_finetune_quiet_still_shows_its_warnings(tmp_path, capsys):
    """-q hides notes and progress, not warnings: training data that is also the test data
    was said only without -q (and --augment on inputs it cannot crop, now a warning)."""
    from onnx_snn.cli import main
    x = B.rand_input(32)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta",
                           show_progress=False)
    snn.save(tmp_path / "m.snn.onnx")
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(32, np.int64))
    assert main(["-q", "finetune", str(tmp_path / "m.snn.onnx"), "-o", str(tmp_path / "t.onnx"),
                 "--data", str(tmp_path / "d.npz"), "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "no separate test set" in err and "epoch 1" not in err


@pytest.mark.parametrize("dropout", [True, False])
def test_finetune_without_dropout_draws_no_mask_and_is_recorded(tmp_path, monkeypatch, dropout):
    """``dropout=False`` (``finetune --no-dropout``) trains without the source DNN's dropout:
    no mask is drawn in any training step, and the history says so; with the default every
    training batch draws one."""
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    x = B.rand_input(32)
    y = np.random.default_rng(0).integers(0, 10, 32)
    src, out = tmp_path / "m.snn.onnx", tmp_path / "t.snn.onnx"
    onnx_snn.convert(B.vgg(13, "clip", dropout=True), x, timesteps=2, show_progress=False).save(src)
    assert F.read_info(onnx.load(str(src))).dropout
    masks, real = [], torch.bernoulli
    monkeypatch.setattr(torch, "bernoulli", lambda t: masks.append(t.shape) or real(t))
    finetune(str(src), str(out), (x, y), FinetuneConfig(epochs=1, batch_size=8, dropout=dropout),
             show_progress=False, log=lambda *a: None)
    assert len(masks) == (4 if dropout else 0)      # one per training batch of 8 of the 32
    step = json.loads(F.metadata(onnx.load(str(out)))[F.META_HISTORY])[-1]
    assert step.get("dropout", True) is dropout


@pytest.mark.slow     # (27 s; test_bad_inputs' ft_existing_output_of_another_dnn runs in CI)
def test_finetune_refuses_an_existing_output_of_another_line(tmp_path, fmnist_snn):
    """An existing output is kept unless an epoch beats the starting model, so it must be a
    spiking model of the same DNN and sites: a stray file, the DNN itself, or a spiking model
    of another DNN is refused before any work (it was "left as it was", exit 0, and passed for
    this run's result); an earlier output of the same model is kept or replaced as before."""
    args = ["--data", "fashion-mnist", "--limit-train", "64", "--limit-test", "64", "--epochs", "1"]
    stray = tmp_path / "stray.snn.onnx"
    stray.write_text("not a model")
    dnn = tmp_path / "dnn.onnx"
    dnn.write_bytes(B.vgg(13, "clip", in_shape=(1, 28, 28), softmax=False).SerializeToString())
    other_src = tmp_path / "other.onnx"
    other_src.write_bytes(B.vgg(13, "clip", in_shape=(1, 28, 28), softmax=False, seed=5).SerializeToString())
    other = tmp_path / "other.snn.onnx"
    onnx_snn.convert(str(other_src), "fashion-mnist", timesteps=2, calib_samples=64,
                     method="datta", show_progress=False).save(other)
    for out, why in ((stray, "not a model this tool can read"), (dnn, "it is a DNN"),
                     (other, "another DNN")):
        before = out.read_bytes()
        p = run_main("finetune", str(fmnist_snn), "-o", str(out), *args)
        assert p.returncode == 6 and why in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert "damaged" not in p.stderr and "convert it again" not in p.stderr, p.stderr
        assert out.read_bytes() == before
        assert not os.path.exists(str(out) + ".ckpt.pt")
    same = tmp_path / "same.snn.onnx"
    same.write_bytes(fmnist_snn.read_bytes())
    p = run_cli("finetune", str(fmnist_snn), "-o", str(same), *args)
    assert p.returncode == 0, p.stderr


@pytest.mark.slow   # 19 s: three fine-tuning runs in fresh processes
def test_finetune_refuses_an_existing_output_recording_another_normalization(tmp_path, fmnist_snn):
    """An existing output is judged on this run's test data: one written with --mean/--std
    0.5 is refused (exit 6, nothing written) by a run that normalizes as the model records,
    which scored it on inputs it is never fed and kept it on that score; the same
    --mean/--std is accepted."""
    args = ["--data", "fashion-mnist", "--limit-train", "64", "--limit-test", "64", "--epochs", "1"]
    out = tmp_path / "ft.snn.onnx"
    p = run_cli("finetune", str(fmnist_snn), "-o", str(out), "--mean", "0.5", "--std", "0.5", *args)
    assert p.returncode == 0, p.stderr
    before = out.read_bytes()
    p = run_main("finetune", str(fmnist_snn), "-o", str(out), *args)
    assert p.returncode == 6 and "records the input normalization mean [0.5]" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and out.read_bytes() == before
    p = run_cli("finetune", str(fmnist_snn), "-o", str(out), "--mean", "0.5", "--std", "0.5", *args)
    assert p.returncode == 0, p.stderr


def test_finetune_refuses_an_existing_output_of_another_T(tmp_path, fmnist_snn):
    """An existing output fitted for another T was scored at the run's T and replaced by a
    model of the run's T without a word: refused (exit 6, nothing written), as another
    normalization is; the same T is accepted."""
    args = ["--data", "fashion-mnist", "--limit-train", "64", "--limit-test", "64", "--epochs", "1"]
    out = tmp_path / "ft.snn.onnx"
    p = run_cli("finetune", str(fmnist_snn), "-o", str(out), "-T", "3", *args)
    assert p.returncode == 0, p.stderr
    before = out.read_bytes()
    p = run_main("finetune", str(fmnist_snn), "-o", str(out), *args)
    assert p.returncode == 6 and "is fitted for T = 3, while this run fine-tunes at T = 2" \
        in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and out.read_bytes() == before
    p = run_main("finetune", str(fmnist_snn), "-o", str(out), "-T", "3", *args)
    assert p.returncode == 0, p.stderr


def test_finetune_compares_normalizations_as_the_other_commands_do():
    """Fine-tuning's check of an existing output's normalization uses the tolerance of
    convert's and analyze's (``same_values``): a mean that went through float32 (0.286 as
    0.28600001) is the same, a scalar is the same as its value per channel, another value
    or another channel count is not (rtol 1e-6 refused what the others accepted)."""
    from onnx_snn.convert import same_values
    from onnx_snn.runtimes.torch.finetune import _same_preprocess
    rec = {"mean": 0.286, "std": 0.353}
    f32 = {"mean": float(np.float32(0.286)) * (1 + 3e-6), "std": float(np.float32(0.353))}
    assert same_values(rec["mean"], f32["mean"]) and _same_preprocess(rec, f32)
    assert _same_preprocess({"mean": 0.5, "std": 0.5}, {"mean": [0.5] * 3, "std": [0.5] * 3})
    assert not _same_preprocess(rec, {"mean": 0.5, "std": 0.353})
    assert not _same_preprocess({"mean": [0.1, 0.2], "std": [1, 1]},
                                {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})
    assert not _same_preprocess(rec, {"mean": 0.286})


def test_a_failed_write_after_an_earlier_one_names_what_the_output_holds(tmp_path, fmnist_snn, monkeypatch):
    """A checkpoint that cannot be written (a full disk) after this run wrote its output: the
    error says which model the output holds, not "nothing was written"."""
    import onnx_snn.runtimes.torch.finetune as FT
    from onnx_snn.errors import OutputPathError

    def full(path, *a, **k):
        raise OutputPathError(f"{path}: cannot write it (No space left on device); nothing was "
                              "written: free space or choose another path")
    monkeypatch.setattr(FT, "_save_ckpt", full)
    out = tmp_path / "o.snn.onnx"
    with pytest.raises(OutputPathError) as e:
        FT.finetune(str(fmnist_snn), str(out), "fashion-mnist",
                    FT.FinetuneConfig(epochs=1, limit_train=64, limit_test=64),
                    show_progress=False, log=lambda *a: None)
    assert "nothing was written" not in str(e.value)
    assert f"{out} holds the model of epoch" in str(e.value) and out.exists()


def test_a_file_that_is_the_training_and_the_test_data_is_warned_about_once(tmp_path, caplog,
                                                                            fmnist_train):
    """finetune reads a file without a test split twice (its training and its test data),
    and said each of its data's warnings twice (unnormalized pixels for a model that records
    a normalization): once now."""
    import logging
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    src = tmp_path / "m.onnx"
    src.write_bytes(B.vgg(13, "clip", in_shape=(1, 28, 28), softmax=False).SerializeToString())
    snn = tmp_path / "m.snn.onnx"
    onnx_snn.convert(str(src), "fashion-mnist", timesteps=1, method="max", calib_samples=32,
                     mean=0.286, std=0.353, show_progress=False).save(snn)
    np.savez(tmp_path / "raw.npz", x=fmnist_train.x[:32], y=fmnist_train.y[:32])   # [0, 1]
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        finetune(str(snn), str(tmp_path / "t.snn.onnx"), str(tmp_path / "raw.npz"),
                 FinetuneConfig(epochs=1, batch_size=16), show_progress=False,
                 log=lambda *a: None)
    said = [r.getMessage() for r in caplog.records if "no negative value" in r.getMessage()]
    assert len(said) == 1, said


def test_api_finetune_trains_on_the_dataset_the_model_records(tmp_path, fmnist_snn):
    """``finetune(model, out)`` without data trained on Fashion-MNIST, the signature's
    default, whatever the model recorded (the CLI took the record); now it takes the record,
    says so, and a model that records none is a DataError naming it."""
    from onnx_snn.errors import DataError
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    logged = []
    r = finetune(str(fmnist_snn), str(tmp_path / "t.snn.onnx"),
                 config=FinetuneConfig(epochs=1, limit_train=32, limit_test=32),
                 show_progress=False, log=logged.append)
    assert any("fashion-mnist, the dataset" in line for line in logged), logged
    step = F.read_info(onnx.load(str(tmp_path / "t.snn.onnx"))).history[-1]
    assert step["train_data"] == "fashion-mnist:train" and r.epochs
    m = onnx.load(str(fmnist_snn))
    for p in list(m.metadata_props):        # no record at all
        if p.key == F.META_DATASET:
            m.metadata_props.remove(p)
    onnx.save(m, str(tmp_path / "none.snn.onnx"))
    with pytest.raises(DataError, match="none.snn.onnx: no training data.*records no dataset"):
        finetune(str(tmp_path / "none.snn.onnx"), str(tmp_path / "u.snn.onnx"),
                 config=FinetuneConfig(epochs=1), show_progress=False)
    assert not (tmp_path / "u.snn.onnx").exists()


def test_config_typos_and_damaged_T_and_preprocess_are_refused_by_name(tmp_path):
    """Keyword typos in the configs were raw TypeErrors; a file recording T = 100 000 ran
    that many steps by default in forward while every other reader refused it; to_model
    wrote a 3-channel normalization into a 1-channel model, which eval then refused."""
    from onnx_snn.errors import ModelLoadError, UsageError
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig
    from onnx_snn.scales import SearchConfig
    with pytest.raises(UsageError, match="'epoch'; it takes epochs"):
        FinetuneConfig(epoch=3)
    with pytest.raises(UsageError, match="'per_chanel'.*per_channel"):
        SearchConfig(per_chanel=False)
    with pytest.raises(UsageError, match="SearchConfig.per_channel"):
        SearchConfig(per_channel="False")
    x = B.rand_input(8)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, 2, method="datta", show_progress=False)
    net = SpikingNetwork(snn.model)
    with pytest.raises(UsageError, match="3 mean values.*one value, or one per channel"):
        net.to_model(preprocess={"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})
    assert F.read_info(net.to_model(preprocess={"mean": [0.5], "std": [0.25]})).preprocess == \
        {"mean": [0.5], "std": [0.25]}
    m = onnx.ModelProto.FromString(snn.model.SerializeToString())
    B.set_recorded_timesteps(m, 100000)
    onnx.save(m, str(tmp_path / "t.snn.onnx"))
    net = SpikingNetwork.from_onnx(str(tmp_path / "t.snn.onnx"))
    with pytest.raises(ModelLoadError, match=r"t\.snn\.onnx: the model records T=100000"):
        net(torch.from_numpy(x))                       # its default T: refused
    assert net(torch.from_numpy(x), timesteps=2).shape[0] == len(x)   # a T given: runs


@pytest.mark.parametrize("fold", [False, True])
def test_a_site_recorded_in_another_shape_than_its_current_is_a_damaged_file(fold):
    """A site's record and membrane edited alike to another shape than its layer's pass the
    reader's checks (they agree with each other); the PyTorch runtime met the current's
    shape in a broadcasting RuntimeError, reported as a bug in onnx-snn (exit 70). It is a
    damaged file (ModelLoadError: exit 3), naming the site, step by step and folded."""
    from onnx_snn.errors import ModelLoadError
    x = B.rand_input(8, seed=3)
    snn, site, m = B.dense_site_recorded_as_one_neuron(x)
    net = SpikingNetwork(m).train()
    net.fold_time = fold
    with pytest.raises(ModelLoadError, match=f"site {site.name}'s current has per-sample "
                                             f"shape \\[{site.shape[0]}\\], its record and "
                                             "membrane \\[1\\]"):
        net(torch.from_numpy(x))
    SpikingNetwork(snn.model).train()(torch.from_numpy(x))     # (the file as written runs)
