"""Benchmark: conversion time and memory against the floor; print JSON.

    python tools/bench_convert.py                    # CIFAR-shape VGG-16, datta and refined
    python tools/bench_convert.py --quick            # the same, datta only, one run each
    python tools/bench_convert.py --imagenet         # + torchvision VGG-11-bn, VGG-16, ResNet-50
                                                     #   at 3x224x224 (needs torch, torchvision)
    python tools/bench_convert.py --code /tmp/base   # convert with another checkout's onnx_snn
    options: [--calib-samples N] [--head 512] [--repeat 2] [--methods datta,refined]
             [--imagenet vgg11_bn,vgg16,resnet50] [--job-timeout S] [--out bench.json]

Every job runs in a fresh process (tools/_jobs.py), ``--repeat`` times, the fastest kept, so
that its time and peak memory (VmHWM) are its own. Per model:

* ``floor``: what no conversion can avoid: load the model (an onnxruntime session from the
  file, every site's pre-activation exposed as an output) and one plain onnxruntime pass of
  the same calibration images (batch 64);
* per method (``datta``: the paper's Algorithm 1 alone; ``refined``: the default, which also
  runs the spiking network layer by layer): the stages of ``onnx_snn.convert`` timed one by
  one: ``load`` (the file read and hashed), ``normalize``, ``calibrate`` (one onnxruntime
  pass with the sites exposed, statistics), ``search_rewrite`` (the (alpha, beta) search, the
  refinement for ``refined``, the spiking graph), ``check`` (the ONNX checker's full check of
  the spiking model) and ``save``; ``seconds`` is their sum (end to end, the interpreter's
  start and imports left out); ``peak_rss_mb`` the job's peak memory.

Targets (reported with each model): ``datta`` end to end at most 1.5 x the floor + 5 s;
``refined`` at most (T + 1.5) x the floor + 5 s; peak memory at most 2.5 x the model file's
size plus onnxruntime's own, taken as the floor job's peak less one model size (the floor
holds the weights once, in onnxruntime, plus its arena, the exposed outputs and the images).

Models: the CIFAR-shape VGG-16 (the paper's 13 conv layers on 3x32x32, one ``--head``-wide
hidden FC layer, clipped ReLUs, He-scaled random weights) and, with ``--imagenet``,
torchvision's ``vgg11_bn``, ``vgg16`` and ``resnet50`` (random weights, seed 0, exported by
the legacy TorchScript exporter at opset 13, batch axis dynamic). Images: real Fashion-MNIST
test images, normalized with its mean and std, repeated over 3 channels and padded to 32x32
(CIFAR shape) or upsampled 8x (nearest) to 224x224 (ImageNet shape): this measures speed and
memory, not accuracy.
If all runs of a job fail, the tool exits with their errors (and the last lines of stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

# siblings in tools/, which `python tools/bench_convert.py` puts first on sys.path
from _bench_common import machine, peak_rss_mb, use_code
from _jobs import add_job_options, print_result, run_job

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TIMESTEPS = 2
BATCH = 64
PARTS = ("load", "normalize", "calibrate", "search_rewrite", "check", "save")
IMAGENET = ("vgg11_bn", "vgg16", "resnet50")
#: methods each model gets unless --methods says otherwise
DEFAULT_METHODS = {"vgg16_cifar": ("datta", "refined"), "vgg11_bn": ("datta", "refined"),
                   "vgg16": ("datta", "refined"), "resnet50": ("datta", "refined")}


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


def torchvision_onnx(name: str, path: str) -> None:
    """torchvision's ``name`` with random weights (seed 0) at 3x224x224, legacy exporter,
    opset 13, batch axis dynamic."""
    import torch
    import torchvision
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        torch.onnx.export(net, (torch.rand(2, 3, 224, 224),), path, dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)


def images(n: int, size: int = 32) -> np.ndarray:
    """``n`` Fashion-MNIST test images, normalized, over 3 channels, at ``size`` x ``size``
    (32: padded; 224: upsampled 8x)."""
    from onnx_snn.datasets import load_dataset
    x = (load_dataset("fashion-mnist:test").x[:n] - 0.286) / 0.353
    if size == 32:
        x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    elif size == 224:
        x = x.repeat(8, axis=2).repeat(8, axis=3)
    else:
        raise ValueError(f"no image size {size}")
    return np.repeat(x, 3, axis=1).astype(np.float32)


def _timed(parts: dict, part: str, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            parts[part] += time.perf_counter() - t
    return wrapper


def _convert_job(args, x: np.ndarray) -> dict:
    """The stages of ``onnx_snn.convert`` one by one, each timed (also works on an older
    onnx_snn on PYTHONPATH, for before/after comparisons)."""
    import importlib
    C = importlib.import_module("onnx_snn.convert")   # the module (the package exports a function)
    parts = defaultdict(float)
    for name in ("load", "load_model", "sha256_file"):   # what prepare reads the file with
        if hasattr(C, name):
            setattr(C, name, _timed(parts, "load", getattr(C, name)))
    C._self_check = _timed(parts, "check", C._self_check)
    t0 = time.perf_counter()
    nm = C.prepare(args._model)
    t1 = time.perf_counter()
    cal = C.calibrate(nm, x, batch_size=BATCH, show_progress=False)
    t2 = time.perf_counter()
    snn = C.build(nm, cal, TIMESTEPS, args._method)
    t3 = time.perf_counter()
    snn.save(args._output)
    t4 = time.perf_counter()
    parts["normalize"] = t1 - t0 - parts["load"]
    parts["calibrate"] = t2 - t1
    parts["search_rewrite"] = t3 - t2 - parts["check"]
    parts["save"] = t4 - t3
    sites = snn.report["sites"]
    return {"seconds": t4 - t0, "parts": {p: parts[p] for p in PARTS}, "sites": len(sites),
            "code": str(Path(C.__file__).parent.parent),
            "search_seconds_max": max(s["search_seconds"] for s in sites),
            "search_seconds_total": sum(s["search_seconds"] for s in sites)}


def _floor_job(args, x: np.ndarray) -> dict:
    """Load (an onnxruntime session from the file) and one plain pass, sites exposed."""
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    t0 = time.perf_counter()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(args._model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    t1 = time.perf_counter()
    for s in range(0, len(x), BATCH):
        sess.run(None, {name: x[s:s + BATCH]})
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "load_seconds": t1 - t0, "pass_seconds": t2 - t1}


def _child(args) -> None:
    """Runs inside the subprocess: one measured job, result JSON on stdout."""
    if args._code:
        use_code(args._code)
    x = np.load(args._calib)
    out = _floor_job(args, x) if args._job == "floor" else _convert_job(args, x)
    out["peak_rss_mb"] = peak_rss_mb()
    out["load_average"] = round(os.getloadavg()[0], 2)
    print_result(out)


def best_run(job: str, runs: list, failures: list):
    """The fastest of a job's runs; None (its failures noted) when every run failed."""
    good = [r for r in runs if "error" not in r]
    if not good:
        failures.append(f"the {job} job failed: {runs[0]['error']}\n{runs[0].get('stderr_tail', '')}")
        return None
    return min(good, key=lambda r: r["seconds"])


