"""Real datasets for calibration and evaluation, torch-free.

Names a user can pass as ``--data`` / ``--calib``:

* ``fashion-mnist`` (test split) or ``fashion-mnist:train`` — IDX ``.gz`` files looked up in
  ``--data-dir``, ``$ONNX_SNN_DATA``, then ``/usr/share/datasets/fashion-mnist/`` (the
  Debian package ``dataset-fashion-mnist``);
* ``mnist`` (``:train`` for the training split) — the same four IDX files (the same names),
  in an ``mnist/`` or torchvision's ``MNIST/raw/`` folder of ``--data-dir`` or
  ``$ONNX_SNN_DATA``, or in the ``--data-dir`` folder itself;
* ``cifar10`` / ``cifar100`` (``:train`` for the training split) — the standard python-pickle
  folders ``cifar-10-batches-py`` / ``cifar-100-python``;
* a path to a ``.npy`` (inputs only) or ``.npz`` (``x``/``y`` or ``data``/``labels``) file.

Images come back as float32 NCHW arrays scaled to [0, 1]; :func:`apply_preprocess` applies a
model's mean/std. Arrays from ``.npy``/``.npz`` files are returned as they are (taken as
already preprocessed). Inputs, labels and recorded preprocessing are checked here
(:func:`check_inputs`, :func:`check_labels`, :func:`check_preprocess`): a bad one raises
:class:`DataError` (or :class:`ModelLoadError` for a model's damaged metadata).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError, ModelLoadError, file_problem
from .values import is_real

#: what a named dataset is fed as when the model records no preprocessing
RAW_PIXELS = "raw [0, 1] pixels"

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = (
    "install it with `sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or put "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist into a "
    "folder and pass --data-dir or set ONNX_SNN_DATA"
)
MNIST_HINT = (
    "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz (from https://ossci-datasets.s3.amazonaws.com/mnist/, a mirror "
    "of Yann LeCun's MNIST page) into a folder and pass --data-dir or set ONNX_SNN_DATA, or "
    "pass --download on a machine with internet"
)
CIFAR_HINT = (
    "download and unpack https://www.cs.toronto.edu/~kriz/{archive} into a folder and pass "
    "--data-dir (or set ONNX_SNN_DATA), or pass --download on a machine with internet"
)

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


#: .npz array names taken as the inputs (of a one-input model) and as the labels
INPUT_KEYS = ("x", "data", "images", "inputs")
LABEL_KEYS = ("y", "labels", "targets", "label", "target")
#: a .npz that holds both splits, as Keras's datasets save them (mnist.npz): split -> (x, y)
SPLIT_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


@dataclass
class Dataset:
    """Inputs ``x`` (float32, NCHW) and integer labels ``y`` (None for unlabeled arrays)."""

    name: str
    x: np.ndarray
    y: Optional[np.ndarray]
    preprocessed: bool = False  # True when x already carries the model's normalization
    preprocess: Optional[dict] = None  # {"mean", "std"} applied to a named dataset's images
    source_dtype: Optional[str] = None  # the file's array type, when x was converted from it
    #: the class names by label, where the data named them and the model did not (an image
    #: folder labelled by its folders' sorted names: image_folder.FolderPlan.class_names)
    class_names: Optional[List[str]] = None

    def __len__(self) -> int:
        if isinstance(self.x, dict):
            return int(next(iter(self.x.values())).shape[0]) if self.x else 0
        return int(self.x.shape[0])

    def rows(self, n: Optional[int], seed: Optional[int] = None) -> np.ndarray:
        """The rows :meth:`take` keeps (all of them where ``n`` is None or not fewer)."""
        if n is None or n >= len(self):
            return np.arange(len(self))
        return take_indices(len(self), n, seed)

    def take(self, n: Optional[int], seed: Optional[int] = None) -> "Dataset":
        """The first ``n`` samples, or ``n`` random ones when ``seed`` is given."""
        if n is None or n >= len(self):
            return self
        idx = self.rows(n, seed)
        x = {k: v[idx] for k, v in self.x.items()} if isinstance(self.x, dict) else self.x[idx]
        return Dataset(self.name, x, None if self.y is None else self.y[idx],
                       self.preprocessed, self.preprocess, self.source_dtype, self.class_names)


def _float32(x):
    """A numeric array as float32 (no copy where it is one); anything else as it is."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "fiub" and x.dtype != np.float32:
        return x.astype(np.float32)
    return x


def as_float32(ds: "Dataset") -> "Dataset":
    """``ds`` with float32 inputs (a file's other type, kept until its samples were taken)."""
    x = {k: _float32(v) for k, v in ds.x.items()} if isinstance(ds.x, dict) else _float32(ds.x)
    return ds if x is ds.x else dataclasses.replace(ds, x=x)


def model_classes(model) -> Optional[List[str]]:
    """A model's class names (its ``onnx_snn.classes`` metadata, a JSON list of strings), or
    None where it records none (or something else)."""
    from .model_io import metadata_dict
    from .spiking.format import META_CLASSES
    text = metadata_dict(model).get(META_CLASSES)
    try:
        names = json.loads(text) if text is not None else None
    except ValueError:
        names = text
    if names is None:
        return None
    ok = isinstance(names, list) and names and all(isinstance(n, str) for n in names)
    scores = _class_count(model) if ok else None
    if ok and scores is not None and scores != len(names) and scores > 1:
        why = f"{len(names)} names for its {scores} class scores"
    elif not ok:
        why = "not a JSON list of names"
    else:
        return names
    if text not in _CLASS_WARNINGS:       # (read several times per command: said once)
        _CLASS_WARNINGS.add(text)
        logging.getLogger("onnx_snn").warning(
            "the model's class names (%s metadata) are %s: ignored, folders and labels are "
            "read by their order; fix or remove the metadata", META_CLASSES, why)
    return None


#: the class-name records already warned about (:func:`model_classes`)
_CLASS_WARNINGS: set = set()


def folder_classes(model):
    """What labels a folder of class folders for ``model``: its class names
    (:func:`model_classes`), else the number of scores its output has (None: neither)."""
    return model_classes(model) or _class_count(model)


def _class_count(model) -> Optional[int]:
    """The number of class scores of a model's first output where its graph gives it (the
    last axis of a [N, C] output), else None."""
    try:
        out = model.graph.output[0]
        dims = out.type.tensor_type.shape.dim
    except (AttributeError, IndexError):
        return None
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        return None
    return int(dims[1].dim_value)


def take_indices(total: int, n: int, seed: Optional[int] = None) -> np.ndarray:
    """Which ``n`` of ``total`` samples :meth:`Dataset.take` keeps: the first ``n``, or ``n``
    random ones (sorted) when ``seed`` is given."""
    if seed is None:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def _no_folder(path) -> str:
    """What a path given as a folder is, when it is none."""
    return "a file, not a folder" if Path(path).exists() else "no such folder"


def search_dirs(data_dir: Optional[os.PathLike] = None) -> list:
    """Where datasets are looked for: a given ``data_dir`` alone (it must exist: a folder
    named by the user is not silently passed over for another copy), else
    ``$ONNX_SNN_DATA``."""
    dirs = []
    if data_dir:
        if not Path(data_dir).is_dir():
            raise DataError(f"--data-dir {data_dir}: {_no_folder(data_dir)}; give the folder "
                            "that holds the datasets")
        return [Path(data_dir)]
    env = os.environ.get("ONNX_SNN_DATA")
    if env:
        if not Path(env).is_dir():     # (as --data-dir: not passed over for another copy)
            raise DataError(f"$ONNX_SNN_DATA {env}: {_no_folder(env)}; set it to the folder that "
                            "holds the datasets, or unset it")
        dirs.append(Path(env))
    return dirs


