"""The paper's networks at their full widths, on a lent GPU: train, convert, evaluate, SGL.

    python tools/bench_paper_gpu.py --out runs/paper.json [--archs vgg16,resnet20]
        [--budget 300] [--max-epochs 30] [-T 1,2,4] [--methods refined,datta]
    bash tools/gpu_check.sh          # on a lent GPU machine: bench_gpu.py, then this

The deep-network table of README (tools/bench_deep.py) uses quarter-width nets, what 2 CPU
cores train in about an hour. This script asks whether its gaps come from the narrow widths:
for each architecture of ``--archs`` (the paper's VGG-16: 64-512 channels, FC 4096-4096; the
paper's ResNet-20: 64-512 channels), on Fashion-MNIST (1x28x28):

1. ``tools/train_dnn.py --device DEVICE``: one epoch, timed, then resumed to as many epochs as
   fit the architecture's share of ``--budget`` seconds (at most ``--max-epochs``; the lr
   schedule follows the final count). The DNN's top-1 is the one train_dnn measures on all
   10 000 test images.
2. For each T of ``-T`` and each method of ``--methods``: ``onnx_snn.build`` from 512
   calibration images (the benchmarks' seeded set; onnxruntime on the CPU, timed), then top-1
   on all 10 000 test images in the PyTorch runtime on the device, TF32 off (float32 convs, so
   that a threshold tie is what it is in onnxruntime).
3. One SGL epoch at T=2 from the default conversion (``onnx-snn finetune``'s defaults, the
   device; TF32 off here too, so its time is not bench_sgl.py's), with its top-1 before and
   after in the PyTorch runtime and the epoch's own.

Every stage is timed and written to ``--out`` as it ends (a stage that fails records its error
and the others go on); a stage that would start after the budget is recorded as skipped.
``--device cpu --limit-train 512 --limit-test 256 --max-epochs 1`` is a smoke test.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# siblings in tools/, which `python tools/bench_paper_gpu.py` puts first on sys.path
from _bench_common import calibration_set, emit, machine, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("vgg16", "resnet20")


class Run:
    """The result document, written to ``path`` after every stage; the clock of the budget."""

    def __init__(self, path, budget: float, device: str):
        self.path, self.t0, self.budget = path, time.perf_counter(), budget
        self.doc = {"benchmark": "the paper's full-width networks on Fashion-MNIST: train, "
                                 "convert, evaluate, SGL", "device": device, "budget_seconds": budget,
                    "nets": {}, "environment": machine()}   # in the file as in the printout

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.doc["elapsed_seconds"] = round(time.perf_counter() - self.t0, 1)
        if self.path:
            from onnx_snn.model_io import write_text_atomic
            write_text_atomic(json.dumps(self.doc, indent=1), self.path)

    def stage(self, rec: dict, key: str, fn, need: float = 0.0):
        """``rec[key] = fn()``, or its error, or 'skipped' when under ``need`` seconds are left."""
        if self.left() < need:
            rec[key] = {"skipped": f"budget: {self.left():.0f} s left, the stage needs ~{need:.0f}"}
        else:
            t0 = time.perf_counter()
            try:
                rec[key] = fn()
            except Exception as e:   # one failing stage keeps the others
                rec[key] = {"error": f"{type(e).__name__}: {e}"[:800],
                            "where": traceback.format_exc(limit=3)[-800:]}
            if isinstance(rec[key], dict):
                rec[key].setdefault("stage_seconds", round(time.perf_counter() - t0, 1))
        self.save()
        print(f"[{time.perf_counter() - self.t0:6.0f} s] {key}: "
              f"{json.dumps(rec[key])[:300]}", file=sys.stderr, flush=True)
        return rec[key]


def train(arch: str, work: Path, device: str, budget: float, max_epochs: int, limits,
          epochs: int = 0) -> dict:
    """train_dnn.py: ``epochs`` when given, else one epoch timed, then resumed to what fits
    ``budget`` seconds."""
    out = work / arch
    base = [sys.executable, str(ROOT / "tools" / "train_dnn.py"), "--arch", arch,
            "--dataset", "fashion-mnist", "--out", str(out), "--device", device] + limits
    t0 = time.perf_counter()
    if epochs:   # a fixed count, one process
        subprocess.run(base + ["--epochs", str(epochs)], check=True, stdout=subprocess.DEVNULL)
        return _trained(out, t0, None)
    subprocess.run(base + ["--epochs", "1"], check=True, stdout=subprocess.DEVNULL)
    first = time.perf_counter() - t0
    per_epoch = json.loads((out / "train.json").read_text())["history"][-1]["train_seconds"]
    # the resumed run pays the start and the export again (first - per_epoch), and each
    # epoch its evaluation (the 1.2)
    left = budget - first - max(0.0, first - per_epoch)
    epochs = max(1, min(max_epochs, 1 + int(left / (1.2 * per_epoch))))
    if epochs > 1:
        subprocess.run(base + ["--epochs", str(epochs), "--resume"], check=True,
                       stdout=subprocess.DEVNULL)
    return _trained(out, t0, first)


def _trained(out: Path, t0: float, first) -> dict:
    summary = json.loads((out / "train.json").read_text())
    return {"epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
            "dnn_top1": summary["test_accuracy"], "test_images": summary["test_images"],
            "seconds_per_epoch": summary["seconds_per_epoch"],
            "first_epoch_seconds_end_to_end": None if first is None else round(first, 1),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "onnx": str(out / "model.onnx"), "onnx_bytes": summary["onnx_bytes"]}


def calibrate(model: str, limit_test) -> dict:
    """The prepared model, its calibration on 512 images and the test set (one context)."""
    import onnx_snn
    from onnx_snn.convert import resolve_data
    t0 = time.perf_counter()
    nm = onnx_snn.prepare(model)
    cal = onnx_snn.calibrate(nm, calibration_set(nm).x, show_progress=False)
    test = resolve_data("fashion-mnist", nm.preprocess, split="test")
    if limit_test:
        test = test.take(limit_test)
    return {"nm": nm, "cal": cal, "test": test, "seconds": round(time.perf_counter() - t0, 1)}


def convert_and_evaluate(ctx: dict, name: str, work: Path, device: str, T: int, methods) -> dict:
    """Each method at ``T``: converted (timed), then top-1 in the PyTorch runtime on ``device``."""
    import torch

    import onnx_snn
    from onnx_snn.runtimes.torch import SpikingNetwork
    from onnx_snn.runtimes.torch.finetune import evaluate_torch
    dev = torch.device(device)
    out = {"timesteps": T, "top1": {}, "convert_seconds": {}, "files": {},
           "test_images": len(ctx["test"])}
    for method in methods:
        t1 = time.perf_counter()
        snn = onnx_snn.build(ctx["nm"], ctx["cal"], T, method)
        path = str(work / f"{name}.{method}.T{T}.snn.onnx")
        snn.save(path)
        out["convert_seconds"][method] = round(time.perf_counter() - t1, 1)
        net = SpikingNetwork.from_onnx(path).to(dev).eval()
        top1, _ = evaluate_torch(net, ctx["test"], dev, T, show_progress=False)
        out["top1"][method] = round(top1, 2)
        out["files"][method] = path
        del net
    out["peak_rss_mb"] = round(peak_rss_mb())
    return out


def sgl_epoch(src: str, work: Path, device: str, limits) -> dict:
    from onnx_snn.runtimes.torch.finetune import FinetuneConfig, finetune
    dst = str(work / (Path(src).name.replace(".snn.onnx", ".sgl.snn.onnx")))
    kw = {}
    if "--limit-train" in limits:
        kw["limit_train"] = int(limits[limits.index("--limit-train") + 1])
    if "--limit-test" in limits:
        kw["limit_test"] = int(limits[limits.index("--limit-test") + 1])
    cfg = FinetuneConfig(epochs=1, device=device, **kw)
    t0 = time.perf_counter()
    r = finetune(src, dst, "fashion-mnist", cfg, show_progress=False, log=lambda *a: None)
    return {"timesteps": 2, "epochs": 1, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "top1_before": round(r.initial_top1, 2) if r.initial_top1 is not None else None,
            "top1_after": round(r.best_top1, 2),
            # the epoch's own (top1_after is the best of the start and the epochs: finetune
            # keeps the starting model when no epoch beats it)
            "epoch_test_top1": [round(e.test_top1, 2) for e in r.epochs],
            "epoch_loss": [round(e.loss, 4) for e in r.epochs],
            "seconds": round(time.perf_counter() - t0, 1),
            "seconds_per_epoch": r.seconds_per_epoch}


def _public(ctx: dict) -> dict:
    """What of a calibration context goes into the JSON."""
    return {"seconds": ctx["seconds"], "test_images": len(ctx["test"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, from {', '.join(ARCHS)}")
    ap.add_argument("--budget", type=float, default=300.0,
                    help="seconds for the whole run; each net's training gets a share (default 300)")
    ap.add_argument("--train-share", type=float, default=0.45,
                    help="fraction of a net's share of the budget spent training (default 0.45)")
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=0,
                    help="train exactly this many epochs in one run (default: fit the budget)")
    ap.add_argument("-T", "--timesteps", default="1,2,4", help="comma-separated T (default 1,2,4)")
    ap.add_argument("--methods", default="refined,datta", help="comma-separated (default refined,datta)")
    ap.add_argument("--limit-train", type=int, help="training images (smoke tests)")
    ap.add_argument("--limit-test", type=int, help="test images (smoke tests)")
    ap.add_argument("--work", help="folder for the trained and converted files (default: a temporary one)")
    ap.add_argument("--out", help="also write the JSON here (rewritten after every stage)")
    args = ap.parse_args(argv)
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA device (use --device cpu for a smoke test)")
    # float32 convolutions in the spiking evaluation: TF32 rounding would move threshold ties
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        ap.error(f"--archs: unknown {', '.join(unknown)}; choose from {', '.join(ARCHS)}")
    Ts = [int(t) for t in args.timesteps.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    limits = ((["--limit-train", str(args.limit_train)] if args.limit_train else [])
              + (["--limit-test", str(args.limit_test)] if args.limit_test else []))
    run = Run(args.out, args.budget, args.device)
    if args.device.startswith("cuda"):
        run.doc["device_name"] = torch.cuda.get_device_name(torch.device(args.device))
    run.doc.update({"torch": torch.__version__, "timesteps": Ts, "methods": methods,
                    "calibration_images": 512})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for i, arch in enumerate(archs):
            rec = run.doc["nets"].setdefault(arch, {})
            share = run.left() / (len(archs) - i)
            trained = run.stage(rec, "train", lambda: train(
                arch, work, args.device, args.train_share * share, args.max_epochs, limits, args.epochs), need=30)
            if "onnx" not in trained:
                continue
            ctx = {}

            def calibration_stage():
                ctx.update(calibrate(trained["onnx"], args.limit_test))
                return _public(ctx)
            run.stage(rec, "calibration", calibration_stage, need=20)
            if "nm" not in ctx:
                continue
            # T=2 and its SGL epoch first: the targets are at T=2
            for T in sorted(Ts, key=lambda t: (t != 2, t)):
                # a conversion of the full-width nets took 28-64 s, an SGL epoch 51-62 s
                # (2026-12-04, H200 and 16 cores): a stage starts only where such a one fits
                conv = run.stage(rec, f"convert_T{T}", lambda: convert_and_evaluate(
                    ctx, arch, work, args.device, T, methods), need=45 * T / 2 + 20)
                src = conv.get("files", {}).get("refined")
                if T == 2 and src:
                    run.stage(rec, "sgl_T2", lambda: sgl_epoch(src, work, args.device, limits),
                              need=65)
            ctx.clear()
    emit(run.doc, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
