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
from onnx_snn.errors import DataError, ModelLoadError, UnsupportedModelError  # noqa: E402
from onnx_snn.spiking import format as F  # noqa: E402
from onnx_snn.runtimes.torch.teacher import (distillation_loss, load_teacher,  # noqa: E402
                                             source_dnn_of)

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


def _source(path):
    return F.read_info(onnx.load(str(path))).source


def test_the_source_dnn_is_found_only_while_it_is_unchanged(converted, tmp_path):
    src, out, _ = converted
    convert_step = F.read_info(onnx.load(str(out))).history[0]
    assert convert_step["source_path"] == os.path.abspath(src)
    assert source_dnn_of(out) == os.path.abspath(src)
    moved = tmp_path / "moved.onnx"
    shutil.move(src, moved)
    assert source_dnn_of(out) is None              # not where the conversion read it
    m = onnx.load(str(moved))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    src.write_bytes(m.SerializeToString())
    assert source_dnn_of(out) is None              # there, but another file
    shutil.copy(moved, src)
    assert source_dnn_of(out) == os.path.abspath(src)


def test_a_teacher_must_be_a_dnn_with_the_students_inputs_and_classes(converted, tmp_path):
    src, out, x = converted
    source = _source(out)
    student = torch.zeros(1, 10)
    t = load_teacher(str(src), x[:1], student, source)
    assert t.is_source and not t.probabilities and t(x[:3]).shape == (3, 10)
    with pytest.raises(UnsupportedModelError, match="a spiking model"):   # exit 4, as convert
        load_teacher(str(out), x[:1], student, source)
    with pytest.raises(ModelLoadError, match="no such teacher"):
        load_teacher(str(tmp_path / "none.onnx"), x[:1], student, source)
    five = tmp_path / "five.onnx"
    five.write_bytes(B.vgg(13, "clip", in_shape=(1, 12, 12), classes=5, softmax=False).SerializeToString())
    with pytest.raises(DataError, match=r"\[1, 5\].*\[1, 10\]"):
        load_teacher(str(five), x[:1], student, source)
    other = tmp_path / "other.onnx"
    other.write_bytes(B.vgg(13, "clip", in_shape=(1, 28, 28), softmax=False).SerializeToString())
    # the student's data fits the student: the teacher is named as the misfit, with both shapes
    with pytest.raises(ModelLoadError, match=r"teacher does not take the student's inputs: it "
                       r"takes '\w+' of shape \['N', 1, 28, 28\], the spiking model \['N', 1, 12, 12\]"):
        load_teacher(str(other), x[:1], student, source)
    copy = tmp_path / "copy.onnx"
    m = onnx.load(str(src))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    copy.write_bytes(m.SerializeToString())
    assert not load_teacher(str(copy), x[:1], student, source).is_source


def _finetune(out, data, tmp_path, **kw):
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    logged = []
    r = finetune(str(out), str(tmp_path / "t.snn.onnx"), data,
                 FinetuneConfig(epochs=1, batch_size=8, **kw), show_progress=False,
                 log=logged.append)
    return r, logged, F.read_info(onnx.load(str(tmp_path / "t.snn.onnx"))).history[-1]


def test_finetune_distills_from_the_source_with_teacher_auto(converted, tmp_path):
    src, out, x = converted
    y = np.random.default_rng(1).integers(0, 10, len(x))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = str(tmp_path / "d.npz")
    r, logged, h = _finetune(out, data, tmp_path, teacher="auto")
    assert any("distilling from" in s and "the DNN it was converted from" in s for s in logged)
    assert h["teacher"] == "dnn.onnx" and h["teacher_is_source"] and h["distill"] == 1.0
    assert r.teacher == os.path.abspath(src)
    assert np.isfinite(r.epochs[0].loss)
    os.remove(tmp_path / "t.snn.onnx")
    r, logged, h = _finetune(out, data, tmp_path)     # the default: the labels alone
    assert "teacher" not in h and r.teacher is None and not any("distilling" in s for s in logged)
    os.remove(tmp_path / "t.snn.onnx")
    os.remove(src)    # auto, and the source is gone: refused, before any work
    with pytest.raises(ModelLoadError, match="--teacher auto: the DNN this model was converted from was not found"):
        _finetune(out, data, tmp_path, teacher="auto")
    assert not (tmp_path / "t.snn.onnx").exists()


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
    assert not (tmp_path / "o.onnx").exists()
    p = run_cli(*base, "-o", str(tmp_path / "o.onnx"), "--teacher", str(out))   # exit 4: as convert
    assert p.returncode == 4 and "a spiking model" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(*base, "-o", str(tmp_path / "o.onnx"), "--json", str(tmp_path / "r.json"),
                "--teacher", "auto")
    assert p.returncode == 0, p.stderr
    assert "distilling from" in p.stdout
    assert json.loads((tmp_path / "r.json").read_text())["epochs"]


