"""convert's default reconstruction (onnx_snn/auto_reconstruct.py): when, how long, and what
the report and the command line say. (tests/conftest.py turns it off for the rest of the
suite through $ONNX_SNN_RECONSTRUCT; these tests turn it back on.)"""
import contextlib
import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import builders as B
import onnx_snn
from onnx_snn import auto_reconstruct as ar
from onnx_snn.analyze.flops import count_layers, total_macs
from onnx_snn.errors import UsageError
from onnx_snn.runtimes.ort import run


@pytest.fixture
def auto(monkeypatch):
    monkeypatch.setenv(ar.ENV, "auto")


def _analyzer_macs(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return total_macs(count_layers(model))


def _transposed_gemm() -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Transpose -> Gemm(transA=1): the dense layer's K from A's
    first axis."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(4 * 10 * 10, 5)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Transpose", ["f"], ["ft"], perm=[1, 0]),
             helper.make_node("Gemm", ["ft", "fc"], ["y"], transA=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", 1, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], [w, fc])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("make", [B.vgg, lambda: B.vgg(matmul=True), B.resnet,
                                  lambda: B.pooled_twin("MaxPool"), _transposed_gemm],
                         ids=["vgg", "vgg-matmul", "resnet", "pooled", "gemm-transA"])
def test_the_estimate_is_the_analyzers_count(make):
    """The graph-shape estimate counts what the analyzer counts for every convolution and
    dense layer (on the normalized model, as convert has it)."""
    model = make()
    macs = ar.dense_macs(onnx_snn.prepare(model).model) if make is not _transposed_gemm \
        else ar.dense_macs(onnx.shape_inference.infer_shapes(model))
    assert macs is not None and macs > 0
    assert macs == _analyzer_macs(model)


def test_a_free_spatial_size_is_counted_at_the_data_shape():
    model = B.vgg()
    free = onnx.ModelProto()
    free.CopyFrom(model)
    for d in free.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "S"
    assert ar.dense_macs(free) is None
    assert ar.estimated_macs(free, {free.graph.input[0].name: (7, 1, 12, 12)}) == \
        _analyzer_macs(model)


def _cost(model, batch=None):
    """step_cost of a normalized ``model`` as the plan counts it."""
    return ar.step_cost(ar.dense_macs(model), len(model.graph.node), batch,
                        ar.activation_elements(model))


@pytest.mark.parametrize("make", [B.vgg, B.resnet, lambda: B.pooled_twin("MaxPool")],
                         ids=["vgg", "resnet", "pooled"])
