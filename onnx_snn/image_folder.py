"""Folders of images as datasets: one subfolder of images per class, the layout torchvision's
``ImageFolder`` reads (``root/cat/1.png``, ``root/dog/7.jpg``; class indices in the sorted
order of the subfolder names), optionally under split folders (``root/train/cat/...`` and
``root/test/...`` or ``root/val/...``): each command reads the split it needs.

A folder of images alone (no class subfolders) is read unlabeled: enough to calibrate a
conversion, and for spike rates.

Images are read with Pillow, converted to the model's channels (grayscale for one, RGB for
three), brought to the model's input size (scaled so that the shorter side fits, then
center-cropped: the usual evaluation transform; not at all when they already have it) and
scaled to [0, 1], as a named dataset's images: ``--mean/--std`` or the model's recorded
preprocessing apply to them.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError, MissingDependencyError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")
#: split folders, by the split a command reads
SPLIT_FOLDERS = {"train": ("train", "training"), "test": ("test", "val", "valid", "validation")}
#: the most float32 image data one folder may load (a folder bigger than that: pass a subset)
MAX_BYTES = 8 << 30


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def class_folders(folder: Path) -> List[Path]:
    """The subfolders of ``folder`` that hold images, sorted by name (one per class)."""
    try:
        subs = sorted(p for p in Path(folder).iterdir() if p.is_dir())
    except OSError:
        return []
    return [s for s in subs if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in s.iterdir())]


def _split_folders(root: Path) -> dict:
    """{split: folder} of ``root``'s split folders that hold class folders."""
    out = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir() and class_folders(root / name):
                out[split] = root / name
                break
    return out


def is_image_folder(path) -> bool:
    """Whether ``path`` is a folder of class subfolders of images (or of split folders), or of
    images (unlabeled: enough to calibrate a conversion)."""
    p = Path(path)
    try:
        return p.is_dir() and bool(class_folders(p) or _split_folders(p) or _images(p))
    except OSError:
        return False


def image_shape(specs) -> Optional[Tuple[int, Optional[int], Optional[int]]]:
    """(channels, height, width) of the model's one image input, channels first or last
    ([N, C, H, W] or [N, H, W, C] with C of 1 or 3; [N, H, W]: one channel); None entries are
    free sizes; None when the input is not an image."""
    if not specs or len(specs) != 1:
        return None
    dims = list(specs[0][1])
    if len(dims) == 4:
        if dims[1] in (1, 3):
            return dims[1], dims[2], dims[3]
        if dims[3] in (1, 3):
            return dims[3], dims[1], dims[2]
        return None
    if len(dims) == 3:
        return 1, dims[1], dims[2]
    return None


def _fit(img, width: int, height: int):
    """``img`` scaled so that it covers width x height, then center-cropped to it."""
    from PIL import Image
    w, h = img.size
    if (w, h) == (width, height):
        return img
    s = max(width / w, height / h)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


def load_image_folder(path, split: Optional[str] = None,
                      shape: Optional[Sequence[Optional[int]]] = None,
                      show_progress: bool = True):
    """The images under ``path`` as a :class:`~onnx_snn.datasets.Dataset` of NCHW float32
    images in [0, 1] and their class indices. ``split`` picks a split folder when ``path`` has
    them; ``shape`` (channels, height, width; see :func:`image_shape`) is what the images are
    brought to (None, or free sizes: the first image's)."""
    from .datasets import Dataset
    from .progress import Progress
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MissingDependencyError("reading a folder of images needs Pillow: pip install "
                                     "pillow (it comes with onnx-snn[torch])") from None
    root = Path(path)
    splits = _split_folders(root)
    folder, name = root, str(path)
    if splits:
        want = split or "test"
        if want not in splits:
            have = ", ".join(f"{k} ({v.name}/)" for k, v in splits.items())
            raise DataError(f"{path}: no {want} split folder ({' or '.join(n + '/' for n in SPLIT_FOLDERS[want])}) "
                            f"with class folders; it has {have}: pass the folder to read, e.g. "
                            f"{next(iter(splits.values()))}")
        folder, name = splits[want], f"{path}:{want}"
    classes = class_folders(folder)
    files = [(f, i) for i, c in enumerate(classes) for f in _images(c)] if classes else \
        [(f, -1) for f in _images(folder)]        # images without classes: no labels
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}); an image folder "
                        "holds one subfolder of images per class, or the images themselves")
    channels, height, width = (list(shape) + [None] * 3)[:3] if shape else (None, None, None)
    first = _open(files[0][0], Image, UnidentifiedImageError)
    channels = channels or (1 if first.mode in ("1", "L", "I", "I;16", "F") else 3)
    width, height = width or first.size[0], height or first.size[1]
    need = len(files) * channels * height * width * 4
    if need > MAX_BYTES:
        raise DataError(f"{folder}: {len(files)} images of {channels}x{height}x{width} would take "
                        f"{need / 2**30:.1f} GiB as float32, above {MAX_BYTES >> 30} GiB; pass a "
                        "folder with fewer images")
    x = np.empty((len(files), height, width, channels), np.float32)
    mode = "L" if channels == 1 else "RGB"
    bar = Progress(len(files), desc=f"reading {folder.name}/", unit="img",
                   enabled=None if show_progress else False)
    for k, (f, _) in enumerate(files):
        img = _fit(_open(f, Image, UnidentifiedImageError).convert(mode), width, height)
        a = np.asarray(img, np.float32).reshape(height, width, channels)
        x[k] = a / 255.0
        bar.update(1)
    bar.close()
    y = np.array([i for _, i in files], np.int64) if classes else None
    return Dataset(name, np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y, preprocessed=False)


def _open(f: Path, Image, error):
    try:
        img = Image.open(f)
        img.load()
        return img
    except (OSError, error) as e:
        raise DataError(f"{f}: not a readable image ({e}); remove it or replace it") from None


def image_files(path) -> List[Path]:
    """Every image an image folder holds (the inputs output paths must not overwrite)."""
    root = Path(path)
    folders = [root] + list(_split_folders(root).values())
    return [f for d in folders for c in class_folders(d) for f in _images(c)]


__all__ = ["IMAGE_EXTENSIONS", "is_image_folder", "image_shape", "load_image_folder",
           "image_files", "class_folders"]
