"""Reading ONNX files with clear errors, and writing them atomically.

Every file the tool writes goes to a temporary file in the target folder first and is
renamed into place only when complete, so a failure or a signal never leaves a half-written
file; a command that writes several files renames them together at the end (all or none).
Output paths are checked before any work: an input of the command, a folder, device or pipe,
a missing or unwritable folder, or the same file given twice is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional, Set, Union

import numpy as np
import onnx

from .errors import (ModelLoadError, OutputPathError, UnsupportedModelError, UsageError,
                     file_problem)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

MIN_OPSET = 7
MAX_OPSET = 23


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
    return load(path, check).model


@dataclasses.dataclass
class Loaded:
    """A loaded model, the SHA-256 of its file (when asked for) and whether its weights
    were in external-data files."""

    model: onnx.ModelProto
    sha256: Optional[str] = None
    external_data: bool = False


class _ReadBytes:
    """The file's bytes, read once, handed to ``onnx.load`` (which picks the format by the
    name's extension, as for the path itself)."""

    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def read(self) -> bytes:
        return self._data


def load(path: PathLike, check: bool = True, sha256: bool = False) -> Loaded:
    """:func:`load_model`, reading the file once: with ``sha256`` its hash is computed from
    the same bytes, in a thread, while they are parsed (what :func:`sha256_file` gives)."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"a model is a path or an onnx.ModelProto, not {type(path).__name__}")
    path = Path(path)
    why = file_problem(path)   # missing, unreadable, a folder, a pipe or a device
    if why is not None:
        raise ModelLoadError(f"{str(path)[:300]}: "
                             + ("is a folder, not an ONNX file" if path.is_dir() else why))
    if os.stat(path).st_size == 0:
        raise ModelLoadError(f"{path}: empty file; export the model again")
    digest, hasher = None, None
    try:
        with open(path, "rb") as f:
            data = f.read()
        if sha256:
            digest = hashlib.sha256()
            hasher = threading.Thread(target=digest.update, args=(data,), daemon=True)
            hasher.start()   # hashlib releases the GIL: it runs beside the parse
        try:
            model = onnx.load(_ReadBytes(str(path), data), load_external_data=False)
        finally:
            if hasher is not None:
                hasher.join()
    except Exception as e:  # DecodeError, truncated protobuf, wrong format
        raise ModelLoadError(f"{path}: not a readable ONNX model ({_short(e)}); "
                             "is the file truncated or of another format?") from None
    del data
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found); "
                             "is the file truncated or of another format?")
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph))
    if external:
        check_data_file(model, path)
    # the file's own record, not the model's: a model written again (inline, or by another
    # tool) must not carry it to weights it does not describe
    _drop_metadata(model, META_DATA_FILE)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise ModelLoadError(f"{path}: external data could not be read ({_short(e)}); the "
                             "weight files it names must sit beside it, whole (one that is "
                             "shorter than the model says is truncated: copy it again or "
                             "re-export the model)") from None
    if check:
        runnable_nodes(model, str(path))
        check_model(model, str(path))
        check_finite_weights(model, str(path))
    return Loaded(model, digest.hexdigest() if digest is not None else None, external)


def runnable_nodes(model: onnx.ModelProto, where: str) -> None:
    """Put, in place, the top graph's nodes in a topological order and give nodes that share
    a name a suffix, as ``convert`` does for the DNN it reads: onnxruntime runs nodes listed
    out of order, which the ONNX checker refuses, and refuses two nodes of one name, which
    exporters write. A spiking model keeps its names (the format names its nodes; a
    duplicate there is damage, which reading it reports)."""
    from .graph.walk import reorder_nodes, topological_order
    order, _ = topological_order(model.graph)
    if order is not None and order != sorted(order):
        reorder_nodes(model.graph, order)
        log.info("%s: sorted the graph's nodes topologically", where)
    from .spiking.format import is_spiking
    if is_spiking(model):
        return
    renamed = rename_nodes(model)
    if renamed:
        log.info("%s: renamed %d node(s): %s", where, len(renamed), "; ".join(renamed[:8]))


def rename_nodes(model: onnx.ModelProto) -> list:
    """Rename, in place, every node whose name an earlier node already has (onnxruntime
    refuses two nodes of one name; the ONNX checker lets them through) or that the spiking
    format reserves (``pool1``, ``lif0.x``: ``model_`` first), to the first free ``NAME_1``,
    ``NAME_2``, ...; the one scheme of every command (``convert``'s normalization runs it
    on the file as read), so a layer has one name in every report. Returns what it did."""
    from .graph.walk import fresh_name
    from .spiking.format import may_be_reserved
    g = model.graph
    seen: Set[str] = set()
    taken = {n.name for n in g.node} | {x for n in g.node for x in (*n.input, *n.output)} | \
        {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output)}
    moved = []
    for n in g.node:
        if n.name and (n.name in seen or may_be_reserved(n.name)):
            base = n.name if not may_be_reserved(n.name) else f"model_{n.name}"
            old, n.name = n.name, fresh_name(base, taken, may_be_reserved)
            moved.append(f"node '{old}' -> '{n.name}'")
        seen.add(n.name)
    return moved


def check_model(model: onnx.ModelProto, where: str, skeleton=None) -> None:
    """The supported opsets, the ONNX checker (run on the model's skeleton, see
    :mod:`onnx_snn.graph.skeleton`: the same verdict without serializing the weights; models
    of 2 GB or more are not checked, as onnx cannot serialize them) and at least one input.
    ``skeleton``: the model's skeleton made with ``verify=True`` and ``subgraphs=True``, when
    the caller has one."""
    from .graph import skeleton as skel
    opset = default_opset(model)
    if opset < MIN_OPSET or opset > MAX_OPSET:
        from .spiking.format import is_spiking
        if is_spiking(model):    # onnx-snn wrote it at a supported opset: edited or damaged
            raise ModelLoadError(f"{where}: the spiking model's default opset is {opset}, outside "
                                 f"{MIN_OPSET}-{MAX_OPSET}, which onnx-snn never writes; the file "
                                 "is damaged or was edited, convert it again")
        raise UnsupportedModelError(f"{where}: opset {opset} is outside the supported range "
                                    f"{MIN_OPSET}-{MAX_OPSET}; re-export the model at a supported "
                                    "opset")
    try:
        sk = skeleton or skel.split(model, subgraphs=True, verify=True)
        if sk.byte_size() < skel.MAX_PROTOBUF:
            onnx.checker.check_model(sk.model)
    except onnx.checker.ValidationError as e:
        text = " ".join(str(e).split()) or "validation failed"   # onnx's lines, as one
        if len(text) > 600:
            text = text[:600] + " ..."
        shapeless = [f"{kind} '{vi.name}'" for kind, vis in (("input", model.graph.input),
                                                             ("output", model.graph.output))
                     for vi in vis if vi.type.HasField("tensor_type")
                     and not vi.type.tensor_type.HasField("shape")]
        if "shape" in text and shapeless:
            text += (f" ({', '.join(shapeless[:4])}{' ...' if len(shapeless) > 4 else ''} "
                     "declares a type without a shape; give each a shape, its unknown dims "
                     "symbolic, e.g. onnx.helper.make_tensor_value_info(name, elem_type, "
                     "['N', 1, 28, 28]))")
        raise ModelLoadError(f"{where}: the ONNX checker rejects this model: {text}") from None
    if not model.graph.input:
        raise ModelLoadError(f"{where}: the model has no inputs")


_FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.BFLOAT16: "bfloat16"}
#: layers whose constant inputs are weights, where an infinity is damage, not a bound
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"}
#: ops a weight may pass through on its way to its layer (a float16 weight Cast to float)
_WEIGHT_PATH_OPS = {"Cast", "CastLike", "Transpose", "Identity", "Reshape", "Squeeze", "Unsqueeze",
                    "Flatten"}


def _float_values(t: onnx.TensorProto) -> Optional[np.ndarray]:
    """A float tensor's values as an array over its bytes (no copy of the data beyond the
    one protobuf makes reading ``raw_data``); None for other types and unloaded external data."""
    dtype = _FLOAT_TYPES.get(t.data_type)
    if dtype is None or t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    raw = t.raw_data                      # read once: each access copies the bytes
    if dtype == "bfloat16":               # the upper half of a float32
        bits = np.frombuffer(raw, np.uint16) if raw else np.asarray(t.int32_data, np.uint16)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if raw:
        return np.frombuffer(raw, dtype, count=len(raw) // np.dtype(dtype).itemsize)
    if t.data_type == onnx.TensorProto.FLOAT16:      # stored as bits in int32_data
        return np.asarray(t.int32_data, np.uint16).view(np.float16)
    return np.asarray(t.double_data if t.data_type == onnx.TensorProto.DOUBLE else t.float_data, dtype)


def _text(value) -> str:
    """A metadata key or value as text: protobuf hands invalid UTF-8 over as bytes, which are
    decoded with U+FFFD in place of the damage (a JSON value then fails to parse, and is
    reported as damaged metadata, not as a traceback)."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def model_proto(model):
    """The ModelProto a SpikingModel that ``convert()`` returned holds (not yet saved), else
    ``model`` as it is (a path or a ModelProto)."""
    if hasattr(model, "model") and isinstance(getattr(model, "model"), onnx.ModelProto):
        return model.model
    return model