def test_the_activations_are_every_node_output_per_sample(make):
    """activation_elements counts what onnxruntime computes: every node's output, per
    sample (here run on 3 samples with every output exposed); a graph whose spatial size is
    free counts none (None) and is counted at the data's shape by estimated_elements."""
    model = onnx_snn.prepare(make()).model
    counted = ar.activation_elements(model)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    names = [o for n in exposed.graph.node for o in n.output if o]
    have = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in names
                                if o not in have)
    import onnxruntime as ort
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).normal(size=(3, *inp.shape[1:])).astype(np.float32)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {inp.name: x})))
    assert counted == sum(outs[o].size // 3 for o in names) > 0
    free = onnx.ModelProto()
    free.CopyFrom(model)
    for d in free.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "S"
    del free.graph.value_info[:]
    assert ar.activation_elements(free) is None
    assert ar.estimated_elements(free, {inp.name: x.shape}) == counted


def test_the_budget_in_epochs():
    # the measured networks (MACs, nodes, activations of the normalized graph): the
    # quarter-width VGG-16, ResNet-20 and the shipped model, 512 images
    vgg, resnet, shipped = (ar.step_cost(13_005_568, 36, elements=108_330),
                            ar.step_cost(11_336_960, 52, elements=144_426),
                            ar.step_cost(19_094_528, 14, elements=163_594))
    for cost in (vgg, resnet, shipped):
        assert ar.auto_epochs(cost, 512, 1) == ar.MAX_EPOCHS
    assert ar.auto_epochs(vgg, 512, 2) == 28      # within 60 s end to end (README)
    assert ar.auto_epochs(resnet, 512, 2) == 23
    assert ar.auto_epochs(shipped, 512, 2) == 24
    assert ar.auto_epochs(vgg, 512, 4) == 14
    # where the data holds more: 3 epochs of 4096 / 4010 / 4096 images at T = 2
    assert [ar.training_images(c, 512, 60000, 2) for c in (vgg, resnet, shipped)] == \
        [ar.IMAGES, 4010, ar.IMAGES]
    # a net of few MACs and many activations (depthwise-separable residual blocks of 32
    # channels at 28 x 28, tools/bench_budget.py's dwres: its epoch took 1.9x VGG-16's) is
    # priced by its activations: fewer image-epochs than VGG-16 (it got 2x more, before)
    dwres = ar.step_cost(4_340_544, 25, elements=552_010)
    assert ar.budget_passes(dwres, 2) < ar.budget_passes(vgg, 2) / 1.9
    # the full-width VGG-16 (224 M MACs, 0.45 M activations on 28 x 28; an epoch of 512
    # images took 11 s at T = 2): none
    assert ar.auto_epochs(ar.step_cost(224_035_840, 36, elements=445_578), 512, 2) < \
        ar.MIN_EPOCHS
    # a deep narrow chain (100 8-wide dense layers and their activations) is priced by its
    # layers, not its few MACs: fewer epochs than VGG-16
    assert ar.auto_epochs(ar.step_cost(6400, 201), 512, 2) < ar.auto_epochs(vgg, 512, 2)
    # twice the images or steps: at most half the epochs (the same work)
    for cost in (1e5, 3e6, 2e7, 1e8):
        for t in (1, 2, 3, 4):
            a, b = ar.auto_epochs(cost, 512, t), ar.auto_epochs(cost, 1024, t)
            assert b <= a and (a == ar.MAX_EPOCHS or abs(2 * b - a) <= 1)
    # torchvision's ResNet-50 at 224 (4.1 G MACs), 64 images: none
    assert ar.auto_epochs(ar.step_cost(4.1e9, 120), 64, 2) < ar.MIN_EPOCHS


def test_the_plan_says_why_not():
    model = onnx_snn.prepare(B.vgg()).model
    shapes = {model.graph.input[0].name: (16, 1, 12, 12)}
    assert ar.plan("datta", 2, model, 16, shapes, have_torch=True) == ar.Plan(0)
    p = ar.plan("refined", 2, model, 16, shapes, have_torch=False)
    assert p.epochs == 0 and "onnx-snn[torch]" in p.why
    p = ar.plan("refined", 2, model, 16, shapes, have_torch=True)
    assert p.epochs == ar.MAX_EPOCHS and p.why is None and p.macs == _analyzer_macs(B.vgg())
    many = int(ar.BUDGET / (_cost(model) * 2 * 10)) + 1
    # (ten epochs' worth of images, and one more)
    p = ar.plan("refined", 2, model, many, shapes, have_torch=True)
    assert p.epochs == 9 and p.images == many and f"9 epochs of the {many} calibration" in p.why
    # three times as many: 3 epochs of them all; four times: EPOCHS_PER_IMAGE epochs of
    # those the budget pays for (not none)
    p = ar.plan("refined", 2, model, many * 3, shapes, have_torch=True)
    assert p.epochs == 3 and p.images == many * 3
    p = ar.plan("refined", 2, model, many * 4, shapes, have_torch=True)
    assert p.epochs == ar.EPOCHS_PER_IMAGE and many * 3 < p.images < many * 4
    assert f"of the {many * 4} calibration images" in p.why
    # a budget under MIN_EPOCHS epochs of MIN_EPOCHS_OF images (at so many steps): none,
    # however many images there are
    cost = _cost(model)
    steps = int(ar.BUDGET / (cost * ar.MIN_EPOCHS * ar.MIN_EPOCHS_OF)) + 1
    assert ar.plan("refined", steps - 1, model, 512, shapes, have_torch=True).epochs > 0
    for have_torch in (True, False):    # (too large: PyTorch is not even looked for)
        for n, available in ((512, None), (4096, 60000)):
            p = ar.plan("refined", steps, model, n, shapes, have_torch=have_torch,
                        available=available)
            assert p.epochs == 0 and f"--reconstruct {ar.MAX_EPOCHS}" in p.why


@pytest.mark.parametrize("fixed", [1, 4, 64])
def test_a_fixed_batch_costs_per_step_overhead(fixed):
    """A model whose batch is fixed at b < BATCH trains b samples a step, so part of a
    step's cost is paid BATCH / b times per image: its plan affords less (a fixed batch of 1
    took 9-12x the time of the same model's free batch), and says why."""
    model = onnx_snn.prepare(B.vgg()).model
    nodes = len(model.graph.node)
    macs = ar.dense_macs(model)
    # as many images as the free batch's budget pays 20 epochs of: under MAX_EPOCHS either way
    n = int(ar.BUDGET / (ar.step_cost(macs, nodes, elements=ar.activation_elements(model)) * 2 * 20))
    shapes = {model.graph.input[0].name: (n, 1, 12, 12)}
    free = ar.plan("refined", 2, model, n, shapes, have_torch=True)
    assert free.epochs == 20
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_value = fixed
    p = ar.plan("refined", 2, model, n, shapes, have_torch=True)
    assert ar.step_cost(macs, nodes, fixed, ar.activation_elements(model)) / ar.step_cost(macs, nodes, elements=ar.activation_elements(model)) == pytest.approx(
        11.0 if fixed == 1 else 1.0 if fixed >= ar.BATCH else
        ar.PER_SAMPLE + (1 - ar.PER_SAMPLE) * ar.BATCH / fixed)
    cost = ar.step_cost(macs, nodes, fixed, ar.activation_elements(model))
    assert p.epochs * p.images * cost * 2 <= ar.BUDGET * 1.01       # (within the budget)
    if fixed < ar.BATCH:
        assert p.epochs * p.images < free.epochs * free.images
        assert p.epochs * p.images * cost * 2 > ar.BUDGET * 0.6     # (and most of it spent)
        assert f"{fixed} sample{'s' if fixed > 1 else ''} a step (the model's fixed batch)" in p.why
    else:
        assert p == free


@pytest.mark.parametrize("value,expect", [("auto", "auto"), ("", "auto"), (" AUTO ", "auto"),
                                          ("1", "auto"), ("on", "auto"), ("0", 0), ("off", 0)])
def test_the_environment_variable(monkeypatch, value, expect):
    monkeypatch.setenv(ar.ENV, value)
    assert ar.env_default() == expect


def test_a_bad_environment_variable_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ar.ENV, "30")
    with pytest.raises(UsageError, match=ar.ENV):
        onnx_snn.convert(B.vgg(), B.rand_input(8), timesteps=2, show_progress=False)
    # on the command line: exit 2, one error line, no traceback, nothing written
    from onnx_snn.cli import main
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", B.rand_input(8))
    assert main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "-o", str(tmp_path / "m.snn.onnx")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"${ar.ENV} is '30'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "m.onnx"]


