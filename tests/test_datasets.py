"""Dataset readers: IDX (Fashion-MNIST, MNIST), CIFAR python pickles, .npy/.npz, clear errors."""
import gzip
import pickle
import struct

import numpy as np
import pytest

from onnx_snn.datasets import (apply_preprocess, load_array_file, load_cifar, load_dataset,
                               read_idx)
from onnx_snn.errors import DataError


def write_idx(path, arr, code=0x08):
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(">u1").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def make_fmnist(folder, n=20):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


def test_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_truncated_idx(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    data = (tmp_path / "a").read_bytes()
    (tmp_path / "a").write_bytes(data[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "a")
    (tmp_path / "b").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "b")
    floats = bytearray(data)          # a uint8 file whose type byte says float32: its size
    floats[2] = 0x0D                  # is a quarter of what the header asks, and it says so
    (tmp_path / "c").write_bytes(bytes(floats))
    with pytest.raises(DataError, match=r"truncated IDX file \(24 bytes of data for shape "
                                        r"\[2, 3, 4\] of float32 \(type byte 0x0D\): 96\)"):
        read_idx(tmp_path / "c")


def test_fashion_mnist_from_data_dir(tmp_path):
    make_fmnist(tmp_path)
    ds = load_dataset("fashion-mnist:train", data_dir=tmp_path)
    assert ds.x.shape == (20, 1, 28, 28) and ds.x.dtype == np.float32
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0 and ds.y.dtype == np.int64


def test_fashion_mnist_env_var(tmp_path, monkeypatch):
    make_fmnist(tmp_path)
    monkeypatch.setenv("ONNX_SNN_DATA", str(tmp_path))
    assert len(load_dataset("fashion-mnist")) == 20
    # a folder that is not there is said, as --data-dir's is (not passed over for the
    # system's copy)
    monkeypatch.setenv("ONNX_SNN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"\$ONNX_SNN_DATA .*nowhere: no such folder"):
        load_dataset("fashion-mnist")


@pytest.mark.parametrize("sub", ["", "mnist", "MNIST/raw"])
def test_mnist_from_its_idx_files(tmp_path, monkeypatch, sub):
    """MNIST is read like Fashion-MNIST from its four IDX files: in the data folder itself, an
    mnist/ folder or torchvision's MNIST/raw/; missing, the error says where it looked and
    where to get it."""
    folder = tmp_path / sub
    folder.mkdir(parents=True, exist_ok=True)
    make_fmnist(folder, n=12)
    for spec, n in (("mnist", 12), ("MNIST:train", 12)):
        ds = load_dataset(spec, data_dir=tmp_path)
        assert len(ds) == n and ds.x.shape[1:] == (1, 28, 28) and ds.name.startswith("mnist:")
        assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    monkeypatch.setenv("ONNX_SNN_DATA", str(tmp_path))
    if sub:
        assert len(load_dataset("mnist")) == 12
    else:     # a shared data folder's bare IDX files may be Fashion-MNIST's (the same names)
        with pytest.raises(DataError, match="MNIST not found"):
            load_dataset("mnist")
        (tmp_path / "mnist").mkdir()
        make_fmnist(tmp_path / "mnist", n=7)        # beside Fashion-MNIST's: its own folder wins
        assert len(load_dataset("mnist")) == 7 and len(load_dataset("fashion-mnist")) == 12
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="MNIST not found.*ossci-datasets"):
        load_dataset("mnist", data_dir=empty)


def test_split_arrays_named_after_each_input(tmp_path):
    """Keras's split names, one array per model input (x_train, z_train, y_train, and the same
    for test): read per split as {input: array} (z_train was ignored and the model refused
    its data); inputs of other names too, a single one included; an input without its
    array is named."""
    from onnx_snn.datasets import data_splits
    rng = np.random.default_rng(0)
    f = tmp_path / "two.npz"
    arrays = {"x_train": rng.random((6, 4)), "z_train": rng.random((6, 2)), "y_train": np.arange(6),
              "x_test": rng.random((3, 4)), "z_test": rng.random((3, 2)), "y_test": np.arange(3)}
    np.savez(f, **arrays)
    for split in ("train", "test"):
        ds = load_array_file(f, split, inputs=["x", "z"])
        assert set(ds.x) == {"x", "z"} and ds.name.endswith(":" + split)
        np.testing.assert_allclose(ds.x["z"], arrays[f"z_{split}"])
        np.testing.assert_array_equal(ds.y, arrays[f"y_{split}"])
    g = tmp_path / "named.npz"
    np.savez(g, img_train=rng.random((5, 3)), meta_train=rng.random((5, 1)), y_train=np.arange(5),
             img_test=rng.random((2, 3)), meta_test=rng.random((2, 1)), y_test=np.arange(2))
    assert data_splits(str(g)) == {"train", "test"}
    ds = load_array_file(g, "train", inputs=["img", "meta"])
    assert set(ds.x) == {"img", "meta"} and len(ds.y) == 5
    one = load_array_file(g, "test", inputs=["img"])        # one input: its own array
    assert isinstance(one.x, np.ndarray) and one.x.shape == (2, 3) and len(one.y) == 2
    with pytest.raises(DataError, match=r"holds y_test but no x_test.*<input>_test.*img, other"):
        load_array_file(g, "test", inputs=["img", "other"])
    # a review's cases: Keras's own file for a model whose one input is named x is read as
    # before (an array, its dtype kept for the raw-pixel checks), an input named y is never
    # fed the labels, and x / y beside other *_test arrays are read as x / y
    k = tmp_path / "keras.npz"
    np.savez(k, x_train=np.zeros((4, 3), np.uint8), y_train=np.arange(4),
             x_test=np.ones((2, 3), np.uint8), y_test=np.arange(2))
    ds = load_array_file(k, "test", inputs=["x"])
    assert isinstance(ds.x, np.ndarray) and ds.source_dtype == "uint8" and len(ds.y) == 2
    ds = load_array_file(k, "test", inputs=["y"])
    assert isinstance(ds.x, np.ndarray) and np.all(ds.x == 1) and list(ds.y) == [0, 1]
    m = tmp_path / "mixed.npz"
    np.savez(m, x=rng.random((5, 3)), y=np.arange(5), idx_train=np.arange(3), y_train=np.arange(3),
             idx_test=np.arange(2), y_test=np.arange(2))
    assert data_splits(str(m)) == set()
    ds = load_array_file(m, None, inputs=["input"])
    assert ds.x.shape == (5, 3) and len(ds.y) == 5


def test_split_dicts_named_after_each_input_in_python():
    """The same for a dict passed in Python (it raised KeyError: None)."""
    from onnx_snn.convert import _dict_dataset
    rng = np.random.default_rng(0)
    d = {"img_test": rng.random((3, 2)), "meta_test": rng.random((3, 1)), "y_test": np.arange(3)}
    ds = _dict_dataset(d, [("img", None), ("meta", None)])
    assert set(ds.x) == {"img", "meta"} and list(ds.y) == [0, 1, 2]
    ds = _dict_dataset({"img_test": d["img_test"], "y_test": d["y_test"]}, [("img", None)])
    np.testing.assert_allclose(ds.x, d["img_test"])
    with pytest.raises(DataError, match="holds y_test but no x_test"):
        _dict_dataset(d, [("other", None)])


def test_one_idx_dataset_read_as_the_other_is_warned_about(tmp_path, caplog):
    """MNIST's and Fashion-MNIST's files have the same names: `--data mnist --data-dir` a
    Fashion-MNIST folder was scored as MNIST, silently. The mean pixel tells them apart
    (0.131 / 0.286): a warning says which the files look like; a dataset's own files, or
    images like neither, pass quietly."""
    import logging
    rng = np.random.default_rng(0)

    def images(mean):          # 200 images of about this mean pixel
        return np.clip(rng.normal(mean * 255, 30, (200, 28, 28)), 0, 255).round()
    for name, mean, warned in (("mnist", 0.286, "look like Fashion-MNIST's, not MNIST's"),
                               ("fashion-mnist", 0.131, "look like MNIST's, not Fashion-MNIST's"),
                               ("mnist", 0.131, None), ("fashion-mnist", 0.286, None),
                               ("mnist", 0.5, None)):
        folder = tmp_path / f"{name}-{mean}"
        folder.mkdir()
        write_idx(folder / "t10k-images-idx3-ubyte.gz", images(mean))
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 200))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            ds = load_dataset(name, data_dir=folder)
        assert len(ds) == 200
        if warned:
            assert warned in caplog.text and "same names" in caplog.text, caplog.text
        else:
            assert "look like" not in caplog.text, (name, mean, caplog.text)


