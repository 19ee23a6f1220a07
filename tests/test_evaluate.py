"""evaluate: the batch it runs a spiking model in, sized by the model's memory."""
import importlib
import logging

import numpy as np
import onnx
import pytest

import builders as B
import onnx_snn
from onnx_snn.errors import ModelLoadError
from onnx_snn.evaluate import evaluate
from onnx_snn.spiking import format as F

E = importlib.import_module("onnx_snn.evaluate")   # the module (the package exports the function)


@pytest.fixture(scope="module")
def snn(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    x = B.rand_input(64)
    model = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta",
                             show_progress=False)
    path = d / "m.snn.onnx"
    model.save(path)
    y = np.random.default_rng(0).integers(0, 10, 64)
    return path, (x, y)


def test_sample_bytes_counts_every_site_and_pool_neuron(snn):
    info = F.read_info(onnx_snn.model_io.load_model(str(snn[0])), "m")
    neurons = sum(s.neurons for s in info.sites) + sum(p.neurons for p in info.pools)
    assert neurons > 0
    assert E.sample_bytes(info) == neurons * E.LOOP_BYTES_PER_NEURON


def test_eval_batch_keeps_an_asked_batch_and_lowers_only_the_default(snn):
    info = F.read_info(onnx_snn.model_io.load_model(str(snn[0])), "m")
    per = E.sample_bytes(info)
    assert E.eval_batch(7, info, limit=1) == 7              # asked: kept
    assert E.eval_batch(None, None) == E.DEFAULT_EVAL_BATCH   # a DNN
    assert E.eval_batch(None, info, limit=10 ** 12) == E.DEFAULT_EVAL_BATCH
    assert E.eval_batch(None, info, limit=5 * per + per // 2) == 5
    assert E.eval_batch(None, info, limit=1) == 1           # never below one sample


def test_a_lowered_batch_gives_the_same_result_and_says_so(snn, monkeypatch):
    path, data = snn
    full = onnx_snn.evaluate(str(path), data, show_progress=False)
    assert full.batch_size == E.DEFAULT_EVAL_BATCH and not full.notes
    info = F.read_info(onnx_snn.model_io.load_model(str(path)), "m")
    monkeypatch.setattr(E, "EVAL_BATCH_BYTES", 9 * E.sample_bytes(info))
    low = onnx_snn.evaluate(str(path), data, show_progress=False)
    assert low.batch_size == 9
    assert low.correct == full.correct
    for k, s in full.sites.items():
        assert low.sites[k].spikes_per_sample == pytest.approx(s.spikes_per_sample, rel=1e-6)
    assert any("batches of 9" in n and "--batch-size" in n for n in low.notes)
    asked = onnx_snn.evaluate(str(path), data, batch_size=32, show_progress=False)
    assert asked.batch_size == 32 and not asked.notes


def test_an_asked_batch_beyond_the_free_memory_is_warned_about(snn, monkeypatch, caplog):
    path, data = snn
    monkeypatch.setattr(E, "available_memory", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        r = onnx_snn.evaluate(str(path), data, batch_size=16, show_progress=False)
    assert r.batch_size == 16
    assert any("smaller --batch-size" in m and "GiB" in m for m in caplog.messages)
    caplog.clear()
    monkeypatch.setattr(E, "available_memory", lambda: None)   # unknown: no warning
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        onnx_snn.evaluate(str(path), data, batch_size=16, show_progress=False)
    assert not caplog.messages


def test_available_memory_reads_the_system():
    m = E.available_memory()
    assert m is None or m > 0


def test_an_image_folder_is_evaluated_in_parts_as_in_one(snn, tmp_path, monkeypatch, caplog):
    """A folder bigger than a part (and than what a folder may load at once) is read and run
    part by part: the same top-1 and spike counts as in one go, every image counted once, and
    the missing-preprocessing warning said once."""
    Image = pytest.importorskip("PIL.Image")
    from onnx_snn import image_folder
    x, _ = snn[1]
    for k, img in enumerate(x[:45]):
        path = tmp_path / "f" / f"c{k % 3}" / f"{k:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[0] * 255).round().astype(np.uint8)).save(path)
    for model in (str(snn[0]), B.vgg(13, "clip")):           # a spiking model and a DNN
        one = onnx_snn.evaluate(model, str(tmp_path / "f"), show_progress=False, batch_size=8)
        monkeypatch.setattr(E, "EVAL_PART_BYTES", 16 * 12 * 12 * 4)       # 16 images a part
        monkeypatch.setattr(image_folder, "MAX_BYTES", 20 * 12 * 12 * 4)  # 45 would be refused
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            parts = onnx_snn.evaluate(model, str(tmp_path / "f"), show_progress=False, batch_size=8)
        monkeypatch.undo()
        assert parts.samples == one.samples == 45
        assert parts.correct == one.correct
        assert {k: s.spikes_per_sample for k, s in parts.sites.items()} == \
            {k: s.spikes_per_sample for k, s in one.sites.items()}
        assert sum("records no preprocessing" in r.getMessage() for r in caplog.records) == 1
    limited = onnx_snn.evaluate(str(snn[0]), str(tmp_path / "f"), show_progress=False, limit=20)
    assert limited.samples == 20


def _decoder():
    """x [N, 1, 12, 12] -> Conv -> Relu -> 1x1 Conv -> y [N, 2, 12, 12]: no classes."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
             for n, s in (("w1", (4, 1, 3, 3)), ("w2", (2, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["y"])]
    g = helper.make_graph(nodes, "dec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 12, 12])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_labels_on_a_model_that_does_not_classify():
    """analyze wants spike rates of any model: with top1=None a labelled data set gives the
    rates and no top-1 when the first output holds no classes; eval (top1=True) refuses,
    naming the model and saying to drop the labels."""
    import onnx_snn
    from onnx_snn.errors import DataError
    x = B.rand_input(16)
    snn = onnx_snn.convert(_decoder(), x, timesteps=2, method="datta", show_progress=False)
    data = (x, np.arange(16) % 2)
    r = evaluate(snn.model, data, top1=None, show_progress=False, where="dec.snn.onnx")
    assert r.top1 is None and r.rates and all(v >= 0 for v in r.rates.values())
    with pytest.raises(DataError, match="dec.snn.onnx: its first output has shape .*give data without them"):
        evaluate(snn.model, data, show_progress=False, where="dec.snn.onnx")
    # an [N, 2] embedding fed images labelled 0..9: its output is no score of those classes
    from onnx import helper
    emb = _decoder()
    emb.graph.node.extend([helper.make_node("GlobalAveragePool", ["y"], ["p"]),
                           helper.make_node("Flatten", ["p"], ["e"])])
    emb.graph.output[0].CopyFrom(helper.make_tensor_value_info("e", 1, ["N", 2]))
    esnn = onnx_snn.convert(emb, x, timesteps=2, method="datta", show_progress=False)
    r = evaluate(esnn.model, (x, np.arange(16) % 10), top1=None, show_progress=False)
    assert r.top1 is None and r.rates
    # a classifier still gets its top-1 with top1=None
    clf = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    assert evaluate(clf.model, (x, np.arange(16) % 10), top1=None, show_progress=False).top1 is not None


def test_a_dict_of_arrays_is_read_as_a_npz_is(tmp_path):
    """{'x': inputs, 'y': labels} in the Python API scores the labels, as a .npz with x and y
    does (the labels were dropped and top-1 came back None); labels that do not match the
    inputs' count, or a misnamed input, are DataErrors naming them; an input named 'y' is an
    input, not labels."""
    import onnx_snn
    from onnx_snn.errors import DataError
    x = B.rand_input(24)
    y = np.arange(24) % 10
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    as_tuple = onnx_snn.evaluate(snn, (x, y), show_progress=False).top1
    assert as_tuple is not None
    assert onnx_snn.evaluate(snn, {"x": x, "y": y}, show_progress=False).top1 == as_tuple
    assert onnx_snn.evaluate(snn, {"input": x, "labels": y}, show_progress=False).top1 == as_tuple
    with pytest.raises(DataError, match="24 inputs but 5 labels"):
        onnx_snn.evaluate(snn, {"x": x, "y": y[:5]}, show_progress=False)
    with pytest.raises(DataError, match=r"missing input\(s\) \['input'\].*\['inptu'\]"):
        onnx_snn.evaluate(snn, {"inptu": x, "y": y}, show_progress=False)
    # other arrays beside the inputs are left alone, as in a .npz; calibrate takes the dict too
    assert onnx_snn.evaluate(snn, {"input": x, "y": y, "ids": y}, show_progress=False).top1 == as_tuple
    onnx_snn.calibrate(onnx_snn.prepare(B.vgg(13, "clip")), {"input": x, "y": y}, show_progress=False)
    named_y = B.vgg(13, "clip")                     # a model whose input is named 'y'
    named_y.graph.input[0].name = "y"
    for n in named_y.graph.node:
        n.input[:] = ["y" if t == "input" else t for t in n.input]
    snn_y = onnx_snn.convert(named_y, x, timesteps=2, method="datta", show_progress=False)
    assert onnx_snn.evaluate(snn_y, {"y": x, "labels": y}, show_progress=False).top1 == as_tuple
    assert onnx_snn.evaluate(snn_y, {"y": x}, show_progress=False).top1 is None
    np.savez(tmp_path / "named_y.npz", y=x, labels=y)          # what the error messages advise
    assert onnx_snn.evaluate(snn_y, str(tmp_path / "named_y.npz"), show_progress=False).top1 == as_tuple


def test_an_inputs_labels_tuple_converts_as_its_inputs_and_evaluates_with_its_labels():
    """(x, y), which evaluate takes, converts too (labels unused there): it was read as one
    ragged array. An unknown dict array is warned about, label/target are labels."""
    x = B.rand_input(16)
    y = np.arange(16) % 10
    a = onnx_snn.convert(B.vgg(13, "clip"), (x, y), timesteps=2, method="datta", show_progress=False)
    b = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    assert a.model.graph.SerializeToString() == b.model.graph.SerializeToString()
    top1 = onnx_snn.evaluate(a.model, (x, y), show_progress=False).top1
    assert onnx_snn.evaluate(a.model, {"x": x, "label": y}, show_progress=False).top1 == top1


def test_running_a_model_at_another_T_than_its_parameters_were_fitted_for_is_warned(caplog, tmp_path):
    """refined and datta search their parameters for the conversion's T (and fine-tuning
    fits them for its T): eval, deploy and fine-tuning at another T warn, naming both T and
    what to do; max, deng and percentile hold at any T and run without a word, as does a
    refined model at its own T."""
    from onnx_snn.convert import fitted_timesteps
    x = B.rand_input(32)
    fitted = {m: onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method=m, show_progress=False)
              for m in ("refined", "datta", "max", "deng", "percentile")}

    def warned(fn):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            fn()
        return [r.getMessage() for r in caplog.records if "not rate-exact" in r.getMessage()]

    for method, snn in fitted.items():
        expect = method in ("refined", "datta")
        assert (fitted_timesteps(snn.info) == 2) is expect
        said = warned(lambda: evaluate(snn.model, x, timesteps=8, show_progress=False))
        assert bool(said) is expect, (method, said)
        assert not warned(lambda: evaluate(snn.model, x, show_progress=False))
        assert not warned(lambda: evaluate(snn.model, x, timesteps=2, show_progress=False))
    said = warned(lambda: evaluate(fitted["refined"].model, x, timesteps=8,
                                   show_progress=False, where="m.snn.onnx"))
    assert said == ["m.snn.onnx: its parameters were converted (refined) for T=2; run at T=8, "
                    "they are not rate-exact, and accuracy can fall, even as T grows. For T=8, "
                    "convert the DNN again with -T 8"]
    # the result carries it too (eval --json saved it without the warning)
    r = evaluate(fitted["refined"].model, x, timesteps=8, show_progress=False, where="m.snn.onnx")
    assert r.warnings == said and not any("rate-exact" in n for n in r.notes)
    assert evaluate(fitted["refined"].model, x, show_progress=False).warnings == []
    said = warned(lambda: onnx_snn.deploy(fitted["datta"], tmp_path / "d.onnx", timesteps=4))
    assert len(said) == 1 and "deployed at T=4" in said[0]
    assert not warned(lambda: onnx_snn.deploy(fitted["max"], tmp_path / "e.onnx", timesteps=4))
    # the deploy graph at T = 4 records its conversion's T = 2 in its history: run at its own
    # T it is still warned about, and `info` says so
    import onnx
    from onnx_snn.cli import main
    deployed = onnx.load(str(tmp_path / "d.onnx"))
    assert fitted_timesteps(F.read_info(deployed)) == 2
    said = warned(lambda: evaluate(deployed, x, show_progress=False, where="d.onnx"))
    assert len(said) == 1 and "converted (datta) for T=2; run at T=4" in said[0]
    assert not warned(lambda: evaluate(onnx.load(str(tmp_path / "e.onnx")), x,
                                       show_progress=False))
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["info", str(tmp_path / "d.onnx")]) == 0
    assert "T=4 (its parameters were fitted for T=2)" in buf.getvalue()


def test_timesteps_given_for_a_dnn_are_noted_in_the_result():
    """evaluate(DNN, timesteps=3) ran the DNN and said nothing in the API (the command line
    printed its own note); the result's notes say it now, and the command line prints them."""
    x = B.rand_input(8)
    r = evaluate(B.vgg(13, "clip"), (x, np.zeros(8, np.int64)), timesteps=3, show_progress=False)
    assert r.kind == "dnn" and any("ignored for a DNN" in n for n in r.notes)
    r = evaluate(B.vgg(13, "clip"), (x, np.zeros(8, np.int64)), show_progress=False)
    assert not any("ignored" in n for n in r.notes)


def test_a_dnn_whose_shape_annotations_do_not_fit_runs_without_them(caplog):
    """A producer's value_info may annotate NCHW tensors with NHWC shapes (jax2onnx does):
    onnxruntime merges them leniently and then refuses a residual Add as incompatible. The
    annotations are hints; evaluation (and anything else that opens a session) drops them
    and runs, with a warning, where it exited 3 saying to fix the weights. A model whose
    weights truly do not fit is still refused."""
    import onnx
    import onnxruntime as ort
    from onnx import helper as h
    clean = B.resnet(13, "clip")
    m = onnx.ModelProto()
    m.CopyFrom(clean)
    for v in onnx.shape_inference.infer_shapes(clean).graph.value_info:
        d = [x.dim_value or x.dim_param for x in v.type.tensor_type.shape.dim]
        if len(d) == 4:
            d = [d[0], d[2], d[3], d[1]]                        # NHWC on NCHW tensors
        m.graph.value_info.append(h.make_tensor_value_info(v.name, v.type.tensor_type.elem_type, d))
    with pytest.raises(Exception):
        ort.InferenceSession(m.SerializeToString())              # what onnxruntime does
    x = B.rand_input(16)
    want = onnx_snn.evaluate(clean, x, show_progress=False, top1=None)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        got = onnx_snn.evaluate(m, x, show_progress=False, top1=None)
    assert got.samples == want.samples == 16
    assert any("shape annotations" in r.getMessage() for r in caplog.records)
    from onnx_snn.runtimes.ort import run
    np.testing.assert_array_equal(run(m, x).outputs[0], run(clean, x).outputs[0])
    broken = onnx.ModelProto()
    broken.CopyFrom(m)
    w = next(t for t in broken.graph.initializer if len(t.dims) == 4 and t.dims[1] > 1)
    w.dims[1] += 1                                                # a weight of the wrong size
    w.raw_data = np.zeros(int(np.prod(w.dims)), np.float32).tobytes()
    with pytest.raises((ModelLoadError, onnx_snn.errors.UnsupportedModelError)):
        onnx_snn.evaluate(broken, x, show_progress=False, top1=None)


def test_a_first_output_that_is_not_scores_names_the_outputs_and_the_fix():
    """A model that lists a feature map before its logits: eval scores the first output, and
    the refusal names the outputs and convert --outputs."""
    m = B.vgg(13, "clip", softmax=False)
    feat = m.graph.node[0].output[0]
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT, None))
    x = B.rand_input(8)
    from onnx_snn.errors import DataError
    with pytest.raises(DataError, match=r"It has 2 outputs .*eval --output NAME.*--outputs NAME"):
        evaluate(m, {"x": x, "y": np.zeros(8, np.int64)}, show_progress=False)
    # a first output of one score per sample (a confidence before the class ids), taken for
    # a binary classifier's: the labels above 1 are refused with the same hint (it had none)
    m = B.vgg(13, "clip", softmax=False)
    logits = m.graph.output[0].name
    conf = onnx.helper.make_node("ReduceMax", [logits], ["conf"], axes=[1], keepdims=0)
    m.graph.node.append(conf)
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info("conf", onnx.TensorProto.FLOAT, None))
    with pytest.raises(DataError, match=r"binary classifier's.*It has 2 outputs .*eval --output NAME"):
        evaluate(m, {"x": x, "y": np.full(8, 9, np.int64)}, show_progress=False)


