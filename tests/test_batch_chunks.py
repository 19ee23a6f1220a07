"""Deploy graphs run a batch a few samples at a time (onnx_snn/spiking/batch_chunks.py): the
same outputs and spike counts as the whole batch, for any batch size, and the graph left
whole, with the reason, wherever that could not hold."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import builders as B
from onnx_snn.errors import UsageError
from onnx_snn.runtimes.ort import run
from onnx_snn.spiking import format as F
from onnx_snn.spiking.batch_chunks import (DEFAULT_BATCH_CHUNK, MAX_BATCH_CHUNK, chunk_batch, per_sample_graph,
                                           why_not)
from onnx_snn.spiking.deploy import deploy, deploy_model


@pytest.fixture(scope="module")
def x():
    return B.rand_input(40)


@pytest.fixture(scope="module")
def snn(x):
    return B.converted(B.resnet(13, "clip"), x, 2, "refined")[2]


def _same(a, b):
    assert len(a.outputs) == len(b.outputs)
    for p, q in zip(a.outputs, b.outputs):
        np.testing.assert_array_equal(p, q)
    assert set(a.spikes) == set(b.spikes)
    for k in a.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k])


def _scans(model):
    return [n for n in model.graph.node if n.op_type == "Scan"]


@settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), chunk=st.sampled_from([1, 3, 8, 64]),
       unit=st.booleans())
def test_a_chunked_deploy_graph_equals_the_whole_batch(n, chunk, unit, snn, x):
    """Any batch size against any chunk (smaller, a multiple, larger than the batch):
    every sample's outputs and spike counts as the unchunked graph gives them."""
    view = F.read_spiking(snn.model)
    whole = deploy_model(view, spike_counts=True, unit_thresholds=unit, batch_chunk=0)
    chunked = deploy_model(view, spike_counts=True, unit_thresholds=unit, batch_chunk=chunk)
    assert _scans(whole) == [] and len(_scans(chunked)) == 1
    _same(run(whole, x[:n]), run(chunked, x[:n]))


def test_an_empty_batch_gives_empty_outputs(snn, x):
    """onnxruntime's Scan takes no empty sequence: an empty batch runs one empty slice."""
    import onnxruntime as ort
    dep = deploy_model(F.read_spiking(snn.model), spike_counts=True)
    name = dep.graph.input[0].name
    outs = ort.InferenceSession(dep.SerializeToString()).run(None, {name: x[:0]})
    whole = ort.InferenceSession(deploy_model(F.read_spiking(snn.model), spike_counts=True,
                                              batch_chunk=0).SerializeToString()).run(None, {name: x[:0]})
    assert [o.shape for o in outs] == [o.shape for o in whole] and all(o.shape[0] == 0 for o in outs)


def test_the_default_chunks_and_the_history_says_so(snn, x):
    dep = deploy_model(F.read_spiking(snn.model))
    assert len(_scans(dep)) == 1
    step = json.loads(F.metadata(dep)[F.META_HISTORY])[-1]
    assert step["batch_chunk"] == DEFAULT_BATCH_CHUNK and "batch_chunk_note" not in step
    # the body is the graph that was wrapped: its nodes, weights and stated shapes
    whole = deploy_model(F.read_spiking(snn.model), batch_chunk=0)
    body = per_sample_graph(dep)
    assert [n.op_type for n in body.node] == [n.op_type for n in whole.graph.node]
    assert {t.name for t in body.initializer} == {t.name for t in whole.graph.initializer}
    assert per_sample_graph(whole) is whole.graph
    onnx.checker.check_model(dep, full_check=True)


def _mixing_model():
    """A model whose output depends on the other samples: x minus the batch's mean."""
    nodes = [h.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
             h.make_node("Sub", ["x", "m"], ["y"])]
    g = h.make_graph(nodes, "mix", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 5])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 5])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_a_graph_that_mixes_samples_stays_whole():
    m = _mixing_model()
    out, why = chunk_batch(m, 4)
    assert out is m and "mixes samples" in why