def test_arrays_beside_the_splits_are_said_to_be_ignored(tmp_path, caplog):
    """x/y beside x_test/y_test: the test split is read (as before), and the other arrays are
    said to be ignored (they were, silently: either set could have been meant)."""
    import logging
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "both.npz", x=rng.random((10, 4)), y=np.zeros(10, int),
             x_test=rng.random((30, 4)), y_test=np.zeros(30, int))
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        ds = load_dataset(str(tmp_path / "both.npz"))
    assert len(ds) == 30
    assert "reads its test split (x_test, y_test); the array(s) 'x', 'y' beside the splits " \
           "are ignored" in caplog.text
    caplog.clear()
    np.savez(tmp_path / "keras.npz", x_train=rng.random((3, 4)), y_train=np.zeros(3, int),
             x_test=rng.random((2, 4)), y_test=np.zeros(2, int))
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        load_dataset(str(tmp_path / "keras.npz"))
    assert caplog.text == ""


def test_keras_and_positional_npz_files(tmp_path):
    """A .npz as Keras's datasets save it (x_train, y_train, x_test, y_test: the split picks,
    test by default, named in the dataset's name) and numpy.savez(f, x, y)'s positional
    arr_0/arr_1 are read as inputs and labels; a split the file lacks is refused, named."""
    rng = np.random.default_rng(0)
    xs = {sp: rng.integers(0, 256, (n, 28, 28)).astype(np.uint8) for sp, n in (("train", 12), ("test", 5))}
    ys = {sp: rng.integers(0, 10, len(x)) for sp, x in xs.items()}
    np.savez(tmp_path / "keras.npz", x_train=xs["train"], y_train=ys["train"],
             x_test=xs["test"], y_test=ys["test"])
    for split in (None, "train", "test"):
        ds = load_dataset(str(tmp_path / "keras.npz"), split=split)
        sp = split or "test"
        np.testing.assert_array_equal(ds.x, xs[sp].astype(np.float32))
        np.testing.assert_array_equal(ds.y, ys[sp])
        assert ds.name.endswith(f"keras.npz:{sp}")
    np.savez(tmp_path / "train_only.npz", x_train=xs["train"], y_train=ys["train"])
    with pytest.raises(DataError, match="not the test split .x_test"):
        load_dataset(str(tmp_path / "train_only.npz"), split="test")
    # FILE.npz:SPLIT picks a split whatever the command reads; the file is what is protected
    from onnx_snn.datasets import dataset_files
    spec = f"{tmp_path / 'train_only.npz'}:train"
    assert len(load_dataset(spec, split="test")) == 12
    assert dataset_files(spec) == [tmp_path / "train_only.npz"]
    np.savez(tmp_path / "pos.npz", xs["test"], ys["test"])
    ds = load_dataset(str(tmp_path / "pos.npz"))
    np.testing.assert_array_equal(ds.y, ys["test"])
    assert not isinstance(ds.x, dict) and ds.x.shape == (5, 28, 28)
    np.savez(tmp_path / "two_inputs.npz", xs["test"], xs["test"])   # no labels: two inputs
    assert isinstance(load_dataset(str(tmp_path / "two_inputs.npz")).x, dict)
    np.savez(tmp_path / "x_only.npz", xs["test"])
    assert load_dataset(str(tmp_path / "x_only.npz")).x.shape == (5, 28, 28)
    np.savez(tmp_path / "bad_labels.npz", xs["test"], ys["test"] - 20)  # said, not taken as inputs
    with pytest.raises(DataError, match="negative"):
        load_dataset(str(tmp_path / "bad_labels.npz"))
    from onnx_snn.datasets import npz_splits
    assert npz_splits(tmp_path / "keras.npz") == {"train", "test"}
    assert npz_splits(tmp_path / "pos.npz") == set() == npz_splits(tmp_path / "nowhere.npz")
    from onnx_snn.datasets import data_splits     # what finetune holds apart: a chosen split alone
    assert data_splits(str(tmp_path / "keras.npz")) == {"train", "test"}
    assert data_splits(f"{tmp_path / 'keras.npz'}:train") == {"train"}
    assert data_splits(str(tmp_path / "pos.npz")) == set() == data_splits(None)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    import onnx_snn.datasets as D
    monkeypatch.setattr(D, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("ONNX_SNN_DATA", raising=False)
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=tmp_path)


