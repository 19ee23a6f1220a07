"""Model zoo (onnx_snn/zoo.py) and the DNN training script (tools/train_dnn.py)."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx_snn import zoo  # noqa: E402  (after the torch skip: the zoo imports torch)

ROOT = Path(__file__).resolve().parents[1]

nn = torch.nn

# (arch, in_channels, input size, number of clipped ReLUs)
ARCH_CASES = [
    ("vgg16", 3, 32, 15),
    ("vgg11", 3, 32, 10),
    ("resnet20", 3, 32, 19),
    ("fmnist_vgg", 1, 28, 5),
    ("fmnist_vgg11", 1, 28, 9),
    ("fmnist_vgg16", 1, 28, 15),
    ("fmnist_resnet20", 1, 28, 19),
]


def _meta(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def _ort_run(path_or_proto, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    if isinstance(path_or_proto, (str, os.PathLike)):
        src = str(path_or_proto)
    else:
        src = path_or_proto.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _trained_like(model: nn.Module) -> nn.Module:
    """Distinct mu values and non-zero biases, as after training."""
    torch.manual_seed(1)
    with torch.no_grad():
        for i, m in enumerate(zoo.clipped_relus(model)):
            m.mu.fill_(1.5 + 0.25 * i)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.3)
    return model.eval()


# ------------------------------------------------------------------------- architectures

@pytest.mark.parametrize("arch,cin,size,n_act", ARCH_CASES)
def test_arch_shapes_and_structure(arch, cin, size, n_act):
    torch.manual_seed(0)
    model = zoo.build(arch, num_classes=7, in_channels=cin, input_size=size).eval()
    with torch.no_grad():
        y = model(torch.rand(2, cin, size, size))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    mods = list(model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.AvgPool2d)) for m in mods)
    assert any(isinstance(m, nn.MaxPool2d) for m in mods)
    assert any(isinstance(m, nn.Dropout) for m in mods)
    acts = zoo.clipped_relus(model)
    assert len(acts) == n_act
    assert zoo.mu_values(model) == [4.0] * n_act
    assert all(a.mu.shape == () and a.mu.requires_grad for a in acts)
    layers = [m for m in mods if isinstance(m, (nn.Conv2d, nn.Linear, zoo.ClippedReLU))]
    assert isinstance(layers[-1], nn.Linear)  # logits: no activation after the last layer


def test_arch_registry_and_build_options():
    assert set(zoo.ARCHS) == {"vgg16", "vgg11", "resnet20", "fmnist_vgg", "fmnist_vgg11",
                              "fmnist_vgg16", "fmnist_resnet20"}
    m = zoo.build("fmnist_vgg", 10, 1, idiom="relu_min", dropout=0.0)
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    assert {a.idiom for a in zoo.clipped_relus(m)} == {"relu_min"}
    # the CIFAR nets also take 28x28 single-channel inputs
    r = zoo.build("resnet20", 10, 1, input_size=28).eval()
    with torch.no_grad():
        assert r(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError):
        zoo.build("alexnet", 10, 3)
    with pytest.raises(ValueError):
        zoo.ClippedReLU(idiom="hardtanh")


def test_fmnist_vgg_layout():
    m = zoo.build("fmnist_vgg", 10, 1)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    fcs = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert [(f.in_features, f.out_features) for f in fcs] == [(64 * 7 * 7, 256), (256, 10)]


def test_resnet20_blocks():
    m = zoo.build("resnet20", 10, 3)
    blocks = [b for b in m.modules() if isinstance(b, zoo.BasicBlock)]
    assert len(blocks) == 8
    widths = [b.conv2.out_channels for b in blocks]
    assert widths == [64, 64, 128, 128, 256, 256, 512, 512]
    shortcuts = [isinstance(b.shortcut, nn.Conv2d) for b in blocks]
    assert shortcuts == [False, False, True, False, True, False, True, False]
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    stem_convs = [c for c in m.stem if isinstance(c, nn.Conv2d)]
    assert len(stem_convs) == 3 and all(c.out_channels == 64 for c in stem_convs)


def test_mu_values_in_forward_order():
    for arch, cin, size, _ in ARCH_CASES[2:]:  # resnet20 (residual order) and the small nets
        model = _trained_like(zoo.build(arch, 10, cin, input_size=size))
        seen = []
        hooks = [a.register_forward_hook(lambda mod, i, o: seen.append(float(mod.mu.detach())))
                 for a in zoo.clipped_relus(model)]
        with torch.no_grad():
            model(torch.rand(1, cin, size, size))
        for h in hooks:
            h.remove()
        assert seen == zoo.mu_values(model)


# ------------------------------------------------------------------------- clipped ReLU

def test_clipped_relu_values_and_gradients():
    x0 = torch.tensor([-3.0, -0.5, 0.25, 1.0, 3.9, 4.5, 7.0, 12.0])
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    results = {}
    for idiom in zoo.IDIOMS:
        for fused in (True, False):
            act = zoo.ClippedReLU(idiom=idiom, fused=fused)
            assert act.mu.shape == () and float(act.mu.detach()) == 4.0
            x = x0.clone().requires_grad_()
            y = act(x)
            y.backward(g)
            results[idiom, fused] = (y.detach(), x.grad.clone(), act.mu.grad.clone())
    expected_y = torch.clamp(x0, 0, 4.0)
    expected_gx = g * ((x0 > 0) & (x0 < 4.0))
    expected_gmu = (g * (x0 > 4.0)).sum()  # dy/dmu = 1 where x > mu
    assert float(expected_gmu) == 6.0 + 7.0 + 8.0
    for key, (y, gx, gmu) in results.items():
        assert torch.equal(y, expected_y), key
        assert torch.equal(gx, expected_gx), key
        assert torch.equal(gmu, expected_gmu), key


def test_clip_idioms_identical_on_random_tensors():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5) * 4
    mu = torch.tensor(2.75)
    a = torch.clamp(x, min=torch.zeros(()), max=mu)
    b = torch.minimum(torch.relu(x), mu)
    assert torch.equal(a, b)
    outs = []
    for idiom in zoo.IDIOMS:
        act = zoo.ClippedReLU(2.75, idiom)
        outs.append(act(x))
        with zoo.export_mode(act):
            outs.append(act(x))
    for o in outs:
        assert torch.equal(o, a)


def test_mu_trains_and_weight_decay_applies():
    torch.manual_seed(0)
    act = zoo.ClippedReLU(1.0)
    opt = torch.optim.SGD(act.parameters(), lr=0.1, weight_decay=5e-4)
    x = torch.full((16,), 3.0)
    loss = -act(x).sum()  # wants a larger mu: every input is above it
    loss.backward()
    assert float(act.mu.grad) == -16.0
    opt.step()
    assert float(act.mu.detach()) > 1.0


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_quantized_clip_is_the_neurons_average_at_T_levels(levels):
    """Rounded to levels + 1 values, the clip is what an integrate-and-fire neuron (threshold
    = amplitude = mu, initial membrane mu / 2) emits on average over T = levels steps of a
    constant input: the DNN a --levels training shapes is the spiking layer's rate."""
    from onnx_snn.spiking.neuron import lif_run
    mu = 1.75
    x = torch.linspace(-1.0, 2.5 * mu, 997)
    y = zoo.quantized_clip(x, torch.tensor(mu), levels)
    ys, _, _ = lif_run(np.broadcast_to(x.numpy(), (levels, len(x))), np.full(len(x), mu / 2),
                       mu, mu)
    np.testing.assert_allclose(y.numpy(), ys.mean(0), rtol=0, atol=1e-6)
    assert len(torch.unique(y)) == levels + 1