#: the named datasets' numbers of classes (their files' labels are checked against them)
DATASET_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}


def _check_dataset_labels(y: np.ndarray, name: str, path: Path) -> None:
    """A named dataset's labels within its classes, else a DataError naming the file (it was
    blamed on the split, 'cifar10:test: label 10 is out of range')."""
    classes = DATASET_CLASSES[name]
    if y.size and int(y.max()) >= classes:
        raise DataError(f"{path}: label {int(y.max())} is out of range for {name} (classes "
                        f"0..{classes - 1}): the file is damaged or another dataset's; "
                        "download it again")


# ---------------------------------------------------------------- IDX (Fashion-MNIST)

#: the largest IDX data read (Fashion-MNIST's training images are 47 MB): a header that
#: claims more is a damaged file, not a reason to decompress without end
MAX_IDX_BYTES = 1 << 32


def read_idx(path: os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array. The data is read up
    to the size its header states (plus one byte, to tell a longer file): a small .gz that
    inflates without end (a "gzip bomb") is refused after that many bytes."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(f"{path}: {problem}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: not an IDX file (too short)")
            zero, dtype_code, ndim = struct.unpack(">HBB", head)
            dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
            if zero != 0 or dtype_code not in dtypes:
                raise DataError(f"{path}: not an IDX file (bad magic number)")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX file (its header names {ndim} dimensions, "
                                f"{4 + 4 * ndim} bytes, but the file has {4 + len(dims)}); "
                                "download it again")
            shape = struct.unpack(">" + "I" * ndim, dims)
            dtype = np.dtype(dtypes[dtype_code])
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            shown = list(shape) if ndim <= 8 else f"{ndim} dimensions"
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path}: damaged IDX file (its header states shape {shown}: "
                                f"{expected:,} bytes, above {MAX_IDX_BYTES:,}, MAX_IDX_BYTES); "
                                "download it again")
            data = f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({e}); download it again") from None
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "damaged"
        got = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        kind = f"{dtype.newbyteorder('=').name} (type byte 0x{dtype_code:02X})"
        raise DataError(f"{path}: {what} IDX file ({got} bytes of data for shape {shown} of "
                        f"{kind}: {expected}); download it again")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


#: the IDX datasets: name -> (title, sub-folders of a data folder, hint)
_IDX = {
    "fashion-mnist": ("Fashion-MNIST", ("fashion-mnist", "FashionMNIST/raw"), FASHION_MNIST_HINT),
    "mnist": ("MNIST", ("mnist", "MNIST/raw"), MNIST_HINT),
}


#: the IDX datasets' mean pixel (0-1; their train and test splits within 0.002 of it): the two
#: sets of files have the same names, so a folder of one read as the other is told by it
_IDX_MEAN_PIXEL = {"fashion-mnist": 0.286, "mnist": 0.131}


def _check_idx_contents(images: np.ndarray, name: str, folder: Path) -> None:
    """A warning when ``images`` (uint8, a whole split) look like the other IDX dataset's:
    `--data mnist --data-dir` a Fashion-MNIST folder was read and scored as MNIST."""
    if len(images) < 100:
        return
    mean = float(images.mean(dtype=np.float64)) / 255.0
    own = _IDX_MEAN_PIXEL[name]
    other, theirs = next((k, v) for k, v in _IDX_MEAN_PIXEL.items() if k != name)
    if abs(mean - theirs) < 0.02 < abs(mean - own):
        logging.getLogger("onnx_snn").warning(
            "%s: these images look like %s's, not %s's (mean pixel %.3f; %s's is %.3f, %s's "
            "%.3f): both datasets' files have the same names; use --data %s, or the folder of "
            "%s", folder, _IDX[other][0], _IDX[name][0], mean, _IDX[other][0], theirs,
            _IDX[name][0], own, other, _IDX[name][0])


def _find_idx(name: str, data_dir, download: bool = False) -> Path:
    title, subs, hint = _IDX[name]
    system = FASHION_MNIST_SYSTEM_DIR if name == "fashion-mnist" else None   # Debian's package
    dirs = search_dirs(data_dir)
    # the dataset's own folders first: both datasets' files have the same names, so a bare
    # folder is taken for MNIST only when the user named it (--data-dir), and for
    # Fashion-MNIST (where it always was) after them
    candidates = [d / sub for d in dirs for sub in subs]
    candidates += dirs if (data_dir or name == "fashion-mnist") else []
    if not data_dir and system is not None:     # a folder the user named is the only place looked
        candidates.append(system)
    for d in candidates:
        if (d / "t10k-images-idx3-ubyte.gz").is_file() or (d / "t10k-images-idx3-ubyte").is_file():
            return d
    if download:
        return _download_idx(name, Path(data_dir or os.environ.get("ONNX_SNN_DATA") or
                                        Path.home() / ".cache" / "onnx-snn"))
    looked = ", ".join(str(c) for c in candidates) or "no folder given"
    raise DataError(f"{title} not found (looked in {looked}); {hint}")


def _find_fashion_mnist(data_dir) -> Path:
    return _find_idx("fashion-mnist", data_dir)


def _idx_file(folder: Path, stem: str, hint: str = FASHION_MNIST_HINT) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing {stem}.gz; {hint}")


def load_idx_dataset(name: str, split: str = "test", data_dir=None, download: bool = False) -> Dataset:
    """An IDX dataset (``fashion-mnist``, ``mnist``): [N, 1, 28, 28] images in [0, 1]."""
    folder = _find_idx(name, data_dir, download)
    prefix = "t10k" if split == "test" else "train"
    hint = _IDX[name][2]
    images_file = _idx_file(folder, f"{prefix}-images-idx3-ubyte", hint)
    labels_file = _idx_file(folder, f"{prefix}-labels-idx1-ubyte", hint)
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{folder}: the images ({images_file.name}, {list(images.shape)}) and "
                        f"labels ({labels_file.name}, {list(labels.shape)}) do not match: one "
                        f"of them is another split's or damaged; {hint}")
    if images.dtype != np.uint8:
        raise DataError(f"{folder}: {prefix} images of type {images.dtype}; {name}'s IDX files "
                        "hold bytes (0-255)")
    _check_idx_contents(images, name, folder)
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    y = check_labels(labels, len(labels), str(labels_file))
    _check_dataset_labels(y, name, labels_file)
    return Dataset(f"{name}:{split}", x, y)


def load_fashion_mnist(split: str = "test", data_dir=None) -> Dataset:
    return load_idx_dataset("fashion-mnist", split, data_dir)


def load_mnist(split: str = "test", data_dir=None, download: bool = False) -> Dataset:
    return load_idx_dataset("mnist", split, data_dir, download)


def _download_idx(name: str, root: Path) -> Path:  # pragma: no cover - needs internet
    cls = "MNIST" if name == "mnist" else "FashionMNIST"
    return _torchvision_download(name, cls, root) / cls / "raw"


def _torchvision_download(name: str, cls_name: str, root: Path) -> Path:  # pragma: no cover
    """Both splits of ``name`` downloaded by torchvision's dataset class ``cls_name`` into
    ``root`` (it needs internet and torchvision); ``root``."""
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError("--download needs torchvision: pip install 'onnx-snn[torch]'") from None
    cls = getattr(tvd, cls_name)
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:
        raise DataError(f"downloading {name} into {root} failed: {e}") from None
    return root