def make_cifar(root, name="cifar10", n=6):
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        folder = root / "cifar-100-python"
        folder.mkdir()
        files, key = ["train", "test"], b"fine_labels"
    images = {}
    for f in files:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        images[f] = data
        with open(folder / f, "wb") as fh:
            pickle.dump({b"data": data, key: list(rng.integers(0, 10, n))}, fh)
    return images


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_folders(tmp_path, name):
    images = make_cifar(tmp_path, name)
    test = load_dataset(name, data_dir=tmp_path)
    train = load_dataset(f"{name}:train", data_dir=tmp_path)
    assert test.x.shape == (6, 3, 32, 32)
    assert train.x.shape == ((30 if name == "cifar10" else 6), 3, 32, 32)
    first = images["test_batch" if name == "cifar10" else "test"][0]
    # channel-major rows: the first 1024 bytes are the red plane
    np.testing.assert_allclose(test.x[0, 0].reshape(-1), first[:1024] / 255.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_folders(tmp_path, name):
    """The binary version (cifar-10-batches-bin: records of a label byte and 3072 pixel bytes;
    cifar-100-binary: coarse and fine label bytes first) is read like the python one (it was
    'not found', with a hint to download the python version beside the folder it holds)."""
    rng = np.random.default_rng(2)
    folder, files, nlab = (("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)]
                            + ["test_batch.bin"], 1) if name == "cifar10" else
                           ("cifar-100-binary", ["train.bin", "test.bin"], 2))
    (tmp_path / folder).mkdir()
    records = {}
    for f in files:
        labels = rng.integers(0, 10, (4, nlab), dtype=np.uint8)
        pixels = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        (tmp_path / folder / f).write_bytes(np.concatenate([labels, pixels], 1).tobytes())
        records[f] = labels[:, -1], pixels
    test = load_dataset(name, data_dir=tmp_path)
    train = load_dataset(f"{name}:train", data_dir=tmp_path)
    assert test.x.shape == (4, 3, 32, 32) and len(train) == (20 if name == "cifar10" else 4)
    want_y, want_x = records[files[-1]]
    np.testing.assert_array_equal(test.y, want_y)          # cifar100: the fine label
    np.testing.assert_allclose(test.x[1, 0].reshape(-1), want_x[1, :1024] / 255.0, rtol=1e-6)
    (tmp_path / folder / files[-1]).write_bytes(b"\x01" * 100)
    with pytest.raises(DataError, match="not a .* binary batch"):
        load_dataset(name, data_dir=tmp_path)
    # a stray test.bin in the data folder itself is not taken for CIFAR-100
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "test.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar100", data_dir=stray)