def metadata_dict(model: onnx.ModelProto) -> dict:
    """``model``'s ``metadata_props`` as a dict of text (see :func:`_text`)."""
    return {_text(p.key): _text(p.value) for p in model.metadata_props}


def check_finite_weights(model: onnx.ModelProto, where: str,
                         only: Optional[Set[str]] = None) -> None:
    """A float weight (float32/64/16, bfloat16) that holds NaN, or an infinity read by a
    Conv/Gemm/MatMul/BatchNormalization (directly or through a Cast, Transpose, Reshape...),
    is damage (a diverged training, a broken export): refused naming the tensor and its layer,
    before any work computes NaN from it (and blames the data, or reports a top-1 of NaN
    logits). An infinity elsewhere (a clip bound) is kept. External data not loaded into the
    model (an API caller's ``load_external_data=False``) is not read. ``only``: check just
    the tensors of these names (what the part of a graph kept by ``--outputs`` reads)."""
    from .graph.walk import subgraphs
    graphs = subgraphs(model.graph)         # a spiking model's weights sit in its Loop body
    tensors = [(t.name, t) for g in graphs for t in g.initializer] + [
        (n.output[0], a.t) for g in graphs for n in g.node if n.op_type == "Constant" and n.output
        for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    readers: dict = {}
    for g in graphs:
        for n in g.node:
            for i in n.input:
                readers.setdefault(i, []).append(n)

    def weight_layer(name: str):
        """The weight layer reading ``name``, through pass-through ops (else None)."""
        todo, seen = [name], set()
        while todo:
            x = todo.pop()
            for n in readers.get(x, []):
                if n.op_type in _WEIGHT_OPS:
                    return n
                if n.op_type in _WEIGHT_PATH_OPS and n.output and n.output[0] not in seen:
                    seen.add(n.output[0])
                    todo.append(n.output[0])
        return None

    for name, t in tensors:
        if only is not None and name not in only:
            continue
        v = _float_values(t)
        if v is None or v.size == 0:
            continue
        bad, reader = None, None
        if np.isnan(v).any():
            bad = f"{int(np.isnan(v).sum())} NaN value(s)"
            reader = weight_layer(name) or next(iter(readers.get(name, [])), None)
        elif not np.isfinite(v).all():
            reader = weight_layer(name)
            if reader is not None:
                bad = f"{int((~np.isfinite(v)).sum())} infinite value(s)"
        if bad:
            layer = f" (read by {reader.op_type} '{reader.name or reader.output[0]}')" \
                if reader is not None else ""
            raise ModelLoadError(f"{where}: weight '{name}'{layer} holds {bad}: the model is "
                                 "damaged (a diverged training or a broken export); re-export it "
                                 "from a checkpoint with finite weights")


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def model_files(path: PathLike) -> list:
    """The files a model load reads: the model and its external-data files (best effort: a
    model that cannot be parsed lists itself only; loading it reports the error)."""
    path = Path(path)
    files = [path]
    try:
        if not path.is_file():
            return files
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return files
    seen = set()
    for t in _tensors(m.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and loc not in seen:
                seen.add(loc)
                files.append(path.parent / loc)
    return files


def _tensors(graph: onnx.GraphProto):
    """Every tensor of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, ValueError):       # (a NUL byte in a path: no file is it)
        return False


def _temp_prefix(name: str) -> str:
    """The prefix of a temporary file beside ``name`` (short enough for any file name)."""
    # os.fsencode: a name with bytes that are not UTF-8 (kept as surrogates) has its own
    return "." + (name if len(os.fsencode(name)) <= 120 else name[:60]) + "."


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(str(folder), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_output_path(out: PathLike, *inputs: PathLike, probe: bool = True,
                      example: str = "model.snn.onnx") -> Path:
    """Check one output path before any work; return the path to write (a symbolic link's
    target, so that the link stays a link).

    Refused (:class:`OutputPathError`): an empty path; an existing folder, device, pipe or
    socket (only regular files are replaced); a folder that is missing, not a folder, or
    where a file cannot be created (``probe``: a temporary file is created and removed, which
    catches read-only and virtual file systems such as /proc); a name too long for the file
    system; a path that is one of ``inputs`` (by name, through links, or as a hard link).
    ``example``: the file name a folder given as ``out`` is told to hold.
    """
    if out is None or str(out) == "":
        raise OutputPathError("an output path is empty; give a file name")
    if not isinstance(out, (str, os.PathLike)):
        raise UsageError(f"an output path must be a str or path, not {type(out).__name__} ({out!r})")
    if str(out) == "-" or str(out).startswith(("/dev/std", "/dev/fd/", "/proc/self/fd/")):
        # outputs are written atomically (a temporary file renamed over the path): standard
        # output is not a file that can be replaced, and '-' would be a file named '-'
        raise OutputPathError(_stream_message(str(out), None, example))
    if any(ord(c) < 32 or ord(c) == 127 for c in os.fsdecode(os.fspath(out))):
        # a newline in a path broke the one-line messages ("wrote new\nline.onnx") and every
        # script that reads one path per line
        raise OutputPathError(f"{os.fspath(out)!r}: the path holds a control character (a "
                              "newline, tab, ...); choose a name without one")
    if str(out).endswith(("/", os.sep)):     # Path() drops the slash: "new.onnx/" wrote new.onnx
        bare = str(out).rstrip("/" + os.sep)
        # an existing folder (or a name that is no file name) gets a file inside it suggested
        such = (str(Path(bare) / example) if not bare or os.path.isdir(bare)
                or not Path(bare).suffix else bare)
        raise OutputPathError(f"{out}: names a folder (it ends with a slash); give a file "
                              f"name, such as {such}")
    try:
        return _check_output_path(Path(out), inputs, probe, example)
    except OSError as e:   # a name too long, a loop of links, ...
        raise OutputPathError(f"{out}: cannot be used as an output ({e.strerror or e})") from None


def _check_output_path(given: Path, inputs, probe: bool, example: str = "model.snn.onnx") -> Path:
    if len(os.fsencode(given.name)) > 255:
        raise OutputPathError(f"{given}: the file name is longer than file systems allow "
                              "(255 bytes)")
    stream = _stream_kind(given)   # through links: /proc/<pid>/fd/N names a pipe by no file
    if stream is not None:
        raise OutputPathError(_stream_message(str(given), stream, example))
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    shown = str(given) if target == given else f"{given} (a link to {target})"
    if target.exists() or target.is_symlink():
        try:
            st = os.stat(target)
        except OSError as e:
            raise OutputPathError(f"{shown}: cannot be checked ({e.strerror})") from None
        if stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{shown}: is a folder; give a file name such as "
                                  f"{given / example}")
        if not stat.S_ISREG(st.st_mode):
            raise OutputPathError(f"{shown}: is not a regular file (a device, pipe or socket); "
                                  "outputs are regular files: choose a file path")
        locked = _locked(target) if probe else None
        if locked:   # renaming over it fails: said now, not after the work
            raise OutputPathError(f"{shown}: exists and is {locked} (chattr), so it cannot be "
                                  f"replaced; choose another path, or `chattr -{locked[0]}` it")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.exists():
        # a path under a regular file reports "not a folder", else "does not exist"
        up = folder
        while not up.exists() and up != up.parent:
            up = up.parent
        if up.exists() and not up.is_dir():
            raise OutputPathError(f"{shown}: {up} is a file, not a folder")
        raise OutputPathError(f"{shown}: folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise OutputPathError(f"{shown}: {folder} is a file, not a folder")
    if len(os.fsencode(target.name)) > _name_max(folder):
        raise OutputPathError(f"{shown}: the file name is longer than this file system allows "
                              f"({_name_max(folder)} bytes)")
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        if _same_file(Path(inp), target) or _same_file(Path(inp), given):
            raise OutputPathError(f"{shown}: is an input of this command ({inp}); choose "
                                  "another output path")

    if _image_name(target):
        # an image's name where the command reads images (their folder, or a folder under
        # it: a class folder's subfolders are read too): the next read would take it for one
        # (eval --json DATA/c0/x.png was written there, and the next eval failed on it); a
        # class-folder dataset's root, whose loose files are not read, is fine
        folders = {os.path.realpath(Path(i).parent) for i in inputs
                   if i is not None and str(i) and _image_name(Path(i))}
        held = next((f for f in folders if _inside(target.parent, Path(f))), None)
        if held is not None:
            raise OutputPathError(f"{shown}: is an image's name in {held}, a folder of the "
                                  "images this command reads (the next read would take the "
                                  "file for one of them); choose another name or folder")
    if probe:
        try:
            with _signals_deferred():
                fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp",
                                           dir=folder)
                os.close(fd)
                os.unlink(tmp)
        except OSError as e:
            raise OutputPathError(f"{shown}: cannot write in folder {folder} "
                                  f"({e.strerror or e}); choose another folder") from None
    return target


def _image_name(path: Path) -> bool:
    """Whether a folder of images would read ``path`` as one (by its extension)."""
    from .image_folder import IMAGE_EXTENSIONS
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies under ``folder`` (through links: both resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def _stream_kind(path: Path) -> Optional[str]:
    """What ``path`` resolves to (links followed, /proc's fd links included) when that is a
    stream, not a file: "a pipe", "a socket" or "a terminal or other character device";
    None for anything else (missing, a regular file, a folder, a block device)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a terminal or other character device"
    return None


def _stream_message(out: str, kind: Optional[str], example: str) -> str:
    """The refusal of an output that is standard output or a stream (``kind``: what the
    path resolves to, None when it is refused by its name: '-', /dev/stdout, /dev/fd/N)."""
    what = f" is {kind}, not a regular file:" if kind else ""
    return (f"{out}:{what} outputs are files written whole (never standard output or a "
            f"stream); give a file path such as {example}, and read it from there "
            "(e.g. cat FILE)")


#: Linux's FS_IOC_GETFLAGS and the inode flags under which a file cannot be renamed over
_FS_IOC_GETFLAGS = 0x80086601
_LOCK_FLAGS = ((0x10, "immutable"), (0x20, "append-only"))   # FS_IMMUTABLE_FL, FS_APPEND_FL


def _locked(path: Path) -> Optional[str]:
    """"immutable" or "append-only" when the file's inode flags (chattr +i / +a) forbid
    replacing it, else None (also where the flags cannot be read: another system or file
    system). Read from a read-only descriptor: the file is not touched."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (ImportError, OSError):
        return None
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf)
        flags = int.from_bytes(buf, sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(fd)
    return next((name for bit, name in _LOCK_FLAGS if flags & bit), None)


#: the file name a folder given as an output is told to hold, by option (else a model's)
_EXAMPLE_NAMES = {"--plot": "figure.png", "--json": "result.json", "--report": "report.json",
                  "--checkpoint": "run.ckpt.pt"}


def check_outputs(outputs, inputs=()) -> dict:
    """Check every output of a command before the work (see :func:`check_output_path`):
    ``outputs`` are (path or None, what) pairs, ``inputs`` every file the command reads.
    Also refuses two outputs that are the same file. Returns {given path: path to write}."""
    seen = {}
    checked = {}
    for out, what in outputs:
        if out is None:
            continue
        target = check_output_path(out, *inputs,
                                   example=_EXAMPLE_NAMES.get(str(what), "model.snn.onnx"))
        key = os.path.realpath(target)
        if key in seen:
            raise OutputPathError(f"{out}: given twice ({seen[key]} and {what}); choose distinct "
                                  "files")
        seen[key] = what
        checked[str(out)] = target
    return checked


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM until the block ends (creating a temporary file and noting
    it, or renaming all outputs, is never cut in the middle). Blocking them in this thread
    is not enough where other threads run (torch's, matplotlib's): the kernel hands the
    signal to one of those, and Python then runs its handler in this thread anyway, at the
    next bytecode. So the handlers themselves are swapped for one that notes the signal, which
    is delivered to the original handler when the block ends. Yields the list of the signals
    noted so far (None where nothing is held: another thread, or a block inside one)."""
    if threading.current_thread() is not threading.main_thread() or _HELD["depth"]:
        yield None
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    pending: list = []
    original = {}
    _HELD["depth"] += 1
    try:
        for sig in sigs:
            original[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    except (ValueError, OSError):      # not the main interpreter: hold nothing
        for sig, h in original.items():
            signal.signal(sig, h)
        original = {}
    mask = getattr(signal, "pthread_sigmask", None)
    old = mask(signal.SIG_BLOCK, set(sigs)) if mask is not None else None
    try:
        yield pending
    finally:
        _HELD["depth"] -= 1
        try:
            if mask is not None:       # (may run another signal's handler, which may raise)
                mask(signal.SIG_SETMASK, old)
        finally:
            for sig, h in original.items():    # restored whatever happens
                signal.signal(sig, h if h is not None else signal.SIG_DFL)
        raised = None
        for sig in dict.fromkeys(pending):        # each held signal once, in order
            h = original.get(sig)
            try:
                if callable(h):
                    h(sig, None)
                elif h in (signal.SIG_DFL, None):
                    signal.raise_signal(sig)
            except BaseException as e:   # the others still run; the last one's stands
                raised = e
        if raised is not None:
            raise raised


#: how deep _signals_deferred blocks are nested (the outermost holds the signals)
_HELD = {"depth": 0}
#: every file :func:`write_all_atomic` put in place in this process, in order (the command
#: line clears it per command: a signal after the renames says what is complete)
WRITTEN: List[str] = []
#: set while a command line command runs (cli.main): a failed write then names the files the
#: command wrote before it (in the Python API WRITTEN holds every call's, unrelated)
IN_COMMAND = {"active": False}


def _new_file_mode(path: Path) -> int:
    """mkstemp makes 0600 files: give the result the usual mode (or the replaced file's)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_all_atomic(items) -> None:
    """Write several files all or none: each to a temporary file beside it, then rename them
    all at the end (signals held during the renames). On any failure or signal every
    temporary file is removed and no target is touched. ``items``: (path, data) pairs, the
    data bytes or an iterable of bytes (written in turn, never held whole)."""
    temps = []   # (temporary path, target)
    path, renamed = None, []
    earlier = list(dict.fromkeys(WRITTEN)) if IN_COMMAND["active"] else []   # (the command's)
    try:
        for path, data in items:
            path = Path(path)
            folder = path.parent if str(path.parent) else Path(".")
            mode = _new_file_mode(path)
            with _signals_deferred():
                fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp",
                                           dir=folder)
                temps.append((tmp, path))
                f = os.fdopen(fd, "wb")
            with f:
                os.chmod(tmp, mode)
                if isinstance(data, (bytes, bytearray, memoryview)):
                    f.write(data)
                else:   # an iterable of chunks (a model's external-data file)
                    for chunk in data:
                        f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        with _signals_deferred():
            while temps:
                tmp, path = temps[0]
                os.replace(tmp, path)
                renamed.append(str(path))
                WRITTEN.append(str(path))
                temps.pop(0)
    except BaseException as e:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, OutputPathError):
            # a full disk, a quota, an immutable or vanished target: the user's to fix, and
            # nothing was written (outputs checked before the work cannot foresee these)
            why = e.strerror or str(e)
            earlier = [p for p in earlier if p not in (str(path), *renamed)]
            done = (f"only {', '.join(renamed)} was written" if renamed else
                    "nothing more was written" if earlier else "nothing was written")
            if earlier:       # (finetune writes its model at each best epoch, then --json)
                done += (f" (written before it, complete: {', '.join(earlier[-4:])}"
                         f"{' and more' if len(earlier) > 4 else ''})")
            raise OutputPathError(f"{path}: cannot write it ({why}); {done}: free space or "
                                  "choose another path") from None
        raise


def write_bytes_atomic(data: bytes, path: PathLike) -> None:
    write_all_atomic([(path, data)])


def external_data_path(path: PathLike) -> Path:
    """Where a model saved at ``path`` with external data keeps its weights: ``<name>.data``
    beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def model_items(model: onnx.ModelProto, path: PathLike, external: Optional[bool] = None,
                avoid=()) -> list:
    """The (path, data) items that hold ``model`` saved at ``path``, for
    :func:`write_all_atomic`: the model file alone, or with ``external`` (default: when the
    model is 2 GB or more, which one protobuf message cannot hold) the model file and its
    external-data file ``<name>.data`` (see :func:`external_data_path`), whose references
    are relative to the model's folder; that file's path is checked like the model's
    (:func:`check_output_path`) against ``avoid`` (the inputs) and the model file.
    ``model`` is not changed."""
    from .graph import skeleton
    if external is None:
        external = skeleton.byte_size(model) >= skeleton.MAX_PROTOBUF
    if not external:
        return [(path, model.SerializeToString())]
    data_path = check_output_path(external_data_path(path), *avoid, path)
    check_data_file_owner(data_path, Path(path))
    head, tensors = skeleton.external_data(model, data_path.name)
    digest = hashlib.sha256()
    for chunk in skeleton.external_chunks(tensors):
        digest.update(chunk)
    m = onnx.ModelProto()
    m.ParseFromString(head)              # (the skeleton: no weights in it)
    record = {"location": data_path.name, "layout": _layout_digest(m),
              "sha256": digest.hexdigest()}
    _drop_metadata(m, META_DATA_FILE)
    m.metadata_props.add(key=META_DATA_FILE, value=json.dumps(record))
    return [(path, m.SerializeToString()), (data_path, skeleton.external_chunks(tensors))]


#: the metadata of a model written with external data (:func:`model_items`): the weights
#: file's name, a digest of the references to it (tensor, offset, length) and its SHA-256,
#: so that a weights file of another run beside the model is told (:func:`check_data_file`)
META_DATA_FILE = "onnx_snn.data_file"


def _drop_metadata(model: onnx.ModelProto, key: str) -> None:
    """``model`` without its ``key`` metadata entries (the others kept, in their order)."""
    if any(p.key == key for p in model.metadata_props):
        kept = [(p.key, p.value) for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        for k, v in kept:
            model.metadata_props.add(key=k, value=v)


def _layout_digest(model: onnx.ModelProto) -> str:
    """A digest of every external-data reference of ``model`` (name, location, offset,
    length, in order): the same for a model written the same way, another once a tool
    rewrote the file (onnx.save_model lays the data out its own way)."""
    refs = []
    for t in _tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            refs.append([t.name] + [f"{e.key}={e.value}" for e in t.external_data])
    return hashlib.sha256(json.dumps(refs).encode()).hexdigest()[:16]


def check_data_file(model: onnx.ModelProto, path: Path) -> None:
    """The weights file beside a model written by :func:`model_items` is the one written
    with it: a file of another run (a conversion's ``.data`` copied beside a newer model of
    the same network ran silently, 90.0 % where the model gave 91.5 %) is refused
    (:class:`ModelLoadError`). Checked only while the model's references are the ones it was
    written with (a model another tool saved again lays its data out anew)."""
    text = metadata_dict(model).get(META_DATA_FILE)
    try:
        record = json.loads(text) if text is not None else None
        location, layout, want = record["location"], record["layout"], record["sha256"]
    except (ValueError, TypeError, KeyError):
        return
    if not isinstance(location, str) or layout != _layout_digest(model):
        return
    data = path.parent / location
    try:
        got = sha256_file(data)
    except OSError:
        return                   # (a missing file: loading its data says so)
    if got != want:
        raise ModelLoadError(f"{data}: is not the weights file {path.name} was written with "
                             "(its SHA-256 differs): the two files come from different runs; "
                             "keep each model with its own .data file, or write the model again")


def check_data_file_owner(data_path: Path, path: Path) -> None:
    """An existing ``data_path`` is replaced only as the weights file of the model at
    ``path`` (an earlier run of the same output): one that model does not read may hold
    another model's weights (which the write would corrupt, silently where the sizes
    match), so it is refused (:class:`OutputPathError`), as is a ``data_path`` no file
    system can hold (its name 4 bytes longer than the model's)."""
    if len(os.fsencode(data_path.name)) > 255:
        raise OutputPathError(f"{data_path}: the weights file of {path.name} (its weights are "
                              "kept in external data, <name>.data) would have a name longer "
                              "than file systems allow (255 bytes); give a shorter output name")
    try:
        if not data_path.exists():
            return
    except OSError as e:       # a loop of links, a name this file system refuses, ...
        raise OutputPathError(f"{data_path}: cannot be used as the weights file of {path.name} "
                              f"({e.strerror or e}); give another output name") from None
    own = {os.path.realpath(f) for f in model_files(path)[1:]}   # its external-data files
    if os.path.realpath(data_path) in own:
        return
    owner = (f"{path} does not read it" if path.exists() else f"{path} does not exist")
    raise OutputPathError(f"{data_path}: exists and is not this output's weights file ({owner}); "
                          "it may hold another model's weights, which writing the weights of "
                          f"{path.name} there would corrupt: move or delete it, or give another "
                          "output name")


def save_model(model: onnx.ModelProto, path: PathLike, *inputs: PathLike,
               external: Optional[bool] = None) -> Path:
    """Write ``model`` to ``path`` atomically after checking the path against ``inputs``.

    ``external``: the weights go to ``<name>.data`` beside the model (see
    :func:`model_items`; by default when the model is 2 GB or more); both files are written
    together, all or none."""
    path = check_output_path(path, *inputs)
    write_all_atomic(model_items(model, path, external, avoid=inputs))
    return path


def write_text_atomic(text: str, path: PathLike, *inputs: PathLike) -> Path:
    path = check_output_path(path, *inputs)
    write_bytes_atomic(text.encode("utf-8"), path)
    return path
