"""The deploy graph (onnx_snn.spiking.deploy): the spiking model unrolled over a fixed T with
the neurons inlined gives the loop graph's outputs and spike counts bit for bit, holds none of
the work inference does not need, and is refused where the spiking model is needed."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import builders as B
import onnx_snn
from onnx_snn.evaluate import evaluate_prefixes
from onnx_snn.errors import DeployGraphError, OutputPathError, UsageError
from onnx_snn.runtimes.ort import ModelRunner, run
from onnx_snn.spiking import format as F
from onnx_snn.spiking.batch_chunks import per_sample_graph
from onnx_snn.spiking.deploy import DEPLOY_MAX_TIMESTEPS, deploy, deploy_model

DATA = os.path.join(os.path.dirname(__file__), "data")
MODELS = {
    "vgg_maxpool_op13": lambda: B.vgg(13, "clip"),
    "vgg_relu_op17_avgpool": lambda: B.vgg(17, "relu", pool="AveragePool"),
    "vgg_op9_matmul": lambda: B.vgg(9, "clip", matmul=True),        # Unsqueeze/ReduceSum attrs
    "resnet_op13": lambda: B.resnet(13, "clip"),
    "resnet_sum_op11": lambda: B.resnet(11, "relu_min", sum_op=True),
    "twin_maxpool": lambda: B.pooled_twin("MaxPool"),
    "twin_global_maxpool_op21": lambda: B.pooled_twin("MaxPool", opset=21, global_pool=True),
    "vgg_maxpool_op23": lambda: B.vgg(23, "clip"),                  # the newest opset read
    "resnet_op22": lambda: B.resnet(22, "relu"),
    "vgg_constant_output": lambda: _with_constant_output(B.vgg(13, "clip")),
}


def _with_constant_output(model):
    """``model`` with a second output made by a Constant node (an exporter's fixed tensor, a
    class-table or an anchor grid): the spiking model keeps it as an initializer, and the
    deploy graph must too (it dropped it, and onnxruntime refused the graph)."""
    from onnx import helper as h
    model.graph.node.append(h.make_node("Constant", [], ["k"], name="const_k", value=numpy_helper.from_array(
        np.arange(6, dtype=np.float32).reshape(2, 3))))
    model.graph.output.append(h.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [2, 3]))
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def x():
    return B.rand_input(40)


def converted(model, x, T=2, method="datta"):
    return B.converted(model, x, T, method)[2]


def assert_same(ref, got, counts=True):
    assert len(ref.outputs) == len(got.outputs)
    for a, b in zip(ref.outputs, got.outputs):
        np.testing.assert_array_equal(a, b)
    if counts:
        assert set(got.spikes) == set(ref.spikes)
        for k, v in ref.spikes.items():
            np.testing.assert_array_equal(v, got.spikes[k])
    else:
        assert got.spikes == {}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("T", [1, 2, 4])
def test_deploy_graph_equals_the_loop_graph(name, T, x):
    snn = converted(MODELS[name](), x, T)
    ref = run(snn.model, x)
    view = F.read_spiking(snn.model)
    for counts in (False, True):
        dep = deploy_model(view, spike_counts=counts)
        onnx.checker.check_model(dep, full_check=True)
        assert_same(ref, run(dep, x), counts)
    # from the step graph too
    assert_same(ref, run(deploy_model(F.read_spiking(snn.step_model()), spike_counts=True), x))


@pytest.mark.parametrize("name", ["vgg_maxpool_op13", "twin_global_maxpool_op21"])
@pytest.mark.parametrize("T", [1, 3])
def test_deploy_graph_equals_the_loop_graph_with_pools_moved_first(name, T, x):
    snn = onnx_snn.convert(MODELS[name](), x, T, "datta", pool_first=True, show_progress=False)
    assert snn.normalized.pools_moved == 1
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True)
    assert_same(run(snn.model, x), run(dep, x))


@pytest.mark.parametrize("method", ["refined", "max"])
def test_deploy_graph_equals_the_loop_graph_per_channel_and_offsets(method, x):
    """The default (per-channel thresholds, amplitudes and initial membranes, current offsets)
    and the max method (zero initial membranes: no Add at the first step)."""
    snn = converted(B.resnet(13, "clip"), x, 2, method)
    ref = run(snn.model, x)
    assert_same(ref, run(deploy_model(F.read_spiking(snn.model), spike_counts=True), x))


@settings(deadline=None, max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(T=st.integers(1, 5), leak=st.sampled_from([1.0, 0.875, 0.5]),
       v0=st.floats(-0.5, 0.9), amp=st.sampled_from([None, 1.0, 0.75]),
       per_channel=st.booleans())
def test_deploy_graph_equals_the_loop_graph_for_any_neuron_parameters(T, leak, v0, amp,
                                                                      per_channel, x):
    """Leaks below one (the Mul kept), initial membranes of any sign (folded numerically at
    the first step), amplitudes of one (the Mul dropped): the same outputs and counts."""
    snn = converted(B.pooled_twin("MaxPool"), x, T)
    m = snn.model
    for s in F.read_info(m).sites:
        shape = [s.shape[0]] + [1] * (len(s.shape) - 1) if per_channel else []
        ramp = np.linspace(0.5, 1.0, s.shape[0]).reshape(shape) if per_channel else 1.0
        th = F.read_spiking(m).param(s.name, "threshold")
        B.set_site_param(m, s.name, "leak", np.float32(leak) * np.ones(shape, np.float32))
        B.set_site_param(m, s.name, "v_init", np.float32(v0) * th * ramp)
        if amp is not None:
            B.set_site_param(m, s.name, "amplitude", np.float32(amp) * np.ones(shape, np.float32))
    # (batch_chunk=0: a per-channel amplitude set by hand on a site recorded with one makes
    # its spike count (C, 1, N), in the loop graph too, not one value per sample)
    assert_same(run(m, x), run(deploy_model(F.read_spiking(m), spike_counts=True,
                                            batch_chunk=0), x))


def test_format_version_1_files_deploy(x):
    """Max pooling as an OR (version 1): the pool is an ordinary op of the step."""
    for path in ("format_v1_vgg_maxpool.snn.onnx", "format_v1_vgg_maxpool.step.onnx"):
        m = onnx.load(os.path.join(DATA, path))
        xin = B.rand_input(16, tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]))
        assert_same(run(m, xin), run(deploy_model(F.read_spiking(m), spike_counts=True), xin))


def test_deploy_graph_holds_only_what_inference_needs(x):
    """No Loop, no function call, no Expand of initial states, no counters, and the last step
    updates no membrane: one reset (Sub) per site and step but the last, one per spiking pool
    and step but the first (the first pools zero states)."""
    T = 3
    snn = converted(B.pooled_twin("MaxPool"), x, T)
    info = F.read_info(snn.model)
    dep = deploy_model(F.read_spiking(snn.model))
    ops = [n.op_type for n in per_sample_graph(dep).node]
    assert "Loop" not in ops and "Expand" not in ops and "Round" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in per_sample_graph(dep).node)
    assert all(o.domain != F.DOMAIN for o in dep.opset_import) and not dep.functions
    assert ops.count("Sub") == len(info.sites) * (T - 1) + len(info.pools) * (T - 1)
    # threshold crossings: one per site and step (the first layer's current is hoisted: once)
    assert ops.count("GreaterOrEqual") == len(info.sites) * T
    assert ops.count("Conv") == 1 + (T * (sum(n.op_type == "Conv" for n in snn.normalized.model.graph.node) - 1))
    assert [o.name for o in dep.graph.output] == info.outputs
    assert [i.name for i in dep.graph.input] == ["input"]


@pytest.mark.parametrize("pool_first", [False, True])
def test_deploy_graph_states_the_shapes_of_the_synaptic_layers_only(pool_first, x):
    """onnxruntime's blocked layout needs the convolution outputs' shapes (it infers none
    through GreaterOrEqual); the neurons' tensors stay unstated, so that a pool of spike
    counts is not moved into the blocked layout (see deploy._annotate_shapes)."""
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, 2, "datta", pool_first=pool_first,
                           show_progress=False)
    dep = deploy_model(F.read_spiking(snn.model))
    synaptic = {o for n in per_sample_graph(dep).node if n.op_type in ("Conv", "Gemm", "MatMul")
                for o in n.output} - {o.name for o in dep.graph.output}
    assert len(synaptic) > 4
    stated = {v.name: v for v in per_sample_graph(dep).value_info}
    assert set(stated) == synaptic
    batch = dep.graph.input[0].type.tensor_type.shape.dim[0]
    for v in stated.values():
        dims = v.type.tensor_type.shape.dim
        assert dims[0] == batch and all(d.dim_value > 0 for d in dims[1:])
    onnx.checker.check_model(dep, full_check=True)


def test_deploy_metadata_and_runner(x):
    snn = converted(B.vgg(13, "clip"), x, 2)
    dep = deploy_model(F.read_spiking(snn.model), timesteps=3)
    info = F.read_info(dep)
    assert info.graph == F.GRAPH_DEPLOY and info.timesteps == 3
    assert info.sites == F.read_info(snn.model).sites
    hist = info.history[-1]
    assert hist["step"] == "deploy" and hist["timesteps"] == 3 and hist["from_graph"] == "loop"
    assert F.metadata(dep)[F.META_SPIKE_COUNTS] == "0"
    assert_same(run(snn.model, x, timesteps=3), run(dep, x), counts=False)
    r = ModelRunner(dep)
    with pytest.raises(UsageError, match="runs T=3 only"):
        r.run(r.validate(x), timesteps=2)
    with pytest.raises(UsageError, match="fixed T=3"):
        ModelRunner(dep, per_step=True)
    with pytest.raises(UsageError, match="fixed T=3"):
        evaluate_prefixes(dep, (x, np.zeros(len(x), np.int64)), [1, 3])
    res = onnx_snn.evaluate(dep, (x, np.zeros(len(x), np.int64)))
    assert res.timesteps == 3 and res.sites == {} and res.mean_rate is None


def test_spiking_tools_refuse_a_deploy_graph(x):
    snn = converted(B.vgg(13, "clip"), x, 2)
    dep = deploy_model(F.read_spiking(snn.model))
    with pytest.raises(DeployGraphError, match="deploy graph"):
        F.read_spiking(dep)
    with pytest.raises(DeployGraphError):
        onnx_snn.deploy(dep)
    from onnx_snn.analyze import analyze
    with pytest.raises(DeployGraphError):
        analyze(dep, None, 2)


def test_deploy_api_writes_atomically_and_refuses_bad_paths(tmp_path, x):
    snn = converted(B.vgg(13, "clip"), x, 2)
    src = tmp_path / "m.snn.onnx"
    snn.save(str(src))
    out = tmp_path / "m.deploy.onnx"
    dep = deploy(str(src), str(out))
    assert out.is_file() and F.read_info(onnx.load(str(out))).graph == F.GRAPH_DEPLOY
    assert onnx.load(str(out)).SerializeToString() == dep.SerializeToString()
    with pytest.raises(OutputPathError):
        deploy(str(src), str(src))
    with pytest.raises(UsageError, match="DEPLOY_MAX_TIMESTEPS"):
        deploy(str(src), timesteps=DEPLOY_MAX_TIMESTEPS + 1)
    with pytest.raises(UsageError):
        deploy(str(src), timesteps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.deploy.onnx", "m.snn.onnx"]


def test_deploy_keeps_external_weights_external(tmp_path, x):
    snn = converted(B.vgg(13, "clip"), x, 2)
    src = tmp_path / "m.snn.onnx"
    onnx.save(copy.deepcopy(snn.model), str(src), save_as_external_data=True, location="m.snn.onnx.data",
              size_threshold=0)
    out = tmp_path / "d.onnx"
    deploy(str(src), str(out))
    assert (tmp_path / "d.onnx.data").is_file()
    assert_same(run(snn.model, x), run(str(out), x), counts=False)


def _cli(*args, cwd=None):
    env = dict(os.environ, ONNX_SNN_PROGRESS="0")
    return subprocess.run([sys.executable, "-m", "onnx_snn", *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


def test_cli_deploy_then_eval(tmp_path, x):
    snn = converted(B.vgg(13, "clip"), x, 2)
    src = tmp_path / "m.snn.onnx"
    snn.save(str(src))
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), np.int64))
    p = _cli("deploy", str(src))
    assert p.returncode == 0, p.stderr
    assert "deploy graph: T=2" in p.stdout and (tmp_path / "m.deploy.onnx").is_file()
    p = _cli("eval", str(tmp_path / "m.deploy.onnx"), "--data", str(tmp_path / "d.npz"))
    assert p.returncode == 0 and "top-1" in p.stdout and "spike rate" not in p.stdout, p.stderr
    p = _cli("deploy", str(src), "-o", str(tmp_path / "c.onnx"), "--spike-counts", "-T", "3")
    assert p.returncode == 0, p.stderr
    p = _cli("eval", str(tmp_path / "c.onnx"), "--data", str(tmp_path / "d.npz"), "--json",
             str(tmp_path / "r.json"))
    assert p.returncode == 0 and "spike rate" in p.stdout, p.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["timesteps"] == 3 and set(r["sites"]) == {s.name for s in F.read_info(snn.model).sites}
    for cmd in (["analyze", str(tmp_path / "c.onnx"), "--data", str(tmp_path / "d.npz")],
                ["deploy", str(tmp_path / "c.onnx"), "-o", str(tmp_path / "e.onnx")]):
        p = _cli(*cmd)
        assert p.returncode == 8 and "deploy graph" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "e.onnx").exists()
    p = _cli("info", str(tmp_path / "c.onnx"))
    assert p.returncode == 0 and "graph=deploy" in p.stdout
    p = _cli("deploy", str(src), "-o", str(src))
    assert p.returncode == 6


def test_cli_convert_writes_the_deploy_graph_beside_the_model(tmp_path, x):
    """`convert --deploy` (with --binary-spikes: the amplitudes folded, so no amplitude Mul
    is left in the deploy graph) equals deploying the written model."""
    src = tmp_path / "dnn.onnx"
    onnx.save(B.vgg(13, "clip", softmax=False), str(src))
    np.save(tmp_path / "c.npy", x)
    out, dep = tmp_path / "m.snn.onnx", tmp_path / "m.deploy.onnx"
    p = _cli("convert", str(src), "--calib", str(tmp_path / "c.npy"), "-o", str(out), "--deploy",
             str(dep), "--binary-spikes", "--method", "datta", "-q")
    assert p.returncode == 0, p.stderr
    m, d = onnx.load(str(out)), onnx.load(str(dep))
    assert F.read_info(d).graph == F.GRAPH_DEPLOY and F.metadata(m)[F.META_BINARY]
    assert_same(run(m, x), run(d, x), counts=False)
    amplitudes = {F.param_name(s.name, "amplitude") for s in F.read_info(m).sites}
    assert not any(i in amplitudes for n in per_sample_graph(d).node for i in n.input)
    p = _cli("convert", str(src), "--calib", str(tmp_path / "c.npy"), "-o", str(tmp_path / "n.onnx"),
             "--deploy", str(tmp_path / "n.onnx"), "-q")
    assert p.returncode == 6 and not (tmp_path / "n.onnx").exists()


def _mlp_outputs():
    """y = fc2(clip(fc1(x))) with more outputs: the time-invariant pre-activation g1, the
    spiking layer's own output r1 and an int64 Cast of y (the loop graph gives its last step)."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in (
        ("w1", r.standard_normal((6, 8))), ("b1", np.zeros(8)), ("w2", r.standard_normal((8, 3))),
        ("b2", np.zeros(3)), ("z", 0.0), ("mu", 2.0))]
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="fc1"),
             h.make_node("Clip", ["g1", "z", "mu"], ["r1"], name="act"),
             h.make_node("Gemm", ["r1", "w2", "b2"], ["y"], name="fc2"),
             h.make_node("Cast", ["y"], ["yi"], to=TP.INT64, name="cast")]
    outs = [h.make_tensor_value_info("y", TP.FLOAT, ["N", 3]),
            h.make_tensor_value_info("g1", TP.FLOAT, ["N", 8]),
            h.make_tensor_value_info("r1", TP.FLOAT, ["N", 8]),
            h.make_tensor_value_info("yi", TP.INT64, ["N", 3])]
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 6])], outs, inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