def test_cifar_corrupt_batch(tmp_path):
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="not a CIFAR python batch"):
        load_cifar("cifar10", data_dir=tmp_path)


def test_a_npy_is_memory_mapped_and_only_the_samples_taken_are_read(tmp_path):
    """A float32 .npy is not read whole: the dataset's inputs map the file (a 9.4 GB file
    took 9.3 GB to evaluate 100 samples), the samples taken are an array of their own; a
    file cut short of what its header says, or of Python objects, is refused by name."""
    x = np.random.default_rng(0).random((64, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    ds = load_array_file(tmp_path / "d.npy")
    assert not ds.x.flags.owndata and not ds.x.flags.writeable        # the file's pages
    part = ds.take(5, seed=0)
    assert part.x.flags.owndata and part.x.shape == (5, 1, 4, 4)
    np.testing.assert_array_equal(part.x, x[ds.rows(5, seed=0)])
    (tmp_path / "cut.npy").write_bytes((tmp_path / "d.npy").read_bytes()[:2000])
    with pytest.raises(DataError, match="cut.npy: truncated: its header describes more data"):
        load_array_file(tmp_path / "cut.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy: holds Python objects"):
        load_array_file(tmp_path / "obj.npy")


@pytest.mark.parametrize("part_bytes", [None, 64 * 7, 1])
def test_non_finite_values_are_counted_in_parts_naming_the_first_sample(monkeypatch, part_bytes):
    """check_finite reads the data in parts (a mask of a whole file took as much again):
    the same count and first sample whatever the part's size; whole numbers are finite."""
    import onnx_snn.datasets as D
    if part_bytes:
        monkeypatch.setattr(D, "FINITE_PART_BYTES", part_bytes)
    x = np.zeros((50, 2, 4, 2), np.float32)
    x[23, 1, 2, 0], x[41, 0, 0, 0], x[41, 0, 0, 1] = np.nan, np.inf, -np.inf
    with pytest.raises(DataError, match="w: 3 NaN/Inf values in the data, the first is sample 23"):
        D.check_finite(x, "w")
    D.check_finite(x[:23], "w")
    D.check_finite(np.arange(6), "w")
    with pytest.raises(DataError, match="NaN/Inf"):
        D.check_finite(np.float64("nan"), "w")


def test_a_file_is_cut_to_the_samples_a_command_takes_before_it_is_checked(tmp_path):
    """resolve_data with take=(n, seed) keeps those samples of an array file before any check
    reads the rest (eval --limit 100 of a 9.4 GB .npy read it all: 9.3 GB, now 0.44 GB); with
    all_rows (convert, which may train on more) it keeps them all."""
    from onnx_snn.convert import resolve_data
    x = np.random.default_rng(0).random((40, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    from onnx_snn.datasets import take_indices
    got = resolve_data(str(tmp_path / "d.npy"), take=(5, 3))
    assert len(got) == 5 and got.x.flags.owndata
    np.testing.assert_array_equal(got.x, x[take_indices(40, 5, 3)])
    assert got.take(5, 3) is got           # (what the caller then takes: the same samples)
    u8 = (x * 255).astype(np.uint8)        # a file of another type: converted after the take
    np.save(tmp_path / "u.npy", u8)
    raw = load_array_file(tmp_path / "u.npy", float32=False)
    assert raw.x.dtype == np.uint8 and not raw.x.flags.owndata      # mapped, not converted
    got = resolve_data(str(tmp_path / "u.npy"), take=(5, 3))
    assert got.x.dtype == np.float32
    np.testing.assert_array_equal(got.x, u8[take_indices(40, 5, 3)].astype(np.float32))
    assert resolve_data(str(tmp_path / "u.npy")).x.dtype == np.float32
    assert len(resolve_data(str(tmp_path / "d.npy"), take=(5, 3), all_rows=True)) == 40


def test_npz_and_npy(tmp_path):
    x = np.random.default_rng(0).random((5, 1, 4, 4)).astype(np.float32)
    y = np.arange(5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.save(tmp_path / "d.npy", x)
    ds = load_array_file(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.preprocessed
    assert load_dataset(str(tmp_path / "d.npy")).y is None
    np.savez(tmp_path / "bad.npz", x=x, y=np.arange(3))
    with pytest.raises(DataError, match="5 inputs but 3 labels"):
        load_array_file(tmp_path / "bad.npz")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="junk.npy: not a NumPy .npy or .npz file"):
        load_array_file(tmp_path / "junk.npy")
    import zipfile
    with zipfile.ZipFile(tmp_path / "doc.npz", "w") as z:     # a zip, but not numpy.savez's
        z.writestr("word/document.xml", "<xml/>")
    with pytest.raises(DataError, match="doc.npz: a zip file that is not a NumPy .npz"):
        load_array_file(tmp_path / "doc.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="obj.npz: holds Python objects"):
        load_array_file(tmp_path / "obj.npz")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "d.npy").read_bytes()[:40])   # truncated
    with pytest.raises(DataError, match="cut.npy: cannot read as .npy/.npz"):
        load_array_file(tmp_path / "cut.npy")


def test_npz_with_one_array_per_input(tmp_path):
    """A .npz of several input arrays (named after a model's inputs) gives a dict of them;
    take() draws the same samples from each; arrays of unequal length are refused."""
    rng = np.random.default_rng(0)
    x, z = rng.random((6, 1, 4, 4)).astype(np.float32), rng.random((6, 3)).astype(np.float32)
    np.savez(tmp_path / "m.npz", x=x, z=z, y=np.arange(6))
    ds = load_array_file(tmp_path / "m.npz")
    assert sorted(ds.x) == ["x", "z"] and len(ds) == 6 and ds.preprocessed
    part = ds.take(3, seed=1)
    i = np.sort(np.random.default_rng(1).choice(6, 3, replace=False))
    np.testing.assert_array_equal(part.x["z"], z[i])
    np.testing.assert_array_equal(part.x["x"], x[i])
    np.testing.assert_array_equal(part.y, i)
    np.savez(tmp_path / "uneven.npz", a=x, b=z[:4])
    with pytest.raises(DataError, match="different numbers of samples"):
        load_array_file(tmp_path / "uneven.npz")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def test_preprocess():
    x = np.ones((2, 3, 2, 2), np.float32)
    out = apply_preprocess(x, [1.0, 0.5, 0.0], [1.0, 0.5, 2.0])
    np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 1.0, 0.5])
    with pytest.raises(DataError, match="channels"):
        apply_preprocess(x, [0.1, 0.2], None)


def test_real_fashion_mnist(fmnist_test):
    assert fmnist_test.x.shape == (10000, 1, 28, 28)
    assert np.bincount(fmnist_test.y).tolist() == [1000] * 10


@pytest.mark.parametrize("content,match", [
    (7, "a pickled int, not a dict"),
    (np.zeros(3), "a pickled ndarray, not a dict"),
    ({"data": 1, b"labels": 2}, "keys"),                                     # str and bytes keys
    ({b"data": None, b"labels": [0]}, "rows of 3072 bytes"),
    ({b"data": "text", b"labels": [0]}, "rows of 3072 bytes"),
    ({b"data": np.full((2, 3072), 300.0), b"labels": [0, 1]}, "rows of 3072 bytes"),  # not bytes
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "not class indices"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": None}, "not class indices"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -3]}, "negative|-3"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 2.7]}, "whole"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "2 inputs but 3 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
     "label 10 is out of range for cifar10"),
])
def test_a_damaged_cifar_batch_is_named(tmp_path, content, match):
    """Every way a CIFAR batch file can hold the wrong thing is a DataError naming it."""
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as fh:
        pickle.dump(content, fh)
    with pytest.raises(DataError, match=match) as e:
        load_cifar("cifar10", data_dir=tmp_path)
    assert "test_batch" in str(e.value)


def test_damaged_idx_files_are_named(tmp_path):
    """A header longer than the file, bytes beyond the data, labels that are not class
    indices and images that are not bytes: each a DataError naming the file or folder."""
    import gzip
    import struct
    (tmp_path / "h").write_bytes(struct.pack(">HBB", 0, 0x08, 200) + b"\0" * 12)
    with pytest.raises(DataError, match="header names 200 dimensions"):
        read_idx(tmp_path / "h")
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes() + b"\0\0")     # plain files
    with pytest.raises(DataError, match="damaged IDX file"):
        read_idx(tmp_path / "b")

    def idx(path, a, code):
        with gzip.open(path, "wb") as f:
            f.write(struct.pack(">HBB", 0, code, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape)
                    + a.tobytes())
    for labels, code, match in ((np.array([0, -1] * 10, ">i1"), 0x09, "negative|-1"),
                                (np.array([0, 2.7] * 10, ">f4"), 0x0D, "whole")):
        (tmp_path / "fm").mkdir(exist_ok=True)
        make_fmnist(tmp_path / "fm")
        idx(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz", labels, code)
        with pytest.raises(DataError, match=match):
            load_dataset("fashion-mnist", data_dir=tmp_path / "fm")
    make_fmnist(tmp_path / "fm")
    idx(tmp_path / "fm" / "t10k-images-idx3-ubyte.gz", np.full((20, 28, 28), 900.0, ">f4"), 0x0D)
    with pytest.raises(DataError, match="hold bytes"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "fm")


def test_idx_labels_out_of_range_or_of_another_length_name_the_files(tmp_path):
    """A label file of another split, or one with a label the dataset does not have: the
    error names the file (it named the split: 'fashion-mnist:test: label 12 ...')."""
    make_fmnist(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.full(20, 12, np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 12 is out of range "
                                        r"for fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    write_idx(labels, np.zeros(19, np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz, \[20, 28, 28\]\) and "
                                        r"labels \(t10k-labels-idx1-ubyte.gz, \[19\]"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_a_split_of_a_npz_without_splits_is_refused(tmp_path):
    """FILE.npz:train of a file with x and y only: the suffix was ignored (all samples used)."""
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 2, 2), np.float32), y=np.arange(4))
    with pytest.raises(DataError, match="holds no splits"):
        load_dataset(f"{tmp_path / 'd.npz'}:train")
    assert len(load_dataset(str(tmp_path / "d.npz"))) == 4


