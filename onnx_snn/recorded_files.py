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


def recorded_files(model: Union[onnx.ModelProto, str, os.PathLike]) -> List[str]:
    """The existing files that the spiking ``model``'s (a ModelProto or a file's) history
    names: each step's source DNN (``source_path``, with its external data) and data files
    (calibration, training, test). Empty for a DNN or an unreadable history."""
    from .datasets import DATA_RECORDS, recorded_data_paths
    from .model_io import model_files
    from .spiking.format import META_HISTORY
    if isinstance(model, onnx.ModelProto):
        meta = {p.key: p.value for p in model.metadata_props}
        model_path = None
    else:
        meta, model_path = file_metadata(model), os.fspath(model)
    try:
        history = json.loads(meta.get(META_HISTORY, "[]"))
    except (ValueError, RecursionError):    # damaged: the model's reader says so
        return []
    files: List[str] = []
    for step in history if isinstance(history, list) else []:
        if not isinstance(step, dict):
            continue
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
    meta = {p.key: p.value for p in model.metadata_props} if isinstance(model, onnx.ModelProto) \
        else file_metadata(model)
    return meta.get(META_DATASET) or None
