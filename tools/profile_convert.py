"""Where a conversion spends its time, by part of the refinement; prints JSON.

    python tools/profile_convert.py                       # CIFAR-shape VGG-16, 512 images, T=2
    python tools/profile_convert.py --images 256 --method datta
    python tools/profile_convert.py --imagenet vgg11_bn --images 64   # torchvision's, 3x224x224
    python tools/profile_convert.py --model MODEL.onnx --data fashion-mnist --images 512

Runs ``onnx_snn.convert`` once under cProfile and reports the cumulative seconds of the
functions that make up its cost (they nest: onnxruntime's runs are part of the refinement's
``weight_calibration_dnn`` and ``spiking_runs``):

* ``calibration``: the onnxruntime pass with the sites exposed and its statistics;
* ``refinement``: all of :func:`onnx_snn.sequential.refine`, of which
  ``weight_calibration_accumulate`` (the ridge regressions' normal equations),
  ``weight_calibration_solve`` (their solves, normal equations or dual form, the held-out
  check included),
  ``channel_search`` (the per-channel search, neurons simulated), ``onnxruntime_runs`` (every
  session run of the conversion), ``onnxruntime_sessions`` (their creation),
  ``step_graph_builds`` (building the refinement's step graph; ``calls`` says how often);
* ``rewrite_and_check``: the rest of ``build``.

The shares are of the conversion's own seconds (cProfile's overhead included, about 5 %).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

# siblings in tools/, which `python tools/profile_convert.py` puts first on sys.path
from _bench_common import emit

PARTS = {
    "calibration": ("calibrate.py", ("record_sites",)),    # (calibrate() runs it too)
    "refinement": ("sequential.py", ("refine",)),
    "weight_calibration_accumulate": ("weight_calibration.py", ("add",)),
    "weight_calibration_solve": ("weight_calibration.py", ("_ridge", "_dual_ridge")),
    "channel_search": ("scales.py", ("search_channels",)),
    "onnxruntime_sessions": ("calibrate.py", ("make_session",)),
    "step_graph_builds": ("rewrite.py", ("step_model",)),
}


def _cumulative(stats: pstats.Stats, file: str, funcs) -> float:
    return sum(v[3] for (f, _, name), v in stats.stats.items()
               if name in funcs and os.path.basename(f) == file)


def _calls(stats: pstats.Stats, file: str, funcs) -> int:
    return sum(v[1] for (f, _, name), v in stats.stats.items()
               if name in funcs and os.path.basename(f) == file)


def _ort_runs(stats: pstats.Stats) -> float:
    return sum(v[3] for (f, _, name), v in stats.stats.items()
               if name == "run" and "onnxruntime_inference_collection" in f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="an ONNX model (default: the CIFAR-shape VGG-16 of bench_convert)")
    p.add_argument("--data", default=None, help="calibration data for --model, as convert's "
                   "--calib takes it (default: fashion-mnist, the training split in the model's "
                   "input layout); without --model, bench_convert's Fashion-MNIST test images "
                   "at 3x32x32")
    p.add_argument("--imagenet", metavar="NAME", help="profile torchvision's NAME (vgg11_bn, vgg16, "
                   "resnet50) at 3x224x224 with random weights, as bench_convert --imagenet builds "
                   "it (Fashion-MNIST images upsampled; use --images 64)")
    p.add_argument("--images", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("-T", "--timesteps", type=int, default=2)
    p.add_argument("--method", default="refined")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    import onnx

    import onnx_snn
    from bench_convert import images, torchvision_onnx, vgg16_onnx
    if args.imagenet and (args.model or args.data):
        p.error("--imagenet builds its own model and images: drop --model/--data")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if args.imagenet:
            path = os.path.join(tmp, f"{args.imagenet}.onnx")
            torchvision_onnx(args.imagenet, path)
        elif path is None:
            path = os.path.join(tmp, "vgg16_cifar.onnx")
            onnx.save(vgg16_onnx(), path)
        data = args.data or ("fashion-mnist" if args.model else
                             images(args.images, 224 if args.imagenet else 32))
        kw = {"calib_samples": args.images} if isinstance(data, str) else {}
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        try:
            snn = onnx_snn.convert(path, data, timesteps=args.timesteps, method=args.method,
                                   show_progress=False, reconstruct=0, **kw)
        except onnx_snn.OnnxSnnError as e:     # a model or data the converter refuses
            print(f"profile_convert: error: {e}", file=sys.stderr)
            return 2
        prof.disable()
        total = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    parts = {k: _cumulative(stats, *where) for k, where in PARTS.items()}
    parts["onnxruntime_runs"] = _ort_runs(stats)
    parts["rewrite_and_check"] = max(0.0, total - parts["calibration"] - parts["refinement"])
    name = (f"{args.imagenet} 224 (random weights)" if args.imagenet else
            args.model or "vgg16_cifar (random weights)")
    emit({"benchmark": "profile_convert", "model": name,
          "images": args.images, "timesteps": args.timesteps, "method": args.method,
          "seconds": round(total, 2), "sites": len(snn.records),
          "parts_seconds": {k: round(v, 2) for k, v in parts.items()},
          "parts_share": {k: round(v / total, 3) for k, v in parts.items()},
          "calls": {k: _calls(stats, *where) for k, where in PARTS.items()}}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
