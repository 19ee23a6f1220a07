"""Smoke tests of the benchmark scripts under tools/ (small sizes; the numbers in README
come from their full runs), their child-process job runner and the table printer."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from onnx_snn.spiking.batch_chunks import DEFAULT_BATCH_CHUNK

from onnx_snn.table import format_table

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args):
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "ONNX_SNN_PROGRESS": "0"}, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout[p.stdout.index("{"):])


@pytest.mark.slow   # 9 s: a benchmark's smoke run (the suite is CI's gate: kept under 15 min)
def test_bench_convert_small(fmnist_test, tmp_path):
    """The quick run; ``--code`` converts with the onnx_snn of the checkout it names (here
    this one through a link, so that the path the job reports tells which was imported)."""
    (tmp_path / "checkout").symlink_to(ROOT)
    r = run_tool("tools/bench_convert.py", "--quick", "--calib-samples", "64",
                 "--code", str(tmp_path / "checkout"))
    assert r["sites"] == 14 and r["parameters"] > 15_000_000
    assert r["convert_seconds"] > 0 and r["floor_seconds"] > 0 and r["convert_peak_rss_mb"] > 0
    m = r["models"]["vgg16_cifar"]
    assert set(m) >= {"floor", "datta", "targets"} and "refined" not in m
    assert m["datta"]["code"] == str(tmp_path / "checkout")
    parts = m["datta"]["parts"]
    assert set(parts) == {"load", "normalize", "calibrate", "search_rewrite", "check", "save"}
    assert all(v >= 0 for v in parts.values())
    assert abs(sum(parts.values()) - m["datta"]["seconds"]) < 0.05
    assert m["floor"]["load_seconds"] > 0 and m["floor"]["pass_seconds"] > 0
    t = m["targets"]["datta"]
    assert t["seconds_max"] > m["floor"]["seconds"] and t["peak_rss_mb_max"] > 0


@pytest.mark.slow   # a benchmark's smoke run
def test_bench_small_data_small(fmnist_test):
    """tools/bench_small_data.py: from a file of 256 images, the checked default calibrates
    on 192 and judges on 64; the unchecked one calibrates on all 256."""
    pytest.importorskip("torch")
    r = run_tool("tools/bench_small_data.py", "--nets", "shipped", "--images", "256",
                 "--test-images", "200", "-T", "1")
    checked, unchecked = r["runs"]
    assert (checked["variant"], unchecked["variant"]) == ("checked", "unchecked")
    assert checked["calibration_samples"] == 192 and checked["held_out"] == 64
    assert unchecked["calibration_samples"] == 256 and unchecked["held_out"] is None
    assert all(0 <= run["top1"] <= 100 and run["epochs"] for run in r["runs"])


@pytest.mark.slow   # 10 s: a benchmark's smoke run
def test_bench_budget_small(fmnist_test):
    """tools/bench_budget.py times reconstruction epochs and fits the budget's costs: each
    network's counts are the budget's own, and the fit covers every network."""
    r = run_tool("tools/bench_budget.py", "--nets", "mlp,encdec,deepnarrow", "--images", "16",
                 "--epochs", "1,2")
    from onnx_snn import auto_reconstruct as ar
    assert r["images"] == 16 and r["timesteps"] == 2
    for row in r["nets"]:
        assert row["macs"] > 0 and row["nodes"] > 0 and row["elements"] > 0
        assert set(row["seconds"]) == {"1", "2"} and row["budget_cost"] == ar.step_cost(
            row["macs"], row["nodes"], elements=row["elements"])
    assert set(r["fit"]["measured_over_fitted"]) == set(r["us_per_budget_mac"]) == \
        {"mlp", "encdec", "deepnarrow"}
    # (16 images time nothing reliably: the figures are only there and finite)
    assert all(np.isfinite(v) for v in r["us_per_budget_mac"].values())
    assert ar.step_cost(1, 1, elements=1) == 1 + ar.NODE_COST + ar.ELEMENT_COST


@pytest.mark.parametrize("kind", [pytest.param("conv", marks=pytest.mark.slow), "mlp"])
def test_bench_depth_small(fmnist_test, kind):      # (conv: 9 s, slow; mlp: 6 s)
    r = run_tool("tools/bench_depth.py", "--kind", kind, "--depths", "3,6", "--images", "8")
    assert r["kind"] == kind and set(r["methods"]) == {"refined", "datta"}
    for method, rows in r["methods"].items():
        assert set(rows) == {"3", "6"}
        assert [rows[d]["sites"] for d in ("3", "6")] == [3, 6], rows
        assert all(rows[d]["seconds"] > 0 and rows[d]["peak_rss_mb"] > 0 for d in rows)
        assert rows["6"]["growth"] > 0 and "growth" not in rows["3"]
        assert (rows["6"]["refine_seconds"] > 0) == (method == "refined")
        assert all(rows[d]["code"] == str(ROOT) for d in rows)


@pytest.mark.slow   # 15 s: a diagnostic tool (the error budget of README)
def test_error_budget_small(fmnist_test, tmp_path):
    """The spiking run, the constant-current run and the DNN on the same images; the first
    site (fed the input, its currents constant) has the same error in both runs."""
    import onnx_snn
    from onnx_snn.demo import shipped_model_path
    x = fmnist_test.take(64).x
    out = tmp_path / "m.snn.onnx"
    onnx_snn.convert(str(shipped_model_path()), (x - 0.286) / 0.353, timesteps=2,
                     show_progress=False).save(out)
    r = run_tool("tools/error_budget.py", str(out), "--dnn", str(shipped_model_path()),
                 "--data", "fashion-mnist", "--limit", "200")
    assert r["images"] == 200 and r["timesteps"] == 2
    assert set(r["top1"]) == {"dnn", "spiking", "constant_current"}
    assert all(30 < v <= 100 for v in r["top1"].values())
    assert [s["site"] for s in r["sites"]] == ["lif0", "lif1", "lif2", "lif3", "lif4"]
    first = r["sites"][0]
    assert first["spiking"] == first["constant_current"]
    assert all(0 < s["spiking"]["relative_rms_error"] < 1 and s["spiking"]["correlation"] > 0.5
               for s in r["sites"])
    p = r["temporal_paired"]          # the images on which only one of the two runs is right
    diff = (p["images_only_constant_right"] - p["images_only_spiking_right"]) / 2
    assert diff == pytest.approx(r["top1"]["constant_current"] - r["top1"]["spiking"], abs=0.01)
    assert p["difference_se_points"] >= 0
    # a binary-spike file (amplitudes folded into the next layers) gives the same errors
    onnx_snn.convert(str(shipped_model_path()), (x - 0.286) / 0.353, timesteps=2,
                     show_progress=False).save(tmp_path / "b.snn.onnx", binary_spikes=True)
    rb = run_tool("tools/error_budget.py", str(tmp_path / "b.snn.onnx"), "--dnn",
                  str(shipped_model_path()), "--data", "fashion-mnist", "--limit", "200")
    for u, v in zip(r["sites"], rb["sites"]):
        assert v["spiking"]["relative_rms_error"] == pytest.approx(
            u["spiking"]["relative_rms_error"], rel=1e-3)


@pytest.mark.slow   # 15 s: the quantized idioms' conversion stays in tests/test_quantization.py
def test_bench_quantized_small(fmnist_test):
    r = run_tool("tools/bench_quantized.py", "--method", "datta", "--test-images", "300")
    assert r["qdq"]["sites"] == r["float"]["sites"] == 5
    assert abs(r["qdq"]["dnn_top1"] - r["float"]["dnn_top1"]) < 3
    assert r["qdq"]["notes"] and not r["float"]["notes"]
    assert r["qdq"]["snn_top1"] > 50


@pytest.mark.slow   # 9 s: the energy benchmark's smoke run (the analyzer: tests/test_analyze.py)
def test_bench_energy_small(fmnist_test):
    r = run_tool("tools/bench_energy.py", "-T", "1", "--methods", "deng", "--limit", "200")
    row = r["rows"][0]
    assert row["dnn_energy_uj"] > row["snn_energy_uj"] > 0
    # the sites' spikes, and the outputs of the two max pools (which the next layers read)
    assert set(row["spikes_per_image"]) == {"lif0", "lif1", "lif2", "lif3", "lif4", "pool0", "pool1"}


@pytest.mark.slow   # 61 s: SpikingJelly's conversion beside onnx-snn's (make bench runs it in full)
def test_bench_peer_small(fmnist_test):
    """The side-by-side benchmark end to end on a few images (SpikingJelly from the bench extra)."""
    pytest.importorskip("torch")
    pytest.importorskip("spikingjelly")
    r = run_tool("tools/bench.py", "--quick", "--test-images", "128", "-T", "1", "2",
                 "--sections", "accuracy,convert,throughput")
    m = r["models"]["shipped fmnist_vgg"]
    acc = m["accuracy"]
    assert acc["test_images"] == 128 and acc["timesteps"] == [1, 2]
    assert set(acc["onnx_snn"]) == {"refined", "datta", "deng", "max", "percentile"}
    assert acc["workers"] == 2
    assert set(acc["peers"]) == {"spikingjelly-max", "spikingjelly-99.9%"}
    for row in list(acc["onnx_snn"].values()) + list(acc["peers"].values()):
        assert all(0 <= row["top1"][str(T)] <= 100 for T in (1, 2))
    # datta at T=2 is far above chance even on 128 images
    assert acc["onnx_snn"]["datta"]["top1"]["2"] > 60
    assert acc["onnx_snn"]["refined"]["top1"]["2"] > 60
    assert m["convert"]["ours"]["seconds"] > 0 and m["convert"]["spikingjelly-max"]["seconds"] > 0
    assert m["throughput"]["dnn_onnxruntime"] > 0 and m["throughput"]["onnx_snn_onnxruntime"] > 0
    assert m["throughput"]["onnx_snn_deploy_onnxruntime"] > 0
    assert m["throughput"]["onnx_snn_deploy_unit_onnxruntime"] > 0
    assert m["throughput"]["onnx_snn_deploy_unit_pool_first_onnxruntime"] > 0


@pytest.mark.slow   # 35 s: SGL epochs of the DNN, onnx-snn and SpikingJelly
def test_bench_sgl_small(fmnist_test):
    pytest.importorskip("torch")  # every job trains in PyTorch
    r = run_tool("tools/bench_sgl.py", "--images", "256", "--batch", "32", "-T", "2", "--no-peer",
                 "--compare-fold", "--repeat", "1")
    for job in ("dnn", "snn_T2", "snn_T2_folded"):
        assert r["jobs"][job]["seconds_per_epoch"] > 0, r["jobs"][job]
        assert job == "dnn" or r["jobs"][job]["epoch_time_vs_dnn"] > 0


@pytest.mark.slow   # 5 s: a profiler's smoke run
def test_profile_ort_small(fmnist_test):
    r = run_tool("tools/profile_ort.py", "--shipped", "-T", "2", "--images", "64", "--batch", "32")
    for part in ("dnn", "snn", "deploy"):
        shares = r[part]["share_by_group"]
        assert abs(sum(shares.values()) - 1) < 0.01 and "Loop" not in r[part]["ms_by_op"]
    assert "neuron" in r["snn"]["share_by_group"] and "conv/gemm" in r["dnn"]["share_by_group"]
    assert "neuron" in r["deploy"]["share_by_group"] and "Expand" not in r["deploy"]["ms_by_op"]
    assert r["snn_over_dnn_kernel_time"] > 1 and r["deploy_over_dnn_kernel_time"] > 0


@pytest.mark.slow   # 24 s: a profiler of the conversion (issue 14)
def test_profile_convert_small(fmnist_test):
    """The refinement's parts nest inside it and the conversion's seconds."""
    r = run_tool("tools/profile_convert.py", "--images", "80")   # every second image held out
    p = r["parts_seconds"]
    assert r["sites"] == 14 and r["seconds"] > 0
    assert 0 < p["refinement"] <= r["seconds"] and 0 < p["calibration"] < r["seconds"]
    inner = ("weight_calibration_accumulate", "weight_calibration_solve", "channel_search")
    assert all(0 < p[k] for k in inner) and sum(p[k] for k in inner) <= p["refinement"]
    assert 0 < p["onnxruntime_runs"] <= r["seconds"]
    # the step graph of each run's part: per site one for its currents and one for its
    # spikes, and one for each refit whose layer reads more than a site's spikes (the
    # classifier after the pool and flatten)
    assert 0 < p["step_graph_builds"] <= p["refinement"]
    assert 2 * r["sites"] <= r["calls"]["step_graph_builds"] <= 3 * r["sites"]
    q = subprocess.run([sys.executable, "tools/profile_convert.py", "--imagenet", "vgg16",
                        "--model", "m.onnx"], capture_output=True, text=True, cwd=ROOT)
    assert q.returncode == 2 and "drop --model/--data" in q.stderr


@pytest.mark.slow   # 16 s: the GPU script's CPU smoke run
def test_bench_gpu_smoke_on_cpu(fmnist_test):
    """The prepared GPU check runs end to end on the CPU: onnxruntime's CUDA part says why it
    is skipped when the provider is missing, the torch part times both networks."""
    r = run_tool("tools/bench_gpu.py", "--device", "cpu", "--nets", "shipped", "--batch", "128", "--test-images",
                 "600", "--no-sgl")
    inf = r["inference"]["shipped"]
    ort_part = inf["onnxruntime"]
    assert ort_part["available"] is ("CUDAExecutionProvider" in ort_part["providers"])
    if not ort_part["available"]:
        assert "onnxruntime-gpu" in ort_part["why"]
    t = inf["torch"]
    assert t["dnn_images_per_second"] > 0 and t["snn_images_per_second"] > 0
    assert abs(t["snn_over_dnn"] - t["snn_images_per_second"] / t["dnn_images_per_second"]) < 1e-9


def test_bench_paper_gpu_skips_what_the_budget_leaves_out(tmp_path):
    """A stage that would start after the budget is recorded as skipped, not run."""
    out = tmp_path / "paper.json"
    r = run_tool("tools/bench_paper_gpu.py", "--device", "cpu", "--archs", "resnet20",
                 "--budget", "1", "--out", str(out))
    assert "budget" in r["nets"]["resnet20"]["train"]["skipped"]
    assert json.loads(out.read_text()) == r     # the file holds what was printed


@pytest.mark.slow   # about 90 s: the paper-scale GPU script's CPU smoke run
def test_bench_paper_gpu_smoke_on_cpu(fmnist_test, tmp_path):
    """Train (one epoch, then resumed), calibrate, convert and evaluate at T=2 in the torch
    runtime, one SGL epoch: each stage lands in the JSON."""
    r = run_tool("tools/bench_paper_gpu.py", "--device", "cpu", "--archs", "resnet20",
                 "--limit-train", "256", "--limit-test", "128", "--max-epochs", "2",
                 "--budget", "600", "-T", "2", "--methods", "refined",
                 "--work", str(tmp_path), "--out", str(tmp_path / "paper.json"))
    net = r["nets"]["resnet20"]
    assert 1 <= net["train"]["epochs"] <= 2 and net["train"]["test_images"] == 128
    assert net["calibration"]["test_images"] == 128
    conv = net["convert_T2"]
    assert set(conv["top1"]) == {"refined"} and 0 <= conv["top1"]["refined"] <= 100
    sgl = net["sgl_T2"]
    assert len(sgl["epoch_test_top1"]) == 1 and 0 <= sgl["top1_after"] <= 100
    assert sgl["top1_after"] == max(sgl["top1_before"], sgl["epoch_test_top1"][0])
    assert all("error" not in v for v in net.values())


@pytest.mark.slow   # 15 s: converts the shipped model
def test_count_ops_counts_a_training_step(fmnist_test):
    r = run_tool("tools/count_ops.py", "--batch", "4")
    assert 0 < r["dnn"] < r["onnx_snn"]
    # the folded step launches fewer kernels than the steps one by one (views launch none)
    views = r["views_among_them"]
    assert r["onnx_snn"] - views["onnx_snn"] < r["onnx_snn_step_by_step"] - views["onnx_snn_step_by_step"]
    assert r["onnx_snn_over_dnn"] == round(r["onnx_snn"] / r["dnn"], 2)
    sj = r["spikingjelly"]
    assert (isinstance(sj, int) and sj > r["dnn"]) or "not installed" in sj["error"]


# ------------------------------------------------------------------ tools/_jobs.py

def _jobs_module():
    """tools/_jobs.py, loaded from its file (the tools are scripts, tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_jobs", ROOT / "tools" / "_jobs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def job_script(tmp_path):
    """A script whose --_job says what to do: print a result, fail, hang or print no JSON."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""\
        import argparse, os, sys, time
        sys.path.insert(0, {str(ROOT / "tools")!r})
        from _jobs import add_job_options, print_result
        ap = argparse.ArgumentParser()
        ap.add_argument("--images", type=int)
        add_job_options(ap, n=int, name=str)
        a = ap.parse_args()
        if a._job == "ok":
            print("some library chatter")
            print_result({{"n": a._n, "name": a._name, "images": a.images, "threads": a._threads,
                           "omp": os.environ.get("OMP_NUM_THREADS"),
                           "progress": os.environ.get("ONNX_SNN_PROGRESS")}})
        elif a._job == "fail":
            print("line one of the traceback", file=sys.stderr)
            raise ValueError("the job's own error")
        elif a._job == "hang":
            print("started", file=sys.stderr, flush=True)
            time.sleep(60)
        else:
            print("no json here")
        """))
    return str(script)


