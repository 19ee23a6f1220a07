"""The files a spiking model's history names (onnx_snn.recorded_files): read from the file's
metadata without parsing its graph, and protected from every command that reads the model."""
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import builders as B
import onnx_snn
from onnx_snn.errors import OutputPathError
from onnx_snn.recorded_files import file_metadata, recorded_files


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    onnx.save(B.resnet(13, "clip", stem_pool="MaxPool"), str(d / "dnn.onnx"))
    np.save(d / "calib.npy", B.rand_input(16))
    snn = onnx_snn.convert(str(d / "dnn.onnx"), str(d / "calib.npy"), 2, method="datta",
                           show_progress=False)
    snn.save(d / "m.snn.onnx")
    return d


def test_file_metadata_is_the_models_and_empty_for_what_is_no_model(converted, tmp_path):
    path = converted / "m.snn.onnx"
    want = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert want and file_metadata(path) == want
    data = path.read_bytes()
    bad = {"empty": b"", "text": b"hello, world\n", "half": data[:len(data) // 2],
           "varint": b"\xff" * 12, "fixed64_past_the_end": data + b"\x09",
           "field_zero": b"\x00" + data}
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        assert file_metadata(tmp_path / name) == {}, name
    assert file_metadata(tmp_path) == {} and file_metadata(tmp_path / "none") == {}
    os.mkfifo(tmp_path / "pipe.onnx")        # never opened: reading a pipe blocks
    r = subprocess.run([sys.executable, "-c", "from onnx_snn.recorded_files import *; "
                        f"print(file_metadata({str(tmp_path / 'pipe.onnx')!r}), "
                        f"recorded_files({str(tmp_path / 'pipe.onnx')!r}))"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["{}", "[]"], r.stderr


def test_recorded_files_name_the_source_and_the_data(converted, tmp_path):
    path = converted / "m.snn.onnx"
    want = {str(converted / "dnn.onnx"), str(converted / "calib.npy")}
    assert set(recorded_files(path)) == want
    assert set(recorded_files(onnx.load(str(path)))) == want
    assert recorded_files(converted / "dnn.onnx") == []          # a DNN names nothing
    (tmp_path / "gone.snn.onnx").write_bytes(path.read_bytes())
    (converted / "calib.npy").rename(converted / "calib.moved.npy")   # only existing files
    try:
        assert recorded_files(tmp_path / "gone.snn.onnx") == [str(converted / "dnn.onnx")]
    finally:
        (converted / "calib.moved.npy").rename(converted / "calib.npy")


def test_deploy_never_writes_over_the_source_dnn_or_the_data(converted):
    """``deploy m.snn.onnx -o dnn.onnx`` replaced the trained DNN (the API and the CLI);
    eval's and analyze's --json did too. Each is refused before any work, exit 6."""
    path = converted / "m.snn.onnx"
    for victim in ("dnn.onnx", "calib.npy"):
        before = (converted / victim).read_bytes()
        with pytest.raises(OutputPathError, match="is an input"):
            onnx_snn.deploy(str(path), str(converted / victim))
        with pytest.raises(OutputPathError, match="is an input"):
            onnx_snn.deploy(onnx.load(str(path)), str(converted / victim))
        for args in (["deploy", str(path), "-o"], ["eval", str(path), "--data",
                     str(converted / "calib.npy"), "--json"],
                     ["analyze", str(path), "--json"]):
            r = subprocess.run([sys.executable, "-m", "onnx_snn", *args, str(converted / victim)],
                               capture_output=True, text=True)
            assert r.returncode == 6 and "is an input" in r.stderr, (args, r.stderr)
            assert "Traceback" not in r.stderr
        assert (converted / victim).read_bytes() == before
