"""Distillation from a DNN teacher during fine-tuning.

The teacher is a DNN (``auto``: the one the spiking model was converted from, when the
conversion recorded its path and the file there is unchanged) run in onnxruntime on each
training batch; the student, the spiking network, learns its outputs
(:func:`distillation_loss`, Hinton et al. 2015) mixed with the labels' cross-entropy.
A teacher that ends in a Softmax (the conversion drops it from the student) is read as
probabilities: its log-probabilities are the logits the KL compares. A binary classifier's
one score (a final Sigmoid's probability p, or a logit) is read as two classes
(:func:`onnx_snn.scores.class_scores`), as the student's is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
import torch
import torch.nn.functional as Fn

from onnx_snn.errors import DataError, ModelLoadError, UnsupportedModelError, file_problem
from onnx_snn.feeds import shown_shape
from onnx_snn.scores import PROBABILITIES, class_scores, first_output_kind, is_scaled_softmax
from onnx_snn.model_io import load_model, sha256_file
from onnx_snn.spiking import format as fmt

#: FinetuneConfig.teacher: the source DNN when it can be found (see :func:`source_dnn`)
AUTO = "auto"
#: probabilities below this are taken as this before their log (a Softmax teacher's zeros)
_MIN_PROBABILITY = 1e-30


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes at ``temperature``, times its square (so
    that the gradient's scale does not depend on it), averaged over the batch."""
    t = float(temperature)
    return Fn.kl_div(Fn.log_softmax(student / t, dim=1), Fn.log_softmax(teacher / t, dim=1),
                     log_target=True, reduction="batchmean") * (t * t)


def source_dnn(info: fmt.SpikingInfo) -> Optional[str]:
    """The DNN the spiking model was converted from, when its conversion recorded the path
    (``source_path`` in the history's convert step) and the file there still has the sha256
    the model records (``onnx_snn.source``); else None."""
    if not info.source:
        return None
    for step in reversed(info.history or []):
        if isinstance(step, dict) and step.get("step") == "convert":
            path = step.get("source_path")
            if isinstance(path, str) and os.path.isfile(path):
                try:
                    if sha256_file(path) == info.source:
                        return path
                except OSError:
                    return None
            return None
    return None


def source_dnn_of(model_path) -> Optional[str]:
    """:func:`source_dnn` of a spiking model file, read without its weights' external data
    (None when the file cannot be read: loading it later says why)."""
    try:
        m = onnx.load(os.fspath(model_path), load_external_data=False)
        return source_dnn(fmt.read_info(m, str(model_path))) if fmt.is_spiking(m) else None
    except Exception:
        return None


@dataclass
class Teacher:
    """A DNN in onnxruntime whose first output the student learns."""

    path: str
    runner: object          # onnx_snn.runtimes.ort.ModelRunner
    is_source: bool         # the DNN the spiking model was converted from
    sha256: str
    probabilities: bool = False   # its output is a softmax: its log is compared
    sigmoid: bool = False         # its output is a final Sigmoid's (a binary classifier's p)
    output: int = 0               # which of its outputs: the one the student's first one is
    #: (scale, shift) that take the student's normalized input to the teacher's own
    #: normalization (:func:`renormalization`), per channel (axis 1); None: the same
    renorm: Optional[tuple] = None

    def __call__(self, x) -> torch.Tensor:
        """The teacher's logits for a batch (in batches of its fixed size, if it has one);
        ``x`` an array, or {input name: array} for a model of several inputs."""
        if self.renorm is not None and not isinstance(x, dict):
            scale, shift = self.renorm
            x = (np.asarray(x, np.float32) * scale + shift).astype(np.float32)
        feeds = x if isinstance(x, dict) else {self.runner.specs[0][0]: x}
        n = len(next(iter(feeds.values())))
        step = self.runner.fixed_batch or n
        outs = [self.runner.run_padded({k: v[i:i + step] for k, v in feeds.items()}).outputs[self.output]
                for i in range(0, n, max(step, 1))]
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        if self.sigmoid and out.ndim >= 2 and out[0].size > 1:
            p = np.clip(class_scores(out).astype(np.float64), _MIN_PROBABILITY, 1 - 1e-7)
            out = np.log(p) - np.log1p(-p)        # a multi-label Sigmoid's logits
        else:
            out = class_scores(out, self.sigmoid)  # [N, classes, 1, 1]; one score: two classes
        if self.probabilities:
            out = np.log(np.maximum(out, _MIN_PROBABILITY))
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def renormalization(student: Optional[dict], teacher: Optional[dict], shape) -> Optional[tuple]:
    """(scale, shift) with ``x * scale + shift`` the teacher's normalization of an input the
    student's normalization made: ``(x * s_std + s_mean - t_mean) / t_std``, per channel
    (axis 1 of an input of ``shape``); None when either records none, they agree, or their
    channels are not axis 1's."""
    rank = len(shape)
    if not student or not teacher or rank < 2:
        return None
    sm, ss = (np.asarray(student[k], np.float64).reshape(-1) for k in ("mean", "std"))
    tm, ts = (np.asarray(teacher[k], np.float64).reshape(-1) for k in ("mean", "std"))
    if {sm.size, ss.size, tm.size, ts.size} - {1, max(sm.size, ss.size, tm.size, ts.size)}:
        return None           # channel counts that do not match: nothing to go by
    if np.allclose(sm, tm, rtol=0, atol=1e-7) and np.allclose(ss, ts, rtol=1e-7, atol=0):
        return None
    channels = max(sm.size, ss.size, tm.size, ts.size)
    if channels > 1 and shape[1] != channels:      # a channels-last input: not axis 1
        return None
    shape = [1, -1] + [1] * (rank - 2)
    scale = (ss / ts).astype(np.float32)
    shift = ((sm - tm) / ts).astype(np.float32)
    return scale.reshape(shape), shift.reshape(shape)