def test_quantized_clip_gradients():
    """Straight through inside the clip, zero outside; mu: y/mu - x/mu inside, 1 above."""
    x = torch.tensor([-0.5, 0.2, 0.6, 1.1, 1.9, 2.5, 4.0], requires_grad=True)
    mu = torch.tensor(2.0, requires_grad=True)
    y = zoo.quantized_clip(x, mu, 2)
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    y.sum().backward()
    inside = (x.detach() > 0) & (x.detach() < 2.0)
    assert torch.equal(x.grad, inside.float())
    expected = torch.where(inside, (y.detach() - x.detach()) / 2.0, (x.detach() >= 2.0).float())
    assert float(mu.grad) == pytest.approx(float(expected.sum()), abs=1e-6)


def test_levels_switch_rounding_on_and_off_and_never_reach_the_export(tmp_path):
    net = _trained_like(zoo.build("fmnist_vgg", 10, 1))
    x = torch.randn(8, 1, 28, 28)
    plain = net(x)
    assert zoo.set_levels(net, 2) is None
    assert all(a.levels == 2 for a in zoo.clipped_relus(net))
    rounded = net(x)
    assert not torch.allclose(rounded, plain)
    proto = zoo.export_onnx(net, tmp_path / "q.onnx", (1, 28, 28))  # verified against clip
    assert "Floor" not in zoo.onnx_op_types(tmp_path / "q.onnx")
    np.testing.assert_allclose(_ort_run(tmp_path / "q.onnx", x.numpy()), plain.detach().numpy(),
                               atol=1e-4)
    assert proto is not None and zoo.set_levels(net, None) == 2
    assert torch.equal(net(x), plain)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_keep_levels_exports_the_rounding_in_qcfs_form_and_it_converts(tmp_path, exporter):
    """export_onnx(keep_levels=True) writes what a QCFS-trained network's export holds (Div,
    Clip, Mul, Add, Floor, Div, Mul per activation; onnxruntime gives the rounded network's
    outputs), and the converter reads it as the clipped ReLUs: the same sites and mu as the
    plain export, and at T = 2 with deng the same spiking outputs to float rounding."""
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    import onnx_snn
    net = _trained_like(zoo.build("fmnist_vgg", 10, 1))
    zoo.set_levels(net, 2)
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        rounded = net(x).numpy()
    zoo.export_onnx(net, tmp_path / "q.onnx", (1, 28, 28), exporter=exporter,
                    opset=13 if exporter == "legacy" else 18, keep_levels=True)
    zoo.export_onnx(net, tmp_path / "p.onnx", (1, 28, 28))
    assert zoo.onnx_op_types(tmp_path / "q.onnx").count("Floor") == 5
    np.testing.assert_allclose(_ort_run(tmp_path / "q.onnx", x.numpy()), rounded, atol=1e-4)
    q, p = (onnx_snn.prepare(str(tmp_path / f)) for f in ("q.onnx", "p.onnx"))
    assert len(q.sites) == len(p.sites) == 5
    assert any("the quantizers have 2 steps" in n for n in q.notes)
    from onnx_snn.runtimes.ort import run
    xs = x.numpy()
    outs = [run(onnx_snn.convert(str(tmp_path / f), xs, timesteps=2, method="deng",
                                 show_progress=False).model, xs).outputs[0]
            for f in ("q.onnx", "p.onnx")]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_fit_levels_lowers_the_rounding_error_of_every_layer():
    """Each layer's fitted mu rounds its inputs (the layers before rounded at their fitted mu)
    at least as closely to the clip at its old mu as the old mu itself does (the grid holds
    the old mu), and strictly more closely on the first layer."""
    torch.manual_seed(0)
    net = _trained_like(zoo.build("fmnist_vgg", 10, 1))
    x = torch.randn(64, 1, 28, 28)
    acts = zoo.clipped_relus(net)
    before = zoo.mu_values(net)
    mus = zoo.fit_levels(net, x, 2, grid=20)
    assert mus == zoo.mu_values(net) and all(0 < m <= b for m, b in zip(mus, before))
    assert mus != before
    assert all(a.levels is None for a in acts) and not net.training
    for k, act in enumerate(acts):
        for j, a in enumerate(acts):
            a.levels = 2 if j < k else None
        seen = []
        hook = act.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
        with torch.no_grad():
            net(x)
        hook.remove()
        target = torch.clamp(seen[0], 0, before[k])

        def error(mu):
            return float(((zoo.quantized_clip(seen[0], torch.tensor(mu), 2) - target) ** 2).mean())

        assert error(mus[k]) <= error(before[k]), k
        if k == 0:
            assert error(mus[k]) < error(before[k])


