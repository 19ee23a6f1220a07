"""Folders of images as datasets (onnx_snn/image_folder.py)."""
import sys

import numpy as np
import onnx
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import builders as B  # noqa: E402
from onnx_snn.datasets import load_dataset  # noqa: E402
from onnx_snn.errors import DataError, MissingDependencyError  # noqa: E402
from onnx_snn.image_folder import image_shape, is_image_folder, load_image_folder  # noqa: E402


def _save(path, a: np.ndarray) -> None:
    """``a`` (H, W) or (H, W, 3) in [0, 1] as an 8-bit image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((a * 255).round().astype(np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    """root/{train,val}/{a,b,c}/N.png: 12x12 grayscale images, 4 per class and split."""
    rng = np.random.default_rng(0)
    images = {}
    for split in ("train", "val"):
        for c in "abc":
            for i in range(4):
                a = rng.random((12, 12))
                _save(tmp_path / "root" / split / c / f"{i}.png", a)
                images[(split, c, i)] = a
    return tmp_path / "root", images


def test_class_subfolders_give_sorted_labels_and_each_command_its_split(folder):
    root, images = folder
    assert is_image_folder(root) and is_image_folder(root / "val") and is_image_folder(root / "val" / "a")
    train = load_dataset(str(root), split="train", image_shape=(1, 12, 12))
    test = load_image_folder(root, "test", (1, 12, 12))     # 'test' reads val/
    assert train.name.endswith(":train") and test.name.endswith(":test")
    assert train.x.shape == (12, 1, 12, 12) and train.x.dtype == np.float32
    assert train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    want = np.round(images[("val", "b", 2)] * 255) / 255
    np.testing.assert_allclose(test.x[4 + 2, 0], want, atol=1e-6)
    assert not train.preprocessed      # --mean/--std or the model's preprocessing apply
    chosen = load_dataset(f"{root}:train", split="test", image_shape=(1, 12, 12))   # FOLDER:split
    np.testing.assert_array_equal(chosen.x, train.x)
    from onnx_snn.datasets import dataset_files
    assert root / "val" / "b" / "2.png" in dataset_files(f"{root}:train")


def test_images_are_brought_to_the_models_size_and_channels(folder):
    """Gray to RGB, 12x12 scaled to cover 16x20 then center-cropped; a channels-last or
    channel-less input gives the same (channels, height, width)."""
    root, _ = folder
    ds = load_image_folder(root / "train", None, (3, 16, 20))
    assert ds.x.shape == (12, 3, 16, 20)
    np.testing.assert_array_equal(ds.x[:, 0], ds.x[:, 2])
    assert image_shape([("x", [None, 3, 16, 20])]) == (3, 16, 20)
    assert image_shape([("x", [None, 16, 20, 3])]) == (3, 16, 20)
    assert image_shape([("x", [None, 16, 20])]) == (1, 16, 20)
    assert image_shape([("x", [None, 784])]) is None


def test_a_folder_of_images_alone_is_unlabeled(folder):
    root, _ = folder
    ds = load_image_folder(root / "train" / "a")
    assert ds.y is None and ds.x.shape == (4, 1, 12, 12)


def test_what_a_folder_lacks_is_said(folder, tmp_path):
    root, _ = folder
    (root / "train").rename(root / "other")
    with pytest.raises(DataError, match=r"no train split folder \(train/ or training/\).*test \(val/\)"):
        load_image_folder(root, "train")
    (root / "val" / "a" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"0\.png: not a readable image"):
        load_image_folder(root, "test")
    (tmp_path / "empty").mkdir()
    assert not is_image_folder(tmp_path / "empty")


def test_without_pillow_a_folder_needs_it(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(MissingDependencyError, match="Pillow"):
        load_image_folder(folder[0] / "train")


def test_a_folder_of_real_images_scores_as_the_arrays_do(tmp_path):
    """200 Fashion-MNIST test images written as PNG files (lossless) in class folders: eval
    of the shipped model on the folder gives the top-1 of the same images as arrays (with
    the model's recorded preprocessing), and convert calibrates on a folder."""
    from onnx_snn.cli import main
    from onnx_snn.datasets import FASHION_MNIST_CLASSES
    from onnx_snn.evaluate import evaluate
    from onnx_snn.demo import shipped_model_path
    SHIPPED_MODEL = shipped_model_path()
    try:
        ds = load_dataset("fashion-mnist:test").take(200)
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    for k in range(len(ds)):
        cls = f"{ds.y[k]}_{FASHION_MNIST_CLASSES[ds.y[k]].replace('/', '-')}"
        _save(tmp_path / "fm" / cls / f"{k:03d}.png", ds.x[k, 0])
    from_folder = evaluate(str(SHIPPED_MODEL), str(tmp_path / "fm"), show_progress=False)
    from_arrays = evaluate(str(SHIPPED_MODEL), ds, show_progress=False)
    assert from_folder.samples == 200 and from_folder.correct == from_arrays.correct
    out = tmp_path / "s.onnx"
    assert main(["-q", "convert", str(SHIPPED_MODEL), "--calib", str(tmp_path / "fm"),
                 "--calib-samples", "64", "--method", "datta", "-o", str(out)]) == 0
    assert main(["-q", "eval", str(out), "--data", str(tmp_path / "fm")]) == 0
    an_image = next((tmp_path / "fm").rglob("*.png"))
    assert main(["-q", "convert", str(SHIPPED_MODEL), "--calib", str(tmp_path / "fm"),
                 "-o", str(an_image)]) == 6          # an input image is never overwritten
    assert an_image.read_bytes()[:4] == b"\x89PNG"


def test_a_channels_last_model_reads_a_folder(folder):
    from onnx_snn.evaluate import evaluate
    m = B.vgg(13, "clip", in_shape=(1, 12, 12))
    g = m.graph                               # an NHWC input transposed inside the graph
    old = g.input[0].name
    g.node.insert(0, onnx.helper.make_node("Transpose", ["x_nhwc"], [old], perm=[0, 3, 1, 2]))
    del g.input[0]
    g.input.insert(0, onnx.helper.make_tensor_value_info("x_nhwc", onnx.TensorProto.FLOAT,
                                                         ["N", 12, 12, 1]))
    r = evaluate(m, str(folder[0]), show_progress=False)
    want = evaluate(B.vgg(13, "clip", in_shape=(1, 12, 12)), str(folder[0]), show_progress=False)
    assert r.samples == 12 and r.correct == want.correct    # the same images, channels last


def test_hidden_files_nested_images_and_classes_missing_from_a_split(tmp_path):
    """Hidden files (macOS' ._*) and folders are skipped; a class folder's images in
    subfolders are its images; a class missing from one split keeps every other label
    where the other split has it; 16-bit grayscale is scaled by 65535."""
    root = tmp_path / "r"
    rng = np.random.default_rng(1)
    for split, classes in (("train", "abc"), ("val", "bc")):
        for c in classes:
            _save(root / split / c / "0.png", rng.random((8, 8)))
    _save(root / "val" / "c" / "deeper" / "1.png", rng.random((8, 8)))
    (root / "val" / "b" / "._0.png").write_bytes(b"AppleDouble")
    (root / "val" / ".cache").mkdir()
    _save(root / "val" / ".cache" / "z.png", rng.random((8, 8)))
    assert load_image_folder(root, "train").y.tolist() == [0, 1, 2]
    assert load_image_folder(root, "test").y.tolist() == [1, 2, 2]
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(root / "val" / "b" / "wide.png")
    ds = load_image_folder(root / "val" / "b", None, (1, 8, 8))
    assert len(ds) == 2 and np.abs(ds.x[:, 0, 0, 0] - 30000 / 65535).min() < 1e-6


def test_a_32_bit_image_of_8_bit_values_is_refused_as_ambiguous(tmp_path):
    """Image.fromarray(int32 pixels of 0..255) saved as TIFF is mode I: divided by 65535 it
    was almost black (a folder scored 8 % where its PNGs scored 83 %), silently; refused with
    what to save instead. Values above 255 in mode I are read as 16-bit, as before."""
    from onnx_snn.errors import DataError
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 200, np.int32)).save(tmp_path / "a" / "x.tif")
    with pytest.raises(DataError, match=r"x.tif: a 32-bit integer image \(mode I\) whose values "
                                        r"are all within 0..255.*8-bit"):
        load_image_folder(tmp_path / "a", None, (1, 8, 8))
    # a dark 16-bit PNG (values <= 255) is read as 16-bit: refused only where the file stores
    # 32-bit samples (some Pillow versions open a 16-bit PNG as mode I too)
    from onnx_snn.image_folder import _stored_sample
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(tmp_path / "c" / "dark.png")
    assert ";16" in _stored_sample(Image.open(tmp_path / "c" / "dark.png"))
    assert _stored_sample(Image.open(tmp_path / "a" / "x.tif")).startswith("I;32")
    ds = load_image_folder(tmp_path / "c", None, (1, 8, 8))
    assert abs(float(ds.x[0, 0, 0, 0]) - 200 / 65535) < 1e-6
    (tmp_path / "b").mkdir()
    Image.fromarray(np.full((8, 8), 30000, np.int32)).save(tmp_path / "b" / "x.tif")
    ds = load_image_folder(tmp_path / "b", None, (1, 8, 8))
    assert abs(float(ds.x[0, 0, 0, 0]) - 30000 / 65535) < 1e-6


