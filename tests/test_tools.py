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
