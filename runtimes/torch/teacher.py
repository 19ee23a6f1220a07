"""Distillation from a DNN teacher during fine-tuning.

The teacher is a DNN (by default the one the spiking model was converted from, when the
conversion recorded its path and the file there is unchanged) run in onnxruntime on each
training batch; the student, the spiking network, learns its outputs
(:func:`distillation_loss`, Hinton et al. 2015) mixed with the labels' cross-entropy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as Fn

from onnx_snn.errors import DataError, ModelLoadError
from onnx_snn.model_io import sha256_file
from onnx_snn.spiking import format as fmt

#: FinetuneConfig.teacher: the source DNN when it can be found (see :func:`source_dnn`)
AUTO = "auto"


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes at ``temperature``, times its square (so
    that the gradient's scale does not depend on it), averaged over the batch."""
    t = float(temperature)
    return Fn.kl_div(Fn.log_softmax(student / t, dim=1), Fn.log_softmax(teacher / t, dim=1),
                     log_target=True, reduction="batchmean") * (t * t)


def source_dnn(view: fmt.SpikingView) -> Optional[str]:
    """The DNN the spiking model was converted from, when its conversion recorded the path
    (``source_path`` in the history's convert step) and the file there still has the sha256
    the model records (``onnx_snn.source``); else None."""
    if not view.info.source:
        return None
    for step in reversed(view.info.history or []):
        if isinstance(step, dict) and step.get("step") == "convert":
            path = step.get("source_path")
            if isinstance(path, str) and os.path.isfile(path):
                try:
                    if sha256_file(path) == view.info.source:
                        return path
                except OSError:
                    return None
            return None
    return None


@dataclass
class Teacher:
    """A DNN in onnxruntime whose first output the student learns."""

    path: str
    runner: object          # onnx_snn.runtimes.ort.ModelRunner
    is_source: bool         # the DNN the spiking model was converted from

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        feeds = {self.runner.specs[0][0]: x}
        return torch.from_numpy(np.ascontiguousarray(self.runner.run(feeds).outputs[0]))


def load_teacher(path: str, view: fmt.SpikingView, probe: np.ndarray,
                 student_out: torch.Tensor) -> Teacher:
    """Load ``path`` as a teacher for the spiking model of ``view``: a DNN with one input that
    takes the student's inputs (``probe``, a batch of them) and whose first output has the
    shape of the student's (``student_out``, its output on ``probe``); else ModelLoadError /
    DataError naming the file."""
    from onnx_snn.runtimes.ort import ModelRunner
    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such teacher model (--teacher takes the DNN's .onnx "
                             "file; --no-teacher trains on the labels alone)")
    runner = ModelRunner(path)
    if runner.spiking:
        raise ModelLoadError(f"{path}: a spiking model; the teacher is a DNN (the .onnx file "
                             "the spiking model was converted from)")
    if len(runner.specs) != 1:
        raise ModelLoadError(f"{path}: the teacher has {len(runner.specs)} inputs; "
                             "distillation needs a DNN with one input, like the student's")
    feeds = runner.validate(probe, f"{path}: the student's inputs")
    out = runner.run(feeds).outputs[0]
    if tuple(out.shape) != tuple(student_out.shape):
        raise DataError(f"{path}: the teacher's first output has shape {list(out.shape)} on a "
                        f"batch the spiking model answers with {list(student_out.shape)}; the "
                        "teacher must output the same classes")
    is_source = bool(view.info.source) and sha256_file(path) == view.info.source
    return Teacher(path=str(path), runner=runner, is_source=is_source)