def test_unlabeled_images_are_protected_and_odd_inputs_are_no_images(tmp_path):
    from onnx_snn.datasets import dataset_files
    _save(tmp_path / "u" / "0.png", np.zeros((8, 8)))
    assert tmp_path / "u" / "0.png" in dataset_files(str(tmp_path / "u"))
    assert image_shape([("x", [None, 1, 784])]) is None
    assert image_shape([("x", [None, None, None])]) is None


def test_a_sample_reads_only_its_images_and_the_same_ones(folder, monkeypatch):
    """take=(n, seed) reads n images, the ones Dataset.take(n, seed) keeps of them all (a
    calibration sample of a big folder need not load it whole); without a seed (eval's
    --limit), those of seed 0, not the first n, which are the first classes."""
    import onnx_snn.image_folder as F
    root, _ = folder
    whole = load_image_folder(root, "train", (1, 12, 12))
    opened = []
    real = F._open
    monkeypatch.setattr(F, "_open", lambda f, *a: opened.append(f) or real(f, *a))
    for n, seed in ((5, 0), (3, None)):
        opened.clear()
        part = load_image_folder(root, "train", (1, 12, 12), take=(n, seed))
        want = whole.take(n, 0 if seed is None else seed)
        assert len(opened) == n + 1          # the first image's size, then each taken one
        np.testing.assert_array_equal(part.x, want.x)
        np.testing.assert_array_equal(part.y, want.y)
    monkeypatch.undo()
    _save(root / "train" / "0" / "x.png", np.zeros((8, 10)))    # the first file: another size
    whole = load_image_folder(root, "train", (1, None, None))    # free sizes: the first image's
    part = load_image_folder(root, "train", (1, None, None), take=(4, 0))
    assert whole.x.shape[2:] == part.x.shape[2:] == (8, 10)
    np.testing.assert_array_equal(part.x, whole.take(4, 0).x)