def _sites_exposed(model_path: str, out_path: str) -> int:
    """Write the model with every site's pre-activation as an extra output (the floor's
    model); returns the number of sites."""
    import onnx_snn
    nm = onnx_snn.prepare(model_path)
    m = onnx.load(model_path)
    have = {o.name for o in m.graph.output}
    for s in nm.sites:
        if s.input not in have:
            m.graph.output.add().name = s.input
            have.add(s.input)
    onnx.save(m, out_path)
    return len(nm.sites)


def _measure(name: str, path: str, x: np.ndarray, methods, args, tmp: str) -> dict:
    size_mb = os.path.getsize(path) / 2 ** 20
    params = sum(int(np.prod(t.dims)) for t in onnx.load(path, load_external_data=False).graph.initializer)
    floor_model = os.path.join(tmp, f"{name}.floor.onnx")
    n_sites = _sites_exposed(path, floor_model)
    cpath = os.path.join(tmp, f"{name}.calib.npy")
    np.save(cpath, x)
    opts = {"model": floor_model, "calib": cpath}
    runs = {"floor": [run_job(__file__, "floor", opts, timeout=args.job_timeout)
                      for _ in range(args.repeat)]}
    os.unlink(floor_model)
    for method in methods:
        out = os.path.join(tmp, f"{name}.{method}.snn.onnx")
        runs[method] = [run_job(__file__, "convert", {"model": path, "calib": cpath, "method": method,
                                                      "output": out, "code": args.code},
                                timeout=args.job_timeout)
                        for _ in range(args.repeat)]
        for f in Path(tmp).glob(f"{name}.{method}.snn.onnx*"):
            f.unlink()
    failures = []
    best = {job: best_run(f"{name} {job}", r, failures) for job, r in runs.items()}
    if failures:
        raise SystemExit("bench_convert: " + "\n".join(failures))
    floor = best["floor"]
    own = floor["peak_rss_mb"] - size_mb    # onnxruntime's own: the floor less the weights
    row = {"parameters": params, "model_mb": round(size_mb, 1), "sites": n_sites,
           "calibration_images": len(x), "image_shape": list(x.shape[1:]),
           "floor": _rounded(floor), "targets": {}}
    for method in methods:
        r = best[method]
        row[method] = {**_rounded(r), "over_floor": round(r["seconds"] / floor["seconds"], 2)}
        limit = (1.5 if method == "datta" else TIMESTEPS + 1.5) * floor["seconds"] + 5
        mem = 2.5 * size_mb + own
        row["targets"][method] = {
            "seconds_max": round(limit, 1), "seconds": round(r["seconds"], 1),
            "seconds_met": r["seconds"] <= limit,
            "peak_rss_mb_max": round(mem), "peak_rss_mb": round(r["peak_rss_mb"]),
            "peak_rss_met": r["peak_rss_mb"] <= mem}
    failed = [f"{job}: {r['error']}" for job, rs in runs.items() for r in rs if "error" in r]
    if failed:  # some of the --repeat runs (not all: those stop above)
        row["failed_runs"] = failed
    return row