# ---------------------------------------------------------------- CIFAR python folders

_CIFAR = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], b"fine_labels"),
}
#: the binary versions (cifar-10-binary.tar.gz, cifar-100-binary.tar.gz): (folder, train
#: files, test files, label bytes per record, which of them is the class)
_CIFAR_BINARY = {
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                ["test_batch.bin"], 1, 0),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1),   # coarse, fine
}


#: what a CIFAR python batch may build: numpy arrays and their dtypes (numpy 1's module
#: names and numpy 2's; pickle protocol 5's buffers), and bytes as Python 3 writes them at
#: protocol 2; a batch is a dict of those, lists and numbers, which need no class. Anything
#: else (``os.system``) is refused: ``pickle.load`` runs what a file names.
_CIFAR_PICKLE_CLASSES = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                         for n in ("_reconstruct", "scalar")} | \
    {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")} | \
    {("_codecs", "encode")}      # (numpy.ndarray and numpy.dtype: _BatchUnpickler.find_class)


class _UncallableArray(np.ndarray):
    """``numpy.ndarray`` as a batch's pickle names it: the class ``_reconstruct`` makes an
    array of (which calls no ``__new__``), never called itself: ``ndarray(shape, dtype,
    buffer)`` of an object dtype would take pointers from the file's bytes."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("it calls numpy.ndarray, which a CIFAR batch never does")


def _plain_dtype(*args):
    """``numpy.dtype`` as a batch's pickle names it: no dtype that holds Python objects."""
    d = np.dtype(*args)
    if d.hasobject:
        raise pickle.UnpicklingError(f"it makes an array of Python objects ({d}), which a "
                                     "CIFAR batch never holds")
    return d


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("numpy", "ndarray"):
            return _UncallableArray
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype
        if (module, name) in _CIFAR_PICKLE_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never "
                                     "holds (a pickle runs what it names: not loaded)")


def _plain_values(obj, depth: int = 0):
    """``obj`` (a loaded batch) with every array a plain ndarray; an array that holds Python
    objects (a dtype whose flags a pickle set so) is refused before anything reads it."""
    if depth > 16:
        raise pickle.UnpicklingError("it nests containers more than 16 deep")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError(f"it holds an array of Python objects ({obj.dtype})")
        return obj.view(np.ndarray)
    if isinstance(obj, dict):
        return {k: _plain_values(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain_values(v, depth + 1) for v in obj)
    return obj


def _unpickle(path: Path) -> dict:
    if not os.path.exists(path):      # (a broken link too)
        raise DataError(f"{path}: missing CIFAR batch file")
    problem = file_problem(path)
    if problem:                       # a folder, a pipe, a device: never opened
        raise DataError(f"{path}: {problem}")
    try:
        with open(path, "rb") as f:
            return _plain_values(_BatchUnpickler(f, encoding="bytes").load())
    except Exception as e:  # truncated, not a pickle, or one that names other classes
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e})") from None


def load_cifar(name: str, split: str = "test", data_dir=None, download: bool = False) -> Dataset:
    folder_name, archive, train_files, test_files, label_key = _CIFAR[name]
    candidates = []
    for d in search_dirs(data_dir):
        candidates += [d / folder_name, d]
    folder = next((c for c in candidates if all((c / f).is_file() for f in test_files)), None)
    if folder is None:
        binary = _load_cifar_binary(name, split, data_dir)
        if binary is not None:
            return binary
    if folder is None and download:
        folder = _download_cifar(name, Path(data_dir or os.environ.get("ONNX_SNN_DATA") or
                                            Path.home() / ".cache" / "onnx-snn")) / folder_name
    if folder is None:
        looked = ", ".join(str(c) for c in candidates) or "no folder given"
        raise DataError(f"{name} not found (looked in: {looked}); "
                        + CIFAR_HINT.format(archive=archive))
    xs, ys = [], []
    for fname in (train_files if split == "train" else test_files):
        data, labels = _cifar_batch(folder / fname, name, label_key)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = np.concatenate(xs).astype(np.float32) / 255.0
    y = np.concatenate(ys)
    if len(x) != len(y):
        raise DataError(f"{folder}: {len(x)} images but {len(y)} labels")
    return Dataset(f"{name}:{split}", x, y)


def _load_cifar_binary(name: str, split: str, data_dir) -> Optional[Dataset]:
    """The dataset from CIFAR's binary version (records of label byte(s) then 3072 pixel
    bytes, channel-major) where a search folder holds it, else None."""
    folder_name, train_files, test_files, label_bytes, which = _CIFAR_BINARY[name]
    files = train_files if split == "train" else test_files
    candidates = []     # its own folder, or a data folder that holds all of its files (a
    for d in search_dirs(data_dir):      # stray test.bin alone is no CIFAR-100)
        candidates += [(d / folder_name, files), (d, train_files + test_files)]
    folder = next((c for c, need in candidates if all((c / f).is_file() for f in need)), None)
    if folder is None:
        return None
    record = label_bytes + 3072
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        try:
            raw = np.fromfile(path, np.uint8)
        except OSError as e:
            raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{path}: not a {name} binary batch ({raw.size} bytes, not whole "
                            f"records of {record}: {label_bytes} label byte(s) and 3072 pixels)")
        rows = raw.reshape(-1, record)
        labels = rows[:, which].astype(np.int64)
        _check_dataset_labels(labels, name, path)
        xs.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = np.concatenate(xs).astype(np.float32) / 255.0
    return Dataset(f"{name}:{split}", x, np.concatenate(ys))


def _cifar_batch(path: Path, name: str, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file's (data [N, 3072] uint8, labels [N] int64), checked: a dict with
    the data (bytes 0-255) and one class index per row, else a DataError naming the file."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a {name} batch (a pickled {type(batch).__name__}, not a dict)")
    if b"data" not in batch or label_key not in batch:
        keys = sorted(repr(k) for k in batch)[:4]
        raise DataError(f"{path}: not a {name} batch (keys {', '.join(keys)}; expected "
                        f"b'data' and {label_key!r})")
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key])
    except Exception as e:
        raise DataError(f"{path}: unreadable {name} batch ({e})") from None
    if data.dtype.kind not in "iu" or data.ndim != 2 or data.shape[1] != 3072 \
            or (data.size and (data.min() < 0 or data.max() > 255)):
        raise DataError(f"{path}: expected rows of 3072 bytes (uint8), got "
                        f"{data.dtype} of shape {list(data.shape)}")
    labels = check_labels(labels, len(data), str(path))
    _check_dataset_labels(labels, name, path)
    return data.astype(np.uint8), labels


def _download_cifar(name: str, root: Path) -> Path:  # pragma: no cover - needs internet
    return _torchvision_download(name, "CIFAR10" if name == "cifar10" else "CIFAR100", root)


# ---------------------------------------------------------------- arrays

def _unreadable(path: Path, e: Exception, what: str) -> DataError:
    """The error for arrays numpy would not read: an object array (numpy asks for
    ``allow_pickle``, which data never needs) is named as such."""
    if isinstance(e, ValueError) and ("pickle" in str(e) or "Python objects" in str(e)):
        return DataError(f"{path}: holds Python objects (an object array), not numbers; save "
                         "numeric arrays (e.g. float32) with numpy.save / numpy.savez")
    if isinstance(e, ValueError) and "mmap length is greater than file size" in str(e):
        return DataError(f"{path}: truncated: its header describes more data than the file "
                         "holds (an interrupted copy or download?); save it again")
    return DataError(f"{path}: {what} ({e})")


