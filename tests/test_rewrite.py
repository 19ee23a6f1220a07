"""The spiking format: validity, the neuron's staircase, step graph == single-call graph,
convergence to the DNN at large T, hoisting, metadata."""
import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import builders as B
import onnx_snn
from onnx_snn.runtimes.ort import ModelRunner, run
from onnx_snn.scales import spike_count
from onnx_snn.spiking import format as F


@pytest.fixture(scope="module")
def x():
    return B.rand_input(48)


converted = B.converted


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(17, "relu_min"),
                                  lambda: B.vgg(21, "max_min"), lambda: B.resnet(9, "clip")])
def test_outputs_pass_full_check_and_run(make, x):
    _, _, snn = converted(make(), x)
    onnx.checker.check_model(snn.model, full_check=True)
    onnx.checker.check_model(snn.step_model(), full_check=True)
    r = run(snn.model, x)
    assert r.outputs[0].shape == (48, 10)
    pools = {p.name: p for p in snn.pools.values()}
    assert set(r.spikes) == set(snn.records) | set(pools)     # the pools' output spikes too
    for name, counts in r.spikes.items():
        neurons = snn.records[name].neurons if name in snn.records else \
            int(np.prod(pools[name].out_shape))
        assert counts.shape == (48,)
        assert np.all(counts >= 0) and np.all(counts <= 2 * neurons)


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("th,amp,frac", [(0.5, 0.75, 0.0), (0.5, 0.75, 0.5), (0.375, 1.25, 0.25)])
def test_neuron_under_constant_input_reproduces_the_staircase(T, th, amp, frac):
    """input -> one site -> output: the site sees the same current every step. The converted
    model's parameters are set to exact binary fractions so that float32 = float64."""
    m = B.single_site(13, mu=1.0)
    calib = (np.arange(-16, 48, dtype=np.float32) / 32.0).reshape(-1, 8)
    _, _, snn = converted(m, calib, T, "datta")
    h = (np.arange(-40, 120, dtype=np.float32) / 64.0).reshape(-1, 8)
    v0 = frac * th
    for p, val in (("threshold", th), ("amplitude", amp), ("v_init", v0)):
        B.set_site_param(snn.model, "lif0", p, val)
    r = run(snn.model, h)
    counts = spike_count(h, th, T, v0)
    np.testing.assert_array_equal(r.outputs[0], (np.float32(amp) * counts / T).astype(np.float32))
    np.testing.assert_array_equal(r.spikes["lif0"], counts.sum(1))


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip"),
                                  lambda: B.vgg(17, "relu")])
@pytest.mark.parametrize("T", [1, 3])
def test_step_graph_equals_single_call_graph(make, T, x):
    _, _, snn = converted(make(), x, T)
    a = run(snn.model, x)
    b = run(snn.step_model(), x)
    np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    for k in a.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k])


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip", pool="AveragePool", softmax=False),
                                  lambda: B.vgg(13, "clip", pool="MaxPool", softmax=False),
                                  lambda: B.resnet(13, "clip"),
                                  lambda: B.vgg(13, "relu", pool="AveragePool", softmax=False),
                                  lambda: B.pooled_twin("MaxPool"),
                                  lambda: B.pooled_twin("MaxPool", global_pool=True)])
def test_max_conversion_approaches_the_dnn_as_T_grows(make, x):
    """Rate coding converges to the DNN as T grows, max pooling included (format v2 pools the
    running spike counts; an OR of each step's spikes kept an error that does not shrink)."""
    nm = onnx_snn.prepare(make())
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    dnn = run(nm.model, x).outputs[0]
    errors = []
    for T in (16, 64, 256):
        snn = run(onnx_snn.build(nm, cal, T, "max").model, x).outputs[0]
        err = float(np.abs(snn - dnn).max())
        assert err <= 8.0 / T, f"T={T}: max |SNN - DNN| = {err}"
        errors.append(err)
    assert errors[0] > errors[1] > errors[2]