@pytest.mark.parametrize("spiking", [False, True])
def test_output_picks_the_scored_output(spiking):
    """eval --output NAME scores another output than the first (a DNN's, and a spiking
    model's that convert --outputs kept two of): the same top-1 as the model with that
    output alone."""
    m = B.vgg(13, "clip", softmax=False)
    logits = m.graph.output[0].name
    feat = next(n.output[0] for n in m.graph.node if n.op_type == "Flatten")
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT,
                                                                ["N", "D"]))
    alone = onnx.ModelProto()
    alone.CopyFrom(m)
    del alone.graph.output[0]
    x = B.rand_input(16)
    y = np.arange(16) % 10
    if spiking:
        m = onnx_snn.convert(m, x, timesteps=2, method="datta", outputs=[feat, logits],
                    show_progress=False).model
        alone = onnx_snn.convert(alone, x, timesteps=2, method="datta", show_progress=False).model
    r = evaluate(m, (x, y), output=logits, show_progress=False)
    want = evaluate(alone, (x, y), show_progress=False)
    assert r.scored_output == logits and r.outputs == 2 and r.correct == want.correct
    with pytest.raises(onnx_snn.errors.UsageError, match=r"'nope' is not an output of .*its "
                                                         rf"outputs are: {feat}, {logits}"):
        evaluate(m, (x, y), output="nope", show_progress=False)