def require_file(path) -> None:
    """A teacher named by path must be a file (ModelLoadError naming it otherwise)."""
    why = file_problem(path)
    if why is not None:
        raise ModelLoadError(f"{path}: {'no such teacher model' if why == 'no such file' else why}"
                             " (--teacher takes the DNN's .onnx file, or auto for the DNN the "
                             "model was converted from)")


def open_runner(model, threads: Optional[int] = None, expose: Optional[str] = None,
                where: Optional[str] = None):
    """The teacher's onnxruntime runner (``model``: a path or a loaded model): its threads
    sleep between runs, which alternate with PyTorch's training step (spinning, they made
    the distilled epoch 1.58x the plain one). ``expose``: a tensor of the graph to add as
    its last output."""
    from onnx_snn.runtimes.ort import ModelRunner
    return ModelRunner(model, threads=threads, spin=False, where=where,
                       expose=(expose,) if expose else ())


def _student_output(model: onnx.ModelProto, name: Optional[str], is_source: bool):
    """(index of the teacher's output that the student's first output ``name`` is, the tensor
    to expose for it or None): the output of that name, or, in the DNN the student was
    converted from, the tensor of that name inside the graph (the scores a dropped output
    head read: the student outputs them in its place; in another DNN a tensor of that name
    is another one); (0, None) otherwise."""
    outputs = [o.name for o in model.graph.output]
    if not name:
        return 0, None
    if name in outputs:
        return outputs.index(name), None
    if is_source and any(name in n.output for n in model.graph.node):
        return len(outputs), name
    return 0, None


def _is_softmax(out: np.ndarray) -> bool:
    return bool(out.ndim == 2 and np.all(out >= 0) and np.allclose(out.sum(1), 1.0, atol=1e-4))


def load_teacher(path: str, probe, student_out: torch.Tensor,
                 source: Optional[str] = None, threads: Optional[int] = None,
                 sha256: Optional[str] = None, student_name: Optional[str] = None) -> Teacher:
    """Load ``path`` as a teacher for a spiking model: a DNN that takes the student's inputs
    (``probe``, a batch of them: an array, or {input name: array} for several inputs) and
    whose output of the student's first output's name ``student_name`` (else its first) has
    the shape of the student's
    (``student_out``, its output on ``probe``); else ModelLoadError / DataError naming the
    file. A student whose conversion dropped an output head (class ids) outputs the scores the
    head read: the teacher gives those. ``source``: the sha256 of the DNN the student was
    converted from; ``sha256``: the teacher file's, when already known."""
    require_file(path)
    model = load_model(path)
    sha = sha256 or sha256_file(path)
    is_source = bool(source) and sha == source
    index, expose = _student_output(model, student_name, is_source)
    runner = open_runner(model, threads, expose, where=str(path))   # one session
    if runner.spiking:
        raise UnsupportedModelError(f"{path}: a spiking model; the teacher is a DNN (the .onnx "
                                    "file the spiking model was converted from)")
    want = sorted(probe) if isinstance(probe, dict) else None
    if (want is None and len(runner.specs) != 1) or \
            (want is not None and sorted(n for n, _ in runner.specs) != want):
        raise ModelLoadError(
            f"{path}: the teacher's inputs are {[n for n, _ in runner.specs]}; distillation needs "
            f"a DNN that takes the student's inputs ({want or 'one input'}), like the DNN it was "
            "converted from")
    try:
        runner.validate(probe, "the student's data")
    except DataError:       # the data fits the student: the teacher is the misfit
        shapes = {n: ["N"] + list(v.shape[1:]) for n, v in probe.items()} \
            if isinstance(probe, dict) else ["N"] + list(np.shape(probe)[1:])
        raise ModelLoadError(
            f"{path}: the teacher does not take the student's inputs: it takes "
            f"{', '.join(f'{n!r} of shape {shown_shape(s)}' for n, s in runner.specs)}, the spiking model "
            f"{shapes}; distillation needs a DNN with the spiking model's input, like the DNN "
            "it was converted from (--teacher auto)") from None
    teacher = Teacher(path=str(path), runner=runner, is_source=is_source, sha256=sha,
                      output=index)
    try:
        teacher.sigmoid = first_output_kind(runner.model, runner.output_names[index]) == PROBABILITIES
        out = teacher(probe).numpy()    # in the teacher's batches (its raw output: no log yet)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    if tuple(out.shape) != tuple(student_out.shape):
        which = f"output '{runner.output_names[index]}'" if index else "first output"
        raise DataError(f"{path}: the teacher's {which} has shape {list(out.shape)} on a "
                        f"batch the spiking model answers with {list(student_out.shape)}; the "
                        "teacher must output the same classes")
    teacher.probabilities = _is_softmax(out) or is_scaled_softmax(runner.model,
                                                                   runner.output_names[index])
    return teacher
