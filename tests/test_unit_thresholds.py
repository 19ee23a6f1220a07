"""Unit thresholds (onnx_snn.spiking.unit_thresholds) and the deploy graph's faster form built
on them (deploy --unit-thresholds): the HardSigmoid step functions are exact for every float32,
the rescaled model fires as the model does, and the faster deploy graph matches the loop graph."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import builders as B
import onnx_snn
from onnx_snn.graph import walk
from onnx_snn.runtimes.ort import run
from onnx_snn.spiking import format as F
from onnx_snn.spiking.batch_chunks import per_sample_graph
from onnx_snn.spiking.deploy import UNIT_THRESHOLD, deploy_model, step_functions
from onnx_snn.spiking.unit_thresholds import identity_convolutions, unit_thresholds

from test_deploy import MODELS


#: the deploy models, and ResNets whose stem's pool feeds a block and its identity shortcut
#: (torchvision's): the shortcut's Add reads the pooled spikes
UNIT_MODELS = {**MODELS,
               "resnet_maxpool_stem": lambda: B.resnet(13, "clip", stem_pool="MaxPool"),
               "resnet_avgpool_stem_op17": lambda: B.resnet(17, "relu", stem_pool="AveragePool")}


@pytest.fixture(scope="module")
def x():
    return B.rand_input(40)


def _near(level: int) -> np.ndarray:
    """float32 values at and around ``level``: a few units in the last place either side, the
    top of the binade below, and values far away."""
    lv = np.float32(level)
    level = float(lv)
    vals = [lv]
    up = down = lv
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        vals += [up, down]
    p = np.float32(2.0 ** np.floor(np.log2(level)))          # the binade's power of two
    vals += [p, np.nextafter(p, np.float32(-1)), np.nextafter(p, np.float32(np.inf)),
             np.float32(0), np.float32(-level), np.float32(level * 3.7), np.float32(1e-30),
             np.float32(level - 0.5), np.float32(1e6), np.float32(-1e6)]
    return np.array(vals, np.float32)


def _hard_sigmoid_ort(z: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    g = helper.make_graph([helper.make_node("HardSigmoid", ["z"], ["y"], alpha=alpha, beta=beta)],
                          "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"z": z})[0]


@pytest.mark.parametrize("level", list(range(1, 70)) + [127, 128, 129, 1000, 4096, 65535, 1 << 23,
                                   UNIT_THRESHOLD, 0.75, 1e-3, 0.1, 3.3e-5, 1234.567])
def test_step_functions_are_exact_for_every_float_near_the_level(level):
    (a, b), (qa, qb) = step_functions(level)
    z = _near(level)
    want_s = (z >= np.float32(level)).astype(np.float32)
    for alpha, beta, want in ((a, b, want_s), (qa, qb, 1 - want_s)):
        # the product is exact (alpha a power of two); with or without a fused multiply-add
        plain = np.float32(z * np.float32(alpha)) + np.float32(beta)
        fused = (z.astype(np.float64) * alpha + beta).astype(np.float32)
        for v in (plain, fused):
            np.testing.assert_array_equal(np.clip(v, 0, 1), want)
        big = np.tile(z, 64)        # onnxruntime's vectorized kernel, not only its tail loop
        np.testing.assert_array_equal(_hard_sigmoid_ort(big, alpha, beta), np.tile(want, 64))


@settings(deadline=None, max_examples=300)
@given(level=st.one_of(st.integers(1, 64), st.floats(2.0 ** -20, 2.0 ** 20, width=32)),
       z=st.floats(-1e4, 1e4, width=32))
def test_step_functions_agree_with_a_compare_anywhere(level, z):
    level = float(np.float32(level))
    (a, b), (qa, qb) = step_functions(level)
    z = np.float32(z)
    s = np.clip(np.float32(z * np.float32(a)) + np.float32(b), 0, 1)
    q = np.clip(np.float32(z * np.float32(qa)) + np.float32(qb), 0, 1)
    assert s == float(z >= level) and q == 1 - s


def test_step_functions_refuse_thresholds_they_cannot_make_exact():
    for bad in (0, -1, float("nan"), float("inf"), 1e-40):
        with pytest.raises(ValueError):
            step_functions(bad)


@pytest.fixture(scope="module")
def x2():
    """Inputs the models were not calibrated on: a threshold chosen from the calibration
    currents (a percentile) can equal one of them exactly, and that neuron's tie is decided
    by float rounding, which the rescaling changes."""
    return B.rand_input(40, seed=7)


def _close(ref, got, tol=1e-4, counts=True):
    """The same spikes up to float rounding: the spike totals within 0.2 % (and one spike)
    per site, and the outputs within ``tol`` for at least 95 % of the samples (a neuron
    that sits within rounding of its threshold may flip, and move its sample's outputs)."""
    for a, b in zip(ref.outputs, got.outputs):
        rows = np.all(np.isclose(b, a, rtol=tol, atol=tol).reshape(len(a), -1), axis=1)
        assert rows.mean() >= 0.95, f"{(~rows).sum()} of {len(rows)} samples differ"
    for k, v in (ref.spikes if counts else {}).items():
        assert abs(float(v.sum()) - float(got.spikes[k].sum())) <= max(1.0, 2e-3 * float(v.sum())), k


@pytest.mark.parametrize("name", sorted(UNIT_MODELS))
def test_rescaled_model_fires_as_the_model_does(name, x, x2):
    """Every site that takes the scale gets thresholds of 1 and the loop graph gives the
    same spike counts and outputs; residual sites whose current adds another site's spikes
    (directly or pooled) keep theirs (and say why) until identity convolutions are put in."""
    snn = B.converted(UNIT_MODELS[name](), x, 2, "refined")[2]
    ref = run(snn.model, x2)
    m, report = unit_thresholds(snn.model)
    view = F.read_spiking(m)
    for site, what in report.items():
        th = view.param(site, "threshold")
        assert (what == "unit") == bool(np.all(th == 1)), (site, what)
    _close(ref, run(m, x2))
    with_convs, sites = identity_convolutions(snn.model)
    m2, report2 = unit_thresholds(with_convs)
    kept = {s: w for s, w in report.items() if w != "unit"}
    if name.startswith("resnet"):
        # (a pool that both the block and its shortcut read: "is read by 2 nodes")
        assert kept and all("spikes of" in w or " is read by " in w for w in kept.values()) \
            and sites
    assert all(w == "unit" for w in report2.values()), report2
    _close(ref, run(m2, x2))


def test_a_shared_weight_or_a_leak_keeps_the_threshold(x, x2):
    """A site whose current comes from a weight another layer uses too is kept, with the
    reason; a leak below one is rescaled (it multiplies either form alike) but the deploy
    graph keeps such a neuron in its plain form."""
    snn = B.converted(B.vgg(13, "clip"), x, 2, "refined")[2]
    m = snn.model
    view = F.read_spiking(m)
    first = view.info.sites[1]
    producer = next(n for n in walk.all_nodes(m.graph) if first.input in n.output)
    reader = helper.make_node("Identity", [producer.input[1]], ["shared.copy"], name="share")
    m.graph.node.insert(0, reader)
    _, report = unit_thresholds(m)
    assert report[first.name].startswith("kept: the weight of") and "shared" in report[first.name]
    # a leak
    snn = B.converted(B.pooled_twin("MaxPool"), x, 3, "refined")[2]
    for s in F.read_info(snn.model).sites:
        B.set_site_param(snn.model, s.name, "leak", np.float32(0.875))
    ref = run(snn.model, x2)
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True)
    assert "GreaterOrEqual" in {n.op_type for n in per_sample_graph(dep).node}
    _close(ref, run(dep, x2))