def test_a_deploy_graph_that_mixes_samples_stays_whole():
    """A DNN that sums over the batch (keepdims, no axes): converted and deployed, its deploy
    graph runs the batch whole, says why, and gives the loop graph's outputs."""
    r = np.random.default_rng(0)
    inits = [nh.from_array(np.asarray(a, np.float32), n) for n, a in (
        ("w1", r.standard_normal((6, 8))), ("b1", np.zeros(8)), ("w2", r.standard_normal((8, 3))),
        ("b2", np.zeros(3)), ("z", 0.0), ("mu", 2.0))]
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["g1"]),
             h.make_node("Clip", ["g1", "z", "mu"], ["r1"]),
             h.make_node("Gemm", ["r1", "w2", "b2"], ["g2"]),
             h.make_node("ReduceSum", ["x"], ["total"], keepdims=1),
             h.make_node("Add", ["g2", "total"], ["y"])]
    g = h.make_graph(nodes, "mix", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 3])], inits)
    xx = np.random.default_rng(1).random((16, 6)).astype(np.float32)
    snn = B.converted(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), xx, 2)[2]
    dep = deploy(snn.model)
    assert _scans(dep) == []
    assert "mixes samples" in json.loads(F.metadata(dep)[F.META_HISTORY])[-1]["batch_chunk_note"]
    np.testing.assert_array_equal(run(snn.model, xx).outputs[0], run(dep, xx).outputs[0])


