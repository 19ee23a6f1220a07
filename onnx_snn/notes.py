"""The marks a note of the conversion may start with. Notes are plain strings (the report's
``notes``, the normalized model's): a mark says how ``convert`` says them."""
from __future__ import annotations

#: a warning: ``convert`` logs it, without the mark, as one (``-q`` or not)
WARNING_NOTE = "warning: "
#: the spiking model's inputs or outputs differ from the DNN's (a final Softmax dropped: the
#: outputs are scores, not probabilities; an input pinned to the calibration data's shape; a
#: uint8 input taken as float32): ``onnx-snn convert`` prints it, without the mark, with
#: ``-q`` too
INTERFACE_NOTE = "interface: "


def interface(text: str) -> str:
    """``text`` marked as a note on the spiking model's inputs or outputs."""
    return INTERFACE_NOTE + text


def unmarked(note: str) -> str:
    """``note`` without its mark, as it is said."""
    for mark in (WARNING_NOTE, INTERFACE_NOTE):
        if note.startswith(mark):
            return note[len(mark):]
    return note
