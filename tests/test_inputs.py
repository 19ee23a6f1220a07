"""Models that take raw uint8 pixels (onnx_snn/graph/inputs.py)."""
import importlib.util
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import builders as B
from onnx_snn.errors import DataError, UnsupportedModelError
from onnx_snn.graph.inputs import PIXELS_255, is_pixels_255


def _end_to_end(model: onnx.ModelProto, mean: float, std: float) -> onnx.ModelProto:
    """``model`` behind its own preprocessing: a uint8 [N, 1, H, W] input, Cast, / 255,
    - mean, / std (an export with the transforms in the graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    x = g.input[0]
    name, dims = x.name, [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    g.node.insert(0, h.make_node("Div", ["centred", "std_c"], [name], name="normalize_std"))
    g.node.insert(0, h.make_node("Sub", ["scaled", "mean_c"], ["centred"], name="normalize_mean"))
    g.node.insert(0, h.make_node("Div", ["as_float", "c255"], ["scaled"], name="to_unit"))
    g.node.insert(0, h.make_node("Cast", ["pixels"], ["as_float"], to=TP.FLOAT, name="to_float"))
    g.initializer.extend([nh.from_array(np.array(v, np.float32), n) for n, v in
                          (("c255", 255.0), ("mean_c", mean), ("std_c", std))])
    del g.input[0]
    g.input.insert(0, h.make_tensor_value_info("pixels", TP.UINT8, dims))
    del m.metadata_props[:]                   # it records no preprocessing: it needs none
    onnx.checker.check_model(m)
    return m


def test_a_uint8_input_is_fed_raw_pixels_and_converts(tmp_path):
    """The shipped model behind its own preprocessing with a uint8 input: eval feeds the
    named dataset's raw pixels (it was refused), scoring as the shipped model does; the
    conversion takes float32 pixel values and records that named data is fed so."""
    import onnx_snn
    from onnx_snn.demo import shipped_model_path
    from onnx_snn.evaluate import evaluate
    from onnx_snn.datasets import load_dataset
    try:
        load_dataset("fashion-mnist:test")
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    shipped = onnx.load(str(shipped_model_path()))
    m = _end_to_end(shipped, 0.2860, 0.3530)
    path = tmp_path / "u8.onnx"
    onnx.save(m, str(path))
    dnn = evaluate(str(path), "fashion-mnist", limit=2000, show_progress=False)
    ref = evaluate(str(shipped_model_path()), "fashion-mnist", limit=2000, show_progress=False)
    assert abs(dnn.correct - ref.correct) <= 2          # float rounding of the scaling alone
    snn = onnx_snn.convert(str(path), "fashion-mnist", timesteps=2, method="datta",
                           calib_samples=128, show_progress=False)
    assert any("takes uint8 pixels" in n for n in snn.normalized.notes)
    assert snn.model.graph.input[0].type.tensor_type.elem_type == TP.FLOAT
    assert is_pixels_255(snn.normalized.preprocess)
    out = tmp_path / "u8.snn.onnx"
    snn.save(out)
    r = evaluate(str(out), "fashion-mnist", limit=2000, show_progress=False)
    want = evaluate(onnx_snn.convert(str(shipped_model_path()), "fashion-mnist", timesteps=2,
                                     method="datta", calib_samples=128, show_progress=False),
                    "fashion-mnist", limit=2000, show_progress=False)
    assert abs(r.top1 - want.top1) <= 1.0


def test_raw_pixel_arrays_and_what_is_not_pixels():
    """uint8 arrays go in as they are; floats that are not whole pixel values are refused,
    naming the input; a uint8 input the graph reads as integers stays refused."""
    from onnx_snn.convert import prepare
    from onnx_snn.evaluate import evaluate
    m = _end_to_end(B.vgg(13, "clip", in_shape=(1, 12, 12)), 0.5, 0.25)
    x = np.random.default_rng(0).integers(0, 256, (16, 1, 12, 12)).astype(np.uint8)
    y = np.zeros(16, np.int64)
    assert evaluate(m, (x, y), show_progress=False).samples == 16
    assert evaluate(m, (x.astype(np.float32), y), show_progress=False).samples == 16
    with pytest.raises(DataError, match="takes raw"):
        evaluate(m, (x / 255.0, y), show_progress=False)
    g = m.graph                                   # the pixels also read as integers
    g.node.append(h.make_node("Cast", ["pixels"], ["as_int"], to=TP.INT32))
    g.output.append(h.make_tensor_value_info("as_int", TP.INT32, ["N", 1, 12, 12]))
    with pytest.raises(UnsupportedModelError, match="'pixels' is uint8"):
        prepare(m)
    assert PIXELS_255["std"][0] * 255 == pytest.approx(1.0)


@pytest.mark.parametrize("layout", ["transpose", "unsqueeze", "reshape"])
def test_layout_ops_before_the_cast_and_the_spiking_model_takes_raw_pixels(layout, tmp_path):
    """``x.permute(0, 3, 1, 2).float() / 255`` on a uint8 NHWC input exports Transpose, then
    Cast: layout ops between the uint8 input and its Cast are accepted (they were refused as
    'uint8 input'), the spiking model tracks its DNN at large T, and it refuses [0, 1] data as
    the DNN does (it scored it)."""
    import onnx_snn
    from onnx_snn.convert import prepare
    from onnx_snn.evaluate import evaluate
    m = _end_to_end(B.vgg(13, "clip", in_shape=(1, 12, 12)), 0.5, 0.25)
    g = m.graph
    cast = next(n for n in g.node if n.op_type == "Cast")
    shape = {"transpose": ["N", 12, 12, 1], "unsqueeze": ["N", 12, 12], "reshape": ["N", 144]}[layout]
    del g.input[0]
    g.input.insert(0, h.make_tensor_value_info("raw", TP.UINT8, shape))
    if layout == "transpose":
        g.node.insert(0, h.make_node("Transpose", ["raw"], ["pixels"], perm=[0, 3, 1, 2]))
    elif layout == "unsqueeze":
        g.initializer.append(nh.from_array(np.array([1], np.int64), "axis1"))
        g.node.insert(0, h.make_node("Unsqueeze", ["raw", "axis1"], ["pixels"]))
    else:
        g.initializer.append(nh.from_array(np.array([-1, 1, 12, 12], np.int64), "nchw"))
        g.node.insert(0, h.make_node("Reshape", ["raw", "nchw"], ["pixels"]))
    assert cast.input[0] == "pixels"
    onnx.checker.check_model(m, full_check=True)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, [64] + shape[1:]).astype(np.uint8)
    nm = prepare(m)
    assert is_pixels_255(nm.preprocess)
    snn = onnx_snn.convert(m, x, timesteps=256, method="max", show_progress=False)
    import onnxruntime as ort
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"raw": x})[0]
    from onnx_snn.runtimes.ort import run
    got = run(snn.model, x.astype(np.float32)).outputs[0]     # logits: the softmax head dropped
    probs = np.exp(got - got.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert np.corrcoef(want.ravel(), probs.ravel())[0, 1] > 0.99
    path = tmp_path / "s.onnx"
    snn.save(path)
    y = want.argmax(1)
    assert evaluate(str(path), (x, y), show_progress=False).samples == 64
    for model in (m, str(path)):          # the DNN and its spiking model alike
        with pytest.raises(DataError, match="takes raw"):
            evaluate(model, (x / 255.0, y), show_progress=False)


def test_integer_arrays_warn_only_for_a_model_that_takes_no_raw_pixels(tmp_path, caplog):
    """A .npz of uint8 images: fine for a uint8-input model (no warning; it said to scale them
    to [0, 1], which that model refuses), a warning for a float model."""
    import logging
    from onnx_snn.evaluate import evaluate
    m = _end_to_end(B.vgg(13, "clip", in_shape=(1, 12, 12)), 0.5, 0.25)
    x = np.random.default_rng(0).integers(0, 256, (16, 1, 12, 12)).astype(np.uint8)
    np.savez(tmp_path / "u8.npz", x=x, y=np.zeros(16, np.int64))
    for model, warned in ((m, 0), (B.vgg(13, "clip", in_shape=(1, 12, 12)), 1)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            evaluate(model, str(tmp_path / "u8.npz"), show_progress=False)
        assert sum("as already preprocessed" in r.getMessage() for r in caplog.records) == warned


def test_float_pixels_given_to_a_model_that_records_a_normalization_are_warned_about(caplog):
    """Raw [0, 1] (or [0, 255]) float pixels for a model that records mean/std lost 36 points
    without a word (integer pixels were warned about); normalized data is not warned about,
    nor data for a model that records no normalization. convert --mean/--std that differ
    from the DNN's own record are said too."""
    import logging
    import onnx_snn
    from onnx_snn.convert import resolve_data
    x = np.random.default_rng(0).random((16, 1, 12, 12)).astype(np.float32)
    pp = {"mean": [0.286], "std": [0.353]}
    for data, record, warned in ((x, pp, 1), (x * 255, pp, 1), ((x - 0.286) / 0.353, pp, 0),
                                 (x, None, 0), (x, {"mean": [0.0], "std": [1.0]}, 0)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            resolve_data(data, record)
        assert sum("no negative value" in r.getMessage() for r in caplog.records) == warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        onnx_snn.convert(os.path.join(os.path.dirname(onnx_snn.__file__), "models", "fmnist_vgg.onnx"),
                         "fashion-mnist", timesteps=1, method="datta", calib_samples=64,
                         mean=0.5, std=0.5, show_progress=False)
    assert any("--mean/--std override the preprocessing it records" in r.getMessage()
               for r in caplog.records)


def test_the_several_inputs_hint_is_python_for_any_input_names():
    """tf2onnx names its inputs 'input_1:0': the hint to save one array per input must be
    code that runs (np.savez(path, input_1:0=...) is a syntax error)."""
    from onnx_snn.feeds import validate_feeds
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(DataError) as e:
        validate_feeds([("input_1:0", [None, 3]), ("input_2:0", [None, 3])], x)
    call = str(e.value).split("a .npz: ")[1].split("; in Python")[0]
    compile(call.replace("...", "0"), "hint", "eval")
    assert "'input_1:0'" in call
    with pytest.raises(DataError, match=r"np.savez\(path, a=..., b=..., y=labels\)"):
        validate_feeds([("a", [None, 3]), ("b", [None, 3])], x)
    with pytest.raises(DataError, match=r"np.savez\(path, y=..., b=..., labels=labels\)"):
        validate_feeds([("y", [None, 3]), ("b", [None, 3])], x)     # the labels elsewhere
    with pytest.raises(DataError, match="pass a dict from Python"):
        validate_feeds([("file", [None, 3]), ("b", [None, 3])], x)  # np.savez's own parameter


def test_a_model_that_normalizes_its_input_itself_is_not_told_to_normalize_again(caplog):
    """A model with (x - mean) / std in its graph and no recorded preprocessing: the raw-pixels
    warning says the model scales its input itself (it said to pass --mean/--std, which
    normalizes twice); a model without it keeps the old advice."""
    import logging
    import onnx_snn
    from onnx_snn.datasets import load_dataset
    from onnx_snn.graph.inputs import input_scaling
    try:
        load_dataset("fashion-mnist:test")
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    plain = B.vgg(13, "clip", in_shape=(1, 28, 28))
    m = onnx.ModelProto()
    m.CopyFrom(plain)
    g = m.graph
    old = g.input[0].name
    g.node.insert(0, h.make_node("Div", ["centred", "std_c"], [old]))
    g.node.insert(0, h.make_node("Sub", ["raw", "mean_c"], ["centred"]))
    g.initializer.extend([nh.from_array(np.array(0.286, np.float32), "mean_c"),
                          nh.from_array(np.array(0.353, np.float32), "std_c")])
    g.input[0].name = "raw"
    assert input_scaling(m) == "Sub, Div after input 'raw'" and input_scaling(plain) is None
    for model, says in ((m, "scales its input itself (Sub, Div after input 'raw')"),
                        (plain, "pass --mean/--std")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            onnx_snn.evaluate(model, "fashion-mnist", limit=16, show_progress=False)
            onnx_snn.convert(model, "fashion-mnist", calib_samples=16, method="datta",
                             show_progress=False)
        said = [r.getMessage() for r in caplog.records if "records no preprocessing" in r.getMessage()]
        assert len(said) == 2 and all(says in t for t in said), said


def test_a_float_model_recording_0_255_pixels_takes_any_0_255_floats(tmp_path):
    """A float model converted with --mean 0 --std 1/255 records raw 0-255 pixels; its arrays
    need not be whole numbers (resized images), only on that scale: [0, 1] data is refused."""
    import onnx_snn
    from onnx_snn.datasets import load_dataset
    from onnx_snn.evaluate import evaluate
    try:
        load_dataset("fashion-mnist:test")
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    m = B.vgg(13, "clip", in_shape=(1, 28, 28))
    snn = onnx_snn.convert(m, "fashion-mnist", calib_samples=16, method="datta",
                           mean=[0.0], std=[1 / 255], show_progress=False)
    assert is_pixels_255(snn.normalized.preprocess)
    path = tmp_path / "s.onnx"
    snn.save(path)
    x = (np.random.default_rng(0).random((16, 1, 28, 28)) * 255).astype(np.float32)   # 12.7...
    y = np.zeros(16, np.int64)
    assert evaluate(str(path), (x, y), show_progress=False).samples == 16
    with pytest.raises(DataError, match="takes raw 0-255 pixels"):
        evaluate(str(path), (x / 255.0, y), show_progress=False)
    with pytest.raises(DataError, match=r"takes raw 0-255 pixels; the data holds values in \[300"):
        evaluate(str(path), (x + 300, y), show_progress=False)     # no 8-bit pixels either


def _scaled_input(plain, ops):
    """``plain`` with constant ops [(op, value), ...] applied to a new input 'raw' first."""
    m = onnx.ModelProto()
    m.CopyFrom(plain)
    g = m.graph
    old, t = g.input[0].name, "raw"
    for i, (op, v) in enumerate(ops):
        out = old if i == len(ops) - 1 else f"scaled{i}"
        g.node.insert(i, h.make_node(op, [t, f"c{i}"], [out]))
        g.initializer.append(nh.from_array(np.asarray(v, np.float32), f"c{i}"))
        t = out
    g.input[0].name = "raw"
    return m


@pytest.mark.parametrize("ops, raw", [
    ([("Mul", 1 / 255)], True),                                   # Keras Rescaling(1/255)
    ([("Div", 255.0)], True),
    ([("Sub", 72.9), ("Div", 90.0)], True),                       # Normalization on raw pixels
    ([("Sub", 110.0), ("Div", 45.0)], True),                      # low-contrast raw pixels
    ([("Mul", 1 / 127.5), ("Sub", 1.0)], True),                   # Rescaling(1/127.5, offset=-1)
    ([("Sub", 0.286), ("Div", 0.353)], False),                    # a [0, 1] model's own
    ([("Mul", 2.0), ("Sub", 1.0)], False),
    ([("Mul", np.full((1, 3, 1, 1), 1 / 255, np.float32))], True),   # per channel
    ([("Mul", np.array([1 / 255, 1.0], np.float32).reshape(1, 2, 1, 1))], False),
    ([("Div", 9.0)], False),                                      # a gain above 1/10
    ([("Mul", 1 / 255), ("Add", 50.0)], False),                   # 0-255 mapped to [50, 51]
    ([("Sub", np.full((1, 1, 28, 28), 73, np.float32)),           # per pixel, a corner pixel
      ("Div", np.where(np.arange(784).reshape(1, 1, 28, 28) == 0, 1e-7, 90).astype(np.float32))],
     True),                                                       # of variance 0: / epsilon
])
def test_a_model_that_scales_its_input_by_1_255_reads_as_raw_pixels(ops, raw):
    """What reads as a model of 0-255 pixels: the affine map of its own first constant
    Sub/Add/Mul/Div (each constant at its median) has a gain of at most 1/10 and maps 0-255
    into +-10."""
    from onnx_snn.graph.inputs import scales_raw_pixels
    m = _scaled_input(B.vgg(13, "clip", in_shape=(1, 28, 28)), ops)
    assert bool(scales_raw_pixels(m)) is raw


def test_the_pixel_rule_reads_subtractions_from_a_constant_and_refuses_reciprocals():
    from onnx_snn.graph.inputs import scales_raw_pixels
    plain = B.vgg(13, "clip", in_shape=(1, 28, 28))
    m = _scaled_input(plain, [("Sub", 127.5), ("Div", 127.5)])
    g = m.graph
    first = g.node[0]                                             # 127.5 - x: the data second
    first.input[:] = [first.input[1], first.input[0]]
    assert scales_raw_pixels(m)
    second = g.node[1]                                            # c / (...): not affine
    second.input[:] = [second.input[1], second.input[0]]
    assert scales_raw_pixels(m) is None
    shapeless = _scaled_input(plain, [("Mul", 1 / 255)])
    shapeless.graph.input[0].type.tensor_type.ClearField("shape")
    assert scales_raw_pixels(shapeless) is None


def test_named_datasets_are_fed_as_raw_pixels_to_a_model_that_scales_them_itself(caplog):
    """A model whose own first operation is x / 255 (Keras's Rescaling) is fed a named
    dataset as 0-255 pixels, with a warning saying why: fed [0, 1] images it scored chance.
    Its spiking model records that preprocessing. Arrays are taken as given: a model that
    scales its input so but reads other data ((x + 80) / 80 of a spectrogram in dB) converts
    and evaluates on its arrays as before."""
    import logging
    import onnx_snn
    from onnx_snn.datasets import load_dataset
    plain = B.vgg(13, "clip", in_shape=(1, 28, 28))
    db = _scaled_input(plain, [("Add", 80.0), ("Div", 80.0)])
    x = (-80.0 * np.random.default_rng(0).random((16, 1, 28, 28))).astype(np.float32)
    snn = onnx_snn.convert(db, x, method="datta", show_progress=False)
    assert snn.info.preprocess is None
    assert onnx_snn.evaluate(snn, x, show_progress=False, top1=None).samples == 16
    assert onnx_snn.evaluate(db, x, show_progress=False, top1=None).samples == 16
    try:
        load_dataset("fashion-mnist:test")
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    m = _scaled_input(plain, [("Mul", 1 / 255)])
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        got = onnx_snn.evaluate(m, "fashion-mnist", limit=64, show_progress=False)
    want = onnx_snn.evaluate(plain, "fashion-mnist", limit=64, show_progress=False)
    assert got.top1 == want.top1
    assert any("takes raw 0-255 pixels" in r.getMessage() for r in caplog.records)
    snn = onnx_snn.convert(m, "fashion-mnist", calib_samples=32, method="datta",
                           show_progress=False)
    assert is_pixels_255(snn.info.preprocess)
    assert onnx_snn.evaluate(snn, "fashion-mnist", limit=64, show_progress=False).samples == 64


def test_a_table_scaled_down_is_not_taken_for_pixels():
    """The rule reads images only: a tabular model may scale its features by 1/1000 and
    take negative values."""
    from onnx_snn.graph.inputs import scales_raw_pixels
    rng = np.random.default_rng(0)
    g = h.make_graph([h.make_node("MatMul", ["x", "w1"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
                      h.make_node("MatMul", ["r", "w2"], ["y"])], "table",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 8])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 3])],
                     [nh.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
                      nh.from_array(rng.normal(size=(16, 3)).astype(np.float32), "w2")])
    table = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    assert scales_raw_pixels(_scaled_input(table, [("Mul", 1e-3)])) is None
    image = _scaled_input(B.vgg(13, "clip", in_shape=(1, 28, 28)), [("Mul", 1e-3)])
    assert scales_raw_pixels(image)            # the same scaling of an image input