@pytest.mark.parametrize("name", sorted(UNIT_MODELS))
@pytest.mark.parametrize("T", [1, 2, 4])
def test_faster_deploy_graph_matches_the_loop_graph(name, T, x, x2):
    """deploy --unit-thresholds: every neuron as Add and HardSigmoid (no compare, cast or
    subtraction), the same spike counts and the outputs within float rounding; a stem's
    pooled spikes that a shortcut adds have their amplitude folded too (no Mul)."""
    snn = B.converted(UNIT_MODELS[name](), x, T, "refined")[2]
    ref = run(snn.model, x2)
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True)
    onnx.checker.check_model(dep, full_check=True)
    _close(ref, run(dep, x2))
    ops = [n.op_type for n in per_sample_graph(dep).node]
    assert "GreaterOrEqual" not in ops and "Cast" not in ops and "CastLike" not in ops
    assert ops.count("HardSigmoid") == len(F.read_info(snn.model).sites) * (2 * T - 1)
    history = json.loads(F.metadata(dep)[F.META_HISTORY])[-1]
    assert set(history["unit_thresholds"].values()) == {"unit"}
    if "stem" in name:
        assert "Mul" not in ops


def _constant_adds_of_convolutions(model: onnx.ModelProto) -> list:
    """The Adds of a Conv's output and a constant (each one makes onnxruntime reorder the
    convolution's output out of its blocked layout)."""
    g = per_sample_graph(model)
    made = {o: n.op_type for n in g.node for o in n.output}
    consts = {i.name for i in g.initializer}
    return [n.name for n in g.node if n.op_type == "Add"
            and any(made.get(i) == "Conv" for i in n.input) and any(i in consts for i in n.input)]


