"""Benchmark: convert a CIFAR-shaped VGG-16 (clipped ReLUs, ~15 M parameters) with 512
calibration images; print JSON.

    python tools/bench_convert.py [--calib-samples 512] [--head 512] [--out bench.json]

Measured, each in a fresh subprocess so peak memory (max RSS) is the conversion's own:
* ``convert_seconds``: end to end — load, normalize, calibrate in onnxruntime, search,
  rewrite, save (what ``onnx-snn convert`` does);
* ``floor_seconds``: one plain onnxruntime pass of the same images through the DNN;
* ``search_seconds_max``: the slowest per-site (alpha, beta) search;
* ``peak_rss_mb`` of each.

The weights are random (He-scaled), the images are real Fashion-MNIST test images padded to
32x32 and repeated over 3 channels: this measures speed and memory, not accuracy. Every job
runs (``--repeat`` times, the fastest kept); if all runs of a job fail, the tool exits with
their errors (and the last lines of their stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

# siblings in tools/, which `python tools/bench_convert.py` puts first on sys.path
from _bench_common import peak_rss_mb
from _jobs import add_job_options, print_result, run_job

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def vgg16_onnx(head: int = 512, classes: int = 10, mu: float = 4.0, seed: int = 0) -> onnx.ModelProto:
    """The paper's VGG-16 for 32x32 inputs (no fifth pool: 2x2x512 features), Clip(0, mu)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, arr):
        inits.append(nh.from_array(np.asarray(arr, np.float32), name))
        return name

    x, cin, i = "input", 3, 0
    for v in VGG16:
        i += 1
        if v == "M":
            nodes.append(h.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{i}"
            continue
        w = rng.standard_normal((v, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        nodes.append(h.make_node("Conv", [x, const(f"w{i}", w), const(f"b{i}", np.zeros(v))],
                                 [f"conv{i}"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        nodes.append(h.make_node("Clip", [f"conv{i}", const(f"lo{i}", 0.0), const(f"mu{i}", mu)], [f"act{i}"]))
        x, cin = f"act{i}", v
    nodes.append(h.make_node("Flatten", [x], ["flat"]))
    w = rng.standard_normal((head, 2048)) * np.sqrt(2.0 / 2048)
    nodes.append(h.make_node("Gemm", ["flat", const("fc1.w", w), const("fc1.b", np.zeros(head))], ["fc1"], transB=1))
    nodes.append(h.make_node("Clip", ["fc1", const("lo_fc", 0.0), const("mu_fc", mu)], ["fc1a"]))
    w = rng.standard_normal((classes, head)) * np.sqrt(1.0 / head)
    nodes.append(h.make_node("Gemm", ["fc1a", const("fc2.w", w), const("fc2.b", np.zeros(classes))], ["logits"], transB=1))
    g = h.make_graph(nodes, "vgg16", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 3, 32, 32])],
                     [h.make_tensor_value_info("logits", TP.FLOAT, ["N", classes])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def images(n: int) -> np.ndarray:
    from onnx_snn.datasets import load_dataset
    x = load_dataset("fashion-mnist:test").x[:n]
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.repeat((x - 0.286) / 0.353, 3, axis=1).astype(np.float32)


def _child(args) -> None:
    """Runs inside the subprocess: one measured job, result JSON on stdout."""
    x = np.load(args._calib)
    if args._job == "floor":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(args._model, so, providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        for s in range(0, len(x), 64):
            sess.run(None, {"input": x[s:s + 64]})
        out = {"seconds": time.perf_counter() - t}
    else:
        import onnx_snn
        t = time.perf_counter()
        snn = onnx_snn.convert(args._model, x, timesteps=2, method="datta", calib_samples=None,
                               batch_size=64, show_progress=False)
        snn.save(args._output)
        out = {"seconds": time.perf_counter() - t,
               "calibration_seconds": snn.report["calibration"]["seconds"],
               "search_seconds_max": max(s["search_seconds"] for s in snn.report["sites"]),
               "search_seconds_total": sum(s["search_seconds"] for s in snn.report["sites"]),
               "sites": len(snn.report["sites"])}
    out["peak_rss_mb"] = peak_rss_mb()
    print_result(out)


def best_run(job: str, runs: list, failures: list):
    """The fastest of a job's runs; None (its failures noted) when every run failed."""
    good = [r for r in runs if "error" not in r]
    if not good:
        failures.append(f"the {job} job failed: {runs[0]['error']}\n{runs[0].get('stderr_tail', '')}")
        return None
    return min(good, key=lambda r: r["seconds"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--head", type=int, default=512, help="width of the hidden FC layer (default 512)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each job; the best is kept")
    p.add_argument("--job-timeout", type=float, metavar="SECONDS",
                   help="stop any one job after this long; it counts as failed (default: no limit)")
    p.add_argument("--out", help="also write the JSON here")
    add_job_options(p, model=str, calib=str, output=str)
    args = p.parse_args(argv)
    if args._job:
        _child(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model = vgg16_onnx(args.head)
        params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
        mpath = os.path.join(tmp, "vgg16.onnx")
        onnx.save(model, mpath)
        cpath = os.path.join(tmp, "calib.npy")
        np.save(cpath, images(args.calib_samples))
        opts = {"model": mpath, "calib": cpath}
        floors = [run_job(__file__, "floor", opts, timeout=args.job_timeout)
                  for _ in range(args.repeat)]
        convs = [run_job(__file__, "convert", {**opts, "output": os.path.join(tmp, "vgg16.snn.onnx")},
                         timeout=args.job_timeout) for _ in range(args.repeat)]
    failures = []
    floor, conv = best_run("floor", floors, failures), best_run("convert", convs, failures)
    if failures:
        raise SystemExit("bench_convert: " + "\n".join(failures))
    failed = [f"{job}: {r['error']}" for job, runs in (("floor", floors), ("convert", convs))
              for r in runs if "error" in r]
    floors = [r for r in floors if "error" not in r]
    convs = [r for r in convs if "error" not in r]
    import onnxruntime
    result = {
        "benchmark": "convert VGG-16 (CIFAR shape), datta, T=2",
        "parameters": params, "calibration_images": args.calib_samples, "sites": conv["sites"],
        "convert_seconds": round(conv["seconds"], 2),
        "calibration_seconds": round(conv["calibration_seconds"], 2),
        "floor_seconds": round(floor["seconds"], 2),
        "convert_over_floor": round(conv["seconds"] / floor["seconds"], 2),
        "search_seconds_max": round(conv["search_seconds_max"], 3),
        "search_seconds_total": round(conv["search_seconds_total"], 3),
        "convert_peak_rss_mb": round(max(r["peak_rss_mb"] for r in convs)),
        "floor_peak_rss_mb": round(max(r["peak_rss_mb"] for r in floors)),
        "targets": {"convert_seconds": 30, "peak_rss_mb": 2048, "search_seconds_per_site": 0.5},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if failed:  # some of the --repeat runs (not all: those stop above)
        result["failed_runs"] = failed
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