def test_an_empty_class_folder_keeps_the_labels_of_the_classes_after_it(tmp_path):
    """Labels are the places of the class folders in sorted order: a class with no images in
    this split shifts no other class's label. A folder with no images in any split is no
    class (torchvision refuses it too): it is named, not given a label that shifts the ones
    after it (a stray empty folder among nine classes scored 53 % instead of 97 %)."""
    rng = np.random.default_rng(2)
    for c in ("c0", "c2", "c3"):
        _save(tmp_path / "flat" / c / "0.png", rng.random((8, 8)))
    (tmp_path / "flat" / "c1").mkdir()
    (tmp_path / "flat" / "c1" / "notes.txt").write_text("no images")   # not an image either
    with pytest.raises(DataError, match="'c1' hold no images .* in any split"):
        load_image_folder(tmp_path / "flat", None, (1, 8, 8))
    (tmp_path / "flat" / "c1" / "notes.txt").unlink()
    (tmp_path / "flat" / "c1").rmdir()
    assert load_image_folder(tmp_path / "flat", None, (1, 8, 8)).y.tolist() == [0, 1, 2]
    for split, classes in (("train", ("c0", "c1", "c2")), ("val", ("c2",))):
        for c in classes:
            _save(tmp_path / "split" / split / c / "0.png", rng.random((8, 8)))
    (tmp_path / "split" / "val" / "c0").mkdir()
    assert load_image_folder(tmp_path / "split", "test", (1, 8, 8)).y.tolist() == [2]
    assert load_image_folder(tmp_path / "split" / "val", None, (1, 8, 8)).y.tolist() == [1]