def test_timesteps_input_overrides_T(x):
    _, _, snn = converted(B.vgg(13, "clip"), x, T=2)
    r4 = run(snn.model, x, timesteps=4)
    step = run(snn.step_model(), x, timesteps=4)
    np.testing.assert_array_equal(r4.outputs[0], step.outputs[0])
    assert not np.array_equal(r4.outputs[0], run(snn.model, x).outputs[0])


def test_first_layer_is_hoisted_out_of_the_loop(x):
    _, _, snn = converted(B.vgg(13, "clip"), x)
    outer = [n.op_type for n in snn.model.graph.node]
    loop = next(n for n in snn.model.graph.node if n.op_type == "Loop")
    body = [n.op_type for n in loop.attribute[0].g.node]
    assert outer.count("Conv") == 1 and body.count("Conv") == 1
    assert body.count(F.NEURON_OP) == 3


def test_dynamic_batch(x):
    _, _, snn = converted(B.vgg(13, "clip"), x)
    full = run(snn.model, x).outputs[0]
    for n in (1, 7):
        np.testing.assert_allclose(run(snn.model, x[:n]).outputs[0], full[:n], atol=1e-6)


def test_metadata(x):
    nm, _, snn = converted(B.vgg(13, "clip"), x, T=3, method="deng")
    meta = F.metadata(snn.model)
    assert meta[F.META_FORMAT] == str(F.FORMAT_VERSION) == "2" and meta[F.META_TIMESTEPS] == "3"
    assert meta[F.META_METHOD] == "deng"
    sites = json.loads(meta[F.META_SITES])
    assert [s["name"] for s in sites] == ["lif0", "lif1", "lif2"]
    for s in sites:
        assert s["threshold"] == pytest.approx(s["mu"]) and s["v_init"] == pytest.approx(s["threshold"] / 2)
        for key in ("mu", "alpha", "beta", "threshold", "amplitude", "leak", "v_init", "objective_value"):
            assert key in s
    history = json.loads(meta[F.META_HISTORY])
    assert history[0]["step"] == "convert" and history[0]["timesteps"] == 3
    assert json.loads(meta[F.META_DROPOUT])[0]["ratio"] == pytest.approx(0.25)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in snn.model.graph.initializer}
    for s in sites:
        assert float(inits[f"{s['name']}.threshold"]) == pytest.approx(s["threshold"])
        assert float(inits[f"{s['name']}.leak"]) == 1.0
    fn = snn.model.functions[0]
    assert (fn.domain, fn.name) == (F.DOMAIN, F.NEURON_OP)


def test_runner_rejects_bad_shapes(x):
    from onnx_snn.errors import DataError
    _, _, snn = converted(B.vgg(13, "clip"), x)
    runner = ModelRunner(snn.model)
    with pytest.raises(DataError, match="does not fit"):
        runner.validate(np.zeros((2, 3, 12, 12), np.float32))
    bad = x[:4].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        runner.validate(bad)


@pytest.mark.parametrize("graph", ["loop", "step"])
def test_one_long_run_gives_every_shorter_run(graph, x):
    from onnx_snn.evaluate import evaluate, evaluate_prefixes
    _, _, snn = converted(B.resnet(13, "clip"), x, T=4, method="max")
    model = snn.model if graph == "loop" else snn.step_model()
    y = np.random.default_rng(0).integers(0, 10, len(x))
    many = evaluate_prefixes(model, (x, y), [1, 2, 4], show_progress=False)
    for T in (1, 2, 4):
        one = evaluate(model, (x, y), timesteps=T, show_progress=False)
        assert many[T].correct == one.correct
        for k in one.sites:
            assert many[T].sites[k].spikes_per_sample == pytest.approx(one.sites[k].spikes_per_sample)


