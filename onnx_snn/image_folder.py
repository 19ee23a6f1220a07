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

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import DataError, MissingDependencyError

log = logging.getLogger("onnx_snn")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm")
#: split folders, by the split a command reads
SPLIT_FOLDERS = {"train": ("train", "training"), "test": ("test", "val", "valid", "validation")}
#: the most float32 image data one folder may load (a folder bigger than that: pass a subset)
MAX_BYTES = 8 << 30


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")          # macOS' ._* files, .DS_Store, .git/


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p) and p.is_file()


def _said_if_broken(p: Path) -> bool:
    """A link named as an image whose target is not there is said (once), not read: False."""
    if p.is_symlink() and not p.exists() and _visible(p) \
            and p.suffix.lower() in IMAGE_EXTENSIONS:
        _warn_once("%s: a link to %s, which is not there, is not read", p, os.readlink(p))
    return False


def _images(folder: Path, recursive: bool = False) -> List[Path]:
    """The images in ``folder`` (``recursive``: in its subfolders too, as a class folder's
    images may be), sorted; hidden files and folders left out."""
    if not recursive:
        return sorted(p for p in folder.iterdir() if _is_image(p) or _said_if_broken(p))
    out, seen = [], set()
    top = os.path.realpath(folder)
    # the other class folders beside it (as the dataset lists them: a class folder may be a
    # link to elsewhere): a link into one would count its images twice, once with this
    # class's label
    try:
        others = {os.path.realpath(p) for p in Path(folder).parent.iterdir()
                  if _visible(p) and p.is_dir()} - {top}
    except OSError:
        others = set()

    def within(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    def other_class(path: str) -> Optional[str]:
        return next((o for o in others if within(path, o) and not within(top, o)), None)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        up = real != top and within(top, real)
        sibling = None if up or within(real, top) else other_class(real)
        if real in seen or up or sibling:   # each folder once; a link to the folder or above
            dirnames[:] = []     # it (a loop, which would file every class's images under this
            if up:               # one) or into another class's folder not followed
                _warn_once("%s: a link to %s, which holds this folder, is not followed",
                           dirpath, real)
            elif sibling:
                _warn_once("%s: a link to %s, in another class's folder, is not followed (its "
                           "images would be counted twice, once with this class's label)",
                           dirpath, real)
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            path = Path(dirpath) / f
            if not _is_image(path):
                _said_if_broken(path)
                continue
            if path.is_symlink() and other_class(os.path.realpath(path)):
                _warn_once("%s: a link to %s, in another class's folder, is not read (it would "
                           "be counted twice, once with this class's label)", path,
                           os.path.realpath(path))
                continue
            out.append(path)
    return sorted(out)


def class_folders(folder: Path, with_empty: bool = False) -> List[Path]:
    """The subfolders of ``folder`` that hold images (in them or below), sorted by name (one
    per class); hidden ones left out. ``with_empty``: when any does, every visible subfolder,
    empty ones too: a class's label is its place among all of them (a class with no images in
    this split must not shift the labels of the classes after it)."""
    subs, full = _class_lists(folder)
    return subs if with_empty and full else full


def _class_lists(folder: Path) -> Tuple[List[Path], List[Path]]:
    """(every visible subfolder, those that hold images), sorted; one walk of the folder."""
    try:
        subs = sorted(p for p in Path(folder).iterdir() if p.is_dir() and _visible(p))
        return subs, [s for s in subs if _images(s, recursive=True)]
    except OSError:
        return [], []


def _split_folders(root: Path) -> dict:
    """{split: folder} of ``root``'s split folders that hold class folders (the first of
    SPLIT_FOLDERS' names for a split; when several are there, which is read is said)."""
    out = {}
    for split, names in SPLIT_FOLDERS.items():
        found = [root / n for n in names if (root / n).is_dir() and class_folders(root / n)]
        if found:
            out[split] = found[0]
            if len(found) > 1:
                _warn_once("%s: holds %s as its %s split; reading %s/ (move the others out to "
                           "read one of them)", root, " and ".join(f"{p.name}/" for p in found),
                           split, found[0].name)
    return out


_WARNED: set = set()


def _warn_once(message: str, *args) -> None:
    """A warning about a folder's layout, once per process (a folder is listed several
    times: to recognize it, to find its classes, to read them)."""
    key = message % args
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message, *args)


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
    if len(dims) == 3 and all(isinstance(d, int) and d >= 4 for d in dims[1:]):
        return 1, dims[1], dims[2]            # [N, H, W]: one channel, no channel axis
    return None