def test_convert_reconstructs_by_default_with_torch(auto):
    pytest.importorskip("torch")
    x = B.rand_input(16, seed=3)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    rec = snn.report["reconstruction"]
    assert rec["automatic"] and rec["kept"] and rec["epochs"] == ar.MAX_EPOCHS
    assert snn.info.history[-1]["step"] == "reconstruct" and snn.info.history[-1]["automatic"]
    # asked for none, or another method: the conversion alone
    for off in (onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct=0),
                onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, method="datta")):
        assert "reconstruction" not in off.report
        assert off.info.history[-1]["step"] == "convert"


def test_without_torch_the_default_converts_and_says_why(auto, monkeypatch, tmp_path, capsys):
    from onnx_snn.cli import main
    monkeypatch.setattr(ar, "torch_installed", lambda: False)
    x = B.rand_input(16, seed=4)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    assert snn.report["reconstruction"] == {"automatic": True, "skipped": snn.report[
        "reconstruction"]["skipped"]} and "not installed" in snn.report["reconstruction"]["skipped"]
    assert snn.info.history[-1]["step"] == "convert"
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", x)
    assert main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
                 "-o", str(tmp_path / "m.snn.onnx"), "-q"]) == 0
    assert "not reconstructed: PyTorch is not installed" in capsys.readouterr().out


def test_cli_default_reconstructs_and_zero_does_not(auto, tmp_path, capsys):
    pytest.importorskip("torch")
    from onnx_snn.cli import main
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", B.rand_input(16, seed=5))
    common = [str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "-q"]
    assert main(["convert", *common, "-o", str(tmp_path / "a.snn.onnx")]) == 0
    assert "reconstructed in" in capsys.readouterr().out
    assert main(["convert", *common, "-o", str(tmp_path / "b.snn.onnx"), "--reconstruct", "0"]) == 0
    assert "reconstructed" not in capsys.readouterr().out


def _budget_of(epochs: float, monkeypatch) -> np.ndarray:
    """BUDGET set to ``epochs`` epochs of B.vgg()'s 16 calibration images (returned) at T = 2."""
    pytest.importorskip("torch")
    model = onnx_snn.prepare(B.vgg()).model
    cost = _cost(model)
    monkeypatch.setattr(ar, "BUDGET", cost * 16 * 2 * epochs)
    return B.rand_input(16, seed=7)