def test_a_link_back_up_is_not_followed_into_other_classes(tmp_path, caplog):
    """A class folder holding a link to the dataset's root (a loop) keeps its own images:
    following it filed every class's images under that class. A link to another class's
    folder is not followed either: its images were counted twice, once with this class's
    label (an outside sweep: top-1 92.00 -> 81.42 % on 100 images, without a word)."""
    import os
    rng = np.random.default_rng(3)
    for c in ("a", "b"):
        _save(tmp_path / "r" / c / "0.png", rng.random((8, 8)))
    os.symlink(tmp_path / "r", tmp_path / "r" / "b" / "loop")
    os.symlink(tmp_path / "r" / "a", tmp_path / "r" / "b" / "self", target_is_directory=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "r" / "b" / "more", target_is_directory=True)
    _save(tmp_path / "elsewhere" / "1.png", rng.random((8, 8)))   # outside the dataset: read
    ds = load_image_folder(tmp_path / "r", None, (1, 8, 8))
    assert ds.y.tolist() == [0, 1, 1]          # b: its own image and the one outside, not a's
    assert "which holds this folder, is not followed" in caplog.text
    assert "in another class's folder, is not followed" in caplog.text
    load_dataset(str(tmp_path / "r"))          # listed again: said once in the process
    assert caplog.text.count("is not followed") == 2


def test_a_broken_link_to_an_image_is_said(tmp_path, caplog):
    import os
    rng = np.random.default_rng(4)
    for c in ("a", "b"):
        _save(tmp_path / "r" / c / "0.png", rng.random((8, 8)))
    os.symlink(tmp_path / "gone.png", tmp_path / "r" / "b" / "1.png")
    os.symlink(tmp_path / "gone.txt", tmp_path / "r" / "b" / "notes.txt")   # no image: quiet
    assert load_image_folder(tmp_path / "r", None, (1, 8, 8)).y.tolist() == [0, 1]
    assert "1.png: a link to" in caplog.text and "which is not there, is not read" in caplog.text
    assert "notes.txt" not in caplog.text
    os.symlink(tmp_path / "gone2.png", tmp_path / "r" / "a" / "9.png")   # a flat folder too
    assert len(load_image_folder(tmp_path / "r" / "a", None, (1, 8, 8))) == 1
    assert "9.png: a link to" in caplog.text


def test_a_very_elongated_image_is_cropped_before_it_is_scaled(tmp_path, monkeypatch):
    """A 1 x 100 000 image for a 16 x 16 input: only the kept middle is resized (the whole
    image scaled to cover 16 rows would be 1.6 M pixels wide); it reads as that middle."""
    a = np.linspace(0, 255, 100_000).round().astype(np.uint8)[None]   # a ramp: 0.5 mid-way
    (tmp_path / "u").mkdir()
    Image.fromarray(a).save(tmp_path / "u" / "long.png")
    sizes = []
    real = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize",
                        lambda self, size, *a, **k: sizes.append(size) or real(self, size, *a, **k))
    ds = load_image_folder(tmp_path / "u", None, (1, 16, 16))
    assert ds.x.shape == (1, 1, 16, 16) and max(w * h for w, h in sizes) <= 16 * 16
    assert np.abs(ds.x - 0.5).max() < 0.01                    # the middle, not the start