def _fit(img, width: int, height: int):
    """``img`` scaled so that it covers width x height, then center-cropped to it."""
    from PIL import Image
    w, h = img.size
    if (w, h) == (width, height):
        return img
    s = max(width / w, height / h)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    left, top = (nw - width) // 2, (nh - height) // 2
    if nw * nh > 4 * width * height:
        # a very elongated image: resize only the part the crop keeps (the whole of a
        # 1 x 1 000 000 image brought to 16 rows would be 16 000 000 wide: 1.7 GB)
        return img.resize((width, height), Image.BILINEAR,
                          box=(left / s, top / s, (left + width) / s, (top + height) / s))
    img = img.resize((nw, nh), Image.BILINEAR)
    return img.crop((left, top, left + width, top + height))


@dataclass(frozen=True)
class FolderPlan:
    """What reading an image folder's split will give, before any image but the first is
    read: its images (after ``take``) with their class indices (-1: no classes), and the
    size every image is brought to."""

    folder: Path
    name: str
    files: List[Tuple[Path, int]]
    labeled: bool
    channels: int
    height: int
    width: int
    #: the class folders' names by label where the labels are their sorted order (the model
    #: records no class names to go by): what a command that trains on them records
    class_names: Optional[List[str]] = None

    @property
    def image_bytes(self) -> int:
        """One image's float32 bytes."""
        return self.channels * self.height * self.width * 4