def test_every_command_checks_the_data_scale_alike(tmp_path, capsys, caplog):
    """The data's value scale is checked by every command that reads data, through
    resolve_data (an outside sweep took it for a convert-only check): [0, 1] arrays for a model
    that takes raw 0-255 pixels (a uint8 input) are refused by convert, eval (DNN and spiking
    model), analyze and finetune alike; 0-255 arrays for a model that records a normalization
    of [0, 1] images are warned about alike."""
    import logging
    from onnx_snn.cli import main
    dnn, snn = tmp_path / "u8.onnx", tmp_path / "u8.snn.onnx"
    onnx.save(_end_to_end(B.vgg(13, "clip", in_shape=(1, 12, 12)), 0.5, 0.25), str(dnn))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 1, 12, 12)).astype(np.float32), rng.integers(0, 10, 32)
    np.savez(tmp_path / "px.npz", x=x, y=y)
    np.savez(tmp_path / "unit.npz", x=x / 255, y=y)
    unit, px = str(tmp_path / "unit.npz"), str(tmp_path / "px.npz")
    assert main(["-q", "convert", str(dnn), "--calib", px, "--method", "max", "-o", str(snn)]) == 0
    commands = [["convert", str(dnn), "-o", str(tmp_path / "o.onnx"), "--method", "max", "--calib"],
                ["eval", str(dnn), "--data"], ["eval", str(snn), "--data"],
                ["analyze", str(snn), "--data"]]
    if importlib.util.find_spec("torch") is not None:
        commands.append(["finetune", str(snn), "-o", str(tmp_path / "t.onnx"), "--data"])
    for argv in commands:
        assert main(["-q", *argv, unit]) == DataError.exit_code, argv
        assert (f"onnx-snn: error: {unit}: the model takes raw 0-255 pixels; the data holds "
                "values in [0, 1]") in capsys.readouterr().err, argv
    normalized = B.vgg(13, "clip", in_shape=(1, 12, 12))
    normalized.metadata_props.add(key="onnx_snn.preprocess", value='{"mean": [0.5], "std": [0.25]}')
    dnn, snn = tmp_path / "n.onnx", tmp_path / "n.snn.onnx"
    onnx.save(normalized, str(dnn))
    assert main(["-q", "convert", str(dnn), "--calib", str(tmp_path / "px.npz"), "--method",
                 "max", "-o", str(snn)]) == 0
    for argv in [[*argv[:1], str(snn if str(argv[1]).endswith("snn.onnx") else dnn), *argv[2:]]
                 for argv in commands]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            assert main(["-q", *argv, px]) == 0, argv
        said = {r.getMessage() for r in caplog.records if "no negative value" in r.getMessage()}
        # (finetune says it twice: the file is its training and its test data)
        assert len(said) == 1 and said.pop().startswith(f"{px}: taken as already preprocessed"), argv


