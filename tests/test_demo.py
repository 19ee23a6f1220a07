"""The shipped model and `onnx-snn demo`, on real Fashion-MNIST."""
import json

import onnx
import pytest

import onnx_snn
from onnx_snn.demo import run_demo, shipped_model_path


def test_shipped_model_reaches_its_recorded_accuracy(fmnist_test):
    path = shipped_model_path()
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    r = onnx_snn.evaluate(str(path), fmnist_test, show_progress=False)
    assert r.samples == 10000
    assert r.top1 == pytest.approx(float(meta["onnx_snn.test_accuracy"]), abs=0.01)
    assert r.top1 >= 92.0
    assert path.stat().st_size < 5 * 2 ** 20


def test_demo_prints_a_table_of_measured_numbers(fmnist_test, capsys):
    import io
    out = io.StringIO()
    res = run_demo(timesteps=(1, 2), methods=("datta", "max"), limit=500, show_progress=False, out=out)
    text = out.getvalue()
    assert "datta" in text and "T=2" in text
    assert len(res["rows"]) == 4
    rows = {(r["method"], r["timesteps"]): r["top1"] for r in res["rows"]}
    assert rows[("datta", 1)] > 80 and rows[("datta", 2)] > 80   # conversion works at T <= 2
    assert rows[("max", 1)] < rows[("datta", 1)]                  # plain thresholds do not


def test_demo_cli(tmp_path, fmnist_test):
    from onnx_snn.cli import main
    assert main(["-q", "demo", "-T", "1", "--methods", "deng", "--limit", "256",
                 "--json", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["samples"] == 256 and d["rows"][0]["method"] == "deng"


def test_demo_runs_a_method_or_T_named_twice_once(tmp_path, fmnist_test):
    from onnx_snn.cli import main
    assert main(["-q", "demo", "-T", "1", "1", "--methods", "max", "max", "--limit", "32",
                 "--json", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert [(r["method"], r["timesteps"]) for r in d["rows"]] == [("max", 1)]