def _check_named(names: Sequence[str], by_name: List[Optional[int]], classes: Sequence[str],
                 where: str) -> None:
    """Folders some of which are named after the model's classes and some not (a typo,
    'Sneakers' for 'Sneaker'), or two named after one class, are refused (DataError): the
    sorted order they would fall back to labels the well-named ones wrong too (38 % where
    91 % was right), and training on them learns the wrong classes."""
    if not any(i is not None for i in by_name):
        return
    unmatched = [n for n, i in zip(names, by_name) if i is None]
    if unmatched and all(re.fullmatch(r"\d+", n.strip()) for n in unmatched):
        shown = ", ".join(repr(n) for n in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        raise DataError(f"{where}: class folder(s) {shown} are named by class numbers while the "
                        f"other {len(names) - len(unmatched)} are named after the model's "
                        "classes: name every folder one way (all by number, or all by name)")
    if unmatched:
        shown = ", ".join(repr(n) for n in unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        raise DataError(f"{where}: class folder(s) {shown} are not named after any of the "
                        f"model's classes ({', '.join(map(str, classes[:12]))}"
                        f"{', ...' if len(classes) > 12 else ''}), while the other "
                        f"{len(names) - len(unmatched)} are: rename them after their class "
                        "(case, spaces and punctuation do not matter), or move them out")
    taken: dict = {}
    for n, i in zip(names, by_name):
        if i in taken:
            raise DataError(f"{where}: class folders {taken[i]!r} and {n!r} both name the "
                            f"model's class {classes[i]!r}; keep one folder per class")
        taken[i] = n


def _check_numbered(names: Sequence[str], classes, where: str) -> None:
    """Folders some of which are named by class numbers and some not ('misc' among '0'-'9')
    are refused (DataError) where the sorted order would not label the numbered ones by
    their numbers: one class folder of another name moved every number after it down by
    one, without a word (top-1 94 -> 36 %)."""
    numbered = [bool(re.fullmatch(r"\d+", n.strip())) for n in names]
    if not any(numbered) or all(numbered):
        return
    numbers = [int(n) for n, k in zip(names, numbered) if k]
    count = len(classes) if classes else len(names)
    if len(set(numbers)) != len(numbers) or max(numbers) >= count:
        return       # (no class numbers: '1001', '2005', 'background' keep the sorted order)
    if all(int(n) == i for i, (n, k) in enumerate(zip(names, numbered)) if k):
        return       # ('0'-'8' and 'other' after them: each number is its place, its label)
    other = [n for n, k in zip(names, numbered) if not k]
    shown = ", ".join(repr(n) for n in other[:5]) + (", ..." if len(other) > 5 else "")
    named = f" nor one of the model's classes ({', '.join(map(str, classes[:6]))}" \
            f"{', ...' if len(classes) > 6 else ''})" if classes else ""
    raise DataError(f"{where}: class folder(s) {shown} are neither a class number{named}, while "
                    f"the other {len(names) - len(other)} are numbers: in the folders' sorted "
                    "order the numbered ones would not be labelled by their numbers; rename "
                    "them by their class number, or move them out")


def class_labels(names: Sequence[str], classes, where: str) -> List[int]:
    """The label of each class folder (``names``, sorted). Without the model's class names
    (``classes``, its ``onnx_snn.classes``), or when they say nothing else, the folder's
    place in the sorted list (as torchvision's ImageFolder). With them, folders named after
    the classes (compared without case, spaces or punctuation, a leading number such as
    ``03_`` allowed) take those classes' indices, and folders named by numbers within the
    classes take those numbers: a folder of some of the classes, or of names that sort in
    another order, is labelled as the model counts. Anything else keeps the sorted order,
    with a warning when the folders are not the model's classes. ``classes`` may be only
    their number (a model without names, whose output says how many it scores): the sorted
    order, with a warning when the folders are not that many (a class missing from the
    folder shifts the label of every class after it)."""
    order = list(range(len(names)))
    count = classes if isinstance(classes, int) and not isinstance(classes, bool) else None
    if count is not None:
        classes = None
        if names and len(names) != count:
            shown = ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
            log.warning("%s: %d class folders (%s) for the model's %d class scores: labelled in "
                        "their sorted order (%r is class 0, %r class %d), so a class missing "
                        "here shifts the label of every class after it; keep a folder for "
                        "each class (an empty one in this split will do when another split "
                        "has its images), or record the model's class names (the "
                        "onnx_snn.classes metadata) to label the folders by name", where,
                        len(names), shown, count, names[0], names[-1], len(names) - 1)
    if not classes or not names:
        _check_numbered(names, [], where)
        numbers = [n.strip() for n in names]
        if names and all(re.fullmatch(r"\d+", n) for n in numbers) and \
                sorted(numbers, key=int) != numbers:
            shown = ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
            moved = next(n for i, n in enumerate(names) if int(n) != i) \
                if all(int(n) < len(names) for n in names) else None
            log.warning("%s: the class folders are named by numbers (%s) and labelled in their "
                        "sorted order as text, as torchvision's ImageFolder and Keras label "
                        "them%s; a model whose class k is the folder named k is scored wrong "
                        "this way: name the folders with leading zeros (%s) to label them by "
                        "number", where, shown,
                        f" (folder {moved!r} is class {names.index(moved)})" if moved else "",
                        ", ".join(n.zfill(len(max(numbers, key=len))) for n in sorted(numbers, key=int)[:3]) + ", ...")
        return order

    def key(text: str) -> str:
        return re.sub(r"[^0-9a-z]+", "", str(text).lower())

    want = {key(c): i for i, c in enumerate(classes)}
    if len(want) != len(classes):       # names that collide: nothing to go by
        return order
    by_name = [want.get(key(n), want.get(key(re.sub(r"^\s*\d+[\s_.-]+", "", n)))) for n in names]
    _check_named(names, by_name, classes, where)     # now every folder is named, or none
    if by_name[0] is None:
        _check_numbered(names, classes, where)
    if by_name[0] is not None:
        chosen = by_name
    elif all(re.fullmatch(r"\d+", n.strip()) for n in names) and \
            all(int(n) < len(classes) for n in names) and len({int(n) for n in names}) == len(names):
        chosen = [int(n) for n in names]
    else:
        if len(names) != len(classes):
            shown = ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
            log.warning("%s: the class folders (%s) are not the model's %d classes (%s): the "
                        "labels follow the folders' sorted order (%r is class 0); name each "
                        "folder after its class, or by its class number", where, shown,
                        len(classes), ", ".join(map(str, classes[:6])) +
                        (", ..." if len(classes) > 6 else ""), names[0])
        return order
    if chosen != order:
        log.info("%s: class folders labelled by the model's class names", where)
    return chosen


def plan_image_folder(path, split: Optional[str] = None,
                      shape: Optional[Sequence[Optional[int]]] = None, take=None,
                      classes=None) -> FolderPlan:
    """The images :func:`load_image_folder` reads (same arguments), listed, and the size they
    are brought to (free sizes: the first image's, of the whole split). ``classes``: the
    model's class names, which label the class folders, or their number
    (:func:`class_labels`)."""
    from .datasets import take_indices
    Image, UnidentifiedImageError = _pillow()
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
    # the classes of every split, so that a class missing from one split shifts no label
    roots = list(splits.values()) or [folder]
    lists = {d: _class_lists(d) for d in roots}          # each folder walked once
    names = sorted({c.name for subs, full in lists.values() for c in (subs if full else [])})
    if not splits and folder.name in sum(SPLIT_FOLDERS.values(), ()):
        # a split folder given itself (root/val): a class with images in a sibling split is one
        lists.update({d: _class_lists(d) for d in _split_folders(folder.parent).values()
                      if d not in lists})
    empty = sorted(set(names) - {c.name for _, full in lists.values() for c in full})
    if empty:     # not a class of any split: it would shift every label after it
        raise DataError(f"{root}: the class folder(s) {', '.join(map(repr, empty))} hold no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}) in any split; each class folder is a "
                        "label, so remove the empty one(s) or add their images")
    labels = class_labels(names, classes, str(root))
    classes = [folder / c for c in names]
    files = [(f, labels[i]) for i, c in enumerate(classes) if c.is_dir()
             for f in _images(c, recursive=True)] if classes else \
        [(f, -1) for f in _images(folder)]        # images without classes: no labels
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}); an image folder "
                        "holds one subfolder of images per class, or the images themselves")
    channels, height, width = (list(shape) + [None] * 3)[:3] if shape else (None, None, None)
    first = _open(files[0][0], Image, UnidentifiedImageError)   # free sizes: the first image's
    if take is not None and take[0] is not None and 0 < take[0] < len(files):
        # as Dataset.take picks, but never the first files alone: they are the first classes
        # (a folder is listed class by class), where a named dataset's first are mixed
        seed = take[1] if take[1] is not None else 0
        files = [files[i] for i in take_indices(len(files), take[0], seed)]
    channels = channels or (1 if first.mode in ("1", "L", "I", "I;16", "F") else 3)
    width, height = width or first.size[0], height or first.size[1]
    by_order = names if names and labels == list(range(len(names))) else None
    return FolderPlan(folder, name, files, bool(classes), channels, height, width, by_order)