def _grouped(transpose: bool = False):
    """conv-clip, grouped conv (2 groups) - clip, depthwise conv - clip, max pool, Flatten
    (after an NHWC Transpose with ``transpose``), dense: every channel mapping a per-channel
    amplitude folds through."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    r = np.random.default_rng(1)
    W = lambda n, *sh: onnx.numpy_helper.from_array(  # noqa: E731
        (r.standard_normal(sh) * np.sqrt(2.0 / np.prod(sh[1:]))).astype(np.float32), n)
    inits = [W("w1", 8, 1, 3, 3), W("w2", 8, 4, 3, 3), W("w3", 8, 1, 3, 3), W("w4", 8 * 6 * 6, 10),
             onnx.numpy_helper.from_array(np.array(0, np.float32), "lo"),
             onnx.numpy_helper.from_array(np.array(2, np.float32), "hi")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
             h.make_node("Clip", ["c1", "lo", "hi"], ["a1"]),
             h.make_node("Conv", ["a1", "w2"], ["c2"], pads=[1] * 4, group=2),
             h.make_node("Clip", ["c2", "lo", "hi"], ["a2"]),
             h.make_node("Conv", ["a2", "w3"], ["c3"], pads=[1] * 4, group=8),
             h.make_node("Clip", ["c3", "lo", "hi"], ["a3"]),
             h.make_node("MaxPool", ["a3"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    last = "p"
    if transpose:
        nodes.append(h.make_node("Transpose", ["p"], ["pt"], perm=[0, 2, 3, 1], name="nhwc"))
        last = "pt"
    nodes += [h.make_node("Flatten", [last], ["f"]), h.make_node("MatMul", ["f", "w4"], ["y"])]
    g = h.make_graph(nodes, "grouped", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def _reshaped(shape):
    """conv-clip, max pool, Reshape to the constant ``shape``, dense: [0, -1] keeps one row
    per sample; [-1, 36] makes one row per channel (the channel becomes the batch)."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    r = np.random.default_rng(2)
    F = 144 if shape[0] == 0 else shape[1]
    inits = [onnx.numpy_helper.from_array(r.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1"),
             onnx.numpy_helper.from_array(r.standard_normal((F, 5)).astype(np.float32) * 0.1, "w2"),
             onnx.numpy_helper.from_array(np.array(shape, np.int64), "shape"),
             onnx.numpy_helper.from_array(np.array(0, np.float32), "lo"),
             onnx.numpy_helper.from_array(np.array(2, np.float32), "hi")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
             h.make_node("Clip", ["c1", "lo", "hi"], ["a1"]),
             h.make_node("MaxPool", ["a1"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Reshape", ["p", "shape"], ["f"], name="rows"),
             h.make_node("Gemm", ["f", "w2"], ["y"])]
    g = h.make_graph(nodes, "reshaped", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["M", 5])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


@pytest.mark.parametrize("method", ["datta", "refined"])   # refined: per-channel amplitudes
@pytest.mark.parametrize("make,kept", [(lambda: B.vgg(13, "clip"), set()),
                                       (lambda: B.resnet(13, "clip"), {"lif0"}),
                                       (lambda: "tests/data/torch_legacy_vgg_clip_op11.onnx", set()),
                                       (_grouped, set()),
                                       # a Transpose reorders channels: one amplitude passes it,
                                       # one per channel does not
                                       (lambda: _grouped(transpose=True), {"refined": {"lif2"}}),
                                       # per channel only through a Reshape that keeps the batch
                                       (lambda: _reshaped([0, -1]), set()),
                                       (lambda: _reshaped([-1, 36]), {"refined": {"lif0"}})])
def test_binary_spikes_fold_where_exact(make, kept, method, x):
    kept = kept.get(method, set()) if isinstance(kept, dict) else kept
    import os
    src = make()
    if isinstance(src, str):
        src = os.path.join(os.path.dirname(__file__), "..", src)
    _, _, snn = converted(src, x, T=3, method=method)
    if method == "refined":
        assert all(r.per_channel for r in snn.records.values())
    for step in (False, True):
        binary = snn.binary_model(step=step)
        onnx.checker.check_model(binary, full_check=True)
        result = snn.report["binary_spikes"]
        assert {s for s, what in result.items() if what != "folded"} == kept
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in binary.graph.initializer}
        for site, what in result.items():
            assert bool(np.all(inits[f"{site}.amplitude"] == 1.0)) == (what == "folded")
        # the records read back say what the file holds: a folded site's amplitude is 1 (it
        # read beta * mu, the folded value), which folded_amplitude keeps; they round-trip
        from onnx_snn.spiking import format as F
        for rec in F.read_info(binary).sites:
            held = inits[f"{rec.name}.amplitude"]
            np.testing.assert_allclose(np.broadcast_to(rec.channel_values(rec.amplitude),
                                                       held.shape), held, rtol=1e-6)
            assert (rec.folded_amplitude is not None) == (result[rec.name] == "folded")
            if rec.folded_amplitude is not None:
                np.testing.assert_allclose(rec.folded_amplitude, snn.records[rec.name].amplitude)
            assert F.SiteRecord.from_dict(rec.to_dict()) == rec
        a = run(snn.step_model() if step else snn.model, x)
        b = run(binary, x)
        np.testing.assert_allclose(a.outputs[0], b.outputs[0], rtol=1e-5, atol=1e-5)
        for k in a.spikes:
            np.testing.assert_array_equal(a.spikes[k], b.spikes[k])


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip")])
def test_binary_spikes_fold_signed_neurons(make, x):
    """Spikes of -1/0/+1: the next layer takes the amplitude as it does for 0/1 spikes."""
    nm = onnx_snn.prepare(make())
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    snn = onnx_snn.build(nm, cal, 3, "refined", onnx_snn.SearchConfig(signed_spikes=True))
    binary = snn.binary_model()
    onnx.checker.check_model(binary, full_check=True)
    assert "folded" in snn.report["binary_spikes"].values()
    from onnx_snn.spiking import format as F
    assert F.read_info(binary).format_version == 3
    a, b = run(snn.model, x), run(binary, x)
    np.testing.assert_allclose(a.outputs[0], b.outputs[0], rtol=1e-5, atol=1e-5)
    for k in a.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k])


