"""Benchmark: the memory ``onnx-snn eval`` takes; print JSON.

    python tools/bench_eval_memory.py                       # both parts below
    python tools/bench_eval_memory.py --parts folder        # an image folder, in parts or whole
    python tools/bench_eval_memory.py --parts batch         # spiking models over the batch size
    options: [--images 6000] [--size 224] [--nets resnet18,densenet121] [--batches 32,128,256]
             [--job-timeout S] [--out bench.json]

Every measurement is one job in a fresh process (tools/_jobs.py): ``onnx_snn.evaluate`` on
one thread, its seconds and peak resident memory (VmHWM).

* ``folder``: a folder of ``--images`` JPEG files (real Fashion-MNIST test images, gray
  repeated over RGB, upsampled to ``--size`` x ``--size``; ten class folders) evaluated with
  a small DNN (one strided convolution, a clipped ReLU, global average pooling, a dense
  layer), once as eval reads a folder (in parts of ``onnx_snn.evaluate.EVAL_PART_BYTES``)
  and once with the whole folder read first (the part size set above the folder's size, as
  eval read every folder before 2026-12-03). The images measure memory, not accuracy.
* ``batch``: torchvision models (``--nets``, random weights, 3x64x64, exported at opset 13)
  converted with ``datta`` at T = 2 on 64 of the same images, then evaluated on 256 images
  with each ``--batches`` batch size and with the default (sized by the model's memory,
  ``onnx_snn.evaluate.eval_batch``). ``bytes_per_neuron_sample``: the slope of peak memory
  over the batch size, per neuron (sites and counted pools) and sample: what
  ``LOOP_BYTES_PER_NEURON`` estimates.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# siblings in tools/, which `python tools/bench_eval_memory.py` puts first on sys.path
from _bench_common import emit, peak_rss_mb  # noqa: E402
from _jobs import add_job_options, print_result, run_job  # noqa: E402


def images(n: int, size: int):
    """``n`` real Fashion-MNIST test images (repeated from the start past 10 000) as [n, size,
    size, 3] uint8, upsampled (nearest) to ``size``, and their labels."""
    from onnx_snn.datasets import load_dataset
    ds = load_dataset("fashion-mnist:test")
    idx = np.arange(n) % len(ds)
    x = (ds.x[idx, 0] * 255).round().astype(np.uint8)
    rows = (np.arange(size) * x.shape[1]) // size
    cols = (np.arange(size) * x.shape[2]) // size
    return np.repeat(x[:, rows][:, :, cols][..., None], 3, axis=-1), ds.y[idx]


def make_folder(root: Path, n: int, size: int) -> None:
    from PIL import Image
    x, y = images(n, size)
    for k in range(n):
        d = root / f"class{int(y[k])}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[k]).save(d / f"{k:06d}.jpg", quality=90)


def small_dnn(size: int):
    """conv 3->8 (3x3, stride 4) - clip(0, 6) - global average pool - dense 8->10."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi"),
             numpy_helper.from_array(rng.normal(0, 0.3, (10, 8)).astype(np.float32), "fw"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def job_folder(args) -> dict:
    import importlib
    import onnx_snn
    ev = importlib.import_module("onnx_snn.evaluate")    # the module (the package exports the function)
    if args._whole:
        ev.EVAL_PART_BYTES = 1 << 62
        import onnx_snn.image_folder as imf
        imf.MAX_BYTES = 1 << 62
    t = time.perf_counter()
    r = onnx_snn.evaluate(args._model, args._data, show_progress=False, mean=[0.286], std=[0.353])
    return {"samples": r.samples, "top1": r.top1, "seconds": round(time.perf_counter() - t, 2),
            "peak_rss_mb": round(peak_rss_mb())}


def job_batch(args) -> dict:
    import onnx_snn
    from onnx_snn.spiking import format as fmt
    from onnx_snn.model_io import load_model
    x = np.load(args._data)
    info = fmt.read_info(load_model(args._model), args._model)
    t = time.perf_counter()
    r = onnx_snn.evaluate(args._model, (x["x"], x["y"]), show_progress=False,
                          batch_size=args._batch or None)
    return {"batch_size": r.batch_size, "seconds": round(time.perf_counter() - t, 2),
            "peak_rss_mb": round(peak_rss_mb()),
            "neurons": int(sum(s.neurons for s in info.sites) + sum(p.neurons for p in info.pools))}


def export_torchvision(name: str, path: Path) -> None:
    import torch
    import torchvision
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    torch.onnx.export(net, torch.zeros(1, 3, 64, 64), str(path), opset_version=13, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})