def test_a_budget_of_fewer_epochs_trains_them_and_records_why(auto, monkeypatch):
    x = _budget_of(6.5, monkeypatch)      # six epochs at T = 2
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    rec = snn.report["reconstruction"]
    assert rec["epochs"] == 6 and rec["kept"] and "skipped" not in rec
    assert "6 epochs of the 16 calibration images" in rec["budget"]


def test_a_scaled_budget_trains_that_many_times_the_epochs(auto, monkeypatch):
    """convert(reconstruct_budget=X) (--reconstruct-budget X): X times the default's budget,
    recorded with the reconstruction; the budget's arithmetic says so."""
    x = _budget_of(5.5, monkeypatch)      # five epochs at T = 2
    plain = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    scaled = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct_budget=2)
    assert plain.report["reconstruction"]["epochs"] == 5 and "budget_scale" not in plain.report[
        "reconstruction"]
    rec = scaled.report["reconstruction"]
    assert rec["epochs"] == 11 and rec["budget_scale"] == 2.0 and rec["kept"]
    assert "11 epochs of the 16 calibration images" in rec["budget"] and "2x the default's" in rec["budget"]
    # a network the default skips is reconstructed where the scaled budget pays MIN_EPOCHS
    _budget_of(ar.MIN_EPOCHS - 1, monkeypatch)
    assert "skipped" in onnx_snn.convert(B.vgg(), x, timesteps=2,
                                         show_progress=False).report["reconstruction"]
    assert onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False,
                            reconstruct_budget=2).report["reconstruction"]["epochs"] >= ar.MIN_EPOCHS


@pytest.mark.parametrize("scale", [0, -1, float("nan"), float("inf"), True, 101, "2"])
def test_a_bad_budget_scale_is_refused_before_any_work(scale):
    with pytest.raises(UsageError, match="budget scale"):
        onnx_snn.convert("no such file.onnx", "no such data", reconstruct_budget=scale)


def test_a_budget_scale_with_no_default_reconstruction_is_refused(auto, monkeypatch, tmp_path, capsys):
    from onnx_snn.cli import main
    x = B.rand_input(8, seed=7)
    for kwargs, says in (({"reconstruct": 3}, "--reconstruct EPOCHS replaces"),
                         ({"reconstruct": 0}, "--reconstruct 0 turns off"),
                         ({"method": "datta"}, "'datta' is a reference"),
                         ({"method": "nope"}, "unknown method 'nope'")):
        with pytest.raises(UsageError, match=says):
            onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct_budget=2,
                             **kwargs)
    monkeypatch.setenv(ar.ENV, "0")
    with pytest.raises(UsageError, match="ONNX_SNN_RECONSTRUCT=0 turns off here"):
        onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct_budget=2)
    # the command line: a clear message, a usage exit code, nothing written
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", x)
    code = main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"),
                 "--reconstruct-budget", "2", "--reconstruct", "3", "-o", str(tmp_path / "o.snn.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "--reconstruct-budget" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "m.onnx"]
    for bad in ("0", "-1", "nan", "abc", "101"):
        with pytest.raises(SystemExit) if bad != "101" else contextlib.nullcontext():
            code = main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"),
                         "--reconstruct-budget", bad, "-o", str(tmp_path / "o.snn.onnx")])
        err = capsys.readouterr().err
        assert "Traceback" not in err and ("reconstruct-budget" in err or "budget scale" in err), err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "m.onnx"]
    assert code == 2      # (101: past MAX_BUDGET_SCALE, refused by convert before any work)