def _mlp(extra_outputs=(), input_name="x"):
    from onnx import TensorProto as TP
    from onnx import helper as h
    r = np.random.default_rng(0)
    I = lambda n, a: onnx.numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    inits = [I("w1", r.standard_normal((6, 8))), I("b1", np.zeros(8)), I("w2", r.standard_normal((8, 3))),
             I("b2", np.zeros(3)), I("z", 0.0), I("mu", 2.0)]
    nodes = [h.make_node("Gemm", [input_name, "w1", "b1"], ["g1"], name="fc1"),
             h.make_node("Clip", ["g1", "z", "mu"], ["r1"], name="act"),
             h.make_node("Gemm", ["r1", "w2", "b2"], ["y"], name="fc2")]
    outs = [h.make_tensor_value_info("y", TP.FLOAT, ["N", 3])]
    outs += [h.make_tensor_value_info(o, TP.FLOAT, ["N", 8]) for o in extra_outputs]
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info(input_name, TP.FLOAT, ["N", 6])], outs, inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_time_invariant_outputs_pass_through():
    x = np.random.default_rng(1).random((8, 6)).astype(np.float32)
    _, _, snn = converted(_mlp(["g1"]), x)
    r = run(snn.model, x)
    dnn = run(_mlp(["g1"]), x)
    np.testing.assert_allclose(r.outputs[1], dnn.outputs[1], rtol=1e-6)  # the analog pre-activation
    np.testing.assert_allclose(run(snn.step_model(), x).outputs[1], dnn.outputs[1], rtol=1e-6)


def test_reserved_names_are_refused():
    from onnx_snn.errors import UnsupportedModelError
    x = np.random.default_rng(1).random((8, 6)).astype(np.float32)
    with pytest.raises(UnsupportedModelError, match="reserves"):
        converted(_mlp(input_name="timesteps"), x)
    # refused when the model is read, before a calibration pass (an outside sweep)
    with pytest.raises(UnsupportedModelError, match="model: .*reserves"):
        onnx_snn.prepare(_mlp(input_name="timesteps"))