def test_a_folders_val_split_is_its_test_split_and_a_split_needs_split_folders(folder, tmp_path):
    root, _ = folder
    val = load_dataset(f"{root}:val", image_shape=(1, 12, 12))
    np.testing.assert_array_equal(val.x, load_dataset(f"{root}:test", image_shape=(1, 12, 12)).x)
    with pytest.raises(DataError, match="no split folders"):
        load_dataset(f"{root / 'train'}:train", image_shape=(1, 12, 12))
    assert len(load_dataset(str(root / "train"), split="train", image_shape=(1, 12, 12))) == 12


def test_mean_and_std_normalize_a_folder_of_images_on_the_command_line(folder, tmp_path):
    """A folder holds images in [0, 1] like a named dataset: --mean/--std normalize them for
    a model that records no preprocessing (they were refused as if the folder were arrays,
    leaving raw pixels and a warning that told the user to pass them), the spiking model
    records them, and an array file still refuses them."""
    import json
    from onnx_snn.cli import main
    root, _ = folder
    m = B.vgg(13, "clip")
    onnx.save(m, str(tmp_path / "m.onnx"))
    res = {}
    for tag, extra in (("raw", []), ("norm", ["--mean", "0.5", "--std", "0.25"])):
        out = tmp_path / f"{tag}.json"
        assert main(["-q", "eval", str(tmp_path / "m.onnx"), "--data", str(root), "--json",
                     str(out)] + extra) == 0
        res[tag] = json.loads(out.read_text())
    assert res["raw"]["samples"] == res["norm"]["samples"] == 12
    snn = tmp_path / "s.snn.onnx"
    assert main(["-q", "convert", str(tmp_path / "m.onnx"), "--calib", str(root), "--method",
                 "datta", "--mean", "0.5", "--std", "0.25", "-o", str(snn)]) == 0
    from onnx_snn.spiking import format as fmt
    pp = json.loads(fmt.metadata(onnx.load(str(snn)))[fmt.META_PREPROCESS])
    assert pp == {"mean": [0.5], "std": [0.25]}
    np.savez(tmp_path / "a.npz", x=B.rand_input(4), y=np.arange(4) % 3)
    assert main(["-q", "eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "a.npz"),
                 "--mean", "0.5", "--std", "0.25"]) == 2


def test_a_folder_with_both_test_and_val_says_which_it_reads(folder, caplog):
    """test/ and val/ both holding classes: test/ is read, and a warning says so (once,
    though the folder is listed several times)."""
    import logging
    import shutil
    root, _ = folder
    shutil.copytree(root / "val", root / "test")
    (root / "test" / "a" / "0.png").unlink()
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert is_image_folder(root)
        ds = load_dataset(str(root), split="test")
        load_dataset(str(root), split="test")
    assert len(ds) == 11                                  # test/, one image fewer than val/
    said = [r.getMessage() for r in caplog.records if "as its test split" in r.getMessage()]
    assert said == [f"{root}: holds test/ and val/ as its test split; reading test/ (move the "
                    "others out to read one of them)"]


def test_class_folders_are_labelled_by_the_models_class_names(caplog):
    """With the model's class names, folders named after them (any case, spaces or
    punctuation, a leading number) or by class numbers take those classes' indices, a subset
    of the classes included; other names keep the sorted order, with a warning."""
    import logging
    from onnx_snn.image_folder import class_labels
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    assert class_labels(sorted(["t-shirt top", "Ankle boot", "bag"]), classes, "f") == [9, 8, 0]
    assert class_labels(["Dress", "Sneaker"], classes, "f") == [3, 7]
    assert class_labels(["03_dress", "07 Sneaker"], classes, "f") == [3, 7]
    assert class_labels(["3", "7"], classes, "f") == [3, 7]
    assert class_labels([f"{i:02d}" for i in range(10)], classes, "f") == list(range(10))
    assert class_labels(["a", "b"], None, "f") == [0, 1]          # no names: sorted order
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert class_labels(["apples", "pears"], classes, "f") == [0, 1]
    assert "not the model's 10 classes" in caplog.text


