"""convert's default reconstruction (onnx_snn/auto_reconstruct.py): when, how long, and what
the report and the command line say. (tests/conftest.py turns it off for the rest of the
suite through $ONNX_SNN_RECONSTRUCT; these tests turn it back on.)"""
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


def test_the_budget_in_epochs():
    # the measured networks (MACs, nodes of the normalized graph): the quarter-width VGG-16,
    # ResNet-20 and the shipped model, 512 images
    vgg, resnet, shipped = (ar.step_cost(13_005_568, 36), ar.step_cost(11_336_960, 52),
                            ar.step_cost(19_094_528, 14))
    for cost in (vgg, resnet, shipped):
        assert ar.auto_epochs(cost, 512, 1) == ar.MAX_EPOCHS
    assert ar.auto_epochs(vgg, 512, 2) == 24      # within 60 s end to end (README)
    assert ar.auto_epochs(resnet, 512, 2) == 23
    assert ar.auto_epochs(shipped, 512, 2) == 21
    assert ar.auto_epochs(vgg, 512, 4) == 12
    # a deep narrow chain (100 8-wide dense layers and their activations) is priced by its
    # layers, not its few MACs: fewer epochs than VGG-16
    assert ar.auto_epochs(ar.step_cost(6400, 201), 512, 2) < 24
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
    many = int(ar.BUDGET / (ar.step_cost(p.macs, len(model.graph.node)) * 2 * 10)) + 1
    # (ten epochs' worth of images, and one more)
    p = ar.plan("refined", 2, model, many, shapes, have_torch=True)
    assert p.epochs == 9 and "9 epochs" in p.why
    for have_torch in (True, False):    # (too large: PyTorch is not even looked for)
        p = ar.plan("refined", 2, model, many * 3, shapes, have_torch=have_torch)
        assert p.epochs == 0 and f"--reconstruct {ar.MAX_EPOCHS}" in p.why


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


def test_a_budget_of_fewer_epochs_trains_them_and_records_why(auto, monkeypatch):
    pytest.importorskip("torch")
    x = B.rand_input(16, seed=7)
    model = onnx_snn.prepare(B.vgg()).model
    cost = ar.step_cost(ar.dense_macs(model), len(model.graph.node))
    monkeypatch.setattr(ar, "BUDGET", cost * 16 * 2 * 6.5)      # six epochs at T = 2
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    rec = snn.report["reconstruction"]
    assert rec["epochs"] == 6 and rec["kept"] and "skipped" not in rec
    assert "6 epochs in the default's budget" in rec["budget"]