def test_inputs_are_pinned_to_the_calibrated_size():
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx_snn.errors import DataError
    b = B.GraphBuilder(13)
    y = b.act(b.conv("input", 1, 4), "clip")
    y = b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [y])]), 4, 10)
    g = h.make_graph(b.nodes, "dyn", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, "H", "W"])],
                     [h.make_tensor_value_info(y, TP.FLOAT, ["N", 10])], b.inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    _, _, snn = converted(m, B.rand_input(4, (1, 6, 6)))
    assert run(snn.model, B.rand_input(2, (1, 6, 6))).outputs[0].shape == (2, 10)
    with pytest.raises(DataError, match=r"shape \[2, 1, 8, 8\] does not fit"):
        run(snn.model, B.rand_input(2, (1, 8, 8)))


def test_fixed_batch_models_evaluate_any_count():
    from onnx_snn.evaluate import evaluate
    m = B.vgg(13, "clip")
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = 4
    x = B.rand_input(8)
    _, _, snn = converted(m, x)
    y = np.zeros(6, int)
    r = evaluate(snn.model, (x[:6], y), show_progress=False)
    assert r.samples == 6 and r.correct is not None
    assert run(snn.model, x[:6]).outputs[0].shape == (6, 10)


def test_dropout_mask_output_is_all_ones():
    from onnx import TensorProto as TP
    from onnx import helper as h
    m = _mlp()
    g = m.graph
    g.node[2].input[0] = "d1"
    g.node.insert(2, h.make_node("Dropout", ["r1", "ratio"], ["d1", "mask"], name="drop"))
    g.initializer.append(onnx.numpy_helper.from_array(np.array(0.3, np.float32), "ratio"))
    g.output.append(h.make_tensor_value_info("mask", TP.BOOL, ["N", 8]))
    x = np.random.default_rng(1).random((8, 6)).astype(np.float32)
    _, _, snn = converted(m, x)
    r = run(snn.model, x)
    assert r.outputs[1].dtype == bool and r.outputs[1].all()


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), global_pool=st.booleans())
def test_max_pooled_net_converges_like_its_average_pooled_twin(seed, global_pool):
    """At T=512 a max-pooled net agrees with its DNN as closely as its average-pooled twin."""
    x = B.rand_input(64, seed=seed + 1)
    agree, err = {}, {}
    for pool in ("MaxPool", "AveragePool"):
        nm = onnx_snn.prepare(B.pooled_twin(pool, seed=seed, global_pool=global_pool))
        cal = onnx_snn.calibrate(nm, x, show_progress=False)
        dnn = run(nm.model, x).outputs[0]
        snn = run(onnx_snn.build(nm, cal, 512, "max").model, x).outputs[0]
        agree[pool] = float(np.mean(snn.argmax(1) == dnn.argmax(1)))
        err[pool] = float(np.abs(snn - dnn).max() / (np.abs(dnn).max() + 1e-9))
    assert agree["MaxPool"] >= agree["AveragePool"] - 2 / 64, agree
    assert err["MaxPool"] <= max(2 * err["AveragePool"], 0.02), err


def test_free_spatial_input_dims_are_pinned_with_a_note():
    """A DNN input [N, 1, H, W]: the spiking model takes the calibration data's size, and says so."""
    m = B.resnet(13, "clip")         # global average pooling: any H, W
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, name in zip(dims[2:], ("H", "")):       # a named and an unnamed free dimension
        d.Clear()
        if name:
            d.dim_param = name
    x = B.rand_input(8)
    snn = onnx_snn.convert(m, x, timesteps=2, method="datta", show_progress=False)
    note = next(n for n in snn.report["notes"] if "free dimensions" in n)
    assert "['N', 1, 'H', '?']" in note and "['N', 1, 12, 12] only" in note
    dims = snn.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 12, 12]