@pytest.mark.parametrize("name", ["vgg_maxpool_op13", "resnet_op13", "twin_maxpool"])
@pytest.mark.parametrize("T", [1, 2])
def test_the_first_steps_start_rides_in_the_convolutions_bias(name, T, x, x2):
    """Step 0's membrane start (1 + v_init) is added by the convolution's bias, not by an Add
    of a constant that onnxruntime would run in NCHW: this step's convolutions take it
    themselves, and a cheap one computed once for all steps (on the data input: 9
    multiply-adds per output here) is copied for step 0."""
    snn = B.converted(MODELS[name](), x, T, "refined")[2]
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True)
    assert _constant_adds_of_convolutions(dep) == []
    convs = [n for n in per_sample_graph(dep).node if n.op_type == "Conv"]
    first = [n for n in convs if n.input[0] == per_sample_graph(dep).input[0].name]
    assert len(first) == (2 if T > 1 else 1)         # the copy for step 0 (at T = 1 the only one)
    _close(run(snn.model, x2), run(dep, x2))


@pytest.mark.parametrize("name", ["resnet_op13", "resnet_sum_op11", "resnet_op22"])
def test_a_residual_sums_offset_rides_in_a_convolutions_bias(name, x, x2):
    """A residual sum's bias-correction offset, added by its own node in the spiking model
    (no one layer computes the sum), goes into the bias of the convolution that computes
    one operand in the deploy graph: no Add of a constant is left for onnxruntime to run in
    NCHW, at any step, and the model is the same (outputs within float rounding)."""
    snn = B.converted(MODELS[name](), x, 2, "refined")[2]
    offsets = [n.name for n in walk.all_nodes(snn.model.graph) if n.name.endswith(".add_offset")]
    assert offsets                      # the case itself: sums whose offset has its own node
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True)
    consts = {i.name for i in per_sample_graph(dep).initializer}
    assert [n.name for n in per_sample_graph(dep).node if n.op_type in ("Add", "Sum")
            and any(i in consts for i in n.input)] == []
    _close(run(snn.model, x2), run(dep, x2))


