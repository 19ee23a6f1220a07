"""The files a spiking model's history names: the DNN each step converted from (with its
external data) and the data it was calibrated, fine-tuned and tested on. They are inputs of
every command that reads the model, so no output may be written over them (``onnx-snn deploy
m.snn.onnx -o m.onnx`` would replace the trained DNN)."""
from __future__ import annotations

import json
import mmap
import os
from typing import Dict, List, Union

import onnx

#: ModelProto's field number of ``metadata_props`` (onnx.proto)
_METADATA_FIELD = 14


def _varint(buf, pos: int):
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def file_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict, read without parsing its graph (the
    top-level fields are walked and the graph's bytes skipped). Empty for a file that cannot
    be read or is not a well-formed ModelProto: whoever loads it says why."""
    from .errors import file_problem
    out: Dict[str, str] = {}
    if file_problem(path):      # never opened unless a regular file (a pipe would block)
        return out
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return out
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                pos, end = 0, len(buf)
                while pos < end:
                    key, pos = _varint(buf, pos)
                    field, wire = key >> 3, key & 7
                    if field == 0:          # no field is numbered 0: not a ModelProto
                        return {}
                    if wire == 0:
                        _, pos = _varint(buf, pos)
                    elif wire == 1:
                        pos += 8
                    elif wire == 5:
                        pos += 4
                    elif wire == 2:
                        n, pos = _varint(buf, pos)
                        if pos + n > end:
                            return {}
                        if field == _METADATA_FIELD:
                            entry = onnx.StringStringEntryProto.FromString(buf[pos:pos + n])
                            out[entry.key] = entry.value
                        pos += n
                    else:
                        return {}
                    if pos > end:       # a fixed-size field past the end: truncated
                        return {}
    except Exception:   # noqa: BLE001 -- (OSError, protobuf's DecodeError, ...) a damaged
        return {}       # file names nothing; whoever loads it reports it
    return out


def _metadata(model: Union[onnx.ModelProto, str, os.PathLike]) -> Dict[str, str]:
    """A ModelProto's metadata, or a file's (:func:`file_metadata`)."""
    from .model_io import metadata_dict
    return metadata_dict(model) if isinstance(model, onnx.ModelProto) else file_metadata(model)


def history_steps(model: Union[onnx.ModelProto, str, os.PathLike]) -> List[dict]:
    """The steps (dicts) of a model's ``onnx_snn.history`` (a ModelProto's or a file's); empty
    for a DNN or a history that cannot be read (the model's reader says why)."""
    from .spiking.format import META_HISTORY
    try:
        history = json.loads(_metadata(model).get(META_HISTORY, "[]"))
    except (ValueError, RecursionError):
        return []
    return [step for step in history if isinstance(step, dict)] \
        if isinstance(history, list) else []


def recorded_files(model: Union[onnx.ModelProto, str, os.PathLike]) -> List[str]:
    """The existing files that the spiking ``model``'s (a ModelProto or a file's) history
    names: each step's source DNN (``source_path``, with its external data) and data files
    (calibration, training, test). Empty for a DNN or an unreadable history."""
    from .datasets import DATA_RECORDS, recorded_data_paths
    from .model_io import model_files
    model_path = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
    files: List[str] = []
    for step in history_steps(model):
        src = step.get("source_path")
        if isinstance(src, str) and os.path.isfile(src):
            files += [os.fspath(f) for f in model_files(src)]
        for key in DATA_RECORDS:
            files += [p for p in recorded_data_paths(step.get(key), model_path)
                      if os.path.exists(p)]
    return files


def recorded_dataset(model: Union[onnx.ModelProto, str, os.PathLike]):
    """The dataset a model records (``onnx_snn.dataset``: what ``eval``, ``finetune`` and
    ``analyze`` default to), or None."""
    from .spiking.format import META_DATASET
    return _metadata(model).get(META_DATASET) or None