def _max_pool(counts: np.ndarray, attrs: dict, global_pool: bool) -> np.ndarray:
    """numpy max pool of [N, C, H, W] (no padding, the builders' pools)."""
    if global_pool:
        return counts.max(axis=(2, 3))
    (kh, kw), (sh, sw) = attrs["kernel_shape"], attrs.get("strides", attrs["kernel_shape"])
    n, c, h, w = counts.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.full((n, c, oh, ow), -np.inf)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, counts[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw])
    return out


@pytest.mark.parametrize("T", [1, 3, 8])
@pytest.mark.parametrize("global_pool", [False, True])
def test_pool_spike_counts_are_the_max_of_the_window_counts(T, global_pool):
    """A spiking max pool's counted output spikes equal, per pooled output, the largest spike
    count of its window's inputs (the pool is rate-exact), summed per sample; in the loop
    graph, the step graph and both runtimes alike."""
    x = B.rand_input(32, seed=3)
    snn = onnx_snn.convert(B.pooled_twin("MaxPool", global_pool=global_pool), x, timesteps=T,
                           method="deng", show_progress=False)
    (pool,) = snn.pools.values()
    assert pool.counted
    site = next(r for r in snn.records.values() if r.output == pool.input)
    step = snn.step_model()
    step.graph.output.append(onnx.helper.make_tensor_value_info(pool.input, onnx.TensorProto.FLOAT, None))
    import onnxruntime as ort
    sess = ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"])
    view = F.read_spiking(step)
    states = {st.names.input: F.initial_state(view, st, len(x)) for st in view.states}
    names = [pool.input] + [st.names.next for st in view.states]
    fired = 0
    for _ in range(T):
        out = sess.run(names, {"input": x, **states})
        fired = fired + (out[0] != 0)          # each input neuron's spikes so far
        states = {st.names.input: v for st, v in zip(view.states, out[1:])}
    node = next(n for n in B.pooled_twin("MaxPool", global_pool=global_pool).graph.node
                if n.op_type.endswith("MaxPool"))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    want = _max_pool(fired.astype(np.float64), attrs, global_pool).reshape(len(x), -1).sum(1)
    assert want.sum() > 0 and site.name in run(snn.model, x).spikes
    for model in (snn.model, snn.step_model()):
        np.testing.assert_array_equal(run(model, x).spikes[pool.name], want)
    B.assert_runtimes_agree(snn.model, x)


def test_a_pool_of_currents_is_not_counted():
    """--pool-first puts the max pool before the activation: it pools currents, whose
    output is no spike train, and gets no counter."""
    x = B.rand_input(16)
    snn = onnx_snn.convert(B.pooled_twin("MaxPool"), x, timesteps=2, method="max",
                           pool_first=True, show_progress=False)
    assert snn.pools and not any(p.counted for p in snn.pools.values())
    assert set(run(snn.model, x).spikes) == set(snn.records)


@pytest.mark.parametrize("method", ["datta", "refined"])
def test_model_names_like_the_formats_own_are_renamed(method):
    """A tensor inside the model named like a site's parameter ('lif0.threshold', here the
    first site's own output), one named 'snn.*', a node named 'lif1' and nodes sharing one
    name (the ONNX checker allows it, onnxruntime does not) are renamed by the normalization:
    the spiking graph converts and runs (it had two definitions of 'lif0.threshold')."""
    from onnx_snn.runtimes.ort import run as run_ort
    b = B.GraphBuilder(13)
    y = b.act(b.conv("input", 1, 4), "relu")
    y = b.act(b.conv(y, 4, 4), "relu")
    y = b.gemm(b.node("Flatten", [y], axis=1), 4 * 12 * 12, 10)
    m = b.model("input", y, (1, 12, 12), 10)
    g = m.graph
    acts = [n for n in g.node if n.op_type == "Relu"]
    rename = {acts[0].input[0]: "lif0", acts[0].output[0]: "lif0.threshold",
              acts[1].output[0]: "snn.hidden"}
    for n in g.node:
        n.input[:] = [rename.get(t, t) for t in n.input]
        n.output[:] = [rename.get(t, t) for t in n.output]
        n.name = "layer"
    acts[1].name = "lif1"
    onnx.checker.check_model(m)
    x = B.rand_input(24)
    snn = onnx_snn.convert(m, x, timesteps=2, method=method, show_progress=False)
    onnx.checker.check_model(snn.model, full_check=True)
    import re
    counts = [int(m.group(1)) for n in snn.report["notes"]
              for m in [re.match(r"renamed (\d+) (node )?name\(s\)", n)] if m]
    assert sum(counts) == 8, snn.report["notes"]        # 6 nodes, 2 tensors
    names = [t for n in snn.model.graph.node for t in n.output]
    assert len(names) == len(set(names))
    assert np.all(np.isfinite(run_ort(snn.model, x).outputs[0]))