def test_a_costly_convolution_on_the_data_input_is_not_copied(x):
    """A first convolution of 8 x 3 x 3 = 72 multiply-adds per output (more than
    DUPLICATE_CONV_MAX_MACS) keeps its Add at T = 2; at T = 1 it takes the start itself."""
    from onnx_snn.spiking.deploy import DUPLICATE_CONV_MAX_MACS
    x8 = B.rand_input(40, shape=(8, 12, 12))
    model = B.pooled_twin("MaxPool", in_shape=(8, 12, 12))
    assert 8 * 9 > DUPLICATE_CONV_MAX_MACS
    for T, adds, firsts in ((2, 1, 1), (1, 0, 1)):
        snn = B.converted(model, x8, T, "refined")[2]
        dep = deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True)
        assert len(_constant_adds_of_convolutions(dep)) == adds, T
        assert sum(n.op_type == "Conv" and n.input[0] == per_sample_graph(dep).input[0].name
                   for n in per_sample_graph(dep).node) == firsts
        _close(run(snn.model, x8[:16]), run(dep, x8[:16]))


def test_onnxruntime_keeps_the_neurons_in_its_blocked_layout(x):
    """What the fold is for: in onnxruntime's optimized graph no neuron's Add reads a
    reordered convolution output (where the CPU has no blocked layout there is no reorder)."""
    import tempfile, os
    snn = B.converted(MODELS["vgg_maxpool_op13"](), x, 2, "refined")[2]
    dep = deploy_model(F.read_spiking(snn.model), unit_thresholds=True)
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(dep.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
    made = {o: n for n in per_sample_graph(opt).node for o in n.output}
    reordered = [n.name for n in per_sample_graph(opt).node if n.op_type == "Add" and any(
        made.get(i) is not None and made[i].op_type == "ReorderOutput"
        and made[made[i].input[0]].op_type == "Conv" for i in n.input if i in made)]
    assert reordered == []


@pytest.mark.parametrize("T", [1, 2, 3])
def test_faster_deploy_graph_of_pools_moved_first_and_signed_neurons(T, x, x2):
    """Pools of currents (--pool-first) take the scale; signed neurons keep their own form."""
    snn = onnx_snn.convert(MODELS["vgg_maxpool_op13"](), x, T, "refined", pool_first=True,
                           show_progress=False)
    _close(run(snn.model, x2), run(deploy_model(F.read_spiking(snn.model), spike_counts=True,
                                                unit_thresholds=True), x2))
    nm, cal, _ = B.converted(MODELS["resnet_op13"](), x, T)
    signed = onnx_snn.build(nm, cal, T, "datta", onnx_snn.SearchConfig(signed_spikes=True))
    dep = deploy_model(F.read_spiking(signed.model), spike_counts=True, unit_thresholds=True)
    assert "HardSigmoid" not in {n.op_type for n in per_sample_graph(dep).node}
    _close(run(signed.model, x2), run(dep, x2))


@settings(deadline=None, max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 5), v0=st.floats(-0.5, 0.9), amp=st.sampled_from([1.0, 0.75]),
       per_channel=st.booleans())
def test_faster_deploy_graph_for_any_neuron_parameters(T, v0, amp, per_channel, x, x2):
    snn = B.converted(B.pooled_twin("MaxPool"), x, T, "datta")[2]
    m = snn.model
    for s in F.read_info(m).sites:
        shape = [s.shape[0]] + [1] * (len(s.shape) - 1) if per_channel else []
        ramp = np.linspace(0.5, 1.0, s.shape[0]).reshape(shape) if per_channel else 1.0
        th = F.read_spiking(m).param(s.name, "threshold")
        B.set_site_param(m, s.name, "threshold", th * ramp)
        B.set_site_param(m, s.name, "v_init", np.float32(v0) * th * ramp)
        B.set_site_param(m, s.name, "amplitude", np.float32(amp) * np.ones(shape, np.float32))
    _close(run(m, x2), run(deploy_model(F.read_spiking(m), spike_counts=True,
                                        unit_thresholds=True), x2))