def test_a_softmax_teacher_is_read_as_probabilities(converted, tmp_path):
    """The conversion drops a DNN's final Softmax from the student, so a teacher that ends in
    one outputs probabilities: their log is the logits the KL compares (a KL of the softmax of
    probabilities would pull the student towards uniform outputs)."""
    src, out, x = converted
    sm = tmp_path / "softmax.onnx"   # the same weights (seed 0), with the final Softmax
    sm.write_bytes(B.vgg(13, "clip", in_shape=(1, 12, 12), softmax=True).SerializeToString())
    student = torch.zeros(1, 10)
    plain = load_teacher(str(src), x[:1], student)
    probs = load_teacher(str(sm), x[:1], student)
    assert probs.probabilities and not plain.probabilities
    logits = plain(x)
    assert float(distillation_loss(logits, probs(x))) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(torch.softmax(probs(x), 1), torch.softmax(logits, 1), atol=1e-6)


def test_a_percentage_teacher_is_read_as_probabilities(converted, tmp_path):
    """A DNN whose output is Softmax(x) * 100 (percentages; its conversion drops both): its
    rows sum to 100, not 1, and were read as logits (a near one-hot teacher); it is read
    from the graph as probabilities, and distills like the plain Softmax teacher."""
    from onnx import helper as oh
    from onnx import numpy_helper as onh
    src, out, x = converted
    m = B.vgg(13, "clip", in_shape=(1, 12, 12), softmax=True)
    y = m.graph.output[0].name
    m.graph.node.append(oh.make_node("Mul", [y, "pct_c"], ["pct"], name="pct"))
    m.graph.initializer.append(onh.from_array(np.array(100, np.float32), "pct_c"))
    m.graph.output[0].name = "pct"
    pct = tmp_path / "pct.onnx"
    pct.write_bytes(m.SerializeToString())
    student = torch.zeros(1, 10)
    t = load_teacher(str(pct), x[:1], student)
    assert t.probabilities
    plain = load_teacher(str(src), x[:1], student)
    assert float(distillation_loss(plain(x), t(x))) == pytest.approx(0.0, abs=1e-5)
    from onnx_snn.scores import is_scaled_softmax
    assert not is_scaled_softmax(onnx.load(str(src)), onnx.load(str(src)).graph.output[0].name)


def _fixed(model: onnx.ModelProto, b: int) -> onnx.ModelProto:
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = b
    return model


@pytest.mark.parametrize("b", [1, 3])
def test_a_teacher_with_a_fixed_batch_runs_any_batch(converted, tmp_path, b):
    src, out, x = converted
    fixed = tmp_path / "fixed.onnx"
    fixed.write_bytes(_fixed(onnx.load(str(src)), b).SerializeToString())
    t = load_teacher(str(fixed), x[:1], torch.zeros(1, 10))
    want = load_teacher(str(src), x[:1], torch.zeros(1, 10))(x[:8])
    assert torch.allclose(t(x[:8]), want, atol=1e-6)


@pytest.mark.slow   # 13 s: a command per output path, each in a fresh process
def test_no_output_may_overwrite_the_found_teacher(converted, tmp_path):
    src, out, x = converted
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), int))
    before = src.read_bytes()
    base = ["finetune", str(out), "--data", str(tmp_path / "d.npz"), "--epochs", "1",
            "-o", str(tmp_path / "o.onnx"), "--teacher", "auto"]
    for flag in ("--checkpoint", "--json"):
        p = run_cli(*base, flag, str(src))
        assert p.returncode == 6 and "Traceback" not in p.stderr, (flag, p.stderr)
    assert src.read_bytes() == before and not (tmp_path / "o.onnx").exists()
    p = run_cli(*base[:-2], "--distill", "0.5")
    assert p.returncode == 2 and "they need --teacher" in p.stderr
    # the same for the cosine schedule's warm-up under the step schedule (it was ignored)
    p = run_cli(*base[:-2], "--schedule", "step", "--warmup", "0.3")
    assert p.returncode == 2 and "--schedule step does not have" in p.stderr, p.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_a_resumed_run_keeps_its_loss(converted, tmp_path):
    from onnx_snn.errors import UsageError
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    src, out, x = converted
    np.savez(tmp_path / "d.npz", x=x, y=np.random.default_rng(1).integers(0, 10, len(x)))
    data, tuned = str(tmp_path / "d.npz"), str(tmp_path / "t.snn.onnx")
    quiet = dict(show_progress=False, log=lambda *a: None)
    auto = {"teacher": "auto"}
    finetune(str(out), tuned, data, FinetuneConfig(epochs=1, batch_size=8, **auto), **quiet)
    for changed in ({"teacher": None}, {**auto, "distill": 0.5}, {**auto, "temperature": 2.0}):
        with pytest.raises(UsageError, match="this run started distilling from dnn.onnx"):
            finetune(str(out), tuned, data, FinetuneConfig(epochs=2, batch_size=8, **changed),
                     resume=True, **quiet)
    r = finetune(str(out), tuned, data, FinetuneConfig(epochs=2, batch_size=8, **auto),
                 resume=True, **quiet)
    assert [e.epoch for e in r.epochs] == [1, 2] and r.teacher == os.path.abspath(src)