def npz_splits(path) -> set:
    """The splits a .npz holds as x_train/y_train and x_test/y_test (Keras's datasets); empty
    for any other file (or one that cannot be read: loading it says why)."""
    if file_problem(path):       # never opened unless a regular file (a pipe would block)
        return set()
    try:
        with zipfile.ZipFile(path) as z:
            names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except Exception:
        return set()
    return set(_splits_in(names))


def key_named(keys, name: str) -> Optional[str]:
    """The key among ``keys`` that is ``name``, else the one key that is ``name`` in another
    case (``X``/``Y``, ``X_train``: scikit-learn's spelling), else None."""
    keys = list(keys)
    if name in keys:
        return name
    folded = [k for k in keys if isinstance(k, str) and k.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def check_unambiguous_keys(keys, where: str) -> None:
    """DataError when two arrays' names are one name the loader reads (INPUT_KEYS,
    LABEL_KEYS, SPLIT_KEYS) in two cases, ``x`` and ``X``: either could be meant (the exact
    lower-case one was read without a word)."""
    known = set(INPUT_KEYS) | set(LABEL_KEYS) | {k for pair in SPLIT_KEYS.values() for k in pair}
    for name in sorted(known):
        same = sorted(k for k in keys if isinstance(k, str) and k.lower() == name)
        if len(same) > 1:
            raise DataError(f"{where}: the arrays {' and '.join(map(repr, same))} differ only in "
                            f"case, and either could be the {name!r} array; keep one, or rename "
                            "the other")


def input_key(keys) -> Optional[str]:
    """The inputs' array among ``keys``: the first of INPUT_KEYS (in any case) present."""
    return next((k for k in (key_named(keys, n) for n in INPUT_KEYS) if k is not None), None)


def _splits_in(keys) -> List[str]:
    """The splits (SPLIT_KEYS) whose input array is among a .npz's ``keys``, in order; or,
    for a model of several inputs, whose labels are there beside an ``<input>_<split>`` array
    (``x_train, z_train, y_train``)."""
    keys = list(keys)
    plain = input_key(keys) is not None      # x / y beside other *_test arrays: read x / y
    return [sp for sp, (xk, yk) in SPLIT_KEYS.items() if key_named(keys, xk) is not None
            or (not plain and key_named(keys, yk) is not None
                and any(isinstance(k, str) and k.lower().endswith("_" + sp)
                        and k.lower() != yk for k in keys))]


def _per_input_split(keys, inputs, sp: str) -> Optional[Dict[str, str]]:
    """{input: its array} where a .npz holds ``<input>_<split>`` for every one of a model's
    ``inputs`` (Keras's splits, one array per input), else None."""
    inputs = [str(i) for i in (inputs or ())]
    labels = key_named(keys, SPLIT_KEYS[sp][1])
    if not inputs:
        return None
    found = {i: key_named(keys, f"{i}_{sp}") for i in inputs}
    if not all(found.values()) or labels in found.values():   # an input named y: no
        return None
    return found


def split_arrays(keys, split: Optional[str], inputs, where, labels: bool = True
                 ) -> Optional[Tuple[Dict[str, str], Optional[str]]]:
    """The arrays of ``split`` (default test) where a .npz's (or dict's) ``keys`` hold
    Keras's splits: ({input: its key} for a model of several inputs with an
    ``<input>_<split>`` each, else {"x": the key}: the one input's own ``<input>_<split>``,
    or ``x_<split>``), and the labels' key (None: none). None where ``keys`` hold no split;
    a DataError where the split has labels but no inputs."""
    picked = split_keys(list(keys), split, where, labels)
    if picked is None:
        return None
    sp = split or "test"
    per_input = _per_input_split(keys, inputs, sp)
    if per_input is not None and len(per_input) > 1:
        return per_input, picked[1]
    xk = next(iter(per_input.values())) if per_input else picked[0]
    if xk is None:
        raise DataError(f"{where}: holds {picked[1]} but no {SPLIT_KEYS[sp][0]}; for a model of "
                        f"several inputs name the arrays <input>_{sp}, one per input "
                        f"({', '.join(map(str, inputs or ())) or 'its inputs'})")
    return {"x": xk}, picked[1]


def _ignored_beside_split(keys, read, sp: str) -> List[str]:
    """The arrays of a .npz that reading split ``sp`` (its arrays ``read``) leaves: all but
    those, their twins of the other split and Keras's four names."""
    other = "test" if sp == "train" else "train"
    names = {k.lower() for k in read if k} | {k for pair in SPLIT_KEYS.values() for k in pair}
    names |= {k[:-len(sp)] + other for k in list(names) if k.endswith("_" + sp)}
    return [k for k in keys if k.lower() not in names]


def split_keys(keys: list, split: Optional[str], path, labels: bool = True
               ) -> Optional[Tuple[str, Optional[str]]]:
    """(input key, label key) of ``split`` (default test) in a .npz (or dict) with SPLIT_KEYS,
    else None; ``labels``: the command reads them (a split without labels beside one with
    them is warned about)."""
    have = _splits_in(keys)
    if not have:
        return None
    sp = split or "test"
    if sp not in have:
        raise DataError(f"{path}: holds the {have[0]} split ({SPLIT_KEYS[have[0]][0]}) but not the "
                        f"{sp} split ({SPLIT_KEYS[sp][0]}) this command reads")
    xk, yk = SPLIT_KEYS[sp]
    found = key_named(keys, yk)
    other = [o for o, (_, oy) in SPLIT_KEYS.items() if o != sp and key_named(keys, oy)]
    if labels and found is None and other:   # (a test split without labels can be meant: said)
        logging.getLogger("onnx_snn").warning(
            "%s: holds labels for the %s split (%s) but none for the %s split (%s) this command "
            "reads: its samples are taken as unlabeled (no top-1); add %s to score them",
            path, other[0], SPLIT_KEYS[other[0]][1], sp, yk, yk)
    return key_named(keys, xk), found


def sample_count(arrays: Dict[str, np.ndarray], where: str) -> int:
    """The samples of each of a model's input arrays (one per input): the same count in all,
    else a DataError naming ``where``."""
    n = {len(v) for v in arrays.values()}
    if len(n) > 1:
        raise DataError(f"{where}: its input arrays have different numbers of samples "
                        f"({ {k: len(v) for k, v in arrays.items()} })")
    return n.pop() if n else 0


def label_key(keys, inputs=()) -> Optional[str]:
    """The labels' array among ``keys`` (LABEL_KEYS, in order): not one named after a model
    input (``inputs``), and none when it would be the only array."""
    keys = list(keys)
    found = (key_named(keys, k) for k in LABEL_KEYS)
    return next((k for k in found if k is not None and k not in set(inputs) and len(keys) > 1),
                None)


def load_array_file(path: os.PathLike, split: Optional[str] = None, inputs=(),
                    labels: bool = True, float32: bool = True) -> Dataset:
    """A .npy (inputs) or .npz file: ``x`` (or data, images, inputs) and ``y`` (or labels,
    targets); one array per model input named after it; ``x_train``/``y_train`` and
    ``x_test``/``y_test`` (Keras's datasets: ``split`` picks, test by default); or the
    positional ``arr_0``, ``arr_1`` of ``numpy.savez(f, x, y)`` when ``arr_1`` is labels.
    ``inputs``: the model's input names (an array named after one is an input, never the
    labels, even if it is called ``y``). ``labels=False``: a command that uses none (convert)
    neither reads nor checks them (the result's ``y`` is None). ``float32=False``: a .npy's
    inputs stay in the file's type (and memory-mapped), for the caller to take its samples and
    then :func:`as_float32` them (a uint8 file of 9.4 GB is 37 GB as float32)."""
    path = Path(path)
    why = file_problem(path)
    if why is not None:
        hint = ("; an array file (.npy or .npz) was expected from its name"
                if path.is_dir() else "")
        raise DataError(f"{str(path)[:300]}: {why}{hint}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if head != b"\x93NUMPY" and not head.startswith(b"PK"):   # neither .npy nor .npz (a zip)
        raise DataError(f"{path}: not a NumPy .npy or .npz file (it does not start with the "
                        "NumPy or zip signature); save the inputs with numpy.save (x) or "
                        "numpy.savez (x=..., y=...)")
    try:      # a .npy is memory-mapped: only the samples a command takes are read (a
        # 9.4 GB file of float32 images took 9.3 GB to evaluate 100 of them)
        obj = np.load(path, allow_pickle=False,
                      mmap_mode="r" if head == b"\x93NUMPY" else None)
    except Exception as e:
        raise _unreadable(path, e, "cannot read as .npy/.npz") from None
    name = str(path)
    if isinstance(obj, np.lib.npyio.NpzFile):
        other = [m for m in obj.zip.namelist() if not m.endswith(".npy")]
        if other:      # a zip (a .pt, a .docx...) that is not numpy.savez's
            obj.close()
            raise DataError(f"{path}: a zip file that is not a NumPy .npz (it holds "
                            f"{other[0]!r}); save the inputs with numpy.savez (x=..., y=...)")
        try:
            keys = list(obj.keys())
            check_unambiguous_keys(keys, str(path))
            yk = label_key(keys, inputs)
            rest = [k for k in keys if k != yk]
            xk = input_key(keys)
            found = split_arrays(keys, split, inputs, path, labels)
            if found is None and sorted(keys) == ["arr_0"]:
                found = ({"x": "arr_0"}, None)            # numpy.savez(f, x)
            elif found is None and sorted(keys) == ["arr_0", "arr_1"] and \
                    _labels_shape(_npz_shape(obj, "arr_1"), _npz_shape(obj, "arr_0")):
                found = ({"x": "arr_0"}, "arr_1")         # numpy.savez(f, x, y): checked as labels
            if found is not None:
                arrays, yk = found
                xk = arrays.get("x") if len(arrays) == 1 else None
                rest = [xk] if xk else []
                if all(k.lower().endswith(("_train", "_test")) for k in arrays.values()):
                    sp = next(iter(arrays.values())).lower().rsplit("_", 1)[1]
                    name = f"{path}:{sp}"
                    unread = _ignored_beside_split(keys, [*arrays.values(), yk], sp)
                    if unread:   # x / y beside x_test / y_test: either could be meant
                        logging.getLogger("onnx_snn").warning(
                            "%s: reads its %s split (%s, %s); the array(s) %s beside the "
                            "splits are ignored (save them to a file of their own to use them)",
                            path, sp, ", ".join(arrays.values()), yk or "no labels",
                            ", ".join(repr(k) for k in unread))
            y = obj[yk] if yk and labels else None
            if found is not None and len(found[0]) > 1:   # x_test, z_test for inputs x, z
                x = {i: np.asarray(obj[k]) for i, k in found[0].items()}
            else:
                if not rest:
                    raise DataError(f"{path}: no inputs in this .npz: expected an array named "
                                    f"'x' (or data, images, inputs), or one per model input "
                                    f"named after it, and 'y' for labels; it has "
                                    f"{keys if keys else 'no arrays'}")
                rest = _model_arrays(rest, xk, inputs, str(path))
                if xk is not None and rest == [xk]:
                    x = obj[xk]
                else:   # one array per model input, named after it (validate_feeds picks them)
                    x = {k: np.asarray(obj[k]) for k in rest}
        except DataError:
            raise
        except Exception as e:  # object arrays, truncated members
            raise _unreadable(path, e, "cannot read the arrays of this .npz") from None
    else:
        x, y = obj, None
    if isinstance(x, dict):
        for k, v in x.items():
            check_inputs(v, f"{path} (array {k!r})")
        n = sample_count(x, str(path))
        if y is not None:
            y = check_labels(y, n, str(path))
        return Dataset(name, {k: v.astype(np.float32, copy=False) for k, v in x.items()}, y,
                       preprocessed=True)
    x = np.asarray(x)
    check_inputs(x, str(path))
    if y is not None:
        y = check_labels(y, len(x), str(path))
    # integer arrays are said so where the model is known (convert.resolve_data: raw pixels
    # are right for a model that takes them, and likely a mistake for any other)
    return Dataset(name, x.astype(np.float32, copy=False) if float32 else x, y,
                   preprocessed=True, source_dtype=str(x.dtype))


def _model_arrays(rest: List[str], xk: Optional[str], inputs, where: str) -> List[str]:
    """Which of a .npz's non-label arrays ``rest`` feed the model: one named after each model
    input where all of ``inputs`` are there; else the one named ``x`` (or data, images,
    inputs: ``xk``) for a model of one input; else (or when ``inputs`` are not known) all of
    them, each to be matched to an input by name. The arrays left over (a table of file
    names, a saved mean, sample ids) are ignored, with a note naming them."""
    inputs = [str(i) for i in (inputs or ())]
    if inputs and set(inputs) <= set(rest):
        use = [k for k in rest if k in inputs]
    elif xk is not None and len(inputs) == 1:
        use = [xk]
    else:
        return rest
    left = [k for k in rest if k not in use]
    if left:
        logging.getLogger("onnx_snn").warning(
            "%s: array(s) %s are not model inputs and are ignored (the inputs: %s)",
            where, ", ".join(repr(k) for k in left), ", ".join(repr(k) for k in use))
    return use


def _npz_shape(npz, key: str) -> tuple:
    """An array's shape from its .npy header in a .npz, without reading its data."""
    fmt = np.lib.format
    with npz.zip.open(key + ".npy") as f:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        return read(f)[0]


def _labels_shape(y_shape: tuple, x_shape: tuple) -> bool:
    """Whether an array of ``y_shape`` beside inputs of ``x_shape`` is labels: one value per
    sample ([N]), or one row per sample of lower rank than the inputs (one-hot [N, classes])."""
    return bool(y_shape) and bool(x_shape) and y_shape[0] == x_shape[0] and \
        (len(y_shape) == 1 or len(y_shape) < len(x_shape))


def is_inputs_labels(data) -> bool:
    """Whether ``data`` is an (inputs, labels) pair: a 2-tuple whose second item has the
    shape of labels for the first (inputs: an array or a dict of arrays per input); a tuple
    of samples (which numpy stacks) is not."""
    if not (isinstance(data, tuple) and len(data) == 2):
        return False
    first = next(iter(data[0].values()), None) if isinstance(data[0], dict) else data[0]
    shape = lambda a: tuple(np.shape(a)) if a is not None else ()  # noqa: E731
    try:
        return _labels_shape(shape(data[1]), shape(first))
    except (ValueError, TypeError):        # ragged
        return False


def check_inputs(x, where: str) -> None:
    """Model inputs: a numeric array with a sample axis (not a single number)."""
    if not isinstance(x, np.ndarray):
        raise DataError(f"{where}: inputs must be a numpy array, not {type(x).__name__}")
    if x.dtype.kind not in "fiu":
        raise DataError(f"{where}: inputs of dtype {x.dtype} are not numeric (expected floats)")
    if x.ndim == 0:
        raise DataError(f"{where}: a single number, not an array of samples (shape [N, ...])")
    if 0 in x.shape[1:]:   # (a model with free sizes took it and onnxruntime failed inside)
        raise DataError(f"{where}: shape {list(x.shape)} has an axis of size 0: samples have "
                        "no values")
    if x.dtype.kind == "f" and x.dtype.itemsize > 4 and x.size:   # (float32 computes it)
        big = float(np.max(np.abs(x), where=np.isfinite(x), initial=0.0))
        if big > float(np.finfo(np.float32).max):
            raise DataError(f"{where}: values up to {big:.3g}, beyond float32's range "
                            f"({float(np.finfo(np.float32).max):.3g}), in which the model "
                            "computes: rescale or clean the data")


class OneHotLabels(np.ndarray):
    """Class indices read from one-hot rows, which remember the rows' width
    (``one_hot_width``, kept through slicing) so that a width other than the model's class
    count is found (:func:`check_label_range`): the argmax alone would pass 12-column
    labels to a 10-class model while their 1s sit in the first ten columns."""

    one_hot_width: Optional[int] = None

    def __array_finalize__(self, obj):
        self.one_hot_width = getattr(obj, "one_hot_width", None)


def array_like(x, what: str) -> np.ndarray:
    """A numpy array from an array or anything numpy converts (a list, a CPU tensor)."""
    if isinstance(x, np.ndarray):
        return x
    try:
        if hasattr(x, "detach"):          # a torch tensor that requires grad
            x = x.detach()
        return np.asarray(x)
    except Exception as e:               # a GPU tensor, ragged lists
        raise DataError(f"{what}: cannot turn {type(x).__name__} into an array ({e}); pass a "
                        "numpy array (for a GPU tensor: .cpu().numpy())") from None


#: the largest class index read (a label beyond it is a damaged file, not a class)
MAX_LABEL = 1 << 31


def check_labels(y, n: int, where: str) -> np.ndarray:
    """Class indices, one per sample: whole numbers >= 0 (floats allowed when whole), or
    one-hot rows [N, classes] (Keras's ``to_categorical``), read as the index of their one."""
    if isinstance(y, OneHotLabels) and y.ndim == 1 and len(y) == n:
        return y                       # read from one-hot rows already: keeps their width
    y = array_like(y, f"{where} (labels)")
    if y.dtype.kind not in "iuf" or y.dtype.kind == "b":
        raise DataError(f"{where}: labels of dtype {y.dtype} are not class indices")
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:
        if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(1) == 1)):
            raise DataError(f"{where}: labels of shape {list(y.shape)} that are not one-hot rows "
                            "(one 1 per row, zeros elsewhere: soft or multi-label targets); "
                            f"expected one class index per sample ([{n}]) or one-hot rows")
        out = y.argmax(1).astype(np.int64).view(OneHotLabels)
        out.one_hot_width = int(y.shape[1])
        return out
    if y.ndim != 1:
        if y.size == n and y.ndim >= 1:
            y = y.reshape(-1)
        else:
            raise DataError(f"{where}: labels of shape {list(y.shape)}; expected one class index "
                            f"per sample ([{n}])")
    if len(y) != n:
        raise DataError(f"{where}: {n} inputs but {len(y)} labels")
    if y.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(y)))
        if bad:
            raise DataError(f"{where}: {bad} label(s) are NaN/Inf; labels are class indices")
        if np.any(y != np.round(y)):
            raise DataError(f"{where}: labels such as {float(y[y != np.round(y)][0]):g} are not whole "
                            "numbers; labels are class indices (eval's top-1 and fine-tuning "
                            "are for classifiers: for a regression model leave the targets "
                            "out, run it on the inputs alone and compare its outputs yourself)")
    if y.size and (y.max() > MAX_LABEL or y.min() < 0):   # before the cast: 1e30 and 2**64-1
        bad = y.max() if y.max() > MAX_LABEL else y.min()      # wrapped to negative numbers
        what = "negative" if bad < 0 else f"above {MAX_LABEL:,} (MAX_LABEL)"
        raise DataError(f"{where}: label {bad:.6g} is {what}; labels are class indices "
                        "0..classes-1")
    return y.astype(np.int64)