def bench_folder(args, tmp: Path) -> dict:
    import onnx
    folder, model = tmp / "folder", tmp / "small.onnx"
    t = time.perf_counter()
    make_folder(folder, args.images, args.size)
    onnx.save(small_dnn(args.size), str(model))
    out = {"images": args.images, "size": args.size,
           "float32_mb": round(args.images * 3 * args.size ** 2 * 4 / 2 ** 20, 1),
           "jpeg_mb": round(sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2 ** 20, 1),
           "written_s": round(time.perf_counter() - t, 1)}
    for mode in ("parts", "whole"):
        out[mode] = run_job(__file__, "folder", {"model": str(model), "data": str(folder),
                                                 "whole": 1 if mode == "whole" else None},
                            threads=1, timeout=args.job_timeout)
    return out


def bench_batch(args, tmp: Path) -> dict:
    import onnx_snn
    x, y = images(320, 64)
    x = ((x.transpose(0, 3, 1, 2).astype(np.float32) / 255) - 0.286) / 0.353
    np.savez(tmp / "test.npz", x=x[64:], y=y[64:])
    out = {}
    for name in args.nets.split(","):
        dnn, snn = tmp / f"{name}.onnx", tmp / f"{name}.snn.onnx"
        export_torchvision(name, dnn)
        onnx_snn.convert(str(dnn), x[:64], timesteps=2, method="datta",
                         show_progress=False).save(snn)
        rows = []
        for b in [int(v) for v in args.batches.split(",")] + [0]:
            rows.append(run_job(__file__, "batch", {"model": str(snn), "data": str(tmp / "test.npz"),
                                                    "batch": b}, threads=1, timeout=args.job_timeout))
        fit = [r for r in rows[:-1] if "error" not in r]
        slope = None
        if len(fit) >= 2:
            b = np.array([r["batch_size"] for r in fit], float)
            m = np.array([r["peak_rss_mb"] for r in fit], float)
            slope = float(np.polyfit(b, m, 1)[0]) * 2 ** 20 / fit[0]["neurons"]
        out[name] = {"runs": rows[:-1], "default": rows[-1],
                     "bytes_per_neuron_sample": None if slope is None else round(slope, 1)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="folder,batch",
                   help="comma-separated parts to run: folder, batch (default: folder,batch)")
    p.add_argument("--images", type=int, default=6000, help="images in the folder (default 6000)")
    p.add_argument("--size", type=int, default=224, help="their side (default 224)")
    p.add_argument("--nets", default="resnet18,densenet121", help="torchvision models (batch part)")
    p.add_argument("--batches", default="32,128,256", help="batch sizes (batch part)")
    p.add_argument("--job-timeout", type=float, default=1800)
    p.add_argument("--out", help="also write the JSON here")
    add_job_options(p, model=str, data=str, whole=int, batch=int)
    args = p.parse_args()
    parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    if not parts or parts - {"folder", "batch"}:
        p.error(f"--parts takes folder and/or batch, comma-separated, not {args.parts!r}")
    if args._job:
        print_result({"folder": job_folder, "batch": job_batch}[args._job](args))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_memory_"))
    try:
        result = {"benchmark": "eval_memory"}
        if "folder" in parts:
            result["folder"] = bench_folder(args, tmp)
        if "batch" in parts:
            result["batch"] = bench_batch(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ONNX_SNN_PROGRESS", "0")
    sys.exit(main())
