#!/usr/bin/env python3
"""Experiment: convert's default reconstruction with one setting changed, on real
Fashion-MNIST, over several seeds; prints one JSON line per run and a JSON summary.

    python tools/sweep_reconstruct.py --nets resnet20 --seeds 0,1,2,3 \\
        --variants base,epochs=4,lr=2e-3+warmup=0.1      # docs/MEASUREMENTS.md, 2026-12-07
    python tools/sweep_reconstruct.py --nets resnet20 --seeds 0,1 \\
        --variants output_weight=2,temperature=1,surrogate-k=2,initial,mixup=0.5

Each run is what ``onnx-snn convert MODEL --calib fashion-mnist -T 2 --seed S`` does with
PyTorch installed (calibrate 512 images drawn with seed S, refine, reconstruct within the
budget: onnx_snn/auto_reconstruct.py), with the reconstruction changed as a variant says,
then top-1 on the test images in onnxruntime. A variant joins changes with ``+``:

* ``base``: convert's default as it is;
* ``FIELD=VALUE``: a field of ``ReconstructConfig`` (``lr``, ``epochs``, ``batch_size``,
  ``temperature``, ``site_weight``, ``output_weight``);
* ``initial``: the neurons' initial membranes trained too;
* ``surrogate-k=K``: the sigmoid surrogate's sharpness (4 by default);
* ``warmup=F``: the learning rate rises linearly over the first fraction F of the steps,
  then follows the cosine;
* ``per-image=E``: the same budget spread over as many training images as leave each E
  epochs (the default: 3 epochs of at most 4096 images; ``auto_reconstruct``'s
  ``EPOCHS_PER_IMAGE`` and ``IMAGES``);
* ``ema=D``: the trained values are the exponential moving average of the steps' values
  (each step ``avg = D avg + (1 - D) value``), put in the network after the last step;
* ``mixup=P``: a fraction P of each training batch replaced by mixtures ``l a + (1 - l) b``
  of two of its inputs (l uniform in [0, 1]), the DNN's targets run on them (no targets
  kept between epochs then): function matching on more inputs (Beyer et al., CVPR 2022).

The patches are this script's: the library has none of ``initial``, ``surrogate-k``,
``warmup``, ``ema`` or ``mixup``. Runs go one after
another in this process (start one process per seed to use both cores); PyTorch's training
is the same to the bit on the same thread count.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
FIELDS = ("lr", "epochs", "batch_size", "temperature", "site_weight", "output_weight")


def parse_variant(spec: str) -> dict:
    """{'fields': {...}, 'initial': bool, 'k': float or None, 'warmup': float, 'mixup': float}
    of one variant (module doc); a SystemExit names what it does not know."""
    out = {"fields": {}, "initial": False, "k": None, "warmup": 0.0, "mixup": 0.0,
           "per_image": None, "ema": 0.0}
    for part in spec.split("+"):
        name, _, value = part.partition("=")
        if part == "base":
            continue
        if part == "initial":
            out["initial"] = True
        elif name in FIELDS and value:
            whole = name in ("epochs", "batch_size")
            v = _number(part, value, int if whole else float)
            if not v > 0 and not (name.endswith("_weight") and v == 0):
                raise SystemExit(f"sweep_reconstruct: {part!r}: {name} must be above 0")
            out["fields"][name] = v
        elif name == "surrogate-k" and value:
            out["k"] = _number(part, value, float)
            if not out["k"] > 0:
                raise SystemExit(f"sweep_reconstruct: {part!r}: the surrogate's k must be above 0")
        elif name == "per-image" and value:
            out["per_image"] = _number(part, value, int)
            if not out["per_image"] > 0:
                raise SystemExit(f"sweep_reconstruct: {part!r}: epochs per image must be above 0")
        elif name in ("warmup", "mixup", "ema") and value:
            v = _number(part, value, float)
            if not 0 <= v <= 1:
                raise SystemExit(f"sweep_reconstruct: {name} is a fraction from 0 to 1, not {value}")
            out[name] = v
        else:
            raise SystemExit(f"sweep_reconstruct: unknown change {part!r} in variant {spec!r} "
                             f"(base, initial, FIELD=VALUE of {', '.join(FIELDS)}, "
                             "surrogate-k=K, warmup=F, ema=D, mixup=P, per-image=E)")
    return out


def _number(part: str, value: str, kind):
    try:
        v = kind(value)
    except ValueError:
        raise SystemExit(f"sweep_reconstruct: {part!r}: {value!r} is not "
                         f"{'a whole number' if kind is int else 'a number'}") from None
    if not np.isfinite(v):
        raise SystemExit(f"sweep_reconstruct: {part!r}: {value!r} is not finite")
    return v


@contextlib.contextmanager
def patched(variant: dict, R, N, neuron):
    """The library's reconstruction, network and neuron modules changed as ``variant`` says
    for the length of the block."""
    import functools
    import torch
    saved = (R.SpikingNetwork, neuron.SIGMOID_K, torch.optim.lr_scheduler.LambdaLR,
             R._batches, R.TARGET_CACHE_BYTES, torch.optim.Adam)
    try:
        if variant["initial"]:
            R.SpikingNetwork = functools.partial(N.SpikingNetwork, train_initial=True)
        if variant["k"] is not None:
            neuron.SIGMOID_K = variant["k"]
        if variant["warmup"]:
            base = saved[2]

            class Warm(base):
                def __init__(self, opt, fn):
                    steps = Warm.steps
                    w = max(1, int(variant["warmup"] * steps))
                    super().__init__(opt, lambda i: min(1.0, (i + 1) / w) * fn(i))
            Warm.steps = variant["steps"]
            torch.optim.lr_scheduler.LambdaLR = Warm
        if variant["ema"]:
            torch.optim.Adam = _averaging(saved[5], variant["ema"], variant["steps"])
        if variant["mixup"]:
            R._batches = _mixing(saved[3], variant["mixup"])
            R.TARGET_CACHE_BYTES = 0
        yield
    finally:
        (R.SpikingNetwork, neuron.SIGMOID_K, torch.optim.lr_scheduler.LambdaLR, R._batches,
         R.TARGET_CACHE_BYTES, torch.optim.Adam) = saved


@contextlib.contextmanager
def spread(per_image):
    """The default's plan with ``per_image`` epochs per training image and no cap on the
    images (None: as it is) for the length of the block."""
    from onnx_snn import auto_reconstruct as ar
    saved = ar.EPOCHS_PER_IMAGE, ar.IMAGES
    try:
        if per_image is not None:
            ar.EPOCHS_PER_IMAGE, ar.IMAGES = per_image, 10 ** 6
        yield
    finally:
        ar.EPOCHS_PER_IMAGE, ar.IMAGES = saved


def _averaging(adam, decay: float, steps: int):
    """An ``adam`` that keeps the moving average of its parameters' values after each step
    and puts it in them after step ``steps`` (the reconstruction's last)."""
    import torch

    class Averaged(adam):
        def step(self, *a, **kw):
            out = super().step(*a, **kw)
            ps = [p for g in self.param_groups for p in g["params"]]
            with torch.no_grad():
                if not hasattr(self, "avg"):
                    self.avg, self.done = [p.detach().clone() for p in ps], 0
                else:
                    for m, p in zip(self.avg, ps):
                        m.lerp_(p, 1.0 - decay)
                self.done += 1
                if self.done == steps:
                    for m, p in zip(self.avg, ps):
                        p.copy_(m)
            return out
    return Averaged


def _mixing(batches, p: float):
    """``_batches`` whose training batches (those drawn in a shuffled order) have a fraction
    ``p`` of their samples mixed with another of the batch, seeded by the batch's rows."""
    def mixed(x, size, *args, **kw):
        train = bool(args) and args[0] is not None and "order" not in kw
        for rows, b in batches(x, size, *args, **kw):
            if train:       # (the samples of the batch, not a fixed batch's padding)
                g = np.random.default_rng([int(rows[0]), len(rows)])
                n = len(rows)
                for k, v in list(b.items()):
                    lam = np.where(g.uniform(0, 1, n) < p, g.uniform(0, 1, n), 1.0)
                    lam = lam.astype(v.dtype).reshape((n,) + (1,) * (v.ndim - 1))
                    v = v.copy()
                    v[:n] = lam * v[:n] + (1 - lam) * v[:n][g.permutation(n)]
                    b[k] = v
            yield rows, b
    return mixed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="resnet20", help="comma-separated, of bench_deep's nets")
    ap.add_argument("--seeds", default="0,1", help="comma-separated convert --seed values")
    ap.add_argument("--variants", default="base", help="comma-separated (module doc)")
    ap.add_argument("-T", "--timesteps", type=int, default=2)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--train-images", type=int, default=None,
                    help="at most this many training images (a quick check; default: the budget's)")
    args = ap.parse_args(argv)
    variants = {v: parse_variant(v) for v in args.variants.split(",")}
    added = TOOLS not in sys.path
    if added:                    # (bench_deep and _bench_common are tools/ modules)
        sys.path.insert(0, TOOLS)
    try:
        return _sweep(args, variants)
    finally:
        if added:
            sys.path.remove(TOOLS)