def test_cli_deploy_unit_thresholds_then_eval(tmp_path, x, x2):
    from test_deploy import _cli
    snn = B.converted(B.resnet(13, "clip"), x, 2, "refined")[2]
    src = tmp_path / "m.snn.onnx"
    snn.save(str(src))
    np.savez(tmp_path / "d.npz", x=x2, y=np.zeros(len(x2), np.int64))
    p = _cli("deploy", str(src), "--unit-thresholds", "-o", str(tmp_path / "u.onnx"))
    assert p.returncode == 0, p.stderr
    d = onnx.load(str(tmp_path / "u.onnx"))
    assert "HardSigmoid" in {n.op_type for n in per_sample_graph(d).node}
    _close(run(snn.model, x2), run(d, x2), counts=False)
    p = _cli("eval", str(tmp_path / "u.onnx"), "--data", str(tmp_path / "d.npz"))
    assert p.returncode == 0 and "top-1" in p.stdout, p.stderr
    # convert: the option shapes the deploy graph, so it needs --deploy (refused before the work)
    dnn = tmp_path / "dnn.onnx"
    onnx.save(B.vgg(13, "clip", softmax=False), str(dnn))
    np.save(tmp_path / "c.npy", x)
    p = _cli("convert", str(dnn), "--calib", str(tmp_path / "c.npy"), "-o", str(tmp_path / "n.onnx"),
             "--unit-thresholds", "-q")
    assert p.returncode != 0 and "--deploy" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "n.onnx").exists()
    p = _cli("convert", str(dnn), "--calib", str(tmp_path / "c.npy"), "-o", str(tmp_path / "n.onnx"),
             "--deploy", str(tmp_path / "n.deploy.onnx"), "--unit-thresholds", "-q")
    assert p.returncode == 0, p.stderr
    d = onnx.load(str(tmp_path / "n.deploy.onnx"))
    assert "HardSigmoid" in {n.op_type for n in per_sample_graph(d).node}
    assert json.loads(F.metadata(d)[F.META_HISTORY])[-1]["unit_thresholds"]


def _graph(nodes, inits, in_shape, out_shape):
    from onnx import numpy_helper as nh
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
                          [nh.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_a_constant_two_sites_share_or_a_site_of_two_axes_behind_a_matmul_is_kept():
    """Rescaling a constant that two sites add would rescale it for both: kept. A MatMul's
    output features are the last axis, not a 2-D site's channels (its first): since
    2026-12-05 the conversion gives such a site one group (sequential.channel_axis), which
    the unit form rescales (unit_thresholds' guard for a file converted before, per
    'channel' along the tokens, stays). Either way the faster deploy graph gives the model's
    spikes."""
    r = np.random.default_rng(0)
    H = helper.make_node
    shared = _graph(
        [H("Conv", ["input", "W1"], ["m1"], name="conv1", pads=[1, 1, 1, 1]),
         H("Add", ["m1", "c"], ["a1"], name="add1"), H("Clip", ["a1", "lo", "hi"], ["r1"], name="clip1"),
         H("Conv", ["r1", "W2"], ["m2"], name="conv2", pads=[1, 1, 1, 1]),
         H("Add", ["c", "m2"], ["a2"], name="add2"), H("Clip", ["a2", "lo", "hi"], ["r2"], name="clip2"),
         H("Flatten", ["r2"], ["f"], name="fl"), H("MatMul", ["f", "W3"], ["out"], name="mm3")],
        {"W1": r.standard_normal((4, 1, 3, 3)) * 0.5, "W2": r.standard_normal((4, 4, 3, 3)) * 0.3,
         "W3": r.standard_normal((144, 4)) * 0.2, "c": r.random((1, 4, 6, 6)) * 0.3, "lo": 0.0, "hi": 2.0},
        ["N", 1, 6, 6], ["N", 4])
    matmul = _graph(
        [H("MatMul", ["input", "W1"], ["m1"], name="mm1"), H("Clip", ["m1", "lo", "hi"], ["r1"], name="clip1"),
         H("MatMul", ["r1", "W2"], ["out"], name="mm2")],
        {"W1": r.standard_normal((4, 4)) * 0.8, "W2": r.standard_normal((4, 4)) * 0.5, "lo": 0.0, "hi": 2.0},
        ["N", 4, 4], ["N", 4, 4])
    for model, shape, why in ((shared, (1, 6, 6), "is shared"), (matmul, (4, 4), None)):
        x = (r.random((64,) + shape) * np.arange(1, shape[0] + 1).reshape(-1, *[1] * (len(shape) - 1))).astype(np.float32)
        x2 = (r.random((64,) + shape) * np.arange(1, shape[0] + 1).reshape(-1, *[1] * (len(shape) - 1))).astype(np.float32)
        snn = B.converted(model, x, 4, "refined")[2]
        _, report = unit_thresholds(snn.model)
        if why is None:
            assert report == {"lif0": "unit"}, report
        else:
            assert report and all(w.startswith("kept") and why in w for w in report.values()), report
        dep = deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True)
        ref, got = run(snn.model, x2), run(dep, x2)
        np.testing.assert_allclose(got.outputs[0], ref.outputs[0], rtol=1e-5, atol=1e-5)
        for k, v in ref.spikes.items():
            np.testing.assert_array_equal(v, got.spikes[k])