def load_image_folder(path, split: Optional[str] = None,
                      shape: Optional[Sequence[Optional[int]]] = None,
                      show_progress: bool = True, take=None, part=None, plan=None,
                      classes=None):
    """The images under ``path`` as a :class:`~onnx_snn.datasets.Dataset` of NCHW float32
    images in [0, 1] and their class indices. ``split`` picks a split folder when ``path`` has
    them; ``shape`` (channels, height, width; see :func:`image_shape`) is what the images are
    brought to (None, or free sizes: the first image's). ``take`` = (n, seed): read only the
    images ``Dataset.take(n, seed)`` would keep (a calibration sample of a big folder).
    ``part`` = (start, stop): only those of them (a folder read in parts); ``plan``: the
    :func:`plan_image_folder` of these arguments, when the caller has it. A ``take`` without a
    seed (``eval --limit N``) reads ``Dataset.take(n, 0)``'s images: a folder is listed class
    by class, and its first N would be its first classes alone. ``classes``: the model's
    class names, which label the class folders, or their number (:func:`class_labels`)."""
    from .datasets import Dataset
    from .progress import Progress
    Image, UnidentifiedImageError = _pillow()
    plan = plan or plan_image_folder(path, split, shape, take, classes)
    files = plan.files if part is None else plan.files[part[0]:part[1]]
    need = len(files) * plan.image_bytes
    if need > MAX_BYTES:
        raise DataError(f"{plan.folder}: {len(files)} images of {plan.channels}x{plan.height}x"
                        f"{plan.width} would take {need / 2**30:.1f} GiB as float32, above "
                        f"{MAX_BYTES >> 30} GiB; pass a folder with fewer images (or --limit / "
                        "--calib-samples)")
    x = np.empty((len(files), plan.height, plan.width, plan.channels), np.float32)
    mode = "L" if plan.channels == 1 else "RGB"
    bar = Progress(len(files), desc=f"reading {plan.folder.name}/", unit="sample",
                   enabled=None if show_progress else False)
    for k, (f, _) in enumerate(files):
        x[k] = _pixels(_open(f, Image, UnidentifiedImageError), mode, plan.width, plan.height, f)
        bar.update(1)
    bar.close()
    y = np.array([i for _, i in files], np.int64) if plan.labeled else None
    return Dataset(plan.name, np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y, preprocessed=False,
                   class_names=plan.class_names if plan.labeled else None)