def _one_gemm(in_dims, out_dims, opset=13, n_inputs=1, other_dims=None):
    w = nh.from_array(np.ones((5, 2), np.float32), "w")
    ins = [h.make_tensor_value_info(f"x{i}", TP.FLOAT, in_dims if i == 0 or other_dims is None
                                    else other_dims) for i in range(n_inputs)]
    nodes = [h.make_node("MatMul", ["x0", "w"], ["y0"])]
    for i in range(1, n_inputs):
        nodes.append(h.make_node("MatMul", [f"x{i}", "w"], [f"p{i}"]))
        nodes.append(h.make_node("Add", [f"y{i - 1}", f"p{i}"], [f"y{i}"]))
    g = h.make_graph(nodes, "g", ins, [h.make_tensor_value_info(f"y{n_inputs - 1}", TP.FLOAT, out_dims)], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("model, reason", [
    (_one_gemm([1, 5], [1, 2]), "no dynamic batch axis"),
    (_one_gemm(["N", 5], [3, 2]), "has no dynamic first axis"),
    (_one_gemm(["N", 5], ["N", 2], n_inputs=2, other_dims=["M", 5]), "name their first axes differently"),
    (_one_gemm(["N", 5], ["N", 2], opset=10), "opset 10"),
    (_one_gemm(["N", "K"], ["N", 2]), "a dynamic axis besides the batch"),
])
def test_what_cannot_run_in_chunks_stays_whole_with_the_reason(model, reason):
    out, why = chunk_batch(model, 4)
    assert out is model and reason in why


@pytest.mark.parametrize("in_dims, out_dims", [(["unk__62", 5], ["unk__63", 2]),   # tf2onnx's
                                               (["batch", 5], ["N", 2]),
                                               ([None, 5], [None, 2])])            # unnamed
def test_a_batch_axis_named_otherwise_or_not_at_all_runs_in_chunks(in_dims, out_dims):
    """An output whose batch axis has another name than the input's (tf2onnx names every
    dynamic axis apart) or none: chunked all the same (it ran whole, 1.6x slower, on every
    tf2onnx export), the run of both graphs being the check that the axis is the batch."""
    m = _one_gemm(in_dims, out_dims)
    out, why = chunk_batch(m, 4)
    assert why is None and out is not m
    x = np.random.default_rng(0).random((11, 5)).astype(np.float32)
    import onnxruntime as ort
    a = ort.InferenceSession(m.SerializeToString()).run(None, {"x0": x})[0]
    b = ort.InferenceSession(out.SerializeToString()).run(None, {"x0": x})[0]
    np.testing.assert_array_equal(a, b)


def test_an_output_reduced_over_the_batch_stays_whole_whatever_its_stated_axis():
    """An output stated with a dynamic first axis that is not the batch (a sum over it): the
    run of both graphs refuses the chunks."""
    w = nh.from_array(np.ones((5, 2), np.float32), "w")
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["p"]),
                      h.make_node("ReduceSum", ["p", "axes"], ["y"], keepdims=1)], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 5])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["M", 2])],
                     [w, nh.from_array(np.array([0], np.int64), "axes")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    out, why = chunk_batch(m, 4)
    assert out is m and "in chunks" in why, why


def test_an_output_of_several_rows_per_sample_stays_whole_at_any_chunk():
    """Reshape(x, [-1, 2]) of [N, 4]: 2N rows, a first axis that is not the batch. With
    chunks of 2 the check's batch (4) was cut into slices that did not overlap, the outputs
    agreed, and other batch sizes came out with a row too many; the check's slices now
    always overlap, and its shapes differ."""
    g = h.make_graph([h.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["M", 2])],
                     [nh.from_array(np.array([-1, 2], np.int64), "shape")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    for chunk in (2, 3, 4, 16):
        out, why = chunk_batch(m, chunk)
        assert out is m and "in chunks" in why, (chunk, why)


def test_several_inputs_are_sliced_alike():
    m = _one_gemm(["N", 5], ["N", 2], n_inputs=3)
    assert why_not(m) is None
    out, why = chunk_batch(m, 4)
    assert why is None
    r = np.random.default_rng(0)
    feed = {f"x{i}": r.random((11, 5)).astype(np.float32) for i in range(3)}
    import onnxruntime as ort
    a = ort.InferenceSession(m.SerializeToString()).run(None, feed)[0]
    b = ort.InferenceSession(out.SerializeToString()).run(None, feed)[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8", None, MAX_BATCH_CHUNK + 1, 10 ** 9])
def test_a_bad_chunk_is_a_usage_error(bad, snn):
    """(a chunk of 10**9 ran its check on 1.5e9 samples: a MemoryError of 715 GiB)"""
    with pytest.raises(UsageError, match="batch_chunk"):
        deploy(snn.model, batch_chunk=bad)


def test_cli_deploy_batch_chunk(tmp_path, snn, x):
    src = tmp_path / "m.snn.onnx"
    onnx.save(snn.model, str(src))
    for chunk, scans in (("0", 0), ("5", 1)):
        out = tmp_path / f"m{chunk}.deploy.onnx"
        p = subprocess.run([sys.executable, "-m", "onnx_snn", "deploy", str(src), "-o", str(out),
                            "--batch-chunk", chunk], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        dep = onnx.load(str(out))
        assert len(_scans(dep)) == scans
        assert json.loads(F.metadata(dep)[F.META_HISTORY])[-1]["batch_chunk"] == int(chunk)
        np.testing.assert_array_equal(run(snn.model, x[:13]).outputs[0], run(dep, x[:13]).outputs[0])
    p = subprocess.run([sys.executable, "-m", "onnx_snn", "deploy", str(src), "-o",
                        str(tmp_path / "bad.onnx"), "--batch-chunk", "-2"], capture_output=True, text=True)
    assert p.returncode == 2 and "--batch-chunk" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "bad.onnx").exists()
    p = subprocess.run([sys.executable, "-m", "onnx_snn", "deploy", str(src), "-o",
                        str(tmp_path / "bad.onnx"), "--batch-chunk", str(MAX_BATCH_CHUNK + 1)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "MAX_BATCH_CHUNK" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_convert_batch_chunk_needs_deploy(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(B.vgg(13, "clip"), str(model))
    p = subprocess.run([sys.executable, "-m", "onnx_snn", "convert", str(model), "--calib",
                        "random", "-o", str(tmp_path / "o.snn.onnx"), "--batch-chunk", "4"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "--batch-chunk" in p.stderr and "--deploy" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o.snn.onnx").exists()