# ------------------------------------------------------------------------- ONNX export

CLIP_OPS = {"clip": {"Clip"}, "relu_min": {"Relu", "Min"}}


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
def test_legacy_export_clip(tmp_path, opset):
    model = _trained_like(zoo.build("fmnist_vgg", 10, 1))
    path = tmp_path / "m.onnx"
    proto = zoo.export_onnx(model, path, (1, 28, 28), exporter="legacy", opset=opset,
                            metadata={"arch": "fmnist_vgg", "dataset": "fashion-mnist",
                                      "onnx_snn.preprocess": {"mean": [0.286], "std": [0.353]},
                                      "onnx_snn.test_accuracy": 91.5})
    saved = onnx.load(str(path))
    onnx.checker.check_model(saved, full_check=True)
    ops = [n.op_type for n in saved.graph.node]
    assert ops.count("Clip") == 5
    assert "Max" not in ops and "Min" not in ops and "Relu" not in ops
    assert "Dropout" not in ops
    # the trained mu values are the Clip upper bounds
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in saved.graph.initializer}
    for n in saved.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    bounds = []
    for n in saved.graph.node:
        if n.op_type == "Clip":
            if opset < 11:
                attrs = {a.name: a.f for a in n.attribute}
                bounds.append((attrs["min"], attrs["max"]))
            else:
                bounds.append((float(consts[n.input[1]]), float(consts[n.input[2]])))
    assert bounds == [(0.0, pytest.approx(m)) for m in zoo.mu_values(model)]
    # metadata
    meta = _meta(saved)
    assert json.loads(meta["onnx_snn.mu"]) == pytest.approx(zoo.mu_values(model))
    assert json.loads(meta["onnx_snn.preprocess"]) == {"mean": [0.286], "std": [0.353]}
    assert meta["onnx_snn.arch"] == "fmnist_vgg"
    assert meta["onnx_snn.dataset"] == "fashion-mnist"
    assert float(meta["onnx_snn.test_accuracy"]) == 91.5
    # dynamic batch, input/output names, numerics
    assert saved.graph.input[0].name == "input" and saved.graph.output[0].name == "logits"
    assert saved.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort_run(path, x), ref, atol=1e-4, rtol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp files left
    assert proto.graph.node  # returns the saved model
    # export leaves the model as it was
    assert all(not a._exporting for a in zoo.clipped_relus(model))