def test_class_folders_partly_named_after_the_classes_are_refused_by_name():
    """One misspelled folder among folders named after the model's classes (they all fell
    back to sorted order, 38 % top-1 where 91 % was right) or two folders of one class are
    refused, naming the folder: a typo is not taken for another labelling."""
    from onnx_snn.errors import DataError
    from onnx_snn.image_folder import class_labels
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    names = sorted(["T-shirt top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneakers", "Bag", "Ankle boot"])
    with pytest.raises(DataError, match="'Sneakers' are not named after any") as e:
        class_labels(names, classes, "f")
    assert "the other 9 are" in str(e.value)
    with pytest.raises(DataError, match="'Dress' and 'dress' both name"):
        class_labels(["Dress", "dress"], classes, "f")


@pytest.mark.parametrize("with_names", [True, False])
def test_class_folders_partly_numbered_are_refused_where_the_numbers_would_move(with_names):
    """'misc' among folders '0'-'9' (class 3's images in it): in the sorted order 'misc' was
    class 9 and '4'-'9' each one class down, without a word (top-1 94 -> 36 %, an outside
    tester). Refused, naming the folder, with the model's class names or only their count;
    numbers that keep their places ('0'-'8', then 'other') are labelled as before. Number
    folders among name folders are refused as such (the message called them unnamed)."""
    from onnx_snn.image_folder import class_labels
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    given = classes if with_names else 10
    names = sorted([str(i) for i in range(10) if i != 3] + ["misc"])
    with pytest.raises(DataError, match="'misc' are neither a class number") as e:
        class_labels(names, given, "f")
    assert "the other 9 are numbers" in str(e.value)
    assert class_labels([str(i) for i in range(9)] + ["other"], given, "f") == list(range(10))
    # numbers that are no class numbers (a torchvision-trained model's sorted order) stay so
    assert class_labels(["1001", "1002", "2005", "background"], given, "f") == [0, 1, 2, 3]
    if not with_names:       # (no class names: the message lists none)
        with pytest.raises(DataError, match="are neither a class number, while") as e:
            class_labels(names, None, "f")
        assert "()" not in str(e.value)
    if with_names:
        mixed = sorted([str(i) for i in range(10) if i != 3] + ["Dress"])
        with pytest.raises(DataError, match="are named by class numbers while the other 1"):
            class_labels(mixed, classes, "f")


def test_numbered_class_folders_in_text_order_are_warned_about(caplog):
    """Folders 0..11 without the model's class names are labelled in text order ('10' is
    class 2), as torchvision's ImageFolder does, which a model whose class k is folder k
    scores wrong: a warning says so and how to get the numeric order (leading zeros); 0..9,
    00..11 and names that are not numbers are labelled alike, without it."""
    import logging
    from onnx_snn.image_folder import class_labels
    names = sorted(str(i) for i in range(12))
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert class_labels(names, None, "f") == list(range(12))
    assert "named by numbers" in caplog.text and "folder '10' is class 2" in caplog.text
    assert "leading zeros (00, 01, 02, ...)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        class_labels([str(i) for i in range(10)], None, "f")
        class_labels([f"{i:02d}" for i in range(12)], None, "f")
        class_labels(["a", "b"], None, "f")
    assert caplog.text == ""


def test_a_labelled_folder_follows_the_class_names_and_a_limit_spans_the_classes(tmp_path):
    """eval of a model that records its classes on a folder named after two of them: each
    image gets its own class's label (they were 0 and 1, the sorted order); and --limit on a
    folder takes images of every class, not the first class's."""
    import onnx_snn
    from onnx_snn.image_folder import plan_image_folder
    rng = np.random.default_rng(0)
    for c in ("Sneaker", "Dress"):
        for i in range(6):
            _save(tmp_path / "two" / c / f"{i}.png", rng.random((12, 12)))
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    plan = plan_image_folder(tmp_path / "two", None, (1, 12, 12), classes=names)
    assert sorted({label for _, label in plan.files}) == [3, 7]
    assert all((label == 3) == (f.parent.name == "Dress") for f, label in plan.files)
    limited = plan_image_folder(tmp_path / "two", None, (1, 12, 12), take=(4, None))
    assert len(limited.files) == 4 and {label for _, label in limited.files} == {0, 1}
    # through evaluate: a model that always answers "Sneaker" (class 7) is right on the
    # Sneaker folder's half of the images (with the sorted order, Sneaker was label 1: 0 %)
    import json
    from onnx import TensorProto, helper, numpy_helper
    inits = [numpy_helper.from_array(np.zeros((144, 10), np.float32), "w"),
             numpy_helper.from_array(np.eye(10, dtype=np.float32)[7], "b")]
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]),
                           helper.make_node("Gemm", ["f", "w", "b"], ["y"])], "always7",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    helper.set_model_props(m, {"onnx_snn.classes": json.dumps(names)})
    r = onnx_snn.evaluate(m, str(tmp_path / "two"), show_progress=False, mean=0.0, std=1.0)
    assert r.top1 == pytest.approx(50.0)