def test_inputs_with_an_axis_of_size_zero_are_refused():
    """[64, 3, 0, 0] calibration data for a model of free height and width reached
    onnxruntime, which failed inside a Conv; the data check names it now."""
    from onnx_snn.convert import resolve_data
    from onnx_snn.datasets import check_inputs
    for shape in ((4, 3, 0, 0), (4, 3, 1, 0), (4, 0)):
        with pytest.raises(DataError, match="axis of size 0"):
            check_inputs(np.zeros(shape, np.float32), "data")
        with pytest.raises(DataError, match="axis of size 0"):
            resolve_data(np.zeros(shape, np.float32))
    check_inputs(np.zeros((4, 3), np.float32), "data")


def test_one_hot_labels_remember_their_width_through_slicing(tmp_path):
    """Indices read from one-hot rows keep the rows' width through the slicing and
    indexing that batches and samples do, and a width other than the model's classes is a
    DataError; plain indices carry none."""
    from onnx_snn.datasets import check_label_range, check_labels
    from onnx_snn.errors import DataError
    y = check_labels(np.eye(12)[[0, 3, 9, 1]], 4, "labels.npz")
    assert y.tolist() == [0, 3, 9, 1]
    for part in (y[1:3], y[np.array([2, 0])], y.reshape(-1)):
        assert part.one_hot_width == 12
        with pytest.raises(DataError, match="labels.npz: one-hot labels of 12 columns"):
            check_label_range(part, 10, "labels.npz")
    check_label_range(check_labels(np.eye(10)[[0, 9]], 2, "l"), 10, "l")
    check_label_range(check_labels(np.array([0, 9]), 2, "l"), 10, "l")
    assert check_labels(y, 4, "again").one_hot_width == 12     # a second check keeps it
    # a Dataset that load_array_file read, given to evaluate (which checks its labels again)
    import builders as B
    from onnx_snn.datasets import load_array_file
    from onnx_snn.evaluate import evaluate
    p = tmp_path / "wide.npz"
    np.savez(p, x=B.rand_input(4), y=np.eye(12)[[0, 3, 9, 1]])
    with pytest.raises(DataError, match="one-hot labels of 12 columns"):
        evaluate(B.vgg(13, "clip"), load_array_file(p), show_progress=False)