def test_the_default_trains_on_more_of_the_data_where_it_has_them():
    """Where the calibration data holds more images than the conversion calibrates on, the
    default spreads its budget over up to IMAGES of them, EPOCHS_PER_IMAGE epochs each;
    never fewer images than it calibrated on, never more work than the budget."""
    vgg = ar.step_cost(13_005_568, 36, elements=108_330)
    assert ar.training_images(vgg, 512, 60000, 2) == ar.IMAGES
    assert ar.auto_epochs(vgg, ar.IMAGES, 2) == ar.EPOCHS_PER_IMAGE
    n4 = ar.training_images(vgg, 512, 60000, 4)
    assert 512 < n4 < ar.IMAGES and ar.auto_epochs(vgg, n4, 4) == ar.EPOCHS_PER_IMAGE
    assert ar.training_images(vgg, 512, None, 2) == 512 == ar.training_images(vgg, 512, 512, 2)
    assert ar.training_images(vgg, 512, 1000, 2) == 1000
    # calibrated on more than it can train on: EPOCHS_PER_IMAGE epochs of some of them
    passes = ar.budget_passes(vgg, 2)
    assert ar.training_images(vgg, 8192, 60000, 2) == int(passes // ar.EPOCHS_PER_IMAGE) < 8192
    assert ar.training_images(vgg, 8192, 60000, 1) == 8192        # (all of them, at T = 1)
    # more images only as far as TRAINING_BYTES holds them (224 x 224 x 3 floats: 445)
    big = 224 * 224 * 3 * 4
    small = ar.step_cost(1e5, 20)
    assert ar.training_images(small, 64, 60000, 1, big) == ar.TRAINING_BYTES // big
    assert ar.training_images(small, 1000, 60000, 1, big) == 1000
    assert ar.training_images(vgg, 512, 60000, 2, 28 * 28 * 4) == ar.IMAGES
    for cost in (1e4, 1e5, 3e6, 1.3e7, 2e7, 5e7, 1e8):
        for t in (1, 2, 3, 4):
            for images, pool in ((512, 60000), (512, None), (64, 100), (8192, 8192)):
                n = ar.training_images(cost, images, pool, t)
                e = ar.auto_epochs(cost, n, t)
                assert 1 <= n <= min(pool or images, max(ar.IMAGES, images))
                assert e >= ar.EPOCHS_PER_IMAGE or n == 1
                assert cost * n * t * min(e, ar.MAX_EPOCHS) <= ar.BUDGET * (1 + 1e-9)
                # more images only where the budget leaves them EPOCHS_PER_IMAGE epochs
                assert n == (pool or images) or e < 2 * ar.EPOCHS_PER_IMAGE or \
                    n == max(ar.IMAGES, images)


def test_the_training_set_is_the_calibration_images_then_others():
    from onnx_snn.datasets import Dataset
    x = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    ds = Dataset("d", x, None, True)
    rows = ds.rows(10, seed=0)
    got = ar.training_set(ds.x, len(ds), rows, 40, 0)
    assert np.array_equal(got[:10], ds.take(10, seed=0).x)
    ids = got[:, 0].astype(int)
    assert len(set(ids)) == 40 and set(ids[10:]).isdisjoint(ids[:10])
    d = ar.training_set({"a": x, "b": -x}, len(ds), rows, 40, 0)
    assert np.array_equal(d["a"], got) and np.array_equal(d["b"], -got)
    assert np.array_equal(ar.training_set(x, 100, rows, 10, 0), got[:10])


def test_convert_reconstructs_on_more_images_than_it_calibrates_on(auto, tmp_path):
    """A data file of 48 samples, 16 of them calibrating: the default trains on all 48 (the
    16 first), measures on the 16, at the default's lr; the budget's note says so."""
    pytest.importorskip("torch")
    np.save(tmp_path / "c.npy", B.rand_input(48, seed=9))
    snn = onnx_snn.convert(B.vgg(), str(tmp_path / "c.npy"), timesteps=2, calib_samples=16,
                           show_progress=False)
    rec = snn.report["reconstruction"]
    assert rec["kept"] and rec["images"] == 48 and rec["measured_images"] == 16
    assert rec["lr"] == ar.LR and "16 calibration images and 32 more" in rec["budget"]
    assert "first 16 of the 48" in rec["measured_on"]
    assert snn.report["calibration"]["samples"] == 16


def test_held_out_rows_are_neither_calibration_nor_training_rows():
    used = np.arange(0, 1000, 2)
    rows = ar.held_out_rows(1000, used, 0)
    assert len(rows) == 500 and set(rows).isdisjoint(used) and np.all(np.diff(rows) > 0)
    assert len(ar.held_out_rows(5000, used, 0)) == ar.HELD_OUT
    assert np.array_equal(ar.held_out_rows(5000, used, 3), ar.held_out_rows(5000, used, 3))
    assert len(ar.held_out_rows(500 + ar.MIN_HELD_OUT, np.arange(500), 0)) == ar.MIN_HELD_OUT
    assert ar.held_out_rows(500 + ar.MIN_HELD_OUT - 1, np.arange(500), 0) is None
    # no more than HELD_OUT_BYTES of them
    assert len(ar.held_out_rows(5000, used, 0, ar.HELD_OUT_BYTES // 300)) == 300
    # samples so large that few fit: MIN_HELD_OUT of them however (224 x 224 images)
    assert len(ar.held_out_rows(5000, used, 0, ar.HELD_OUT_BYTES)) == ar.MIN_HELD_OUT
    train, held = ar.reconstruction_rows(1000, np.arange(10), 40, 0)
    assert len(train) == 40 and np.array_equal(train[:10], np.arange(10))
    assert len(held) == 960 and set(held).isdisjoint(train)
    train, held = ar.reconstruction_rows(1000, np.arange(10), None, 0)
    assert train is None and len(held) == 990


def test_split_rows_take_held_out_rows_out_of_the_calibration():
    """Where the data holds no others, a quarter of the calibration rows (at most
    MIN_HELD_OUT, none below MIN_SPLIT) leave the calibration and the training to check the
    reconstruction; the rest keep their order (the calibration rows first)."""
    cal = np.arange(100, 612)
    keep, train, held = ar.split_rows(cal, None, 0)
    assert train is None and len(held) == 128 and len(keep) == 384
    assert set(keep) | set(held) == set(cal) and not set(keep) & set(held)
    assert list(keep) == sorted(keep)
    extra = np.concatenate([cal, np.arange(5000, 5300)])
    keep, train, held = ar.split_rows(cal, extra, 0)
    assert len(held) == 128 and set(held) <= set(cal) and not set(train) & set(held)
    assert list(train[:384]) == list(keep) and list(train[384:]) == list(range(5000, 5300))
    keep, _, held = ar.split_rows(np.arange(4000), None, 1)
    assert len(held) == ar.MIN_HELD_OUT and len(keep) == 4000 - ar.MIN_HELD_OUT
    assert np.array_equal(held, ar.split_rows(np.arange(4000), None, 1)[2])   # (seeded)
    small = np.arange(4 * ar.MIN_SPLIT - 1)
    keep, train, held = ar.split_rows(small, None, 0)
    assert held is None and train is None and np.array_equal(keep, small)
    assert len(ar.split_rows(np.arange(4 * ar.MIN_SPLIT), None, 0)[2]) == ar.MIN_SPLIT


def test_convert_checks_its_reconstruction_on_held_out_samples(auto, tmp_path):
    """A data file of 400 samples, 16 calibrating and 48 training: the default's
    reconstruction is measured on the other 336 too (not on the 48 or the 16), and kept or
    not by them; asked for (--reconstruct 1) on 64 samples alone, none is held out."""
    pytest.importorskip("torch")
    model = onnx_snn.prepare(B.vgg()).model
    cost = _cost(model)
    x = B.rand_input(400, seed=9)
    np.save(tmp_path / "c.npy", x)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ar, "IMAGES", 48)
        mp.setattr(ar, "BUDGET", cost * 2 * 48 * ar.EPOCHS_PER_IMAGE * 1.01)
        mp.setattr(ar, "MIN_EPOCHS_OF", 8)
        snn = onnx_snn.convert(B.vgg(), str(tmp_path / "c.npy"), timesteps=2, calib_samples=16,
                               show_progress=False)
    rec = snn.report["reconstruction"]
    assert rec["images"] == 48 and rec["held_out"]["images"] == 400 - 48
    assert rec["kept"] == rec["held_out"]["followed_better"]
    # the rows it draws: none calibrated or trained on (each sample's number in a pixel)
    import onnx_snn.runtimes.torch.reconstruct as R
    seen = {}
    real = R.reconstruct

    def spy(snn, dnn, x, *a, held_out=None, guard=False, **k):
        seen.update(train=x, held=held_out, guard=guard)
        return real(snn, dnn, x, *a, held_out=held_out, guard=guard, **k)
    numbered = x.copy()
    numbered[:, 0, 0, 0] = np.arange(400)
    np.save(tmp_path / "n.npy", numbered)
    plain = onnx_snn.convert(B.vgg(), str(tmp_path / "n.npy"), timesteps=2, calib_samples=16,
                             show_progress=False, reconstruct=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ar, "IMAGES", 48)
        mp.setattr(ar, "BUDGET", cost * 2 * 48 * ar.EPOCHS_PER_IMAGE * 1.01)
        mp.setattr(ar, "MIN_EPOCHS_OF", 8)
        mp.setattr(R, "reconstruct", spy)
        mp.setattr(R, "follows_better", lambda before, after: False)
        refused = onnx_snn.convert(B.vgg(), str(tmp_path / "n.npy"), timesteps=2,
                                   calib_samples=16, show_progress=False)
    ids = [set(a[:, 0, 0, 0].astype(int)) for a in (seen["train"], seen["held"])]
    assert seen["guard"] and len(ids[0]) == 48 and len(ids[1]) == 352 and not ids[0] & ids[1]
    rec = refused.report["reconstruction"]
    assert not rec["kept"] and rec["held_out"]["followed_better"] is False and "held-out" in rec["why"]
    np.testing.assert_array_equal(run(refused.model, x[:32]).outputs[0],
                                  run(plain.model, x[:32]).outputs[0])
    explicit = onnx_snn.convert(B.vgg(), str(tmp_path / "c.npy"), timesteps=2, calib_samples=16,
                                show_progress=False, reconstruct=1)
    assert explicit.report["reconstruction"]["held_out"]["images"] == 400 - 16
    assert explicit.report["reconstruction"]["kept"]     # asked for: kept either way
    alone = onnx_snn.convert(B.vgg(), x[:64], timesteps=2, show_progress=False, reconstruct=1)
    assert "held_out" not in alone.report["reconstruction"]


def test_convert_holds_out_calibration_samples_where_the_data_has_no_others(auto, tmp_path):
    """A file of the 256 calibration samples alone: the default calibrates and trains on
    192 of them (its epochs and words for 192) and checks on the other 64 (each sample's
    number in a pixel), and says so; refused there, the conversion is made again from all
    256, as --reconstruct 0 makes it. Below 4 x MIN_SPLIT samples, or asked for
    (--reconstruct E), nothing is held out."""
    pytest.importorskip("torch")
    import onnx_snn.runtimes.torch.reconstruct as R
    model = onnx_snn.prepare(B.vgg()).model
    x = B.rand_input(256, seed=4)
    x[:, 0, 0, 0] = np.arange(256)
    np.save(tmp_path / "n.npy", x)
    seen = {}
    real = R.reconstruct

    def spy(snn, dnn, xs, *a, held_out=None, guard=False, **k):
        seen.update(train=xs, held=held_out, guard=guard)
        return real(snn, dnn, xs, *a, held_out=held_out, guard=guard, **k)

    def converted(data, verdict, **k):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ar, "BUDGET", _cost(model) * 2 * 256 * 6)
            mp.setattr(R, "reconstruct", spy)
            mp.setattr(R, "follows_better", lambda before, after: verdict)
            return onnx_snn.convert(B.vgg(), data, timesteps=2, show_progress=False, **k)
    snn = converted(str(tmp_path / "n.npy"), True)
    ids = [set(a[:, 0, 0, 0].astype(int)) for a in (seen["train"], seen["held"])]
    assert seen["guard"] and len(ids[0]) == 192 and len(ids[1]) == 64
    assert ids[0] | ids[1] == set(range(256)) and not ids[0] & ids[1]
    assert snn.report["calibration"]["samples"] == 192
    rec = snn.report["reconstruction"]
    assert rec["held_out"]["images"] == 64 and rec["images"] == 192 and rec["kept"]
    assert rec["held_from_calibration"] == 64 and "recalibrated_on" not in rec
    assert rec["epochs"] == 8 and rec["budget"].startswith("8 epochs of the 192 calibration")
    refused = converted(str(tmp_path / "n.npy"), False)
    rec = refused.report["reconstruction"]
    assert not rec["kept"] and rec["recalibrated_on"] == 256
    assert rec["why"].endswith(": converted again from all 256 calibration samples, as without it")
    assert refused.report["calibration"]["samples"] == 256
    history = json.loads(onnx_snn.spiking.format.metadata(refused.model)["onnx_snn.history"])
    assert history[-1]["step"] == "reconstruct" and history[-1]["recalibrated_on"] == 256
    plain = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct=0)
    np.testing.assert_array_equal(run(refused.model, x[:32]).outputs[0],
                                  run(plain.model, x[:32]).outputs[0])
    for data, recon in ((x[:4 * ar.MIN_SPLIT - 1], "auto"), (x, 1)):
        snn = converted(data, True, reconstruct=recon)
        assert seen["held"] is None and len(seen["train"]) == len(data)
        assert snn.report["calibration"]["samples"] == len(data)