def test_distill_zero_is_no_teacher(converted, tmp_path):
    src, out, x = converted
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), int))
    r, logged, h = _finetune(out, str(tmp_path / "d.npz"), tmp_path, teacher="auto", distill=0.0)
    assert r.teacher is None and "teacher" not in h
    assert not any("distilling" in s or "not found" in s for s in logged)


def test_a_fixed_batch_model_distills_from_its_fixed_batch_source(tmp_path):
    src = tmp_path / "dnn.onnx"
    src.write_bytes(_fixed(B.vgg(13, "clip", in_shape=(1, 12, 12), softmax=False), 4).SerializeToString())
    x = np.random.default_rng(0).random((16, 1, 12, 12)).astype(np.float32)
    out = tmp_path / "m.snn.onnx"
    onnx_snn.convert(str(src), x, timesteps=2, method="datta", show_progress=False).save(str(out))
    np.savez(tmp_path / "d.npz", x=x[:14], y=np.random.default_rng(1).integers(0, 10, 14))
    r, logged, h = _finetune(out, str(tmp_path / "d.npz"), tmp_path, teacher="auto")
    assert h["teacher"] == "dnn.onnx" and np.isfinite(r.epochs[0].loss)


def test_the_teachers_outputs_are_what_the_loss_gets(converted, tmp_path, monkeypatch):
    """Each training batch's soft targets are the teacher's outputs on that very batch."""
    from onnx_snn.runtimes.torch import finetune as ft
    src, out, x = converted
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), int))
    seen, real = [], ft._loss

    def spy(out_, labels, soft, cfg):
        seen.append(soft)
        return real(out_, labels, soft, cfg)

    monkeypatch.setattr(ft, "_loss", spy)
    _finetune(out, str(tmp_path / "d.npz"), tmp_path, teacher="auto")
    dnn = load_teacher(str(src), x[:1], torch.zeros(1, 10))
    batches = [b for b in seen if b is not None]
    assert len(batches) == len(seen) == 2             # 16 images, batch 8
    want = dnn(x).numpy()
    for b in batches:                                 # a shuffled batch: rows of the teacher's
        d = np.abs(b.numpy()[:, None, :] - want[None]).max(-1)
        assert (d.min(1) < 1e-5).all()


def test_a_teacher_with_a_smaller_fixed_batch_than_the_student(tmp_path):
    src = tmp_path / "dnn.onnx"
    m = B.vgg(13, "clip", in_shape=(1, 12, 12), softmax=False)
    src.write_bytes(_fixed(onnx.load_from_string(m.SerializeToString()), 4).SerializeToString())
    one = tmp_path / "one.onnx"
    one.write_bytes(_fixed(m, 1).SerializeToString())
    x = np.random.default_rng(0).random((16, 1, 12, 12)).astype(np.float32)
    out = tmp_path / "m.snn.onnx"
    onnx_snn.convert(str(src), x, timesteps=2, method="datta", show_progress=False).save(str(out))
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), int))
    r, logged, h = _finetune(out, str(tmp_path / "d.npz"), tmp_path, teacher=str(one))
    assert h["teacher"] == "one.onnx" and not h["teacher_is_source"]
    t = load_teacher(str(one), x[:4], torch.zeros(4, 10))
    assert t.runner.session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"     # its runs alternate with torch's


def test_teacher_auto_on_a_model_that_is_not_spiking_says_so(converted, tmp_path):
    src, out, x = converted
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(len(x), int))
    p = run_cli("finetune", str(src), "-o", str(tmp_path / "o.onnx"), "--data",
                str(tmp_path / "d.npz"), "--teacher", "auto")
    assert p.returncode == 8 and "not a spiking model" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("head", ["argmax", "skl2onnx"])
