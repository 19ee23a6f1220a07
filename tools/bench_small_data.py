#!/usr/bin/env python3
"""The default conversion from a data file of the calibration images alone, with and without
the check of its reconstruction on calibration images held out (``onnx_snn/auto_reconstruct.py``:
``split_rows``); prints a JSON line per run on stderr as it goes, and one JSON on stdout.

    python tools/bench_small_data.py                     # the three trained networks, T = 2
    python tools/bench_small_data.py --nets vgg16 --images 512 --seed 5

For each network, ``--images`` Fashion-MNIST training images (drawn with ``--seed``,
normalized as the model records) are saved as one .npy file, which holds nothing beyond the
calibration images; the network is converted from it as ``onnx-snn convert MODEL --calib
FILE.npy -T 2`` does (PyTorch installed: the default reconstructs), once as it is
(``checked``: a quarter of the images, at most 256, leave the calibration and the training
and judge the reconstruction) and once with that hold-out turned off (``unchecked``: all the
images calibrate and train, nothing judges), then top-1 on the 10 000 test images in
onnxruntime. Each run is in this process, one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
os.environ["ONNX_SNN_RECONSTRUCT"] = "auto"     # (the default, whatever the shell says)
NETS = {"shipped": os.path.join(os.path.dirname(TOOLS), "onnx_snn", "models", "fmnist_vgg.onnx"),
        "vgg16": os.path.join(TOOLS, "models", "fmnist_vgg16.onnx"),
        "resnet20": os.path.join(TOOLS, "models", "fmnist_resnet20.onnx")}
VARIANTS = ("checked", "unchecked")


def one_run(net: str, variant: str, path: str, timesteps: int, test_images=None) -> dict:
    """Convert ``net`` from the file ``path`` (``variant``: module doc); its test top-1."""
    import onnx_snn
    from onnx_snn import auto_reconstruct as ar
    from onnx_snn.evaluate import evaluate
    fraction = ar.SPLIT_FRACTION
    if variant == "unchecked":
        ar.SPLIT_FRACTION = 0.0                  # (fewer than MIN_SPLIT: nothing held out)
    try:
        t0 = time.perf_counter()
        snn = onnx_snn.convert(NETS[net], path, timesteps, show_progress=False,
                               calib_samples=None)   # (all of the file: it holds no more)
        seconds = time.perf_counter() - t0
    finally:
        ar.SPLIT_FRACTION = fraction
    rec = snn.report.get("reconstruction", {})
    held = rec.get("held_out") or {}
    top1 = evaluate(snn, "fashion-mnist", show_progress=False, limit=test_images).top1
    return {"net": net, "variant": variant, "top1": top1, "seconds": round(seconds, 1),
            "calibration_samples": snn.report["calibration"]["samples"],
            "reconstructed": rec.get("kept"), "epochs": rec.get("epochs"),
            "trained_images": rec.get("images"), "held_out": held.get("images"),
            "held_out_before": {k: held["before"][k] for k in ("output_loss", "dnn_agreement")
                                if k in (held.get("before") or {})},
            "held_out_after": {k: held["after"][k] for k in ("output_loss", "dnn_agreement")
                               if k in (held.get("after") or {})}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--images", type=int, default=512, help="the data file's images (512)")
    p.add_argument("--seed", type=int, default=5, help="which training images (5)")
    p.add_argument("-T", "--timesteps", type=int, default=2)
    p.add_argument("--test-images", type=int, default=None, help="(all 10 000)")
    args = p.parse_args(argv)
    import onnx_snn
    from onnx_snn.datasets import apply_preprocess, load_dataset
    from _bench_common import machine
    nets = [n for n in args.nets.split(",") if n]
    variants = [v for v in args.variants.split(",") if v]
    for name, known in ((nets, NETS), (variants, VARIANTS)):
        unknown = [n for n in name if n not in known]
        if unknown:
            p.error(f"unknown {unknown[0]!r}; known: {', '.join(known)}")
    train = load_dataset("fashion-mnist", split="train").x
    rows = np.random.default_rng(args.seed).choice(len(train), args.images, replace=False)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in nets:
            pre = onnx_snn.prepare(NETS[net]).preprocess or {}
            path = os.path.join(tmp, f"{net}.npy")
            np.save(path, apply_preprocess(train[rows], pre.get("mean"), pre.get("std")))
            for variant in variants:
                r = one_run(net, variant, path, args.timesteps, args.test_images)
                print(json.dumps(r), file=sys.stderr, flush=True)
                runs.append(r)
    print(json.dumps({"machine": machine(), "images": args.images, "seed": args.seed,
                      "timesteps": args.timesteps, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