def test_legacy_export_relu_min_and_clip_tensor(tmp_path):
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    for idiom, want, unwanted in [("relu_min", {"Relu": 5, "Min": 5}, "Clip"),
                                  ("clip_tensor", {"Clip": 5}, "Min")]:
        model = _trained_like(zoo.build("fmnist_vgg", 10, 1, idiom=idiom))
        path = tmp_path / f"{idiom}.onnx"
        zoo.export_onnx(model, path, (1, 28, 28), exporter="legacy", opset=13)
        ops = zoo.onnx_op_types(path)
        for op, count in want.items():
            assert ops.count(op) == count, (idiom, ops)
        assert unwanted not in ops
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_ort_run(path, x), ref, atol=1e-4, rtol=1e-4)


def test_dynamo_export(tmp_path):
    pytest.importorskip("onnxscript")
    model = _trained_like(zoo.build("fmnist_vgg", 10, 1))
    path = tmp_path / "d.onnx"
    zoo.export_onnx(model, path, (1, 28, 28), exporter="dynamo", opset=18,
                    metadata={"arch": "fmnist_vgg"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]  # no external data
    saved = onnx.load(str(path), load_external_data=False)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in saved.graph.initializer)
    onnx.checker.check_model(saved, full_check=True)
    ops = [n.op_type for n in saved.graph.node]
    assert ops.count("Clip") == 5, ops
    assert "Max" not in ops and "Min" not in ops
    meta = _meta(saved)
    assert meta["onnx_snn.arch"] == "fmnist_vgg"
    assert json.loads(meta["onnx_snn.mu"]) == pytest.approx(zoo.mu_values(model))
    x = np.random.default_rng(2).random((5, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort_run(path, x), ref, atol=1e-4, rtol=1e-4)


def test_dynamo_export_relu_min_and_low_opset(tmp_path):
    pytest.importorskip("onnxscript")
    model = _trained_like(zoo.build("fmnist_vgg", 10, 1, idiom="relu_min"))
    path = tmp_path / "r.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proto = zoo.export_onnx(model, path, (1, 28, 28), exporter="dynamo", opset=13)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Relu") == 5 and ops.count("Min") == 5
    # the dynamo exporter may not reach opsets below 18; if not, export_onnx says so
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset != 13:
        assert any("opset" in str(w.message) for w in caught)
    x = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort_run(path, x), ref, atol=1e-4, rtol=1e-4)