def test_a_teacher_whose_output_head_was_dropped_gives_the_scores(head, tmp_path):
    """A DNN whose first output is class ids (an ArgMax head; skl2onnx's label and its
    probabilities): the student outputs the scores the head read, and the teacher gives the
    same ones (its output of that name, or the tensor inside its graph), not its class ids
    (it was refused: 'the teacher's first output has shape [N]')."""
    import test_normalize
    m = test_normalize._with_head(head)
    src = tmp_path / "dnn.onnx"
    onnx.save(m, str(src))
    x = B.rand_input(16)
    snn = onnx_snn.convert(str(src), x, timesteps=2, method="datta", show_progress=False)
    out = tmp_path / "m.snn.onnx"
    snn.save(str(out))
    student = onnx_snn.runtimes.ort.run(snn.model, x).outputs[0]
    t = load_teacher(str(src), x, torch.from_numpy(student), source=F.read_info(snn.model).source,
                     student_name=F.read_spiking(snn.model).outputs[0])
    got = t(x).numpy()
    assert got.shape == student.shape == (16, 10)
    dnn = onnx_snn.runtimes.ort.run(m, x).outputs
    ids = next(o for o in dnn if o.dtype.kind == "i").reshape(16)
    if head == "skl2onnx":                     # the probabilities output: read as such
        assert t.probabilities and np.array_equal(got.argmax(1) * 10, ids)
    else:                                      # the logits inside the graph
        assert not t.probabilities and np.array_equal(got.argmax(1), ids)
    np.savez(tmp_path / "d.npz", x=x, y=np.random.default_rng(1).integers(0, 10, 16))
    r, logged, h = _finetune(out, str(tmp_path / "d.npz"), tmp_path, teacher="auto")
    assert h["teacher_is_source"] and np.isfinite(r.epochs[0].loss)
    if head == "argmax":        # another DNN: a tensor of that name inside it is another one
        with pytest.raises(DataError, match="first output has shape"):
            load_teacher(str(src), x, torch.from_numpy(student), source="not-this-file",
                         student_name=F.read_spiking(snn.model).outputs[0])


def test_a_teacher_of_another_normalization_gets_its_own(converted, tmp_path):
    """A teacher that records another input normalization than the student's data is fed
    its own (the student's batch undone and normalized again, per channel); agreeing or
    unrecorded normalizations, or channels off axis 1, feed the batch as it is."""
    from onnx_snn.runtimes.torch.teacher import renormalization
    rng = np.random.default_rng(0)
    raw = rng.random((4, 3, 5, 5)).astype(np.float32)
    s = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]}
    t = {"mean": [0.4, 0.0, 0.3], "std": [0.2, 1.0, 0.5]}
    c = np.reshape
    xs = (raw - c(s["mean"], (1, 3, 1, 1))) / c(s["std"], (1, 3, 1, 1))
    xt = (raw - c(t["mean"], (1, 3, 1, 1))) / c(t["std"], (1, 3, 1, 1))
    scale, shift = renormalization(s, t, xs.shape)
    np.testing.assert_allclose(xs * scale + shift, xt, rtol=1e-5, atol=1e-5)
    assert renormalization(s, s, xs.shape) is None
    assert renormalization(None, t, xs.shape) is None and renormalization(s, None, xs.shape) is None
    assert renormalization(s, t, (4, 5, 5, 3)) is None            # channels last
    one = renormalization({"mean": [0.0], "std": [1.0]}, {"mean": [0.286], "std": [0.353]}, (2, 1, 4, 4))
    np.testing.assert_allclose(one[0].reshape(-1), [1 / 0.353], rtol=1e-6)
    # through finetune: a student that records mean 0 / std 1 (converted with --mean 0 --std
    # 1) and a teacher that records 0.286 / 0.353: the teacher's inputs are renormalized
    src, out, x = converted
    m = onnx.load(str(src))
    onnx.helper.set_model_props(m, {"onnx_snn.preprocess": json.dumps({"mean": [0.286], "std": [0.353]})})
    onnx.save(m, str(tmp_path / "dnn_pp.onnx"))
    student = onnx.load(str(out))
    meta = F.metadata(student)
    meta[F.META_PREPROCESS] = json.dumps({"mean": [0.0], "std": [1.0]})
    F.set_metadata(student, meta)
    onnx.save(student, str(tmp_path / "s.snn.onnx"))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(len(x)) % 10)
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    logged = []
    finetune(str(tmp_path / "s.snn.onnx"), str(tmp_path / "t.snn.onnx"), str(tmp_path / "d.npz"),
             FinetuneConfig(epochs=1, batch_size=8, teacher=str(tmp_path / "dnn_pp.onnx")),
             show_progress=False, log=logged.append)
    assert any("renormalized" in s and "0.286" in s for s in logged), logged