def test_npz_and_dict_keys_are_read_in_any_case(tmp_path):
    """scikit-learn's X / y and X_train / y_train are the same arrays as x / y: inputs and
    labels are found whatever the case; an input key that still matches nothing gets a
    message listing the names that are read."""
    from onnx_snn.convert import resolve_data
    from onnx_snn.datasets import load_array_file
    from onnx_snn.errors import DataError
    from onnx_snn.evaluate import evaluate
    x = np.random.default_rng(0).random((6, 1, 12, 12)).astype(np.float32)
    y = np.arange(6) % 3
    np.savez(tmp_path / "a.npz", X=x, Y=y)
    np.savez(tmp_path / "b.npz", X_train=x, Y_train=y, X_test=x[:2], Y_test=y[:2])
    a = load_array_file(tmp_path / "a.npz")
    assert a.x.shape == x.shape and a.y.tolist() == y.tolist()
    b = load_array_file(tmp_path / "b.npz", split="train")
    assert b.x.shape == x.shape and b.y.tolist() == y.tolist() and b.name.endswith(":train")
    assert load_array_file(tmp_path / "b.npz").y.tolist() == y[:2].tolist()
    d = resolve_data({"Images": x, "Labels": y}, None)
    assert d.x.shape == x.shape and d.y.tolist() == y.tolist()
    import builders as B
    m = B.vgg(13, "clip")
    np.savez(tmp_path / "c.npz", feats=x, Y=y)
    with pytest.raises(DataError, match=r"'x' \(or data, images, inputs, in any case\)"):
        evaluate(m, str(tmp_path / "c.npz"), show_progress=False)
    assert evaluate(m, str(tmp_path / "a.npz"), show_progress=False).samples == 6
    # two arrays of one name in two cases: either could be meant (x was read without a word)
    np.savez(tmp_path / "d.npz", x=x, X=x[:3], y=y)
    with pytest.raises(DataError, match=r"d.npz: the arrays 'X' and 'x' differ only in case"):
        load_array_file(tmp_path / "d.npz")
    with pytest.raises(DataError, match=r"the data dict: the arrays 'Y' and 'y'"):
        resolve_data({"x": x, "y": y, "Y": y}, None)