def test_export_resnet20_residual_graph(tmp_path):
    model = _trained_like(zoo.build("resnet20", 10, 1, input_size=28))
    path = tmp_path / "res.onnx"
    zoo.export_onnx(model, path, (1, 28, 28), exporter="legacy", opset=13)
    ops = zoo.onnx_op_types(path)
    assert ops.count("Clip") == 19 and ops.count("Add") == 8 and ops.count("MaxPool") == 1
    assert ops.count("Conv") == 3 + 16 + 3


def test_export_rejects_bad_arguments(tmp_path):
    model = zoo.build("fmnist_vgg", 10, 1)
    with pytest.raises(ValueError):
        zoo.export_onnx(model, tmp_path / "x.onnx", (1, 28, 28), exporter="tflite")
    with pytest.raises(ValueError):
        zoo.export_onnx(model, tmp_path / "x.onnx", (28, 28))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------- training script

def _fashion_mnist_available() -> bool:
    try:
        from onnx_snn.datasets import load_dataset
        load_dataset("fashion-mnist:test")
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def _train_dnn():
    """tools/train_dnn.py, a script, loaded from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_dnn", ROOT / "tools" / "train_dnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_main(argv):
    return _train_dnn().main([str(a) for a in argv])


def test_export_levels_without_levels_is_a_usage_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = _train_main(["--arch", "fmnist_vgg", "--dataset", "fashion-mnist", "--out", out,
                        "--epochs", 1, "--export-levels"])
    assert code == 2 and "--export-levels exports the rounding of --levels L" in capsys.readouterr().err
    assert not out.exists()


def test_train_resume_and_export(tmp_path, capsys):
    if not _fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path / "run"
    common = ["--arch", "fmnist_vgg", "--dataset", "fashion-mnist", "--out", out,
              "--limit-train", 512, "--limit-test", 500, "--seed", 3]
    assert _train_main(common + ["--epochs", 1]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("last.pt", "best.pt", "train.json", "model.onnx"):
        assert (out / name).is_file(), name
    record = json.loads((out / "train.json").read_text())
    assert record["arch"] == "fmnist_vgg" and record["dataset"] == "fashion-mnist"
    assert record["epochs"] == 1 and len(record["history"]) == 1
    assert record["seconds_per_epoch"] > 0
    assert len(record["mu"]) == 5
    assert "--limit-train 512" in record["command"]
    assert summary["test_accuracy"] == record["test_accuracy"]
    meta = _meta(onnx.load(str(out / "model.onnx")))
    assert json.loads(meta["onnx_snn.preprocess"]) == {"mean": [0.2860], "std": [0.3530]}
    assert float(meta["onnx_snn.test_accuracy"]) == pytest.approx(record["test_accuracy"])
    assert len(json.loads(meta["onnx_snn.mu"])) == 5
    assert meta["onnx_snn.arch"] == "fmnist_vgg" and meta["onnx_snn.dataset"] == "fashion-mnist"
    assert zoo.onnx_op_types(out / "model.onnx").count("Clip") == 5
    first = record["history"][0]

    # --resume continues after epoch 1 and keeps its history; a new --lr is this run's
    # (the optimizer state's own lr used to win silently) and is said
    assert _train_main(common + ["--epochs", 2, "--resume", "--lr", 0.004]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "--lr 0.01 -> 0.004" in err
    record2 = json.loads((out / "train.json").read_text())
    assert [h["epoch"] for h in record2["history"]] == [1, 2]
    assert record2["history"][0] == first
    assert record2["history"][1]["lr"] == pytest.approx(0.004 * 0.2)   # 2 epochs: decayed at 1
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and {"optimizer", "scheduler", "rng"} <= set(ckpt)

    # across sessions only the exported model (and its train.json) are kept: --init-from
    shipped = tmp_path / "kept"
    shipped.mkdir()
    (shipped / "net.onnx").write_bytes((out / "model.onnx").read_bytes())
    (shipped / "net.train.json").write_text((out / "train.json").read_text())
    fresh = tmp_path / "next-session"
    assert _train_main(common[:4] + ["--out", fresh, "--limit-train", 512, "--limit-test", 500,
                                     "--epochs", 3, "--init-from", shipped / "net.onnx"]) == 0
    err = capsys.readouterr().err
    assert "2 epochs done" in err and "epochs 3..3" in err
    record3 = json.loads((fresh / "train.json").read_text())
    assert [h["epoch"] for h in record3["history"]] == [1, 2, 3]


@pytest.mark.slow   # 30 s: two trainings
def test_train_with_levels_records_both_accuracies(tmp_path, capsys):
    if not _fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    out = tmp_path / "q"
    assert _train_main(["--arch", "fmnist_vgg", "--dataset", "fashion-mnist", "--out", out,
                        "--limit-train", 256, "--limit-test", 200, "--epochs", 1,
                        "--levels", 2]) == 0
    err = capsys.readouterr().err
    assert "--levels 2: mu fitted" in err and "rounded to 3 levels" in err
    record = json.loads((out / "train.json").read_text())
    assert record["levels"] == 2 and record["history"][0]["levels"] == 2
    assert 0 <= record["quantized_test_accuracy"] <= 100
    assert record["history"][0]["quantized_test_accuracy"] == record["quantized_test_accuracy"]
    meta = _meta(onnx.load(str(out / "model.onnx")))
    assert float(meta["onnx_snn.quantized_test_accuracy"]) == record["quantized_test_accuracy"]
    assert json.loads(meta["onnx_snn.recipe"])["levels"] == 2
    ops = zoo.onnx_op_types(out / "model.onnx")
    assert ops.count("Clip") == 5 and "Floor" not in ops   # the plain clipped ReLU
    # continuing a run trained with the same --levels keeps its trained mu (no second fit),
    # from its checkpoint and from its exported model; another --levels fits again
    common = ["--arch", "fmnist_vgg", "--dataset", "fashion-mnist", "--limit-train", 256,
              "--limit-test", 200, "--epochs", 2]
    assert _train_main(common + ["--out", out, "--levels", 2, "--resume"]) == 0
    assert "mu fitted" not in capsys.readouterr().err
    common[-1] = 3   # the model now records 2 epochs
    assert _train_main(common + ["--out", tmp_path / "next", "--levels", 2,
                                 "--init-from", out / "model.onnx"]) == 0
    assert "mu fitted" not in capsys.readouterr().err
    assert _train_main(common + ["--out", tmp_path / "four", "--levels", 4,
                                 "--init-from", out / "model.onnx"]) == 0
    assert "--levels 4: mu fitted" in capsys.readouterr().err


def test_init_from_reads_parameters_the_exporter_aliased(tmp_path, capsys):
    """Equal parameters (a residual block's two biases train identically) are exported as
    an Identity of one initializer; --init-from must still find both."""
    if not _fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    net = _trained_like(zoo.build("fmnist_resnet20", 10, 1, input_size=28))
    blocks = [b for b in net.modules() if getattr(b, "shortcut", None) is not None
              and isinstance(b.shortcut, nn.Conv2d)]
    assert blocks
    with torch.no_grad():
        for b in blocks:
            b.shortcut.bias.copy_(b.conv2.bias)
    path = tmp_path / "r.onnx"
    zoo.export_onnx(net, path, (1, 28, 28), metadata={"arch": "fmnist_resnet20", "epochs": 1})
    model = onnx.load(str(path))
    names = {i.name for i in model.graph.initializer}
    aliased = [b for b in blocks if f"{_param_name(net, b.shortcut.bias)}" not in names]
    assert aliased, "the exporter no longer aliases equal parameters: the test checks nothing"
    out = tmp_path / "run"
    assert _train_main(["--arch", "fmnist_resnet20", "--dataset", "fashion-mnist", "--out", out,
                        "--limit-train", 128, "--limit-test", 100, "--epochs", 2,
                        "--init-from", path, "--lr", 1e-9]) == 0
    assert "1 epochs done" in capsys.readouterr().err


def _param_name(model, param) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


def test_train_user_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ONNX_SNN_DATA", raising=False)
    rc = _train_main(["--arch", "vgg11", "--dataset", "cifar10", "--epochs", 1,
                      "--out", tmp_path / "r", "--data-dir", tmp_path / "nothing-here"])
    err = capsys.readouterr().err
    assert rc == 5
    assert "train_dnn: error: --data-dir" in err and "no such folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    rc = _train_main(["--arch", "vgg11", "--dataset", "cifar10", "--epochs", 1,
                      "--out", tmp_path / "r", "--data-dir", tmp_path / "empty"])
    err = capsys.readouterr().err
    assert rc == 5
    assert "train_dnn: error: cifar10 not found" in err and "Traceback" not in err
    rc = _train_main(["--arch", "fmnist_vgg", "--dataset", "fashion-mnist", "--epochs", 1,
                      "--out", tmp_path / "r", "--export", tmp_path / "no" / "such" / "m.onnx"])
    assert rc == 6
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: unknown dataset
        _train_main(["--arch", "fmnist_vgg", "--dataset", "imagenet", "--out", tmp_path])


def _fake_cifar10(root: Path, per_batch: int = 24, test: int = 40) -> Path:
    """A tiny CIFAR-10 python-pickle folder in the standard format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)  # learnable signal in R
        return {b"data": data, b"labels": labels.tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test), f)
    return root


