#!/usr/bin/env python3
"""Benchmark: time and peak memory of commands on inputs larger than the other benchmarks';
prints JSON. README's and docs/FORMAT.md's memory figures for them come from here.

    python tools/bench_memory.py                          # both parts below
    python tools/bench_memory.py --parts convert          # a net of large feature maps
    python tools/bench_memory.py --parts npy --npy-gb 9.4 # eval --limit 100 of a big .npy
    options: [--dir DIR] [--images 4096] [--threads 2] [--code DIR] [--job-timeout S]
             [--json OUT]

Every command is one job in a fresh process (tools/_jobs.py) that runs it as a user does,
``python -m onnx_snn ARGS``, and reports its seconds end to end (imports included) and its
peak resident memory (the maximum resident size /usr/bin/time reports).

* ``convert``: ``onnx-snn convert M --calib x.npy -T 2`` with the default reconstruction
  (PyTorch installed) of a depthwise-residual net on 3 x 56 x 56 images (random weights, a
  3 x 3 convolution to 32 channels, two blocks of a depthwise 3 x 3 and a 1 x 1 convolution
  with a residual add, global average pooling, a dense layer: 1.2 M activations per image),
  calibrated on ``--images`` real Fashion-MNIST training images upsampled 2 x 2 and
  repeated over three channels. Its training batch of 32 x T steps held 1.6 GB before the
  reconstruction trained a batch in parts (``runtimes/torch/reconstruct.py``:
  ``TRAIN_BYTES``); the row has the reconstruction's plan (epochs, images, parts of a
  batch) from the written model's history.
* ``npy``: ``onnx-snn eval`` of the shipped model on 100 samples (``--limit 100``) of a
  ``--npy-gb`` GB float32 ``.npy`` of Fashion-MNIST test images (preprocessed as the model
  records, repeated to the size): a ``.npy`` is memory-mapped, and only the kept samples are
  read. The file is written once into ``--dir`` (a temporary folder by default, removed
  after) and needs that much free disk.

``--code DIR`` measures another checkout's onnx_snn (the jobs import it from DIR).
Timings depend on the machine and what else runs: run it with nothing else running.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from _bench_common import emit, machine  # noqa: E402
from _jobs import add_job_options, print_result, run_job  # noqa: E402

TOOLS = os.path.dirname(os.path.abspath(__file__))
SHIPPED = os.path.join(os.path.dirname(TOOLS), "onnx_snn", "models", "fmnist_vgg.onnx")
PARTS = ("convert", "npy")
#: the large-feature-map net: tools/bench_budget.py's (its input side and channels there)
NET = "dwres56x3"
#: the samples eval keeps of the big file
LIMIT = 100
#: ``python -c`` of a command with another checkout's code (``--code``; argv: the checkout,
#: then the command's arguments): its onnx_snn and its runtimes/ as onnx_snn.runtimes (as the
#: install maps them), not the installed ones
CODE_LAUNCHER = """
import sys
code = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
sys.path.insert(0, code)
import runtimes
sys.modules["onnx_snn.runtimes"] = runtimes
from onnx_snn.cli import main
sys.exit(main(sys.argv[2:]))
"""


def large_maps_net(path: str) -> None:
    """Export the depthwise-residual net of the ``convert`` part (module doc) to ``path``:
    tools/bench_budget.py's ``dwres56`` on three channels."""
    from bench_budget import model_path
    os.replace(model_path(NET, os.path.dirname(os.path.abspath(path))), path)


def large_maps_data(path: str, images: int) -> None:
    """``images`` Fashion-MNIST training images as 3 x 56 x 56 float32 in [0, 1] (each pixel
    2 x 2, gray over three channels), saved to ``path``."""
    from bench_budget import CHANNELS, SIDES
    from onnx_snn.datasets import load_dataset
    x = load_dataset("fashion-mnist", split="train").x
    x = x[np.random.default_rng(0).choice(len(x), images, replace=False)]   # [0, 1] float32
    k = SIDES[NET] // x.shape[-1]
    x = x.reshape(len(x), 1, *x.shape[-2:]).repeat(k, axis=-2).repeat(k, axis=-1)
    np.save(path, np.ascontiguousarray(np.repeat(x, CHANNELS[NET], axis=1)))