def test_show_progress_false_draws_no_bar_reading_a_folder(folder, capsys, monkeypatch):
    """calibrate() and convert() with show_progress=False read an image folder without the
    'reading FOLDER/' bar (it was drawn)."""
    import onnx_snn
    monkeypatch.setenv("ONNX_SNN_PROGRESS", "1")
    root, _ = folder
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    onnx_snn.calibrate(nm, str(root / "train"), show_progress=False)
    onnx_snn.convert(B.vgg(13, "clip"), str(root / "train"), 2, method="datta", show_progress=False)
    assert "reading" not in capsys.readouterr().err
    onnx_snn.calibrate(nm, str(root / "train"))          # the default draws it
    assert "reading" in capsys.readouterr().err


def test_links_into_other_classes_are_judged_by_the_datasets_class_folders(tmp_path, caplog):
    """A class folder that is itself a link elsewhere still has its links into another class
    caught, and its links to folders outside the dataset followed; a link to a hidden folder
    of the root (no class) is followed; a link to one image of another class is not read
    (each of these was misjudged by the rule keyed to the class folder's parent)."""
    import os
    rng = np.random.default_rng(5)
    _save(tmp_path / "r" / "a" / "0.png", rng.random((8, 8)))
    _save(tmp_path / "store" / "b" / "0.png", rng.random((8, 8)))
    _save(tmp_path / "store" / "b_extra" / "1.png", rng.random((8, 8)))
    _save(tmp_path / "r" / ".shared" / "2.png", rng.random((8, 8)))
    os.symlink(tmp_path / "store" / "b", tmp_path / "r" / "b", target_is_directory=True)
    os.symlink(tmp_path / "r" / "a", tmp_path / "store" / "b" / "into_a", target_is_directory=True)
    os.symlink(tmp_path / "store" / "b_extra", tmp_path / "store" / "b" / "extra",
               target_is_directory=True)
    os.symlink(tmp_path / "r" / ".shared", tmp_path / "store" / "b" / "shared",
               target_is_directory=True)
    os.symlink(tmp_path / "r" / "a" / "0.png", tmp_path / "store" / "b" / "a0.png")
    ds = load_image_folder(tmp_path / "r", None, (1, 8, 8))
    assert ds.y.tolist() == [0, 1, 1, 1]      # a's image; b's own, b_extra's and .shared's
    assert caplog.text.count("in another class's folder") == 2      # into_a, a0.png


