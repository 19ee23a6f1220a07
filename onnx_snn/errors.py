"""User-facing errors: one class per kind of failure, each with its own exit code.

The CLI prints ``onnx-snn: error: <message>`` for these and exits with ``exit_code``;
no traceback is shown, because the message already says what is wrong and what to do.
"""
from __future__ import annotations


class OnnxSnnError(Exception):
    """Base class of every error that is the user's to fix."""

    exit_code = 1


class UsageError(OnnxSnnError):
    """Options that do not fit together (argparse handles the rest, also with code 2)."""

    exit_code = 2


class ModelLoadError(OnnxSnnError):
    """The model file is missing, truncated, not ONNX, or fails the ONNX checker."""

    exit_code = 3


class UnsupportedModelError(OnnxSnnError):
    """The graph holds an op or a pattern the converter cannot turn into spiking form."""

    exit_code = 4


class DataError(OnnxSnnError):
    """Calibration or evaluation data is missing, of the wrong shape, or not finite."""

    exit_code = 5


class OutputPathError(OnnxSnnError):
    """The output path would overwrite the input, or its folder does not exist."""

    exit_code = 6


class TrainingDivergedError(OnnxSnnError):
    """Fine-tuning produced a non-finite loss; the last good model was kept."""

    exit_code = 7


class NotSpikingModelError(OnnxSnnError):
    """A spiking model was required but the file is a plain DNN (or another format)."""

    exit_code = 8


class MissingDependencyError(OnnxSnnError):
    """An optional dependency (torch, matplotlib) is needed for this command."""

    exit_code = 9


EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        ModelLoadError,
        UnsupportedModelError,
        DataError,
        OutputPathError,
        TrainingDivergedError,
        NotSpikingModelError,
        MissingDependencyError,
    )
}