def test_empty_data_is_refused_before_the_plan(auto):
    """No samples: the same DataError (exit 5) as without the reconstruction; the default's
    plan drew rows from it first (an internal error, exit 70)."""
    from onnx_snn.errors import DataError
    for recon in ("auto", 0):
        with pytest.raises(DataError, match="no samples"):
            onnx_snn.convert(B.vgg(), np.zeros((0, 1, 12, 12), np.float32), timesteps=2,
                             show_progress=False, reconstruct=recon)


def test_asking_more_calibration_samples_than_the_data_holds_is_said(caplog):
    """--calib-samples above the data's size calibrates on all of it, with a warning where a
    count was asked (the default's 512 on a smaller file: an info line only)."""
    import logging
    x = B.rand_input(40, seed=2)
    for asked, level in ((100, logging.WARNING), (512, logging.INFO)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="onnx_snn"):
            snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False,
                                   calib_samples=asked, reconstruct=0)
        said = [r for r in caplog.records if "holds 40 samples" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == level
        assert f"asked {asked}" in said[0].getMessage()
        assert snn.report["calibration"]["samples"] == 40


def test_convert_holds_out_spare_samples_before_calibration_ones(auto, tmp_path):
    """A file of 600 samples, 512 calibrating and all 600 wanted for training: the 88 spare
    ones judge (out of the training), the calibration keeps its 512."""
    pytest.importorskip("torch")
    import onnx_snn.runtimes.torch.reconstruct as R
    model = onnx_snn.prepare(B.vgg()).model
    x = B.rand_input(600, seed=5)
    x[:, 0, 0, 0] = np.arange(600)
    seen = {}
    real = R.reconstruct

    def spy(snn, dnn, xs, *a, held_out=None, **k):
        seen.update(train=xs, held=held_out)
        return real(snn, dnn, xs, *a, held_out=held_out, **k)
    np.save(tmp_path / "n.npy", x)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ar, "BUDGET", _cost(model) * 2 * 600 * 3.5)
        mp.setattr(ar, "MIN_EPOCHS_OF", 8)
        mp.setattr(R, "reconstruct", spy)
        snn = onnx_snn.convert(B.vgg(), str(tmp_path / "n.npy"), timesteps=2,
                               show_progress=False)
    ids = [set(a[:, 0, 0, 0].astype(int)) for a in (seen["train"], seen["held"])]
    assert len(ids[1]) == 88 and len(ids[0]) == 512 and not ids[0] & ids[1]
    assert snn.report["calibration"]["samples"] == 512
    rec = snn.report["reconstruction"]
    assert rec["images"] == 512 and "held_from_calibration" not in rec
    assert rec["held_out"]["images"] == 88


