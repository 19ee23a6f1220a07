"""Distillation from a DNN teacher (runtimes/torch/teacher.py) and its use in fine-tuning."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import onnx_snn  # noqa: E402
from onnx_snn.errors import DataError, ModelLoadError  # noqa: E402
from onnx_snn.spiking import format as F  # noqa: E402
from onnx_snn.runtimes.torch.teacher import (distillation_loss, load_teacher,  # noqa: E402
                                             source_dnn)

import builders as B  # noqa: E402


def test_distillation_loss_is_the_kl_of_the_softmaxes():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for tau in (1.0, 3.0):
        p, q = torch.softmax(t / tau, 1), torch.softmax(s / tau, 1)
        want = (p * (p.log() - q.log())).sum(1).mean() * tau ** 2
        assert float(distillation_loss(s, t, tau)) == pytest.approx(float(want), rel=1e-5)
    assert float(distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(t + 3.0, t)) == pytest.approx(0.0, abs=1e-6)   # shift-free
    # a gradient step moves the student's softmax towards the teacher's
    s = s.clone().requires_grad_(True)
    distillation_loss(s, t).backward()
    after = s.detach() - 0.5 * s.grad
    assert float(distillation_loss(after, t)) < float(distillation_loss(s.detach(), t))


@pytest.fixture
def converted(tmp_path):
    """A DNN file and the spiking model converted from it (calibrated on random inputs)."""
    src = tmp_path / "dnn.onnx"
    src.write_bytes(B.vgg(13, "clip", in_shape=(1, 12, 12), softmax=False).SerializeToString())
    x = np.random.default_rng(0).random((16, 1, 12, 12)).astype(np.float32)
    snn = onnx_snn.convert(str(src), x, timesteps=2, method="datta", show_progress=False)
    out = tmp_path / "m.snn.onnx"
    snn.save(str(out))
    return src, out, x


def _view(path):
    m = onnx.load(str(path))
    return F.read_spiking(m, str(path))


def test_the_source_dnn_is_found_only_while_it_is_unchanged(converted, tmp_path):
    src, out, _ = converted
    convert_step = F.read_info(onnx.load(str(out))).history[0]
    assert convert_step["source_path"] == os.path.abspath(src)
    assert source_dnn(_view(out)) == os.path.abspath(src)
    moved = tmp_path / "moved.onnx"
    shutil.move(src, moved)
    assert source_dnn(_view(out)) is None              # not where the conversion read it
    m = onnx.load(str(moved))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    src.write_bytes(m.SerializeToString())
    assert source_dnn(_view(out)) is None              # there, but another file
    shutil.copy(moved, src)
    assert source_dnn(_view(out)) == os.path.abspath(src)


def test_a_teacher_must_be_a_dnn_with_the_students_inputs_and_classes(converted, tmp_path):
    src, out, x = converted
    view = _view(out)
    student = torch.zeros(1, 10)
    t = load_teacher(str(src), view, x[:1], student)
    assert t.is_source and t(x[:3]).shape == (3, 10)
    with pytest.raises(ModelLoadError, match="a spiking model"):
        load_teacher(str(out), view, x[:1], student)
    with pytest.raises(ModelLoadError, match="no such teacher"):
        load_teacher(str(tmp_path / "none.onnx"), view, x[:1], student)
    five = tmp_path / "five.onnx"
    five.write_bytes(B.vgg(13, "clip", in_shape=(1, 12, 12), classes=5, softmax=False).SerializeToString())
    with pytest.raises(DataError, match=r"\[1, 5\].*\[1, 10\]"):
        load_teacher(str(five), view, x[:1], student)
    other = tmp_path / "other.onnx"
    other.write_bytes(B.vgg(13, "clip", in_shape=(1, 28, 28), softmax=False).SerializeToString())
    with pytest.raises(DataError, match="does not fit"):
        load_teacher(str(other), view, x[:1], student)
    copy = tmp_path / "copy.onnx"
    m = onnx.load(str(src))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    copy.write_bytes(m.SerializeToString())
    assert not load_teacher(str(copy), view, x[:1], student).is_source


def _finetune(out, data, tmp_path, **kw):
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    logged = []
    r = finetune(str(out), str(tmp_path / "t.snn.onnx"), data,
                 FinetuneConfig(epochs=1, batch_size=8, **kw), show_progress=False,
                 log=logged.append)
    return r, logged, F.read_info(onnx.load(str(tmp_path / "t.snn.onnx"))).history[-1]


def test_finetune_distills_from_the_source_by_default(converted, tmp_path):
    src, out, x = converted
    y = np.random.default_rng(1).integers(0, 10, len(x))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = str(tmp_path / "d.npz")
    r, logged, h = _finetune(out, data, tmp_path)
    assert any("distilling from" in s and "the DNN it was converted from" in s for s in logged)
    assert h["teacher"] == "dnn.onnx" and h["teacher_is_source"] and h["distill"] == 1.0
    assert np.isfinite(r.epochs[0].loss)
    os.remove(tmp_path / "t.snn.onnx")
    r, logged, h = _finetune(out, data, tmp_path, teacher=None)
    assert "teacher" not in h and not any("distilling" in s for s in logged)
    os.remove(tmp_path / "t.snn.onnx")
    os.remove(src)    # auto, and the source is gone: the labels alone, said
    r, logged, h = _finetune(out, data, tmp_path)
    assert "teacher" not in h and any("was not found" in s for s in logged)


def test_the_mixed_loss_is_what_distill_says(converted, tmp_path):
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, _loss
    g = torch.Generator().manual_seed(0)
    out, soft = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    labels = torch.tensor([0, 3, 9, 2])
    ce = torch.nn.functional.cross_entropy(out, labels)
    kd = distillation_loss(out, soft, 2.0)
    for w in (0.0, 0.3, 1.0):
        got = _loss(out, labels, soft, FinetuneConfig(distill=w, temperature=2.0))
        assert float(got) == pytest.approx(float(w * kd + (1 - w) * ce), rel=1e-6)
    assert float(_loss(out, labels, None, FinetuneConfig())) == pytest.approx(float(ce))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnx_snn", *args], capture_output=True, text=True,
                          env={**os.environ, "ONNX_SNN_PROGRESS": "0"})


def test_cli_teacher_errors(converted, tmp_path):
    src, out, x = converted
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), int))
    base = ["finetune", str(out), "--data", str(tmp_path / "d.npz"), "--epochs", "1"]
    p = run_cli(*base, "-o", str(tmp_path / "o.onnx"), "--teacher", str(tmp_path / "none.onnx"))
    assert p.returncode == 3 and "no such teacher" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(*base, "-o", str(src), "--teacher", str(src))   # never overwrite the teacher
    assert p.returncode == 6 and "Traceback" not in p.stderr
    assert onnx.load(str(src)).graph.node           # still the DNN
    p = run_cli(*base, "-o", str(tmp_path / "o.onnx"), "--distill", "1.5")
    assert p.returncode == 2 and "between 0 and 1" in p.stderr
    p = run_cli(*base, "-o", str(tmp_path / "o.onnx"), "--teacher", str(src), "--no-teacher")
    assert p.returncode == 2 and "not allowed with" in p.stderr
    assert not (tmp_path / "o.onnx").exists()
    p = run_cli(*base, "-o", str(tmp_path / "o.onnx"), "--teacher", str(out))
    assert p.returncode == 3 and "a spiking model" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(*base, "-o", str(tmp_path / "o.onnx"), "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    assert "distilling from" in p.stdout
    assert json.loads((tmp_path / "r.json").read_text())["epochs"]