def check_label_range(y: Optional[np.ndarray], classes: int, where: str) -> None:
    """Every label below the model's number of outputs, and one-hot rows as wide."""
    width = getattr(y, "one_hot_width", None)
    if width is not None and width != classes:
        raise DataError(f"{where}: one-hot labels of {width} columns, but the model outputs "
                        f"{classes} classes: labels for another model or dataset?")
    if y is not None and y.size and int(y.max()) >= classes:
        raise DataError(f"{where}: label {int(y.max())} is out of range: the model outputs "
                        f"{classes} classes (labels 0..{classes - 1})")


#: the largest magnitude of a mean or std, and the inverse of the smallest std, that a
#: normalization may have ((x - mean) / std of pixels in [0, 1] stays far inside float32):
#: --mean/--std (``convert.check_mean_std``) and a recorded one alike
PREPROCESS_LIMIT = 1e30


#: what a recorded ``onnx_snn.preprocess`` may hold: the data is fed (x - mean) / std
PREPROCESS_KEYS = ("mean", "std")


def unread_preprocess(pp) -> List[str]:
    """The keys of a recorded preprocessing (a dict) that onnx-snn does not apply."""
    return sorted(k for k in pp if k not in PREPROCESS_KEYS) if isinstance(pp, dict) else []


def unread_preprocess_note(pp, where: str) -> str:
    return (f"{where}: its onnx_snn.preprocess records "
            + ", ".join(repr(k) for k in unread_preprocess(pp))
            + ", which onnx-snn does not apply (it feeds (x - mean) / std of [0, 1] images, "
              "nothing else); ignored: preprocess the data so yourself and pass it as an array")