def _pillow():
    """Pillow's Image module and its error for unreadable files."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MissingDependencyError("reading a folder of images needs Pillow: pip install "
                                     "pillow (it comes with onnx-snn[torch])") from None
    return Image, UnidentifiedImageError


def _pixels(img, mode: str, width: int, height: int, f: Path) -> np.ndarray:
    """An image's pixels in [0, 1] as [height, width, channels]: 8-bit images (and palette,
    alpha, CMYK ones, converted) by 255, 16-bit grayscale by 65535 (a 32-bit integer one
    too, unless its values all fit 0..255: refused, as no file says which range it has)."""
    from PIL import Image
    channels = 1 if mode == "L" else 3
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise DataError(f"{f}: a 32-bit integer image ({img.mode}) with values outside "
                            "0..65535; save it as an 8- or 16-bit image")
        if img.mode == "I" and a.max() <= 255 and ";16" not in img.info.get(_STORED, ""):
            # 8-bit values stored in 32 bits (Image.fromarray of an int32 array), or a dark
            # 16-bit image: divided by 65535 the first would be almost black, by 255 the second
            # far too bright, and no file says which it is
            raise DataError(f"{f}: a 32-bit integer image (mode I) whose values are all within "
                            "0..255: 8-bit values stored in 32 bits, or a dark 16-bit image? "
                            "Save it as an 8-bit (mode L or RGB) or 16-bit (mode I;16) image")
        g = Image.fromarray((a / 65535.0).astype(np.float32), mode="F")
        g = np.asarray(_fit(g, width, height), np.float32)
        return np.repeat(g[:, :, None], channels, axis=2)
    if img.mode == "F":
        raise DataError(f"{f}: a floating-point image (mode F) has no known range; save it "
                        "as an 8- or 16-bit image")
    a = np.asarray(_fit(img.convert(mode), width, height), np.float32)
    return a.reshape(height, width, channels) / 255.0


#: where :func:`_open` keeps an image's stored sample format (``I;16B``, ``I;32S``: a 16-bit
#: PNG opens as mode I in some Pillow versions, a 32-bit TIFF always does)
_STORED = "onnx_snn.stored"


def _stored_sample(img) -> str:
    """The raw mode of an image's first tile (its pixels as the file stores them), or ''."""
    try:
        args = img.tile[0][3] if img.tile else ""
    except (IndexError, TypeError):
        return ""
    first = args[0] if isinstance(args, tuple) and args else args
    return first if isinstance(first, str) else ""


def _open(f: Path, Image, error):
    try:
        img = Image.open(f)
        img.info[_STORED] = _stored_sample(img)     # (load() drops the tiles that tell it)
        img.load()
        return img
    except (OSError, error, Image.DecompressionBombError) as e:
        raise DataError(f"{f}: not a readable image ({e}); remove it or replace it") from None


def image_files(path) -> List[Path]:
    """Every image an image folder holds (the inputs output paths must not overwrite)."""
    root = Path(path)
    folders = [root] + list(_split_folders(root).values())
    return [f for d in folders for f in _images(d)] + \
        [f for d in folders for c in class_folders(d) for f in _images(c, recursive=True)]


def split_names(path) -> set:
    """The splits (train, test) an image folder has split folders for."""
    return set(_split_folders(Path(path))) if Path(path).is_dir() else set()


__all__ = ["IMAGE_EXTENSIONS", "is_image_folder", "image_shape", "load_image_folder",
           "plan_image_folder", "FolderPlan",
           "image_files", "class_folders", "split_names"]