def test_run_job_returns_the_last_json_line(job_script):
    jobs = _jobs_module()
    r = jobs.run_job(job_script, "ok", {"n": 3, "name": "a b", "unused": None},
                     argv=["--images", "5"], threads=2)
    assert r == {"n": 3, "name": "a b", "images": 5, "threads": 2, "omp": "2", "progress": "0"}


def test_run_job_reports_failures_without_raising(job_script):
    jobs = _jobs_module()
    r = jobs.run_job(job_script, "fail")
    assert r["error"] == "ValueError: the job's own error"
    assert "line one of the traceback" in r["stderr_tail"] and "Traceback" in r["stderr_tail"]
    r = jobs.run_job(job_script, "silent")
    assert r["error"] == "no JSON from the silent job: no json here"
    r = jobs.run_job(job_script, "hang", timeout=3)
    assert r["error"] == "the hang job timed out after 3 s"
    assert "started" in r["stderr_tail"]


# ------------------------------------------------------------------ onnx_snn/table.py

def test_format_table_plain_and_markdown():
    rows = [["datta", 88.28, "91.41"], ["max", 7.81, 7.8]]
    assert format_table(["method", "T=1", "T=2"], rows) == "\n".join([
        "method    T=1    T=2",
        "------  -----  -----",
        "datta   88.28  91.41",
        "max      7.81    7.8"])
    assert format_table(["method", "T=1", "T=2"], rows, markdown=True) == "\n".join([
        "| method | T=1 | T=2 |",
        "|---|---|---|",
        "| datta | 88.28 | 91.41 |",
        "| max | 7.81 | 7.8 |"])
    assert format_table(["a", "b"], [["x|y", "1\n2"]], markdown=True).splitlines()[2] == \
        "| x\\|y | 1 2 |"
    assert format_table(["a", "b"], []) == "a  b\n-  -"
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 headers"):
        format_table(["a", "b"], [["only one"]])