def big_npy(path: str, gb: float) -> int:
    """A float32 ``.npy`` of about ``gb`` GB at ``path``: the Fashion-MNIST test images,
    preprocessed as the shipped model records, repeated; written in parts (memory: one
    part). Returns its samples."""
    import onnx_snn
    from onnx_snn.datasets import apply_preprocess, load_dataset
    pre = onnx_snn.prepare(SHIPPED).preprocess or {}
    x = load_dataset("fashion-mnist", split="test").x
    x = apply_preprocess(x, pre.get("mean"), pre.get("std")).astype(np.float32)
    x = x.reshape(len(x), 1, 28, 28)
    n = max(LIMIT, int(gb * 1e9) // x[0].nbytes)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *x.shape[1:]))
    for start in range(0, n, len(x)):
        m = min(len(x), n - start)
        out[start:start + m] = x[:m]
    out.flush()
    del out
    return n


# ------------------------------------------------------------------ the jobs (child side)

def job_command(argv_json: str, code: str = None) -> dict:
    """One ``onnx-snn`` command as a user runs it (``python -m onnx_snn``, in a child of this
    fresh process, its only one): its exit status, seconds end to end and peak resident
    memory (the child's maximum, as /usr/bin/time's)."""
    argv = json.loads(argv_json)
    cmd = [sys.executable, "-m", "onnx_snn", *argv] if not code else \
        [sys.executable, "-c", CODE_LAUNCHER, os.path.abspath(code), *argv]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss     # (KB on Linux)
    out = {"rc": done.returncode, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}
    if done.returncode:
        out["stderr_tail"] = done.stderr.strip()[-2000:]
    return out


# ------------------------------------------------------------------ the parts (parent side)

def _command(args, argv, env=None) -> dict:
    r = run_job(__file__, "command", {"argv": json.dumps(argv), "code": args.code},
                threads=args.threads, timeout=args.job_timeout, env=env)
    r["command"] = "onnx-snn " + " ".join(argv)
    return r


def part_convert(args, folder: str) -> dict:
    import onnx
    model, data, out = (os.path.join(folder, f) for f in (f"{NET}.onnx", "x.npy", "out.onnx"))
    large_maps_net(model)
    large_maps_data(data, args.images)
    # (the default reconstruction: not turned off by an $ONNX_SNN_RECONSTRUCT=0 of the caller)
    r = _command(args, ["convert", model, "--calib", data, "-T", "2", "-o", out, "-q"],
                 env={"ONNX_SNN_RECONSTRUCT": "auto"})
    r.update(net="depthwise-residual, 3 x 56 x 56, 1.2 M activations per image",
             calibration_file_images=args.images)
    if os.path.exists(out):
        from onnx_snn.spiking.format import META_HISTORY
        meta = {p.key: p.value for p in onnx.load(out, load_external_data=False).metadata_props}
        for step in json.loads(meta.get(META_HISTORY, "[]")):
            if step.get("step") == "reconstruct":
                r["reconstruction"] = {k: step.get(k) for k in
                                       ("epochs", "images", "batch_parts_of", "seconds", "kept")
                                       if k in step}
    return r


def part_npy(args, folder: str) -> dict:
    path = os.path.join(folder, "big.npy")
    t0 = time.perf_counter()
    n = big_npy(path, args.npy_gb)
    written = time.perf_counter() - t0
    r = _command(args, ["eval", SHIPPED, "--data", path, "--limit", str(LIMIT), "-q"])
    r.update(file_gb=round(os.path.getsize(path) / 1e9, 2), file_samples=n,
             write_seconds=round(written, 1))
    os.remove(path)
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from: {', '.join(PARTS)}")
    p.add_argument("--dir", help="folder for the models and data files (default: a temporary one)")
    p.add_argument("--images", type=int, default=4096,
                   help="convert: the calibration file's images (default 4096)")
    p.add_argument("--npy-gb", type=float, default=2.0,
                   help="npy: the .npy file's size in GB (default 2; README's figure: 9.4)")
    p.add_argument("--threads", type=int, default=2, help="each job's threads (default 2)")
    p.add_argument("--code", help="another checkout's onnx_snn to measure")
    p.add_argument("--job-timeout", type=float, default=1800)
    p.add_argument("--json", help="also write the JSON here")
    add_job_options(p, argv=str, code=str)
    args = p.parse_args(argv)
    if args._job:       # (run_job set the threads in the environment the command inherits)
        print_result(job_command(args._argv, args._code))
        return 0
    parts = [s for s in args.parts.split(",") if s]
    unknown = [s for s in parts if s not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}; known: {', '.join(PARTS)}")
    folder = args.dir or tempfile.mkdtemp(prefix="bench_memory_")
    os.makedirs(folder, exist_ok=True)
    result = {"benchmark": "bench_memory", "command": " ".join(["python", *sys.argv]),
              "environment": machine(), "threads": args.threads}
    try:
        for part in parts:
            print(f"bench_memory: {part} ...", file=sys.stderr, flush=True)
            result[part] = {"convert": part_convert, "npy": part_npy}[part](args, folder)
            print(f"bench_memory: {part}: {json.dumps(result[part])}", file=sys.stderr, flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