def parse_preprocess(text: str, where: str):
    """A recorded ``onnx_snn.preprocess``'s JSON value; text that is no JSON raises
    :class:`ModelLoadError` naming ``where`` (every command refuses it alike)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ModelLoadError(f"{where}: the metadata onnx_snn.preprocess is not JSON "
                             f"({text[:60]!r}); the file is damaged: fix or remove that "
                             "entry") from None


def dnn_preprocess(pp, where: str) -> Optional[dict]:
    """A DNN's recorded preprocessing (parsed), checked (:func:`check_preprocess`, a missing
    mean or std the neutral one); a record of neither (``{}``, or keys onnx-snn does not
    apply alone) records nothing: None, so that the model's own scaling of raw pixels is
    still looked for."""
    if isinstance(pp, dict) and not any(k in pp for k in PREPROCESS_KEYS):
        return None
    return check_preprocess(pp, where, partial=True)


def check_preprocess(pp, where: str = "the model", partial: bool = False) -> Optional[dict]:
    """A model's recorded ``onnx_snn.preprocess`` ({"mean": [...], "std": [...]}), checked:
    finite numbers, std > 0; a damaged one raises :class:`ModelLoadError`. A spiking file
    records both; ``partial`` (a DNN's metadata, written by whoever exported it): a missing
    one is the neutral 0 or 1, with a warning."""
    if pp is None:
        return None
    if not isinstance(pp, dict):
        raise ModelLoadError(f"{where}: the metadata onnx_snn.preprocess is not a JSON object; "
                             "the file is damaged")
    if unread_preprocess(pp):  # (a scale, a layout, a channel order: fed without them)
        logging.getLogger("onnx_snn").warning("%s", unread_preprocess_note(pp, where))
    out = {}
    for key, neutral in (("mean", 0.0), ("std", 1.0)):
        if key not in pp and partial:
            logging.getLogger("onnx_snn").warning(
                "%s: its onnx_snn.preprocess records no %s; %g is used", where, key, neutral)
        elif key not in pp:
            raise ModelLoadError(f"{where}: the metadata onnx_snn.preprocess has no {key} "
                                 f"({json.dumps(pp)[:80]}); the file is damaged or was edited")
        v = pp.get(key, neutral)
        try:        # numbers only: a string or a bool numpy would read is damage too
            items = np.asarray(v, dtype=object).reshape(-1)
            a = np.asarray(v, dtype=np.float64).reshape(-1) if all(
                is_real(t) for t in items) else None
        except (TypeError, ValueError):
            a = None
        if a is None or a.size == 0 or not np.all(np.isfinite(a)) \
                or np.any(np.abs(a) > PREPROCESS_LIMIT) or (key == "std" and np.any(a < 1 / PREPROCESS_LIMIT)):
            raise ModelLoadError(f"{where}: the metadata onnx_snn.preprocess has {key} {v!r}; "
                                 "expected finite numbers of magnitude at most 1e30 (std at "
                                 "least 1e-30, as --mean/--std take them); the file is damaged")
        out[key] = [float(t) for t in a]
    return out


# ---------------------------------------------------------------- front door

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100")
_ALIASES = {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "mnist": "mnist",
            "fmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10",
            "cifar100": "cifar100", "cifar-100": "cifar100"}


def named_dataset(spec) -> Optional[str]:
    """The dataset a spec names (``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``), else
    None."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    name = str(spec).partition(":")[0]
    return _ALIASES.get(name.lower().replace("_", "-"))


def split_spec(spec) -> Tuple[str, Optional[str]]:
    """(path, split) of ``PATH:train`` / ``PATH:test`` (``:val``: test), the split a user chose of a
    Keras-style .npz or of a folder of images with split folders, when that file or folder
    exists; (spec, None) otherwise."""
    from .image_folder import is_image_folder
    path, sep, split = str(spec).rpartition(":")
    split = "test" if split == "val" else split     # a folder's val/ is its test split
    if sep and split in ("train", "test") and (
            (path.endswith(".npz") and Path(path).is_file()) or is_image_folder(path)):
        return path, split
    return str(spec), None


def data_splits(spec) -> set:
    """The splits (train, test) a data file or folder holds apart: a .npz's x_train /
    x_test, a folder's train/ and test/ (or val/) folders, or only the one ``PATH:split``
    chose; empty for anything else."""
    if isinstance(spec, dict):           # Keras's x_train / x_test, as in a .npz
        return set(_splits_in(list(spec)))
    if not isinstance(spec, (str, os.PathLike)):
        return set()
    from .image_folder import split_names
    path, chosen = split_spec(spec)
    return {chosen} if chosen else npz_splits(path) | split_names(path)


def _split_suffix(name: str) -> Tuple[str, str]:
    """(``PATH``, ``:split``) of a data name ``PATH:train`` / ``:test`` / ``:val`` as
    datasets name their splits; (``name``, "") for anything else."""
    path, sep, split = name.rpartition(":")
    if sep and path and split in ("train", "test", "val"):
        return path, sep + split
    return name, ""


#: the history's records of the data a model was converted and fine-tuned on
DATA_RECORDS = ("calibration_data", "train_data", "test_data")


def recorded_data_name(name):
    """The name of the data a model is converted or fine-tuned on, as its history records
    it: a file or folder as its absolute path (``:split`` kept), so that a command run from
    another folder finds it (a relative one was relative to the folder the command ran in);
    a named dataset (``fashion-mnist:train``), a name that is no existing path ("array") and
    anything not a string, as given."""
    if not isinstance(name, (str, os.PathLike)) or named_dataset(name) is not None:
        return name
    text = os.fspath(name)
    for path, split in ((text, ""), _split_suffix(text)):
        if path and os.path.exists(path):
            return os.path.abspath(path) + split
    return text


def recorded_data_paths(name, model_path=None) -> List[str]:
    """Where a recorded data name (:func:`recorded_data_name`, ``:split`` dropped) may be:
    its absolute path, or for one recorded relative (by files written before paths were
    recorded absolute) the path from this folder and from the model's folder. Empty for a
    named dataset or anything not a string."""
    if not isinstance(name, str) or not name or named_dataset(name) is not None:
        return []
    path = _split_suffix(name)[0]
    if os.path.isabs(path):
        return [os.path.normpath(path)]
    out = [os.path.abspath(path)]
    if model_path is not None:
        out.append(os.path.abspath(os.path.join(os.path.dirname(os.fspath(model_path)), path)))
    return list(dict.fromkeys(out))


def dataset_files(spec, data_dir=None) -> list:
    """The files loading ``spec`` reads (to protect them from being overwritten): an array
    file itself, every image of a folder (no output named as an image may be written
    among them: the next read would take it for one), or a named dataset's files where it
    would be found (best effort)."""
    key = named_dataset(spec)
    if key is None:
        if not isinstance(spec, (str, os.PathLike)) or not str(spec):
            return []
        from .image_folder import image_files, is_image_folder
        path = split_spec(spec)[0]
        return image_files(path) if is_image_folder(path) else [Path(path)]
    files = []
    try:
        if key in _IDX:
            folder = _find_idx(key, data_dir)
            for prefix in ("train", "t10k"):
                for kind in ("images-idx3", "labels-idx1"):
                    files += [folder / f"{prefix}-{kind}-ubyte.gz", folder / f"{prefix}-{kind}-ubyte"]
        else:
            folder_name, _, train_files, test_files, _ = _CIFAR[key]
            bin_name, bin_train, bin_test, _, _ = _CIFAR_BINARY[key]
            for d in search_dirs(data_dir):
                for c in (d / folder_name, d):
                    files += [c / f for f in train_files + test_files]
                for c in (d / bin_name, d):
                    files += [c / f for f in bin_train + bin_test]
    except DataError:
        pass
    return files


def image_folder_spec(spec, split: Optional[str] = None) -> Optional[Tuple[str, Optional[str]]]:
    """(folder, split) when ``spec`` is a folder of images (``FOLDER`` or ``FOLDER:split``;
    ``split``: the command's own, when the spec names none), else None."""
    if not isinstance(spec, (str, os.PathLike)) or named_dataset(spec) is not None:
        return None
    from .image_folder import is_image_folder, split_names
    path, chosen = split_spec(spec)
    if not is_image_folder(path):
        return None
    if chosen and not split_names(path):
        raise DataError(f"{spec}: {path} has no split folders (train/, test/ or val/ with "
                        f"class folders) to take :{chosen} from; pass the folder without "
                        "it to read all its images")
    return path, chosen or split


def load_dataset(spec: str, data_dir=None, split: Optional[str] = None,
                 download: bool = False, image_shape=None, take=None, inputs=(),
                 labels: bool = True, classes=None, show_progress: bool = True,
                 float32: bool = True) -> Dataset:
    """Load ``spec``: a dataset name (optionally ``name:split``), a .npy/.npz path, or a
    folder of class subfolders of images (:mod:`onnx_snn.image_folder`; ``image_shape``:
    the (channels, height, width) its images are brought to; ``take`` = (n, seed): only the
    images ``Dataset.take(n, seed)`` keeps are read; ``classes``: the model's class names,
    which label its class folders; ``float32``: see :func:`load_array_file`)."""
    name, _, sp = str(spec).partition(":")
    key = named_dataset(spec)
    if key is not None:
        split = sp or split or "test"
        if split not in ("train", "test"):
            raise DataError(f"{spec}: split must be 'train' or 'test', not {split!r}")
        if key in _IDX:
            return load_idx_dataset(key, split, data_dir, download)
        return load_cifar(key, split, data_dir, download)
    from .image_folder import load_image_folder
    folder = image_folder_spec(spec, split)
    if folder is not None:
        return load_image_folder(*folder, image_shape, take=take, classes=classes,
                                 show_progress=show_progress)
    path, chosen = split_spec(spec)            # FILE.npz:train, FOLDER:test
    if os.path.isdir(path):
        raise DataError(f"{spec}: is a folder, without images in class subfolders (one "
                        "folder of images per class, or train/ and test/ folders of them)")
    problem = file_problem(path) if os.path.lexists(path) else None
    if problem:                    # a pipe, a device, a broken link: never opened
        raise DataError(f"{spec}: {problem}")
    if chosen is not None and path.endswith(".npz") and not npz_splits(path) \
            and zipfile.is_zipfile(path):        # (an unreadable one: loading it says why)
        raise DataError(f"{spec}: {path} holds no splits (x_train / x_test arrays): ':{chosen}' "
                        f"would be ignored; drop it to use all of its samples")
    if chosen is not None or path.endswith((".npy", ".npz")) or Path(path).is_file():
        return load_array_file(path, chosen or split, inputs, labels, float32)
    base = _split_suffix(str(spec))[0]        # FILE.npz:test of a FILE.npz that is a pipe
    if base != str(spec) and os.path.lexists(base) and file_problem(base):
        raise DataError(f"{spec}: {base} {file_problem(base)}")
    raise DataError(f"{spec}: unknown dataset; use one of {', '.join(DATASET_NAMES)} "
                    "(optionally with :train or :test), a .npy/.npz file, or a folder with one "
                    "subfolder of images per class")


def apply_preprocess(x: np.ndarray, mean: Optional[Sequence[float]],
                     std: Optional[Sequence[float]], where: str = "data",
                     source: str = "the preprocessing has", fix: str = "") -> np.ndarray:
    """(x - mean) / std per channel (axis 1); mean/std may be scalars or per-channel lists.
    Another count is a DataError: "``where``: ``source`` n mean values, ...``fix``"."""
    if mean is None and std is None:
        return x
    c = x.shape[1] if x.ndim >= 2 else 1
    shape = (1, -1) + (1,) * (x.ndim - 2)

    def vec(v, default, key):
        a = np.asarray(default if v is None else v, dtype=np.float32).reshape(-1)
        if a.size not in (1, c):
            give = "one value" if c == 1 else f"1 or {c} values"
            raise DataError(f"{where}: {source} {a.size} {key} values, and the images have {c} "
                            f"{'channel' if c == 1 else 'channels'}: {give} each{fix}")
        return a.reshape(shape) if a.size == c else a.reshape(())

    m, s = vec(mean, 0.0, "mean"), vec(std, 1.0, "std")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s))):
        raise DataError("preprocessing mean/std must be finite numbers")
    if np.any(s <= 0):
        raise DataError("preprocessing std must be positive")
    return ((x - m) / s).astype(np.float32)


