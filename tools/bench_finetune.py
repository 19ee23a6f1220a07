"""Accuracy of the shipped Fashion-MNIST model: conversion only, then after 1 and 3 epochs
of surrogate-gradient fine-tuning, at T = 1, 2, 3; prints JSON (full 10k test set).

    python tools/bench_finetune.py [-T 1 2 3] [--epochs 3] [--out finetune.json]

Each T: convert (``--method``, default ``datta``, the paper's Algorithm 1, as the fine-tuning
table of docs/MEASUREMENTS.md was measured; ``refined`` is the converter's default) with 512 training
images, evaluate in onnxruntime, fine-tune
with ``onnx-snn finetune``'s defaults (Adam amsgrad, lr 1e-3 with a 5 % warm-up then a cosine, batch 64,
sigmoid surrogate, no augmentation, cross-entropy; ``--teacher``: distilled from the DNN;
``--paper-recipe``: lr 1e-4 decayed at 60/80/90 %, the rectangle surrogate and crop augmentation, as docs/MEASUREMENTS.md's
fine-tuning table was measured), recording the test top-1 after
every epoch (the model written back is evaluated again in onnxruntime at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# a sibling in tools/, which `python tools/bench_finetune.py` puts first on sys.path
from _bench_common import bench_calibration, emit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-T", "--timesteps", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--method", default="datta", help="conversion before fine-tuning (default datta)")
    ap.add_argument("--limit-train", type=int, help="fewer training images (quick runs)")
    ap.add_argument("--paper-recipe", action="store_true",
                    help="the paper's lr 1e-4, rectangle surrogate and crop augmentation (the "
                         "defaults until 2026-12-01)")
    ap.add_argument("--teacher", action="store_true",
                    help="distill from the DNN (finetune --teacher auto) instead of the labels")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--save-dir", help="keep the fine-tuned models here (T<T>.tuned.snn.onnx), e.g. "
                                       "for tools/bench_energy.py --tuned-dir")
    args = ap.parse_args(argv)
    if args.teacher and args.paper_recipe:
        ap.error("--paper-recipe trains on the labels (the paper's cross-entropy): drop --teacher")

    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
    import onnx_snn
    from onnx_snn.demo import shipped_model_path
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune

    model = str(shipped_model_path())
    nm = onnx_snn.prepare(model)
    cal = bench_calibration(nm)
    dnn = onnx_snn.evaluate(model, "fashion-mnist", show_progress=False)
    result = {"benchmark": "shipped fmnist_vgg: conversion then SGL fine-tuning",
              "recipe": "paper (lr 1e-4 in steps, rectangle surrogate, crop augmentation, "
              "cross-entropy)"
              if args.paper_recipe else "default (lr 1e-3 cosine, sigmoid surrogate, no augmentation, "
              + ("distillation from the DNN)" if args.teacher else "cross-entropy)"),
              "dnn_top1": dnn.top1, "epochs": args.epochs, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for T in args.timesteps:
            src = os.path.join(tmp, f"T{T}.snn.onnx")
            onnx_snn.build(nm, cal, T, args.method).save(src)
            conv = onnx_snn.evaluate(src, "fashion-mnist", show_progress=False)
            out = os.path.join(args.save_dir or tmp, f"T{T}.tuned.snn.onnx")
            t0 = time.perf_counter()
            r = finetune(src, out, "fashion-mnist", FinetuneConfig(epochs=args.epochs,
                         limit_train=args.limit_train, augment=args.paper_recipe,
                         lr=1e-4 if args.paper_recipe else FinetuneConfig.lr,
                         surrogate="rectangle" if args.paper_recipe else "sigmoid",
                         schedule="step" if args.paper_recipe else FinetuneConfig.schedule,
                         teacher="auto" if args.teacher and not args.paper_recipe else None),
                         show_progress=False, log=lambda *a: None)
            tuned = onnx_snn.evaluate(out, "fashion-mnist", show_progress=False)
            result["runs"][f"T{T}"] = {
                "conversion_top1": conv.top1,
                "teacher": os.path.basename(r.teacher) if r.teacher else None,
                "torch_top1_before": r.initial_top1,
                "top1_after_epoch": {e.epoch: e.test_top1 for e in r.epochs},
                "best_top1_onnxruntime": tuned.top1,
                "gap_to_dnn_after_last_epoch": round(dnn.top1 - r.epochs[-1].test_top1, 2),
                "seconds_per_epoch": round(r.seconds_per_epoch, 1),
                "mean_spike_rate_after": tuned.mean_rate,
                "total_seconds": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps({f"T{T}": result["runs"][f"T{T}"]}), file=sys.stderr)
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