def test_fewer_class_folders_than_a_nameless_models_scores_are_warned_about(tmp_path, caplog):
    """A model without class names scoring 3 classes, on a folder of 2 of them (b missing):
    c is labelled 1 (the sorted order, as torchvision's ImageFolder), which shifted every
    later label without a word; eval now says how many folders it found for how many scores
    and what to do. As many folders as scores: nothing said."""
    import logging
    import onnx_snn
    from onnx import TensorProto, helper, numpy_helper
    from onnx_snn.image_folder import class_labels
    rng = np.random.default_rng(1)
    for c in ("a", "c"):
        for i in range(2):
            _save(tmp_path / "two" / c / f"{i}.png", rng.random((12, 12)))
    inits = [numpy_helper.from_array(np.zeros((144, 3), np.float32), "w"),
             numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]),
                           helper.make_node("Gemm", ["f", "w", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        onnx_snn.evaluate(m, str(tmp_path / "two"), show_progress=False, mean=0.0, std=1.0)
    said = [r.getMessage() for r in caplog.records if "class scores" in r.getMessage()]
    assert len(said) == 1 and "2 class folders ('a', 'c') for the model's 3 class scores" in said[0]
    assert "'c' class 1" in said[0] and "onnx_snn.classes" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert class_labels(["a", "b", "c"], 3, "f") == [0, 1, 2]
        assert class_labels(["a", "c"], None, "f") == [0, 1]
    assert caplog.text == ""


@pytest.mark.parametrize("classes", [3, 10], ids=["as-many-scores", "more-scores"])
def test_finetuning_on_named_class_folders_records_their_names(folder, tmp_path, classes,
                                                              monkeypatch):
    """A model without class names fine-tuned on folders named after classes learns them in
    their sorted order: the file it writes records those names (onnx_snn.classes), so that
    a later folder of some of them is labelled as it learnt them (a tester's eval of two of
    ten folders scored 6.45 %); not where the folders are not all the model's classes."""
    pytest.importorskip("torch")
    import onnx_snn
    from onnx_snn.datasets import model_classes
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    root, _ = folder
    src, out = tmp_path / "m.snn.onnx", tmp_path / "t.snn.onnx"
    onnx_snn.convert(B.vgg(13, "clip", classes=classes), B.rand_input(16), timesteps=2,
                     show_progress=False).save(src)
    assert model_classes(onnx.load(str(src))) is None
    finetune(str(src), str(out), str(root), FinetuneConfig(epochs=1, batch_size=4),
             show_progress=False, log=lambda *a: None)
    assert model_classes(onnx.load(str(out))) == (["a", "b", "c"] if classes == 3 else None)
    sub = tmp_path / "sub"          # two of the classes: labelled as the model learnt them
    for c in "bc":
        (sub / c).mkdir(parents=True)
        for f in (root / "val" / c).iterdir():
            (sub / c / f.name).write_bytes(f.read_bytes())
    got = load_dataset(str(sub), classes=model_classes(onnx.load(str(out))) or classes)
    assert sorted(set(got.y.tolist())) == ([1, 2] if classes == 3 else [0, 1])
    # the run's own test folder of some of the classes: labelled by the names it learns
    import onnx_snn.runtimes.torch.finetune as F
    seen, real = [], F.load_split
    monkeypatch.setattr(F, "load_split", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    finetune(str(src), str(tmp_path / "t2.snn.onnx"), str(root), FinetuneConfig(epochs=1, batch_size=4),
             show_progress=False, log=lambda *a: None, test_data=str(sub))
    assert sorted(set(seen[1].y.tolist())) == [1, 2]


def test_no_output_is_written_as_an_image_into_the_folder_a_command_reads(folder, tmp_path,
                                                                          capsys):
    """An output named as an image among the images a command reads (eval's --json,
    convert's -o, in a class folder) was written there, and the next read failed on it as
    "not a readable image": refused before the work (exit 6); another name there is no
    image and is written, and so is an image's name at the root of the class folders,
    whose loose files are not read (a plot beside the data)."""
    import onnx_snn
    from onnx_snn.cli import main
    root, _ = folder
    model = tmp_path / "m.snn.onnx"
    onnx_snn.convert(B.vgg(13, "clip", classes=3), B.rand_input(16), timesteps=2,
                     method="max", show_progress=False).save(model)
    dnn = tmp_path / "d.onnx"
    onnx.save(B.vgg(13, "clip", classes=3), str(dnn))
    for argv in (["eval", str(model), "--data", str(root), "--json", str(root / "val" / "a" / "x.png")],
                 ["convert", str(dnn), "--calib", str(root), "--method", "max",
                  "-o", str(root / "train" / "b" / "m.JPG")]):
        assert main(["-q", *argv]) == 6, argv
        assert "a folder of the images this command reads" in capsys.readouterr().err
        assert not any(p.name in ("x.png", "m.JPG") for p in root.rglob("*"))
    assert main(["-q", "eval", str(model), "--data", str(root), "--json",
                 str(root / "val" / "a" / "r.json")]) == 0
    assert (root / "val" / "a" / "r.json").exists()
    # the root of class folders holds no image that is read: an image's name there is fine
    assert main(["-q", "eval", str(model), "--data", str(root), "--json",
                 str(root / "summary.png")]) == 0