@pytest.mark.parametrize("fixed, n, held", [(256, 300, None), (64, 300, 108), (100, 256, None)])
def test_a_fixed_batch_model_keeps_its_calibration_batches(auto, fixed, n, held):
    """A model of a fixed batch calibrates on whole batches: from calibration samples alone
    the split leaves it whole batches and never costs it more than a quarter of them (a
    batch of 256 and 300 samples: nothing held out; it was refused as too few samples; a
    batch of 64: 192 calibrate, the 108 others judge; a batch of 100 and 256 samples: 100
    would calibrate where 200 do, nothing held out)."""
    pytest.importorskip("torch")
    import onnx_snn.runtimes.torch.reconstruct as R
    m = B.vgg()
    m.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = fixed
    model = onnx_snn.prepare(m).model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ar, "BUDGET", _cost(model, fixed) * 2 * n * 6)
        mp.setattr(R, "follows_better", lambda before, after: True)
        snn = onnx_snn.convert(m, B.rand_input(n, seed=6), timesteps=2, show_progress=False,
                               reconstruct="auto")
    rec = snn.report["reconstruction"]
    assert (rec.get("held_out") or {}).get("images") == held and rec["kept"]
    if held:
        assert snn.report["calibration"]["samples"] == n - held


def test_convert_reconstructs_on_some_of_a_calibration_set_larger_than_its_budget(auto, monkeypatch):
    """Calibrated on 64 samples with a budget of 3 epochs of 20 of them: trained on 20 of
    the 64 (all measured), not skipped."""
    pytest.importorskip("torch")
    model = onnx_snn.prepare(B.vgg()).model
    cost = _cost(model)
    monkeypatch.setattr(ar, "BUDGET", cost * 2 * 20 * ar.EPOCHS_PER_IMAGE * 1.01)
    monkeypatch.setattr(ar, "MIN_EPOCHS_OF", 8)
    snn = onnx_snn.convert(B.vgg(), B.rand_input(64, seed=11), timesteps=2, show_progress=False)
    rec = snn.report["reconstruction"]
    assert rec["kept"] and rec["images"] == 20 and rec["epochs"] == ar.EPOCHS_PER_IMAGE
    assert "measured_images" not in rec and "20 of the 64 calibration images" in rec["budget"]