def to_input_layout(x: np.ndarray, specs, where: str) -> np.ndarray:
    """A named dataset's NCHW images in the layout of the model's one image input:

    * transposed to NHWC when the input's dims are [N, H, W, C] (tf2onnx, Keras and JAX
      exports put the channels last) and not [N, C, H, W];
    * for one-channel images, [N, H, W] without the channel axis, or [N, H * W] flattened
      (either with axes of size 1 around: [N, 1, H * W] for a 1-D convolution),
      when the input takes that (an MLP for MNIST-like data, a Keras model whose first layer
      is Flatten): with one channel both memory orders flatten alike. A flat input of
      several channels is ambiguous (NCHW or NHWC order?), and one with a free size may not
      be an image at all: both are left to the shape check;

    ``x`` itself otherwise (the shape check that follows names any other mismatch).
    ``specs``: the model's (input name, dims) list."""
    if x.ndim != 4 or not specs or len(specs) != 1:
        return x

    def fits(dims, shape):
        return len(dims) == len(shape) and all(d is None or d == s for d, s in zip(dims, shape))
    name, dims = specs[0][0], list(specs[0][1][1:])
    (c, h, w), log = x.shape[1:], logging.getLogger("onnx_snn")
    if fits(dims, (c, h, w)):
        return x
    if fits(dims, (h, w, c)):
        log.info("%s: fed channels-last [N, %d, %d, %d], as the model's input '%s' takes it",
                 where, h, w, c, name)
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if c == 1 and None in dims:
        return x          # a free size: a sequence model's input, perhaps; not guessed
    if c == 1 and fits(dims, (h, w)):
        log.info("%s: fed as [N, %d, %d] (no channel axis), as the model's input '%s' takes it",
                 where, h, w, name)
        return x.reshape(len(x), h, w)
    if c == 1 and fits(dims, (h * w,)):
        log.info("%s: fed flattened [N, %d], as the model's input '%s' takes it", where, h * w, name)
        return x.reshape(len(x), h * w)
    if c == 1 and [d for d in dims if d != 1] in ([h, w], [h * w]):
        # the same with axes of size 1 around ([N, 1, 784] for a 1-D convolution over the
        # flattened image, [N, 784, 1]): one channel's values in the same memory order
        log.info("%s: fed as [N, %s], as the model's input '%s' takes it", where,
                 ", ".join(map(str, dims)), name)
        return x.reshape(len(x), *dims)
    return x