@pytest.mark.parametrize("T", [16, 64])
def test_faster_deploy_graph_keeps_its_precision_at_many_steps(T, x, x2):
    """The neuron carries the membrane itself (the reset's -1 taken from a bias), so its
    rounding does not grow with the step: at T = 64 the faster deploy graph and the plain
    one differ in as few samples as rounding of the rescaled weights explains."""
    snn = B.converted(B.vgg(13, "clip"), x, T, "refined")[2]
    ref = run(deploy_model(F.read_spiking(snn.model), spike_counts=True), x2)
    got = run(deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True), x2)
    _close(ref, got)
    same = np.all([ref.spikes[k] == got.spikes[k] for k in ref.spikes], axis=0)
    assert same.mean() >= 0.95, f"{(~same).sum()} of {len(same)} samples fire differently"


def test_a_neuron_just_below_its_threshold_at_the_last_of_64_steps():
    """One neuron with threshold 1 that reaches it only through 64 small currents: the
    faster form fires when the model does (a state of u + t lost the small currents)."""
    H = helper.make_node
    model = _graph([H("Gemm", ["input", "W"], ["g"], name="fc"), H("Clip", ["g", "lo", "hi"], ["r"], name="act"),
                    H("Gemm", ["r", "V"], ["out"], name="fc2")],
                   {"W": np.eye(1), "V": np.ones((1, 1)), "lo": 0.0, "hi": 1.0}, ["N", 1], ["N", 1])
    xin = np.linspace(0, 1, 64, dtype=np.float32).reshape(-1, 1)
    snn = B.converted(model, xin, 64, "max")[2]
    m = snn.model
    B.set_site_param(m, "lif0", "threshold", np.float32(1))
    B.set_site_param(m, "lif0", "v_init", np.float32(1 - 49.5e-6))
    probe = np.full((4, 1), 1e-6, np.float32)
    ref = run(m, probe)
    got = run(deploy_model(F.read_spiking(m), spike_counts=True, unit_thresholds=True), probe)
    np.testing.assert_array_equal(got.spikes["lif0"], ref.spikes["lif0"])
    assert ref.spikes["lif0"].sum() > 0


@pytest.mark.parametrize("beta", [1.0, 0.5])
@pytest.mark.parametrize("bias", [True, False])
def test_a_gemm_site_with_or_without_c_and_any_beta(beta, bias):
    """The reset's 1 is taken from a Gemm's C (beta * C is added, so C moves by 1 / beta), or
    from a C made for a Gemm without one."""
    r = np.random.default_rng(3)
    H = helper.make_node
    inputs = ["input", "W"] + (["C"] if bias else [])
    inits = {"W": r.standard_normal((6, 8)), "V": r.standard_normal((8, 3)), "lo": 0.0, "hi": 2.0}
    if bias:
        inits["C"] = r.standard_normal(8) * 0.3
    model = _graph([H("Gemm", inputs, ["g"], name="fc", beta=beta), H("Clip", ["g", "lo", "hi"], ["h"], name="act"),
                    H("Gemm", ["h", "V"], ["out"], name="fc2")], inits, ["N", 6], ["N", 3])
    x, x2 = r.random((64, 6)).astype(np.float32), r.random((64, 6)).astype(np.float32)
    snn = B.converted(model, x, 3, "refined")[2]
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True, unit_thresholds=True)
    assert "HardSigmoid" in {n.op_type for n in per_sample_graph(dep).node}
    _close(run(snn.model, x2), run(dep, x2))