def test_train_on_cifar_format_files(tmp_path, capsys):
    data = _fake_cifar10(tmp_path / "data")
    out = tmp_path / "c10"
    rc = _train_main(["--arch", "fmnist_vgg", "--dataset", "cifar10", "--epochs", 1,
                      "--out", out, "--data-dir", data, "--batch", 32,
                      "--idiom", "relu_min", "--export", out / "c10.onnx"])
    assert rc == 0
    meta = _meta(onnx.load(str(out / "c10.onnx")))
    assert json.loads(meta["onnx_snn.preprocess"])["mean"] == [0.4914, 0.4822, 0.4465]
    assert int(meta["onnx_snn.test_images"]) == 40
    ops = zoo.onnx_op_types(out / "c10.onnx")
    assert ops.count("Min") == 5 and ops.count("Relu") == 5
    assert not (out / "model.onnx").exists()


@pytest.mark.slow
def test_train_torchrun_two_processes(tmp_path):
    """DDP on the CPU (gloo) through torchrun, two processes."""
    data = _fake_cifar10(tmp_path / "data", per_batch=32, test=30)
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), ONNX_SNN_PROGRESS="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", str(ROOT / "tools" / "train_dnn.py"),
           "--arch", "fmnist_vgg", "--dataset", "cifar10", "--epochs", "2", "--out", str(out),
           "--data-dir", str(data), "--batch", "32", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "train.json").read_text())
    assert record["world_size"] == 2 and len(record["history"]) == 2
    assert (out / "model.onnx").is_file()
    assert len([ln for ln in proc.stdout.splitlines() if ln.startswith("{")]) == 1  # rank 0 only