def check_raw_pixels(x: np.ndarray, where: str) -> None:
    """Arrays for a model that takes raw 0-255 pixels (a uint8 image input, or recorded
    preprocessing ``--mean 0 --std 1/255``) must be on that scale, 0-255: data that lies
    within [0, 1], or holds negative values, is [0, 1] images or normalized ones, and values
    above 255 are no 8-bit pixels (the DNN's onnxruntime feed refuses them for a uint8 input;
    its spiking model, finetune and analyze scored them). Values between whole numbers are
    taken (a float model's resized images)."""
    if not x.size:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo >= 0 and (hi > 1.0 or hi == 0.0) and hi <= 255.0 + 1e-3:
        return
    raise DataError(f"{where}: the model takes raw 0-255 pixels; the data holds values in "
                    f"[{lo:g}, {hi:g}]: feed raw pixels (a named dataset or a folder of images "
                    "is fed so)")


#: check_finite reads the data in parts of about this many bytes (a mask of a whole 9.4 GB
#: file took 2.3 GB more)
FINITE_PART_BYTES = 64 * 2 ** 20


def check_finite(x: np.ndarray, where: str) -> None:
    """Every value finite, else a DataError with the count and the first sample that holds one."""
    x = np.asarray(x)
    if x.dtype.kind not in "fc":        # (whole numbers are finite)
        return
    if x.ndim == 0:
        if not np.isfinite(x):
            raise DataError(f"{where}: NaN/Inf values in the data; clean it before use")
        return
    per = max(int(x[:1].nbytes), 1)
    step = max(1, FINITE_PART_BYTES // per)
    bad, first = 0, None
    for a in range(0, len(x), step):
        ok = np.isfinite(x[a:a + step]).reshape(min(step, len(x) - a), -1)
        if ok.all():
            continue
        bad += int(ok.size - np.count_nonzero(ok))
        if first is None:
            first = a + int(np.argmin(ok.all(axis=1)))
    if bad:
        raise DataError(f"{where}: {bad} NaN/Inf values in the data, the first is sample "
                        f"{first}; clean it before use")