def _same_spikes(model, x2):
    dep = deploy_model(F.read_spiking(model), spike_counts=True, unit_thresholds=True)
    ref, got = run(model, x2), run(dep, x2)
    np.testing.assert_allclose(got.outputs[0], ref.outputs[0], rtol=1e-5, atol=1e-5)
    for k, v in ref.spikes.items():
        np.testing.assert_array_equal(v, got.spikes[k], err_msg=k)


def test_the_reset_shift_is_not_divided_nor_subtracted_the_wrong_way():
    """The 1 the reset takes from the current: not from a bias under a Div (it would be
    divided), and from a bias under a subtrahend with its sign (it would be added)."""
    r = np.random.default_rng(0)
    H = helper.make_node
    div = _graph([H("Conv", ["input", "W1", "b1"], ["m1"], name="conv1", pads=[1, 1, 1, 1]),
                  H("Div", ["m1", "d"], ["a1"], name="div1"), H("Clip", ["a1", "lo", "hi"], ["r1"], name="clip1"),
                  H("Flatten", ["r1"], ["f"], name="fl"), H("Gemm", ["f", "W3"], ["out"], name="fc")],
                 {"W1": r.standard_normal((4, 1, 3, 3)) * 0.5, "b1": r.standard_normal(4) * 0.1, "d": 4.0,
                  "W3": r.standard_normal((144, 3)) * 0.2, "lo": 0.0, "hi": 2.0}, ["N", 1, 6, 6], ["N", 3])
    sub = _graph([H("Conv", ["input", "W1", "b1"], ["m1"], name="conv1", pads=[1, 1, 1, 1]),
                  H("Clip", ["m1", "lo", "hi"], ["r1"], name="clip1"),
                  H("Conv", ["r1", "W2a"], ["p"], name="conv2a", pads=[1, 1, 1, 1]),
                  H("Conv", ["r1", "W2b", "b2b"], ["q"], name="conv2b", pads=[1, 1, 1, 1]),
                  H("Mul", ["p", "k"], ["pk"], name="mul"), H("Sub", ["pk", "q"], ["a2"], name="sub"),
                  H("Clip", ["a2", "lo", "hi"], ["r2"], name="clip2"),
                  H("Flatten", ["r2"], ["f"], name="fl"), H("Gemm", ["f", "W3"], ["out"], name="fc")],
                 {"W1": r.standard_normal((4, 1, 3, 3)) * 0.5, "b1": r.standard_normal(4) * 0.1,
                  "W2a": r.standard_normal((4, 4, 3, 3)) * 0.3, "W2b": r.standard_normal((4, 4, 3, 3)) * 0.3,
                  "b2b": r.standard_normal(4) * 0.1, "k": 1.5, "W3": r.standard_normal((144, 3)) * 0.2,
                  "lo": 0.0, "hi": 2.0}, ["N", 1, 6, 6], ["N", 3])
    x = r.random((64, 1, 6, 6)).astype(np.float32) * 4
    x2 = r.random((64, 1, 6, 6)).astype(np.float32) * 4
    for model in (div, sub):
        snn = B.converted(model, x, 8, "refined")[2]
        _same_spikes(snn.model, x2)
    _, report = unit_thresholds(B.converted(div, x, 8, "refined")[2].model, shift_reset=True)
    assert report["lif0"] == "kept: no bias or constant on the way to take the reset"