def _gained(spiking_operand: bool) -> onnx.ModelProto:
    """Two inputs, x [N, 8] and gain [N, 1]: x * gain -> Gemm -> Relu -> Gemm (the product
    before the first spiking layer), or with ``spiking_operand`` the Relu's output times the
    gain (a product of spikes and data)."""
    rng = np.random.default_rng(3)
    inits = [nh.from_array(rng.normal(0, 0.5, (16, 8)).astype(np.float32), "w1"),
             nh.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b1"),
             nh.from_array(rng.normal(0, 0.5, (4, 16)).astype(np.float32), "w2"),
             nh.from_array(np.zeros(4, np.float32), "b2")]
    if spiking_operand:
        nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["z"], transB=1, name="fc1"),
                 h.make_node("Relu", ["z"], ["a"], name="act"),
                 h.make_node("Mul", ["a", "gain"], ["ag"], name="gate"),
                 h.make_node("Gemm", ["ag", "w2", "b2"], ["y"], transB=1, name="fc2")]
    else:
        nodes = [h.make_node("Mul", ["x", "gain"], ["xg"], name="gain_mul"),
                 h.make_node("Gemm", ["xg", "w1", "b1"], ["z"], transB=1, name="fc1"),
                 h.make_node("Relu", ["z"], ["a"], name="act"),
                 h.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1, name="fc2")]
    g = h.make_graph(nodes, "gained", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 8]),
                                       h.make_tensor_value_info("gain", TP.FLOAT, ["N", 1])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 4])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def test_a_product_of_two_inputs_before_the_first_spiking_layer_converts(tmp_path):
    """x * gain of two model inputs is the same at every step, an input current like any
    other: it converts (it was refused as 'multiplies two data tensors, not linear in the
    spikes'), follows its DNN at large T, and the two runtimes agree on it."""
    import onnx_snn
    from onnx_snn.runtimes.ort import run
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((64, 8)).astype(np.float32),
             "gain": rng.uniform(0.5, 2, (64, 1)).astype(np.float32)}
    np.savez(tmp_path / "calib.npz", **feeds)
    m = _gained(False)
    snn = onnx_snn.convert(m, str(tmp_path / "calib.npz"), timesteps=256, method="max",
                           show_progress=False)
    got, want = run(snn.model, feeds).outputs[0], run(m, feeds).outputs[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    torch = pytest.importorskip("torch")
    from onnx_snn.runtimes.torch import SpikingNetwork
    small = onnx_snn.convert(m, str(tmp_path / "calib.npz"), timesteps=3, show_progress=False)
    net = SpikingNetwork(small.model).eval()
    with torch.no_grad():
        y = net({k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    r = run(small.model, feeds)
    assert np.abs(y - r.outputs[0]).max() <= 1e-5
    for k in r.spikes:
        np.testing.assert_array_equal(net.last_spikes[k].numpy(), r.spikes[k])


def test_a_product_of_spikes_and_data_stays_refused():
    from onnx_snn.graph.normalize import normalize
    with pytest.raises(UnsupportedModelError, match=r"'gate' \(Mul\) multiplies or divides two "
                                                    r"data tensors"):
        normalize(_gained(True))


def test_a_recorded_preprocessing_key_that_is_not_applied_is_said_once_and_not_carried(
        tmp_path, caplog, capsys):
    """A DNN whose onnx_snn.preprocess also records a key onnx-snn does not apply (a scale,
    a layout: another tool's convention) was fed without it and no word said: each command
    now warns once, naming the key, and the spiking file records only mean and std."""
    import json
    import logging
    from onnx_snn.cli import main
    from onnx_snn.datasets import check_preprocess
    dnn, snn = tmp_path / "d.onnx", tmp_path / "d.snn.onnx"
    m = B.vgg(13, "clip", in_shape=(1, 12, 12))
    m.metadata_props.add(key="onnx_snn.preprocess",
                         value='{"mean": [0.5], "std": [0.25], "scale": 255, "layout": "NHWC"}')
    onnx.save(m, str(dnn))
    np.save(tmp_path / "x.npy", B.rand_input(16, seed=2))
    for argv in (["convert", str(dnn), "--calib", str(tmp_path / "x.npy"), "--method", "max",
                  "-o", str(snn)], ["eval", str(dnn), "--data", str(tmp_path / "x.npy")]):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            assert main(["-q", *argv]) == 0, argv
        said = [r.getMessage() for r in caplog.records if "does not apply" in r.getMessage()]
        assert len(said) == 1 and "'layout', 'scale'" in said[0] and str(dnn) in said[0], said
    recorded = {p.key: p.value for p in onnx.load(str(snn)).metadata_props}
    assert json.loads(recorded["onnx_snn.preprocess"]) == {"mean": [0.5], "std": [0.25]}
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert check_preprocess({"mean": [1], "std": [2], "x": 1}) == {"mean": [1.0], "std": [2.0]}