@pytest.mark.parametrize("T", [1, 3])
def test_deploy_graph_keeps_every_kind_of_output(T):
    """A time-invariant output (the same tensor), a site's own spikes as an output (averaged)
    and an int64 output (the last step's value)."""
    x = np.random.default_rng(1).random((16, 6)).astype(np.float32) * 3
    snn = converted(_mlp_outputs(), x, T)
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True)
    assert [o.name for o in dep.graph.output][:4] == ["y", "g1", "r1", "yi"]
    ref, got = run(snn.model, x), run(dep, x)
    assert_same(ref, got)
    assert got.outputs[3].dtype == np.int64 and np.any(got.outputs[3] != 0)


def test_deploy_names_cannot_collide_with_the_models(x):
    """The copies of the step and the averaging nodes are named under the format's reserved
    prefix: a DNN tensor named like a copy (``h.t0``, ``y.sum.steps``) keeps its meaning."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in (
        ("w1", r.standard_normal((6, 8))), ("b1", np.zeros(8)), ("w2", r.standard_normal((8, 3))),
        ("b2", np.zeros(3)), ("z", 0.0), ("mu", 2.0), ("one", 1.0))]
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["g1"], name="fc1"),
             h.make_node("Clip", ["g1", "z", "mu"], ["r1"], name="act"),
             h.make_node("Gemm", ["r1", "w2", "b2"], ["h"], name="fc2"),
             h.make_node("Add", ["x", "one"], ["h.t0"], name="side"),            # hoisted
             h.make_node("ReduceSum", ["h.t0"], ["y.sum.steps"], keepdims=1, name="side_sum"),
             h.make_node("Add", ["h", "y.sum.steps"], ["y"], name="out")]
    g = h.make_graph(nodes, "collide", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 3])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    xx = np.random.default_rng(1).random((16, 6)).astype(np.float32)
    snn = converted(m, xx, 2)
    assert_same(run(snn.model, xx), run(deploy(snn.model), xx), counts=False)


def test_a_next_state_read_by_another_node_is_kept_at_the_last_step(x):
    """The last step drops the membrane update only where nothing else reads it."""
    snn = converted(B.vgg(13, "clip"), x, 2)
    step = snn.step_model()
    g = step.graph
    nxt = F.next_state_name("lif0")
    probe = "probe.v_next_mean"
    g.node.append(onnx.helper.make_node("ReduceMean", [nxt], [probe], keepdims=0, name="probe"))
    g.output.append(onnx.helper.make_tensor_value_info(probe, onnx.TensorProto.FLOAT, ["N"]))
    meta = F.metadata(step)
    F.set_metadata(step, {**meta, F.META_OUTPUTS: json.dumps(json.loads(meta[F.META_OUTPUTS]) + [probe])})
    view = F.read_spiking(step)
    dep = deploy(step)                    # checked by onnx before it is returned
    assert probe in [o.name for o in dep.graph.output]
    ref = ModelRunner(step).run({"input": x})
    got = ModelRunner(dep).run({"input": x})
    np.testing.assert_array_equal(ref.outputs[0], got.outputs[0])
    np.testing.assert_allclose(got.outputs[1], ref.outputs[1], rtol=1e-6)
    assert view.outputs[-1] == probe


def test_deploy_model_checks_its_timesteps(x):
    snn = converted(B.vgg(13, "clip"), x, 2)
    view = F.read_spiking(snn.model)
    for bad in (0, -1, 2.5):
        with pytest.raises(UsageError):
            deploy_model(view, timesteps=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True, DEPLOY_MAX_TIMESTEPS + 1])
def test_deploy_refuses_a_bad_T_before_warning_about_it(bad, x, caplog):
    """``deploy(m, timesteps=-1)`` logged "deployed at T=-1 ... convert the DNN again with
    -T -1" and then refused it."""
    snn = converted(B.vgg(13, "clip"), x, 2)
    with caplog.at_level("WARNING"), pytest.raises(UsageError):
        deploy(snn.model, timesteps=bad)
    assert caplog.records == []