def test_float_targets_are_told_that_labels_are_for_classifiers():
    """A regression user's float targets were refused as 'not whole numbers' with no word on
    what to do: the message says top-1 and fine-tuning are for classifiers."""
    from onnx_snn.datasets import check_labels
    from onnx_snn.errors import DataError
    with pytest.raises(DataError, match=r"not whole numbers.*regression model leave the targets out"):
        check_labels(np.array([0.5, 1.25, 2.0]), 3, "reg.npz")


def test_npz_arrays_that_are_not_model_inputs_are_ignored_by_name(tmp_path, caplog):
    """A .npz that carries other arrays beside x and y (file names, a saved mean, class ids,
    per-sample weights with a NaN) feeds a model of one input its x alone, and says which
    arrays it ignored; a model of several inputs takes the arrays named after them."""
    import logging
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 4, 4)).astype(np.float32)
    w = np.ones(6, np.float32)
    w[2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6), filenames=np.array([f"{i}.png" for i in range(6)]),
             mean=np.float32(0.3), class_ids=np.arange(10), weights=w)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        ds = load_array_file(tmp_path / "d.npz", inputs=["input"])
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, np.arange(6))
    assert "not model inputs" in caplog.text
    for k in ("filenames", "mean", "class_ids", "weights"):
        assert repr(k) in caplog.text
    # several inputs: the arrays named after them, whatever else the file holds
    z = rng.random((6, 3)).astype(np.float32)
    np.savez(tmp_path / "m.npz", a=x, b=z, y=np.arange(6), ids=np.arange(6) + 100)
    ds = load_array_file(tmp_path / "m.npz", inputs=["a", "b"])
    assert sorted(ds.x) == ["a", "b"]
    # the inputs not known: every array is offered (and matched to the inputs by name later)
    assert sorted(load_array_file(tmp_path / "m.npz").x) == ["a", "b", "ids"]