def test_minus_infinite_scores_are_scores_but_nan_is_refused():
    """A log-softmax head that underflows on confident samples gives -inf scores, whose
    argmax is defined: scored (the NaN check refused them, an outside review found)."""
    from onnx import helper as oh
    w = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32) * 1000
    g = oh.make_graph([oh.make_node("Flatten", ["x"], ["f"]), oh.make_node("MatMul", ["f", "w"], ["z"]),
                       oh.make_node("Softmax", ["z"], ["p"], axis=1),
                       oh.make_node("Log", ["p"], ["logits"])], "g",
                      [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])],
                      [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 3])],
                      [onnx.numpy_helper.from_array(w, "w")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])
    x = np.random.default_rng(1).random((8, 1, 4, 4)).astype(np.float32)
    from onnx_snn.runtimes.ort import run
    out = run(m, x).outputs[0]
    assert np.isneginf(out).any()
    r = evaluate(m, (x, out.argmax(1)), show_progress=False)
    assert r.top1 == 100.0     # (NaN outputs: tests/test_bad_inputs.py, eval_dnn_overflowing_data)


def test_the_recorded_normalization_is_noted_only_where_it_is_applied(tmp_path):
    """A named dataset is normalized with what the model records, and eval says so; arrays
    (any file, a split of one) are taken as preprocessed: no such note."""
    from onnx_snn.datasets import load_dataset
    m = B.vgg(13, "clip", in_shape=(1, 28, 28))
    m.metadata_props.add(key="onnx_snn.preprocess", value='{"mean": [0.286], "std": [0.353]}')
    x = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(4), x_test=x, y_test=np.arange(4))
    for data in (str(tmp_path / "d.npz"), str(tmp_path / "d.npz") + ":test"):
        r = evaluate(m, data, show_progress=False)
        assert not any("normalized as" in n for n in r.notes), data
    try:
        load_dataset("fashion-mnist:test")
    except onnx_snn.errors.DataError:
        pytest.skip("Fashion-MNIST is not installed")
    r = evaluate(m, "fashion-mnist", limit=8, show_progress=False)
    assert any("the images are normalized as vgg_clip_op13 records (mean [0.286], std [0.353])" in n
               for n in r.notes), r.notes