def test_cli_convert_refuses_a_deploy_T_beyond_the_limit_before_the_work(tmp_path, x):
    src = tmp_path / "dnn.onnx"
    onnx.save(B.vgg(13, "clip"), str(src))
    np.save(tmp_path / "c.npy", x)
    p = _cli("convert", str(src), "--calib", str(tmp_path / "c.npy"), "-o", str(tmp_path / "m.onnx"),
             "--deploy", str(tmp_path / "d.onnx"), "-T", str(DEPLOY_MAX_TIMESTEPS + 1), "--method", "datta")
    assert p.returncode == 2 and "DEPLOY_MAX_TIMESTEPS" in p.stderr and "site" not in p.stdout
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.npy", "dnn.onnx"]


def test_a_state_read_by_another_node_gets_its_initial_value_broadcast(x):
    """A node other than a neuron reading a membrane at the first step reads the initial
    value broadcast to the batch, as the loop graph's Expand makes it."""
    snn = converted(B.vgg(13, "clip"), x, 2, "refined")    # per-channel, nonzero v_init
    step = snn.step_model()
    g = step.graph
    probe = "probe.v_mean"
    g.node.append(onnx.helper.make_node("ReduceMean", [F.StateNames("lif1").input], [probe],
                                        axes=[1, 2, 3], keepdims=0, name="probe"))   # per sample
    g.output.append(onnx.helper.make_tensor_value_info(probe, onnx.TensorProto.FLOAT, ["N"]))
    meta = F.metadata(step)
    F.set_metadata(step, {**meta, F.META_OUTPUTS: json.dumps(json.loads(meta[F.META_OUTPUTS]) + [probe])})
    dep = deploy(step)
    assert "Expand" in [n.op_type for n in per_sample_graph(dep).node]
    ref, got = ModelRunner(step).run({"input": x}), ModelRunner(dep).run({"input": x})
    np.testing.assert_array_equal(ref.outputs[0], got.outputs[0])
    np.testing.assert_allclose(got.outputs[1], ref.outputs[1], rtol=1e-6)


@pytest.mark.parametrize("name", ["vgg_maxpool_op13", "resnet_op13", "twin_global_maxpool_op21"])
@pytest.mark.parametrize("T", [1, 2, 3])
def test_deploy_graph_of_signed_neurons_equals_the_loop_graph(name, T, x):
    """Signed neurons: the count state is dropped where it is zero (the first step, no
    negative spike can fire) and after the last step; the same outputs and counts."""
    nm, cal, _ = B.converted(MODELS[name](), x, T)
    snn = onnx_snn.build(nm, cal, T, "datta", onnx_snn.SearchConfig(signed_spikes=True))
    view = F.read_spiking(snn.model)
    assert view.info.format_version == F.SIGNED_FORMAT_VERSION
    ref = run(snn.model, x)
    for counts in (False, True):
        dep = deploy_model(view, spike_counts=counts)
        onnx.checker.check_model(dep, full_check=True)
        assert_same(ref, run(dep, x), counts)
    ops = [n.op_type for n in per_sample_graph(deploy_model(view)).node]
    assert ops.count("Less") == (T - 1) * len(view.info.sites)   # none on the first step