def test_recorded_data_names_are_absolute_and_old_relative_ones_still_read(tmp_path, monkeypatch):
    """The history recorded a calibration file as the command line named it (calib.npy,
    relative to the folder convert ran in), which a command run elsewhere cannot find: a file
    or folder is now recorded by its absolute path (its :split kept); a named dataset and a
    name that is no path stay as they are. An old relative record is still read: from this
    folder and from the model's."""
    from onnx_snn.datasets import recorded_data_name, recorded_data_paths
    (tmp_path / "calib.npy").write_bytes(b"")
    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert recorded_data_name("calib.npy") == str(tmp_path / "calib.npy")
    assert recorded_data_name("imgs:train") == str(tmp_path / "imgs") + ":train"
    assert recorded_data_name(tmp_path / "calib.npy") == str(tmp_path / "calib.npy")
    for kept in ("fashion-mnist:train", "array", "missing.npy", None):
        assert recorded_data_name(kept) == kept
    assert recorded_data_paths(str(tmp_path / "imgs") + ":test") == [str(tmp_path / "imgs")]
    assert recorded_data_paths("fashion-mnist:test") == []
    monkeypatch.chdir("/")
    old = recorded_data_paths("imgs:train", model_path=tmp_path / "m.snn.onnx")
    assert old == ["/imgs", str(tmp_path / "imgs")]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_cifar_batch_never_runs_what_its_pickle_names(tmp_path, protocol):
    """CIFAR batches were read with pickle.load, which runs any callable a file names: a
    hostile test_batch ran a shell command and the evaluation went on. Only numpy arrays
    (written at any pickle protocol) are built now; anything else is a DataError naming the
    file, and nothing runs."""
    import os
    make_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3],
                                   b"filenames": [b"a.png"] * 4}, protocol=protocol))
    np.testing.assert_array_equal(load_cifar("cifar10", data_dir=tmp_path).y, [0, 1, 2, 3])
    marker = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3],
                                   b"filenames": Hostile()}, protocol=protocol))
    with pytest.raises(DataError, match="test_batch: not a CIFAR python batch.*names"):
        load_cifar("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    # numpy.ndarray called on an object dtype takes its pointers from the file's bytes (a
    # review's find: reading the labels then crashed the process); and a dtype of objects
    good = pickle.dumps(data, protocol=2)
    objects = (b"cnumpy\nndarray\n(K\x01\x85cnumpy\ndtype\nU\x01O\x85RU\x08AAAAAAAAtR",
               b"cnumpy\ndtype\nU\x01O\x85R")
    for evil, said in zip(objects, ("calls numpy.ndarray|Python objects", "Python objects")):
        path.write_bytes(b"\x80\x02}(U\x04data" + good[2:-1] + b"U\x06labels]" + evil + b"au.")
        with pytest.raises(DataError, match=said):
            load_cifar("cifar10", data_dir=tmp_path)


def test_a_gzip_idx_is_read_only_as_far_as_its_header_says(tmp_path):
    """A 0.2 MB .gz whose header states 10000 x 28 x 28 bytes but that inflates to 200 MB was
    decompressed whole before the size check; now it is refused after the stated size (and
    a header stating more than MAX_IDX_BYTES at once)."""
    import gzip
    import struct
    import subprocess
    import sys
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", 9) as f:
        f.write(struct.pack(">HBBIII", 0, 8, 3, 10000, 28, 28))
        for _ in range(25):
            f.write(bytes(8 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match="damaged IDX file \\(more than 7840000 bytes"):
        read_idx(path)
    # (the peak of this process's own memory: getrusage's ru_maxrss keeps the parent's)
    r = subprocess.run([sys.executable, "-c", "from onnx_snn.datasets import "
                        f"read_idx\ntry: read_idx({str(path)!r})\nexcept Exception: pass\n"
                        "print(next(l.split()[1] for l in open('/proc/self/status') "
                        "if l.startswith('VmHWM')))"],
                       capture_output=True, text=True, timeout=120)
    assert int(r.stdout) < 120_000, r.stdout         # KB: not the 200 MB it inflates to
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBBIIII", 0, 8, 4, 1 << 20, 1 << 20, 1 << 20, 1 << 20))
    with pytest.raises(DataError, match="MAX_IDX_BYTES"):
        read_idx(path)


def test_a_pipe_given_as_data_is_never_opened_to_look_for_splits(tmp_path):
    """finetune looked for a .npz's splits by opening the data path as a zip before any
    check: a pipe blocked forever, /dev/zero filled the memory."""
    import os
    import subprocess
    import sys
    os.mkfifo(tmp_path / "p.npz")
    r = subprocess.run([sys.executable, "-c", "from onnx_snn.datasets import data_splits; "
                        f"print(data_splits({str(tmp_path / 'p.npz')!r}), "
                        "data_splits('/dev/zero'))"], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["set()", "set()"], r.stderr


@pytest.mark.parametrize("y,said", [(np.array([0, 1e30]), r"label 1e\+30 is above"),
                                    (np.array([0, 2 ** 64 - 1], np.uint64), "is above"),
                                    (np.array([0, 2.0 ** 63]), "is above")])
def test_huge_labels_are_named_as_they_are(y, said, recwarn):
    """1e30 and 2**64 - 1 were cast first and reported as negative labels (with numpy's
    cast warning on the way)."""
    from onnx_snn.datasets import check_labels
    with pytest.raises(DataError, match=said):
        check_labels(y, 2, "f.npz")
    assert not [w for w in recwarn if "cast" in str(w.message)]


def test_float64_inputs_beyond_float32_are_named_not_called_nan(tmp_path, recwarn):
    """A finite 1e300 in float64 data was cast to float32 first and reported as "1 NaN/Inf
    values", after numpy's overflow warning."""
    x = np.random.default_rng(0).random((4, 1, 8, 8))
    x[1, 0, 2, 3] = 1e300
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(4))
    with pytest.raises(DataError, match=r"values up to 1e\+300, beyond float32's range"):
        load_dataset(str(tmp_path / "big.npz"))
    assert not [w for w in recwarn if "overflow" in str(w.message)]
    x[1, 0, 2, 3] = 3e38                               # within float32: taken
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(4))
    assert load_dataset(str(tmp_path / "ok.npz")).x.dtype == np.float32


def test_class_names_that_do_not_fit_the_model_are_ignored_with_a_warning(caplog):
    """``onnx_snn.classes`` of another length than the model's class scores, or not a list
    of names, is not used to label folders (it was, silently), and says why."""
    import json as _json
    import logging
    import builders as B
    from onnx_snn.datasets import model_classes
    from onnx_snn.spiking import format as F
    names = [f"c{i}" for i in range(10)]
    for value, ok in ((names, True), (names[:3], False), ({"a": 1}, False), ("x", False)):
        m = B.vgg(13, "clip")
        F.set_metadata(m, {F.META_CLASSES: _json.dumps(value)})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            got = model_classes(m)
        assert got == (names if ok else None)
        assert ("ignored" in caplog.text) != ok


def test_a_split_without_labels_beside_one_with_them_is_warned_about(caplog):
    """x_train/y_train/x_test (no y_test): the test split is read unlabeled, which a Kaggle
    test set means and a forgotten array does not: said, once."""
    import logging
    from onnx_snn.datasets import split_keys
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert split_keys(["x_train", "y_train", "x_test"], None, "d.npz") == ("x_test", None)
    assert "d.npz: holds labels for the train split (y_train) but none for the test split" in \
        caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert split_keys(["x_train", "x_test"], None, "d.npz") == ("x_test", None)
        assert split_keys(["x_train", "y_train", "x_test", "y_test"], "train", "d.npz") == \
            ("x_train", "y_train")
        # a command that reads no labels (convert) is not told of them
        assert split_keys(["x_train", "y_train", "x_test"], None, "d.npz", labels=False) == \
            ("x_test", None)
    assert not caplog.text


def test_a_data_dir_that_is_a_file_is_said_to_be_one(tmp_path, monkeypatch):
    """--data-dir (or $ONNX_SNN_DATA) naming a file: 'a file, not a folder', not 'no such
    folder' (an outside tester)."""
    from onnx_snn.datasets import search_dirs
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(DataError, match="afile: a file, not a folder"):
        search_dirs(f)
    monkeypatch.setenv("ONNX_SNN_DATA", str(f))
    with pytest.raises(DataError, match="afile: a file, not a folder"):
        search_dirs()