def test_bench_layouts_plain(fmnist_test):
    """The loop graph against its unrolled, time-folded and deploy layouts: identical
    numbers (the default run's part of test_bench_layouts_small)."""
    r = run_tool("tools/bench_layouts.py", "--images", "64", "--rounds", "1", "--method", "datta")
    assert r["identical_to_loop"] == {"unrolled": True, "folded": True, "deploy": True}
    assert {"dnn", "loop", "unrolled", "folded", "deploy"} <= set(r["images_per_second"])
    assert all(v > 0 for v in r["images_per_second"].values())


@pytest.mark.slow   # 61 s: every layout, pool-first, signed, both optimization levels
def test_bench_layouts_small(fmnist_test):
    """The loop graph against its unrolled, time-folded and deploy layouts: identical numbers."""
    r = run_tool("tools/bench_layouts.py", "--images", "256", "--rounds", "1", "--method", "datta",
                 "--optimization", "all,extended", "--pool-first", "--signed-spikes")
    assert r["identical_to_loop"] == {"unrolled": True, "folded": True, "deploy": True}
    assert set(r["images_per_second"]) == {"dnn", "loop", "unrolled", "folded", "deploy",
                                           "deploy-binary", "deploy-unit", "dnn@extended",
                                           "loop@extended", "deploy@extended", "loop-pool-first",
                                           "deploy-pool-first", "deploy-binary-pool-first",
                                           "deploy-unit-pool-first", "loop-signed",
                                           "deploy-signed", "deploy-binary-signed",
                                           "deploy-unit-signed", "deploy-unit-whole",
                                           "deploy-unit-pool-first-whole",
                                           "deploy-unit-signed-whole"}
    assert r["batch_chunk"] == DEFAULT_BATCH_CHUNK
    b = r["deploy_binary"]      # amplitudes folded: the same function up to float rounding
    assert set(b["sites"].values()) == {"folded"} and b["max_difference"] < 1e-4 and b["same_top_class"]
    u = r["deploy_unit"]        # thresholds rescaled to 1 as well: the same, up to rounding
    assert u["top_class_agreement"] >= 0.99 and u["max_difference"] < 0.5
    assert r["optimization"] == ["all", "extended"]