@pytest.mark.parametrize("T", [1, 4])
def test_exact_ties_of_two_summed_sites_still_fire(T):
    """A refined site that sums two sites' spikes can have its threshold exactly equal to one
    spike's amplitude plus its offset; rescaled, that tie comes out a float32 step below 1,
    and the faster form fires on it as the model does (UNIT_THRESHOLD)."""
    r = np.random.default_rng(2)
    H = helper.make_node
    model = _graph(
        [H("Conv", ["input", "W1", "b1"], ["m1"], name="conv1", pads=[1, 1, 1, 1]),
         H("Clip", ["m1", "lo", "hi"], ["r1"], name="clip1"),
         H("Conv", ["r1", "W2", "b2"], ["p"], name="conv2", pads=[1, 1, 1, 1]),
         H("Add", ["p", "r1"], ["a2"], name="add2"), H("Clip", ["a2", "lo", "hi"], ["r2"], name="clip2"),
         H("Conv", ["r1", "W3", "b3"], ["q"], name="conv3", pads=[1, 1, 1, 1]),
         H("Add", ["r1", "q"], ["a3"], name="add3"), H("Clip", ["a3", "lo", "hi"], ["r3"], name="clip3"),
         H("Add", ["r2", "r3"], ["a4"], name="add4"), H("Clip", ["a4", "lo", "hi"], ["r4"], name="clip4"),
         H("Flatten", ["r4"], ["f"], name="fl"), H("Gemm", ["f", "W4"], ["out"], name="fc")],
        {"W1": r.standard_normal((4, 1, 3, 3)) * 0.5, "b1": r.standard_normal(4) * 0.1,
         "W2": r.standard_normal((4, 4, 3, 3)) * 0.3, "b2": r.standard_normal(4) * 0.1,
         "W3": r.standard_normal((4, 4, 3, 3)) * 0.3, "b3": r.standard_normal(4) * 0.1,
         "W4": r.standard_normal((144, 3)) * 0.2, "lo": 0.0, "hi": 2.0}, ["N", 1, 6, 6], ["N", 3])
    x = r.random((64, 1, 6, 6)).astype(np.float32) * 4
    x2 = r.random((64, 1, 6, 6)).astype(np.float32) * 4
    for method in ("refined", "max"):
        snn = B.converted(model, x, T, method)[2]
        _same_spikes(snn.model, x2)
        _same_spikes(snn.step_model(), x2)


def test_a_start_or_offset_goes_into_a_bias_only_per_channel_and_never_into_an_output():
    """per_channel reads a value per channel only where it is one (a scalar, or [C, 1, ...]
    of the site's rank: broadcasting aligns the right, so a [C, 1] value of a [C, H, W]
    site runs along H); summed_convolution takes no convolution whose output is exposed."""
    from onnx_snn.spiking.unit_thresholds import per_channel, summed_convolution
    np.testing.assert_array_equal(per_channel(np.float32(2), 3, 3), [2, 2, 2])
    np.testing.assert_array_equal(per_channel(np.arange(3.0).reshape(3, 1, 1), 3, 3), [0, 1, 2])
    assert per_channel(np.arange(3.0).reshape(3, 1), 3, 3) is None        # along H
    assert per_channel(np.arange(3.0), 3, 3) is None                      # along W
    assert per_channel(np.ones((3, 2, 2)), 3, 3) is None                  # per neuron
    np.testing.assert_array_equal(per_channel(np.arange(3.0), 3, 1), [0, 1, 2])   # a Gemm site
    conv = helper.make_node("Conv", ["s", "w", "b"], ["c"], name="conv")
    add = helper.make_node("Add", ["c", "short"], ["x"], name="sum")
    inits = {"b": onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b")}
    producers = {"c": conv, "x": add}
    readers = {"c": 1, "x": 1, "b": 1}
    assert summed_convolution("x", producers, readers, inits) is conv
    assert summed_convolution("x", producers, readers, inits, outputs={"c"}) is None
    assert summed_convolution("x", producers, {**readers, "b": 2}, inits) is None   # shared bias
    assert summed_convolution("x", producers, {**readers, "c": 2}, inits) is None   # read twice