def test_a_float64_dnn_that_onnxruntime_cannot_run_is_evaluated_in_float32(tmp_path, caplog):
    """onnxruntime has no float64 Conv on the CPU: eval of such a DNN (the conversion computes
    it in float32) failed. It now runs the model computed in float32, with a warning naming
    the op, and gives the float32 model's outputs."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 1, 3, 3)) * 0.5)
    w2 = rng.standard_normal((10, 4))

    def model(ft, et):
        inits = [nh.from_array(w.astype(ft), "w"), nh.from_array(w2.astype(ft), "w2")]
        nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
                 h.make_node("Relu", ["c"], ["r"]), h.make_node("GlobalAveragePool", ["r"], ["p"]),
                 h.make_node("Flatten", ["p"], ["f"]), h.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", et, ["N", 1, 8, 8])],
                         [h.make_tensor_value_info("y", et, ["N", 10])], inits)
        return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    double, single = tmp_path / "d.onnx", tmp_path / "s.onnx"
    onnx.save(model(np.float64, TP.DOUBLE), str(double))
    onnx.save(model(np.float32, TP.FLOAT), str(single))
    x = {"x": np.random.default_rng(1).random((16, 1, 8, 8)).astype(np.float32),
         "y": np.arange(16) % 10}
    from onnx_snn.runtimes.ort import run
    with caplog.at_level(logging.WARNING):
        got = evaluate(str(double), x, show_progress=False)
    assert "no kernel for one of its ops" in caplog.text and "Conv" in caplog.text
    assert got.top1 == evaluate(str(single), x, show_progress=False).top1
    np.testing.assert_allclose(run(onnx.load(str(double)), x["x"]).outputs[0],
                               run(onnx.load(str(single)), x["x"]).outputs[0], rtol=1e-5, atol=1e-6)


def test_a_fine_tuning_that_kept_its_starting_model_fitted_nothing():
    """A fine-tuning at T=4 whose epochs never beat the T=2 conversion writes that model
    (epochs_done 0): its parameters are still fitted for T=2, and running it at 4 warns."""
    import copy
    import json
    from onnx_snn.convert import fitted_timesteps
    snn = onnx_snn.convert(B.vgg(13, "clip"), B.rand_input(16), timesteps=2, show_progress=False)
    for done, want in ((0, 2), (1, 4)):
        m = copy.deepcopy(snn.model)
        meta = F.metadata(m)
        history = json.loads(meta[F.META_HISTORY])
        history.append({"step": "finetune", "timesteps": 4, "epochs_done": done})
        meta[F.META_HISTORY], meta[F.META_TIMESTEPS] = json.dumps(history), "4"
        F.set_metadata(m, meta)
        assert fitted_timesteps(F.read_info(m)) == want


def test_inputs_with_labels_none_are_unlabeled_data():
    """``evaluate(m, (x, None))`` said "labels of dtype object are not class indices"; it is
    the unlabeled ``evaluate(m, x)``: spike rates, no top-1."""
    x = B.rand_input(8)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, 2, method="datta", show_progress=False)
    a = onnx_snn.evaluate(snn, (x, None), show_progress=False)
    b = onnx_snn.evaluate(snn, x, show_progress=False)
    assert a.top1 is None and b.top1 is None
    assert a.to_dict()["sites"] == b.to_dict()["sites"]


@pytest.mark.parametrize("value", ['{"mean": [0.5], "std": [0]}', '{"mean": [NaN], "std": [1]}',
                                   '[0.5, 0.2]', 'garbage'])
def test_a_dnns_damaged_preprocessing_is_refused_alike_by_eval_and_convert(tmp_path, value):
    """std 0, NaN, a list, not JSON: convert refused some as "the model" and converted others
    on raw pixels; eval ignored them all and scored raw pixels (51.6 % where 93.4 % was
    right, an outside tester). Both now refuse, exit 3, naming the file."""
    from onnx_snn.cli import main
    m = B.vgg(13, "clip")
    m.metadata_props.add(key="onnx_snn.preprocess", value=value)
    path = tmp_path / "pp.onnx"
    onnx.save(m, str(path))
    np.savez(tmp_path / "d.npz", x=B.rand_input(8))
    for argv in (["eval", str(path), "--data", str(tmp_path / "d.npz")],
                 ["convert", str(path), "--calib", str(tmp_path / "d.npz"), "--method", "max",
                  "-T", "1", "-o", str(tmp_path / "pp.snn.onnx")]):
        assert main(argv) == 3, argv
    assert not (tmp_path / "pp.snn.onnx").exists()


@pytest.mark.parametrize("value", ["{}", '{"scale": 255}'])
def test_a_dnns_preprocessing_of_neither_mean_nor_std_records_nothing(value):
    """A record of neither mean nor std ({} or keys onnx-snn does not apply) is no record:
    not mean 0 / std 1 (which switched off the search for the model's own scaling of raw
    pixels, an outside review); evaluation reads it as none."""
    from onnx_snn.evaluate import _dnn_preprocess
    from onnx_snn.graph.normalize import normalize
    m = B.vgg(13, "clip")
    m.metadata_props.add(key="onnx_snn.preprocess", value=value)
    assert normalize(m).preprocess is None
    assert _dnn_preprocess(m, "m.onnx") is None


def test_a_site_recorded_with_fewer_neurons_than_it_has_is_refused_by_its_counts():
    """A site's record and membrane shape edited alike to one neuron, on a layer of many:
    the graph broadcasts the membrane and runs, and eval printed more than one spike per
    neuron and step. A neuron fires at most once a step, so the counts give it away: exit 3,
    naming the site."""
    x = B.rand_input(24, seed=3)
    snn, site, m = B.dense_site_recorded_as_one_neuron(x)
    loud = x * 50 + 1                  # every neuron of the site fires
    with pytest.raises(ModelLoadError, match=f"{site.name} fired .* more than the 1 neurons"):
        evaluate(m, {"x": loud, "y": np.zeros(len(x), np.int64)}, show_progress=False)
    assert evaluate(snn.model, {"x": loud, "y": np.zeros(len(x), np.int64)},
                    show_progress=False).sites[site.name].rate <= 1


def test_an_overflow_names_a_weight_far_beyond_any_trained_networks():
    """A weight of 3e38 edited into a model overflowed its scores, and eval blamed the data
    alone; the message names the weight too (and not for a model of ordinary weights)."""
    from onnx import numpy_helper
    from onnx_snn.errors import DataError
    m = B.vgg(13, "clip", softmax=False)
    x = B.rand_input(8)
    data = {"x": x, "y": np.zeros(len(x), np.int64)}
    evaluate(m, data, show_progress=False)        # ordinary weights: no overflow
    last = next(n for n in reversed(m.graph.node) if n.op_type in ("Gemm", "MatMul"))
    w = next(t for t in m.graph.initializer if t.name == last.input[1])
    w.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(w).shape, 3e38,
                                               np.float32), w.name))
    with pytest.raises(DataError, match=f"check the data's scale .*'{w.name}' holds 3e\\+38"):
        evaluate(m, data, show_progress=False)