def test_bench_deep_small(fmnist_test):
    """The deep-network benchmark end to end on a few images (no fine-tuning)."""
    r = run_tool("tools/bench_deep.py", "--nets", "shipped", "--methods", "datta,max,deng-signed",
                 "-T", "1,2", "--test-images", "200", "--no-finetune", "--parallel", "2")
    net = r["nets"]["shipped"]
    assert set(net["accuracy"]) == {"datta", "max", "deng-signed"}
    assert set(net["accuracy"]["max"]) == set(net["accuracy"]["deng-signed"]) == {"1", "2"}
    assert isinstance(net["dnn"], float) and net["cost"]["seconds"] > 0
    assert net["cost"]["refinement_seconds"] > 0
    if os.environ.get("ONNX_SNN_RECONSTRUCT") == "0":     # (the suite's: no reconstruction)
        assert net["cost"]["reconstruction_seconds"] is None


@pytest.mark.slow   # 22 s: fine-tuning; the benchmark's conversion part stays in the default run
def test_bench_deep_finetune_only(fmnist_test):
    """--finetune-only runs the SGL job alone, at the learning rate and batch size asked for,
    and records them."""
    r = run_tool("tools/bench_deep.py", "--nets", "shipped", "--finetune-only", "--finetune-lr",
                 "1e-4", "--finetune-images", "128", "--test-images", "200", "--finetune-signed",
                 "--finetune-batch", "32")
    net = r["nets"]["shipped"]
    assert r["methods"] == [] and r["timesteps"] == [] and net["accuracy"] == {} and "cost" not in net
    ft = net["finetune"]
    assert ft["lr"] == 1e-4 and ft["train_images"] == 128 and ft["epochs"] == 1
    assert ft["batch_size"] == 32
    assert ft["signed_spikes"] is True
    assert 0 <= ft["top1_before"] <= 100 and 0 <= ft["top1_after"] <= 100


