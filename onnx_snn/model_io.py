"""Reading ONNX files with clear errors, and writing them atomically.

Every model the tool writes goes to a temporary file in the target folder first and is
renamed into place only when complete, so a failure never leaves a half-written file, and
an output path that names the input is refused.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Union

import onnx

from .errors import ModelLoadError, OutputPathError

PathLike = Union[str, os.PathLike]

MIN_OPSET = 7
MAX_OPSET = 21


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def load_model(path: PathLike, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (external data included) or raise :class:`ModelLoadError`."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not an ONNX file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file; export the model again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, truncated protobuf, wrong format
        raise ModelLoadError(f"{path}: not a readable ONNX model ({_short(e)}); "
                             "is the file truncated or of another format?") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found); "
                             "is the file truncated or of another format?")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise ModelLoadError(f"{path}: external data could not be read ({_short(e)}); keep the "
                             "weight files next to the model") from None
    if check:
        check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, where: str) -> None:
    opset = default_opset(model)
    if opset < MIN_OPSET or opset > MAX_OPSET:
        raise ModelLoadError(f"{where}: opset {opset} is outside the supported range "
                             f"{MIN_OPSET}-{MAX_OPSET}; re-export the model at a supported opset")
    try:
        if model.ByteSize() < 2_000_000_000:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        raise ModelLoadError(f"{where}: the ONNX checker rejects this model: {first}") from None
    if not model.graph.input:
        raise ModelLoadError(f"{where}: the model has no inputs")


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def check_output_path(out: PathLike, *inputs: PathLike) -> Path:
    """Refuse to overwrite an input, or to write into a folder that does not exist."""
    out = Path(out)
    if out.is_dir():
        raise OutputPathError(f"{out}: is a folder; give a file name such as {out / 'model.snn.onnx'}")
    if not out.parent.exists() if str(out.parent) else False:
        raise OutputPathError(f"{out}: folder {out.parent} does not exist; create it first")
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        if inp.exists() and out.exists() and os.path.samefile(inp, out):
            raise OutputPathError(f"{out}: is the input file; choose another output path")
        if out.resolve() == inp.resolve():
            raise OutputPathError(f"{out}: is the input file; choose another output path")
    return out


def write_bytes_atomic(data: bytes, path: PathLike) -> None:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes 0600 files: give the result the usual mode (or the replaced file's)
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_model(model: onnx.ModelProto, path: PathLike, *inputs: PathLike) -> Path:
    """Write ``model`` to ``path`` atomically after checking the path against ``inputs``."""
    path = check_output_path(path, *inputs)
    write_bytes_atomic(model.SerializeToString(), path)
    return path


def write_text_atomic(text: str, path: PathLike, *inputs: PathLike) -> Path:
    path = check_output_path(path, *inputs)
    write_bytes_atomic(text.encode("utf-8"), path)
    return path
