"""Smoke tests of the benchmark scripts under tools/ (small sizes; the numbers in README
come from their full runs)."""
import json
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args):
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "ONNX_SNN_PROGRESS": "0"}, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout[p.stdout.index("{"):])


def test_bench_convert_small(fmnist_test):
    r = run_tool("tools/bench_convert.py", "--calib-samples", "64", "--repeat", "1")
    assert r["sites"] == 14 and r["parameters"] > 15_000_000
    assert r["convert_seconds"] > 0 and r["floor_seconds"] > 0 and r["convert_peak_rss_mb"] > 0


def test_bench_energy_small(fmnist_test):
    r = run_tool("tools/bench_energy.py", "-T", "1", "--methods", "deng", "--limit", "200")
    row = r["rows"][0]
    assert row["dnn_energy_uj"] > row["snn_energy_uj"] > 0
    assert set(row["spikes_per_image"]) == {"lif0", "lif1", "lif2", "lif3", "lif4"}


def test_bench_peer_small(fmnist_test):
    """The side-by-side benchmark end to end on a few images (SpikingJelly from the bench extra)."""
    import pytest
    pytest.importorskip("spikingjelly")
    r = run_tool("tools/bench.py", "--quick", "--test-images", "128", "-T", "1", "2",
                 "--sections", "accuracy,convert,throughput")
    m = r["models"]["shipped fmnist_vgg"]
    acc = m["accuracy"]
    assert acc["test_images"] == 128 and acc["timesteps"] == [1, 2]
    assert set(acc["onnx_snn"]) == {"datta", "datta-seq", "deng", "max", "percentile"}
    assert acc["workers"] == 2
    assert set(acc["peers"]) == {"spikingjelly-max", "spikingjelly-99.9%"}
    for row in list(acc["onnx_snn"].values()) + list(acc["peers"].values()):
        assert all(0 <= row["top1"][str(T)] <= 100 for T in (1, 2))
    # datta at T=2 is far above chance even on 128 images
    assert acc["onnx_snn"]["datta"]["top1"]["2"] > 60
    assert acc["onnx_snn"]["datta-seq"]["top1"]["2"] > 60
    assert m["convert"]["ours"]["seconds"] > 0 and m["convert"]["spikingjelly-max"]["seconds"] > 0
    assert m["throughput"]["dnn_onnxruntime"] > 0 and m["throughput"]["onnx_snn_onnxruntime"] > 0


def test_bench_sgl_small(fmnist_test):
    r = run_tool("tools/bench_sgl.py", "--images", "256", "--batch", "32", "-T", "1", "--no-peer")
    for job in ("dnn", "snn_T1"):
        assert r["jobs"][job]["seconds_per_epoch"] > 0, r["jobs"][job]
    assert r["jobs"]["snn_T1"]["epoch_time_vs_dnn"] > 0


def test_profile_ort_small(fmnist_test):
    r = run_tool("tools/profile_ort.py", "--shipped", "-T", "2", "--images", "64", "--batch", "32")
    for part in ("dnn", "snn"):
        shares = r[part]["share_by_group"]
        assert abs(sum(shares.values()) - 1) < 0.01 and "Loop" not in r[part]["ms_by_op"]
    assert "neuron" in r["snn"]["share_by_group"] and "conv/gemm" in r["dnn"]["share_by_group"]
    assert r["snn_over_dnn_kernel_time"] > 1