def test_an_output_named_like_the_formats_own_is_refused():
    """A graph output keeps its name (the user reads it by name): one the format reserves is
    refused with the rename advice, not converted into a graph with two definitions."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx_snn.errors import UnsupportedModelError
    b = B.GraphBuilder(13)
    y = b.act(b.conv("input", 1, 4), "relu")
    z = b.gemm(b.node("Flatten", [y], axis=1), 4 * 12 * 12, 10)
    m = b.model("input", z, (1, 12, 12), 10)
    for n in m.graph.node:
        n.input[:] = ["lif0.threshold" if t == y else t for t in n.input]
        n.output[:] = ["lif0.threshold" if t == y else t for t in n.output]
    m.graph.output.append(h.make_tensor_value_info("lif0.threshold", TP.FLOAT, ["N", 4, 12, 12]))
    with pytest.raises(UnsupportedModelError, match="'lif0.threshold'.*rename it"):
        onnx_snn.convert(m, B.rand_input(16), timesteps=2, method="datta", show_progress=False)


def test_the_dnns_records_are_carried_and_its_top1_is_named_as_the_dnns():
    """A DNN's arch, dataset and class names pass into its spiking model as they are; its
    test accuracy passes as onnx_snn.dnn_test_accuracy (under its own key a spiking or deploy
    file seemed to claim the DNN's top-1)."""
    m = B.vgg(13, "clip")
    classes = [f"c{i}" for i in range(10)]
    onnx.helper.set_model_props(m, {"onnx_snn.arch": "vgg", "onnx_snn.test_accuracy": "92.27",
                                    "onnx_snn.classes": json.dumps(classes)})
    meta = F.metadata(onnx_snn.convert(m, B.rand_input(16), 2, method="datta",
                                       show_progress=False).model)
    assert meta["onnx_snn.arch"] == "vgg" and json.loads(meta["onnx_snn.classes"]) == classes
    assert meta["onnx_snn.dnn_test_accuracy"] == "92.27" and "onnx_snn.test_accuracy" not in meta


@pytest.mark.parametrize("method", ["max", "datta"])
def test_spike_counts_are_exact_when_a_large_site_fires_on_every_step(method):
    """A site of one amplitude and 25 088 neurons that all fire on every step counts exactly
    T spikes per neuron in onnxruntime, as the torch runtime counts them: the counter divides
    each spike by the amplitude before the sum (summing the amplitudes first came out one
    spike high per step in float32)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.full((32, 1, 3, 3), 0.1, np.float32), "w"),
             numpy_helper.from_array(np.full(32, 0.1, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((25088, 10)).astype(np.float32) * 0.01, "fc")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["N", 1, 28, 28])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.random((16, 1, 28, 28), dtype=np.float32)
    T = 3
    snn = onnx_snn.convert(model, x, timesteps=T, method=method, show_progress=False)
    (site,) = snn.records.values()
    assert not site.per_channel
    loud = x * 1000 + 1                  # every current far above the threshold
    counts = run(snn.model, loud).spikes[site.name]
    np.testing.assert_array_equal(counts, np.full(len(x), T * 25088.0))
    B.assert_runtimes_agree(snn.model, loud, atol=1e-3)