def _rounded(r: dict) -> dict:
    out = {}
    for k, v in r.items():
        if isinstance(v, dict):
            out[k] = {a: round(b, 2) for a, b in v.items()}
        elif isinstance(v, float):
            out[k] = round(v, 3 if "search" in k else 2)
        else:
            out[k] = v
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib-samples", type=int, default=None,
                   help="calibration images (default: 512 for the CIFAR model, 64 for --imagenet)")
    p.add_argument("--head", type=int, default=512, help="width of the CIFAR model's hidden FC layer (default 512)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each job; the best is kept")
    p.add_argument("--methods", help="comma-separated methods for every model (default: datta and "
                                     "refined)")
    p.add_argument("--quick", action="store_true", help="the CIFAR model, datta only, one run each")
    p.add_argument("--imagenet", nargs="?", const=",".join(IMAGENET), metavar="MODELS",
                   help=f"also torchvision models at 224x224 (default {','.join(IMAGENET)}; needs torch)")
    p.add_argument("--no-cifar", action="store_true", help="leave out the CIFAR-shape VGG-16")
    p.add_argument("--job-timeout", type=float, metavar="SECONDS",
                   help="stop any one job after this long; it counts as failed (default: no limit)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--code", help="convert with the onnx_snn of the checkout at this folder "
                   "(e.g. a git worktree of an older commit), not the installed one")
    add_job_options(p, model=str, calib=str, output=str, method=str, code=str)
    args = p.parse_args(argv)
    if args._job:
        _child(args)
        return 0
    if args.quick:
        args.repeat, args.methods = 1, args.methods or "datta"
    chosen = [] if args.no_cifar else ["vgg16_cifar"]
    if args.imagenet:
        unknown = sorted(set(args.imagenet.split(",")) - set(IMAGENET))
        if unknown:
            p.error(f"unknown --imagenet model(s) {', '.join(unknown)}; choose from {', '.join(IMAGENET)}")
        chosen += [m for m in IMAGENET if m in args.imagenet.split(",")]
    if not chosen:
        p.error("no model chosen")
    methods = args.methods.split(",") if args.methods else None
    t_start = time.time()
    load_before = os.getloadavg()[0]
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            path = os.path.join(tmp, f"{name}.onnx")
            if name == "vgg16_cifar":
                onnx.save(vgg16_onnx(args.head), path)
                x = images(args.calib_samples or 512, 32)
            else:
                torchvision_onnx(name, path)
                x = images(args.calib_samples or 64, 224)
            models[name] = _measure(name, path, x, methods or DEFAULT_METHODS[name], args, tmp)
            os.unlink(path)
    result = {
        "benchmark": f"onnx-snn conversion against the floor, T={TIMESTEPS}, batch {BATCH}",
        "models": models,
        "load_average": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                         "jobs_max": max((models[m][j].get("load_average", 0) for m in models
                                          for j in models[m] if isinstance(models[m][j], dict)),
                                         default=0)},
        "wall_seconds": round(time.time() - t_start),
        **machine(),
    }
    if "vgg16_cifar" in models:   # the CIFAR model's datta figures at the top (as before)
        m = models["vgg16_cifar"]
        d = m.get("datta")
        result.update({"parameters": m["parameters"], "sites": m["sites"],
                       "calibration_images": m["calibration_images"],
                       "floor_seconds": m["floor"]["seconds"],
                       "floor_peak_rss_mb": round(m["floor"]["peak_rss_mb"])})
        if d:
            result.update({"convert_seconds": d["seconds"],
                           "calibration_seconds": d["parts"]["calibrate"],
                           "convert_over_floor": d["over_floor"],
                           "search_seconds_max": d["search_seconds_max"],
                           "search_seconds_total": d["search_seconds_total"],
                           "convert_peak_rss_mb": round(d["peak_rss_mb"])})
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
