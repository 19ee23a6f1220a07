"""User-facing errors: one class per kind of failure, each with its own exit code.

The CLI prints ``onnx-snn: error: <message>`` for these and exits with ``exit_code``;
no traceback is shown, because the message already says what is wrong and what to do.
SIGINT exits with 130 and SIGTERM with 143 (:class:`Terminated`), after removing every
temporary file.
"""
from __future__ import annotations

import os
import re
import stat
from typing import Optional


class OnnxSnnError(Exception):
    """Base class of every error that is the user's to fix."""

    exit_code = 1


class UsageError(OnnxSnnError, ValueError):
    """Options that do not fit together or ask for unbounded work (argparse handles the rest,
    also with code 2). A ``ValueError`` too, for API callers that catch those."""

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
    """An output path that cannot be written safely: it names an input of the command or
    another output, is not a regular file (a folder, device, pipe), or its folder is missing,
    not a folder or not writable."""

    exit_code = 6


class TrainingDivergedError(OnnxSnnError):
    """Fine-tuning produced a non-finite loss, parameter or output; the last good model was
    kept."""

    exit_code = 7


class NotSpikingModelError(OnnxSnnError):
    """A spiking model was required but the file is a plain DNN (or another format)."""

    exit_code = 8


class DeployGraphError(NotSpikingModelError):
    """A spiking model's deploy graph (inference only) was given where the spiking model it
    was made from is needed."""


class MissingDependencyError(OnnxSnnError):
    """An optional dependency (torch, matplotlib) is needed for this command."""

    exit_code = 9


class InternalError(OnnxSnnError, RuntimeError):
    """onnx-snn built something invalid from a model it accepted: a bug here, to report with
    the model (a ``RuntimeError`` too, for API callers that catch those)."""

    exit_code = 70


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like SIGINT's KeyboardInterrupt so that the same clean-up runs."""

    exit_code = 143


def first_line(e: BaseException, lines: int = 1) -> str:
    """An exception's message as one line for an error message: its first line (its type's
    name when it has none; ``lines``: its first lines joined, for messages that say what is
    wrong after a heading, as torch's state-dict errors do), without onnxruntime's
    ``[ONNXRuntimeError] : <n> : `` prefix (and its generic ``FAIL : ``; other status names,
    INVALID_GRAPH and the like, are kept)."""
    text = str(e).strip()
    line = " ".join(x.strip() for x in text.splitlines()[:lines]) if text else type(e).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : (FAIL : )?", "", line)


LONG_WORD = 400        # characters of one unbroken run (a value, a path) that a message shows
LONG_MESSAGE = 2000    # characters of a whole message


def shortened(text: str) -> str:
    """A message cut to what a terminal line can show: every run of more than LONG_WORD
    characters without a space (a damaged value, a path) keeps its start and says how long it
    is, and a message of more than LONG_MESSAGE keeps its start and its end (where it says
    what to do)."""
    def cut(m):
        w = m.group(0)
        return f"{w[:LONG_WORD - 100]}... ({len(w)} characters)"
    text = re.sub(r"\S{%d,}" % (LONG_WORD + 1), cut, text)
    if len(text) > LONG_MESSAGE:
        text = f"{text[:LONG_MESSAGE - 500]} ... {text[-400:]}"
    return text


LISTED = 6            # names a message lists before "and N more"


def listed(names, limit: int = LISTED) -> str:
    """Names for a message, comma-separated: the first ``limit`` and how many more (a
    warning about 200 layers names a few, not all 200)."""
    names = list(names)
    head = ", ".join(str(n) for n in names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")


def file_problem(path) -> Optional[str]:
    """Why ``path`` cannot be read as an input file, for a message after its name: missing,
    unreadable, a folder, or not a regular file (a pipe, a device or a socket: reading one
    blocks or never ends); None for a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except (OSError, ValueError) as e:  # a name too long, a loop of links, no permission, NUL
        return getattr(e, "strerror", None) or str(e)
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return ("is not a regular file (a pipe, a device or a socket, which would block or "
                "never end); save its contents to a file and give that")
    return None


def is_onnxruntime_error(e: BaseException) -> bool:
    """Whether onnxruntime raised ``e`` (its pybind exceptions, not a Python error of ours)."""
    return type(e).__module__.split(".")[0] == "onnxruntime"


EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (
        UsageError,
        ModelLoadError,
        UnsupportedModelError,
        DataError,
        OutputPathError,
        TrainingDivergedError,
        NotSpikingModelError,
        MissingDependencyError,
        InternalError,
    )
}