@pytest.mark.parametrize("flag,value", [("--finetune-batch", "0"), ("--finetune-batch", "-3"),
                                        ("--finetune-lr", "0")])
def test_bench_deep_refuses_a_non_positive_finetune_setting(flag, value):
    """Before any job runs: argparse's exit 2, the option named, no traceback."""
    q = subprocess.run([sys.executable, "tools/bench_deep.py", "--finetune-only", "--nets",
                        "shipped", flag, value], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert q.returncode == 2 and f"{flag} must be positive" in q.stderr
    assert "Traceback" not in q.stderr


@pytest.mark.slow   # 6 s: a benchmark's smoke run
def test_bench_eval_memory_small(fmnist_test):
    """The folder part on a few images: read in parts and whole, the same samples and top-1."""
    pytest.importorskip("PIL")
    r = run_tool("tools/bench_eval_memory.py", "--parts", "folder", "--images", "120", "--size", "40")
    f = r["folder"]
    assert f["images"] == 120 and f["float32_mb"] > 0 and f["jpeg_mb"] > 0
    for mode in ("parts", "whole"):
        assert f[mode]["samples"] == 120 and f[mode]["peak_rss_mb"] > 0
    assert f["parts"]["top1"] == f["whole"]["top1"]


@pytest.mark.slow   # 5-12 s: a benchmark's smoke run
def test_bench_memory_npy_small(fmnist_test):
    """The big-file part on a small file: eval of 100 of its samples, measured end to end in
    a child process (its exit status, seconds and peak memory), and the file removed."""
    r = run_tool("tools/bench_memory.py", "--parts", "npy", "--npy-gb", "0.01")
    n = r["npy"]
    assert n["rc"] == 0 and n["seconds"] > 0 and 20 < n["peak_rss_mb"] < 2000
    assert n["file_samples"] * 28 * 28 * 4 == pytest.approx(0.01e9, rel=0.01)
    assert "--limit 100" in n["command"] and "convert" not in r


def test_ab_speed_times_two_graphs_side_by_side(tmp_path):
    """tools/ab_speed.py: images/s of two graphs of the same inputs, timed in alternating
    blocks, and their ratio; graphs of other inputs are refused."""
    import onnx
    import builders as B
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(B.vgg(13, "clip").SerializeToString())
    b.write_bytes(B.vgg(13, "relu").SerializeToString())
    r = run_tool("tools/ab_speed.py", str(a), str(b), "--batch", "8", "--blocks", "2", "--runs", "2")
    assert r["images_per_second"]["a"] > 0 and r["images_per_second"]["b"] > 0
    assert r["b_over_a_median_block"] > 0 and r["blocks"] == 2
    c = tmp_path / "c.onnx"
    c.write_bytes(B.resnet(13, "clip", in_shape=(3, 8, 8)).SerializeToString())
    m = onnx.load(str(c))
    m.graph.input[0].name = "other"
    for n in m.graph.node:
        n.input[:] = ["other" if i == "input" else i for i in n.input]
    onnx.save(m, str(c))
    p = subprocess.run([sys.executable, "tools/ab_speed.py", str(a), str(c)], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 2 and "different inputs" in p.stderr


def test_bench_deep_reconstructs_as_convert_does_with_held_out_images(monkeypatch):
    """tools/bench_deep.py's default: the training images (the calibration images first) and
    held-out images of the same training set, none of them trained or calibrated on."""
    pytest.importorskip("torch")
    import numpy as np
    import builders as B
    import onnx_snn
    from onnx_snn.datasets import Dataset
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from onnx_snn import auto_reconstruct
    monkeypatch.setattr(auto_reconstruct, "IMAGES", 500)
    spec = importlib.util.spec_from_file_location("bench_deep", ROOT / "tools" / "bench_deep.py")
    bd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bd)
    x = B.rand_input(3000, seed=2)
    x[:, 0, 0, 0] = np.arange(3000)          # each sample's number in its first pixel
    train = Dataset("d", x, None, True)
    calib = train.take(64, seed=1).x
    cfg, train_x, held = bd._default_reconstruction(onnx_snn.prepare(B.vgg()), train, calib, 2, 1)
    ids = [set(a[:, 0, 0, 0].astype(int)) for a in (calib, train_x, held)]
    assert cfg is not None and len(train_x) == 500 and np.array_equal(train_x[:64], calib)
    assert len(held) == 1024 and ids[2].isdisjoint(ids[0] | ids[1])


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sweep_reconstruct",
                                                  ROOT / "tools" / "sweep_reconstruct.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_reconstruct_reads_its_variants():
    """tools/sweep_reconstruct.py: a variant's changes joined by +, each checked."""
    sweep = _sweep_module()
    v = sweep.parse_variant("lr=2e-3+epochs=4+warmup=0.1+surrogate-k=8+initial+mixup=0.5")
    assert v["fields"] == {"lr": 2e-3, "epochs": 4} and isinstance(v["fields"]["epochs"], int)
    assert (v["warmup"], v["k"], v["initial"], v["mixup"]) == (0.1, 8.0, True, 0.5)
    assert sweep.parse_variant("base") == sweep.parse_variant("base+base")
    for bad in ("lr", "seed=3", "warmup=2", "qdrop=0.5", "epochs=4.0", "lr=abc", "lr=0",
                "lr=nan", "surrogate-k=-1"):
        with pytest.raises(SystemExit, match="unknown change|fraction|not a|above 0|finite"):
            sweep.parse_variant(bad)
    assert sweep.parse_variant("output_weight=0")["fields"] == {"output_weight": 0.0}
    assert sweep.parse_variant("per-image=1")["per_image"] == 1
    for bad in ("per-image=0", "per-image=1.5", "per-image="):
        with pytest.raises(SystemExit, match="above 0|not a|unknown change"):
            sweep.parse_variant(bad)


def test_sweep_reconstruct_spreads_the_budget():
    """per-image=E: the default's plan trains E epochs on as many images as the budget then
    pays for, beyond its cap of 4096, and the plan is as it was afterwards."""
    from onnx_snn import auto_reconstruct as ar
    sweep = _sweep_module()
    cost = 2e7                               # (ResNet-20's order: 12 000 image-epochs)
    passes = ar.budget_passes(cost, 2)
    before = ar.training_images(cost, 512, 60000, 2)
    assert before == min(ar.IMAGES, int(passes // ar.EPOCHS_PER_IMAGE))
    cap = ar.IMAGES
    with sweep.spread(1):
        assert ar.training_images(cost, 512, 60000, 2) == int(passes) > cap
    with sweep.spread(None):
        assert ar.training_images(cost, 512, 60000, 2) == before
    assert ar.training_images(cost, 512, 60000, 2) == before


def test_sweep_reconstruct_small_and_its_patches_undone(fmnist_test, capsys, monkeypatch):
    """One run of a variant with every patch on a few images, in this process: each patch is
    in force while the reconstruction runs, the summary has its top-1, and the library's
    modules (and sys.path) are as they were afterwards."""
    pytest.importorskip("torch")
    import torch
    import onnx_snn.runtimes.torch.reconstruct as R
    import onnx_snn.runtimes.torch.network as N
    neuron = sys.modules[N.lif_step.__module__]

    def state():
        return (R.SpikingNetwork, neuron.SIGMOID_K, torch.optim.lr_scheduler.LambdaLR,
                R._batches, R.TARGET_CACHE_BYTES)
    before, path = state(), list(sys.path)
    seen = []
    real = R.reconstruct

    def spy(*args, **kwargs):
        seen.append(state())
        return real(*args, **kwargs)
    monkeypatch.setattr(R, "reconstruct", spy)
    sweep = _sweep_module()
    assert sweep.main(["--nets", "shipped", "--seeds", "0", "--test-images", "50",
                       "--train-images", "16", "--variants",
                       "epochs=1+warmup=0.5+mixup=0.5+surrogate-k=8+initial"]) == 0
    net, k, sched, batches, cache = seen[0]
    assert net.func is N.SpikingNetwork and net.keywords == {"train_initial": True}
    assert k == 8.0 and sched is not before[2] and issubclass(sched, before[2])
    assert batches is not before[3] and cache == 0
    assert state() == before and sys.path == path
    out = capsys.readouterr().out
    run = json.loads(out.splitlines()[0])
    assert run["images"] == 16 and run["config"]["epochs"] == 1 and 0 <= run["top1"] <= 100
    summary = json.loads(out[out.index("\n{") + 1:])["summary"]["shipped"]
    assert list(summary.values())[0]["mean"] == run["top1"]