def _zoo_net_from_onnx(path: Path, arch: str) -> nn.Module:
    """A zoo network with the weights and mu of an exported model (as --init-from reads them)."""
    m = onnx.load(str(path))
    state = zoo.onnx_parameters(m)
    net = zoo.build(arch, 10, 1, input_size=28)
    own = net.state_dict()
    net.load_state_dict({**own, **{k: v for k, v in state.items() if k in own}})
    for act, mu in zip(zoo.clipped_relus(net), json.loads(_meta(m)["onnx_snn.mu"])):
        act.mu.data.fill_(float(mu))
    return net.eval()


@pytest.mark.parametrize("arch", ["fmnist_vgg16", "fmnist_resnet20"])
def test_shipped_level_trained_nets_keep_their_accuracy_when_rounded(arch):
    """tools/models/*_l2.onnx were trained on with --levels 2: rounded to 3 levels they lose
    little (their records: VGG-16 91.58 -> 90.84, ResNet-20 90.55 -> 89.87 on 10 000 images),
    where the nets they started from collapse at their own mu (VGG-16: 58.35 %)."""
    if not _fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed")
    from onnx_snn.datasets import load_fashion_mnist
    test = load_fashion_mnist("test").take(2000)
    x = (torch.from_numpy(test.x) - 0.2860) / 0.3530

    def top1(net, levels):
        zoo.set_levels(net, levels)
        with torch.no_grad():
            return float((net(x).argmax(1).numpy() == test.y).mean() * 100)

    models = ROOT / "tools" / "models"
    trained = _zoo_net_from_onnx(models / f"{arch}_l2.onnx", arch)
    meta = _meta(onnx.load(str(models / f"{arch}_l2.onnx")))
    assert json.loads(meta["onnx_snn.recipe"])["levels"] == 2
    plain, rounded = top1(trained, None), top1(trained, 2)
    assert rounded >= plain - 2.0 and rounded >= 85.0, (plain, rounded)
    before = _zoo_net_from_onnx(models / f"{arch}.onnx", arch)
    assert top1(before, 2) < rounded - 5.0
