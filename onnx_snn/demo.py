"""``onnx-snn demo``: the shipped Fashion-MNIST model converted at T = 1..4 with the default
(``refined``), the paper's Algorithm 1 alone (``datta``) and two baselines, evaluated on the
real test set, in one table. The conversions alone: the demo runs on the core install, and
the default's reconstruction where PyTorch is installed (onnx_snn/auto_reconstruct.py) is not
run here."""
from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

SHIPPED_MODEL = "fmnist_vgg.onnx"


def shipped_model_path() -> Path:
    """Path of the trained Fashion-MNIST clipped-ReLU VGG shipped with the package."""
    path = Path(str(resources.files("onnx_snn") / "models" / SHIPPED_MODEL))
    if not path.is_file():
        from .errors import ModelLoadError
        raise ModelLoadError(f"{path}: the shipped model is missing; reinstall onnx-snn or "
                             "train it with `python tools/train_dnn.py --arch fmnist_vgg ...`")
    return path


DEMO_METHODS = ("refined", "datta", "deng", "max")


def run_demo(timesteps: Sequence[int] = (1, 2, 3, 4), methods: Sequence[str] = DEMO_METHODS,
             limit: Optional[int] = None, calib_samples: int = 512, data_dir=None,
             show_progress: bool = True, out=sys.stdout) -> dict:
    """Convert and evaluate; return {"dnn": top1, "rows": [...]} and print the table."""
    from .convert import build, prepare, resolve_data
    from .calibrate import calibrate
    from .evaluate import evaluate, evaluate_prefixes
    from .scales import T_DEPENDENT_METHODS

    from .convert import check_count, check_timesteps
    timesteps = list(dict.fromkeys(check_timesteps(t) for t in timesteps))
    methods = list(dict.fromkeys(methods))      # a method named twice is run once
    if not timesteps:
        from .errors import UsageError
        raise UsageError("give at least one time-step count")
    limit = check_count(limit, "limit", allow_none=True)
    t0 = time.perf_counter()
    model = shipped_model_path()
    nm = prepare(model)
    train = resolve_data("fashion-mnist", nm.preprocess, data_dir=data_dir, split="train")
    cal = calibrate(nm, train.take(calib_samples, seed=0).x, show_progress=show_progress)
    test = resolve_data("fashion-mnist", nm.preprocess, data_dir=data_dir, split="test")
    if limit:
        test = test.take(limit)
    dnn = evaluate(str(model), test, show_progress=show_progress)
    print(f"shipped model {model.name}: DNN top-1 {dnn.top1:.2f}% on {dnn.samples} Fashion-MNIST "
          f"test images", file=out)
    rows = []
    for method in methods:
        if method in T_DEPENDENT_METHODS:  # thresholds depend on T: one conversion per T
            results = {T: evaluate(build(nm, cal, T, method).model, test, show_progress=show_progress)
                       for T in timesteps}
        else:  # T-independent thresholds: one run of max(T) steps gives every shorter run
            results = evaluate_prefixes(build(nm, cal, max(timesteps), method).model, test,
                                        timesteps, show_progress=show_progress)
        for T in timesteps:
            r = results[T]
            rows.append({"method": method, "timesteps": T, "top1": r.top1,
                         "mean_rate": r.mean_rate})
    header = ["method"] + [f"T={T}" for T in timesteps] + ["spike rate (T=%d)" % timesteps[-1]]
    lines = [header]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        lines.append([method] + [f"{r['top1']:.2f}" for r in mine] + [f"{mine[-1]['mean_rate']:.4f}"])
    from .table import format_table
    print(file=out)
    print("SNN top-1 (%), conversion only, onnxruntime:", file=out)
    print(format_table(lines[0], lines[1:]), file=out)
    seconds = time.perf_counter() - t0
    print(f"\nDNN top-1 {dnn.top1:.2f}%; spike rate = spikes per neuron per time step; "
          f"{seconds:.0f} s in all", file=out)
    return {"dnn": dnn.top1, "samples": dnn.samples, "rows": rows, "seconds": seconds}


def add_demo_parser(sub, parent) -> None:
    d = sub.add_parser("demo", parents=[parent], help="convert the shipped Fashion-MNIST model and show the results",
                       description="Convert the shipped Fashion-MNIST clipped-ReLU VGG at T = 1, "
                                   "2, 3, 4 with refined (the default), datta (the paper's "
                                   "Algorithm 1 alone), deng and max, evaluate each on the 10k "
                                   "test images in onnxruntime and print one table. The "
                                   "conversions alone: with PyTorch installed, convert's "
                                   "default then also reconstructs (convert --help).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  onnx-snn demo                          # the full table, 3-6 min on 2 cores\n"
                              "  onnx-snn demo --limit 1000 -T 1 2      # a quick look\n"
                              "  onnx-snn demo --methods datta percentile --json demo.json")
    from .cli import positive_int, timesteps_int
    d.add_argument("-T", "--timesteps", type=timesteps_int, nargs="+", default=[1, 2, 3, 4],
                   help="time steps (default: 1 2 3 4)")
    d.add_argument("--methods", nargs="+", default=list(DEMO_METHODS),
                   choices=["refined", "datta", "deng", "max", "percentile"],
                   help="the conversion methods compared, one table row each (default: "
                        f"{' '.join(DEMO_METHODS)}; refined is convert's default, datta the "
                        "paper's Algorithm 1 alone, deng/max/percentile other rate "
                        "conversions' thresholds)")
    d.add_argument("--limit", type=positive_int, help="only the first N test images")
    d.add_argument("--data-dir", metavar="DIR", help="folder with the Fashion-MNIST files")
    d.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")


def cmd_demo(args) -> int:
    from . import json_text
    from .datasets import dataset_files
    from .model_io import check_outputs, model_files, write_all_atomic
    # the output is checked before the run (minutes), against the files the demo reads
    inputs = model_files(shipped_model_path()) + dataset_files("fashion-mnist", args.data_dir)
    targets = check_outputs([(args.json, "--json")], inputs)
    result = run_demo(args.timesteps, args.methods, limit=args.limit, data_dir=args.data_dir,
                      show_progress=not args.quiet)
    if args.json is not None:
        write_all_atomic([(targets[str(args.json)],
                           (json_text.dumps(result) + "\n").encode("utf-8"))])
    return 0