def _sweep(args, variants: dict) -> int:
    import bench_deep as bd
    from _bench_common import calibration_set
    import onnx_snn
    from onnx_snn.convert import resolve_data
    from onnx_snn.evaluate import evaluate
    from onnx_snn.feeds import fixed_batch, input_specs
    from onnx_snn.scales import SearchConfig
    import onnx_snn.runtimes.torch.reconstruct as R
    import onnx_snn.runtimes.torch.network as N
    neuron = sys.modules[N.lif_step.__module__]
    runs = []
    for net in args.nets.split(","):
        if net not in bd.NETS:
            raise SystemExit(f"sweep_reconstruct: unknown net {net!r}; choose from {', '.join(bd.NETS)}")
        nm = onnx_snn.prepare(str(bd.NETS[net]))
        test = bd._test_set(nm, args.test_images)
        train = resolve_data("fashion-mnist", nm.preprocess, split="train")
        for seed in (int(s) for s in args.seeds.split(",")):
            calib_x = calibration_set(nm, 512, seed).x
            cal = onnx_snn.calibrate(nm, calib_x, show_progress=False, seed=seed)
            for name, v in variants.items():
                with spread(v["per_image"]):
                    rcfg, train_x, _ = bd._default_reconstruction(nm, train, calib_x,
                                                               args.timesteps, seed)
                if args.train_images:
                    train_x = ({k: a[:args.train_images] for k, a in train_x.items()}
                               if isinstance(train_x, dict) else train_x[:args.train_images])
                n_train = len(next(iter(train_x.values())) if isinstance(train_x, dict)
                              else train_x)
                t0 = time.perf_counter()
                snn = onnx_snn.build(nm, cal, args.timesteps, "refined", SearchConfig(), seed=seed)
                cfg = dataclasses.replace(rcfg, **v["fields"])
                # (the steps reconstruct takes: a model of a fixed batch trains in that batch)
                per_step = fixed_batch(input_specs(nm.model)) or cfg.batch_size
                v["steps"] = cfg.epochs * -(-n_train // per_step)
                with patched(v, R, N, neuron):
                    rec = R.reconstruct(snn, nm.model, train_x, cfg, show_progress=False,
                                        measure_rows=min(512, n_train))
                run = {"net": net, "variant": name, "seed": seed, "T": args.timesteps,
                       "top1": evaluate(snn.model, test, show_progress=False).top1,
                       "config": dataclasses.asdict(cfg), "images": n_train,
                       "loss_before": rec["before"]["loss"], "loss_after": rec["after"]["loss"]
                       if rec["after"] else None, "seconds": round(time.perf_counter() - t0, 1)}
                runs.append(run)
                print(json.dumps(run), flush=True)
    summary = {}
    for r in runs:
        s = summary.setdefault(r["net"], {}).setdefault(r["variant"], {"top1": {}})
        s["top1"][str(r["seed"])] = r["top1"]
    for per_net in summary.values():
        for s in per_net.values():
            s["mean"] = round(float(np.mean(list(s["top1"].values()))), 3)
    print(json.dumps({"benchmark": "sweep_reconstruct", "command": " ".join(sys.argv),
                      "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
