#!/usr/bin/env python3
"""What the default reconstruction's training costs per image and step, against what the
budget estimates (``onnx_snn/auto_reconstruct.py``: ``step_cost``); prints a JSON line per
network on stderr as it goes, and one JSON on stdout: every network's row and the
least-squares fit of the cost's terms.

    python tools/bench_budget.py                         # all networks, T = 2, 512 images
    python tools/bench_budget.py --nets vgg16,dwres --epochs 1,3

Each network (1 x 28 x 28 input, real Fashion-MNIST images) is converted once without
reconstruction (``refined``), then reconstructed (``runtimes/torch/reconstruct.py``) for
each of ``--epochs`` on the same calibration images; the difference of the two runs'
seconds over the difference of their epochs is one epoch's training alone (the DNN's targets
and the measures before and after are paid once a run). Seconds per image and step, over
(MACs, nodes, activation elements) per image, fit the cost model. The three trained
Fashion-MNIST networks are the repository's; the others have random weights (a training
step's time does not depend on them): a 3-layer MLP, a chain of 40 1 x 1 convolutions of 4
channels, six 3 x 3 convolutions of 16 channels at full resolution, depthwise-separable
residual blocks of 32 channels at full resolution, two inception modules (1 x 1, 3 x 3 and
5 x 5 branches concatenated) and an encoder-decoder with a ConvTranspose; named only, the
zoo's full-width VGG-16 (``vgg16full``, the paper's widths, on 28 x 28) and two networks of
large feature maps on the same images upsampled to 56 x 56 (each pixel 2 x 2): ``dwres56``, two
of those depthwise-residual blocks, and ``highres56``, three 3 x 3 convolutions of 32 channels
(0.30-0.40 M activations per node of a batch of 32: tensors of 13 MB, beyond the caches that
the 28 x 28 networks' fit within). Timings depend on
the machine and what else runs: run it with nothing else running.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))

FILES = {"shipped": os.path.join(os.path.dirname(TOOLS), "onnx_snn", "models", "fmnist_vgg.onnx"),
         "vgg16": os.path.join(TOOLS, "models", "fmnist_vgg16.onnx"),
         "resnet20": os.path.join(TOOLS, "models", "fmnist_resnet20.onnx")}
BUILT = ("mlp", "deepnarrow", "highres6", "dwres", "inception", "encdec")
#: the zoo's full-width networks (the paper's widths), heavy in MACs: only when named
HEAVY = ("vgg16full",)
#: the built networks' input side (28 unless named): the images upsampled to it
SIDES = {"dwres56": 56, "highres56": 56, "dwres56x3": 56}
#: the built networks' input channels (1 unless named; tools/bench_memory.py's net: dwres56
#: on three channels)
CHANNELS = {"dwres56x3": 3}


def _built(name: str):
    """A random-weight torch network named ``name`` (module doc)."""
    import torch
    from torch import nn
    torch.manual_seed(0)

    class DWRes(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
            self.pw = nn.Conv2d(c, c, 1)

        def forward(self, x):
            return torch.relu(x + self.pw(torch.relu(self.dw(x))))

    class Inception(nn.Module):
        def __init__(self, cin, c):
            super().__init__()
            self.a = nn.Conv2d(cin, c, 1)
            self.b = nn.Conv2d(cin, c, 3, padding=1)
            self.c = nn.Conv2d(cin, c, 5, padding=2)

        def forward(self, x):
            return torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x)),
                              torch.relu(self.c(x))], 1)

    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if name == "vgg16full":
        from onnx_snn.zoo import vgg16
        return vgg16(in_channels=1, input_size=28)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                             nn.ReLU(), nn.Linear(256, 10))
    if name == "deepnarrow":
        layers = [nn.Conv2d(1, 4, 1), nn.ReLU()]
        for _ in range(39):
            layers += [nn.Conv2d(4, 4, 1), nn.ReLU()]
        return nn.Sequential(*layers, *head, nn.Linear(4, 10))
    if name == "highres6":
        layers = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()]
        for _ in range(5):
            layers += [nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()]
        return nn.Sequential(*layers, *head, nn.Linear(16, 10))
    if name in ("dwres56", "dwres56x3"):
        return nn.Sequential(nn.Conv2d(CHANNELS.get(name, 1), 32, 3, padding=1), nn.ReLU(),
                             *[DWRes(32) for _ in range(2)], *head, nn.Linear(32, 10))
    if name == "highres56":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), *head, nn.Linear(32, 10))
    if name == "dwres":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
                             *[DWRes(32) for _ in range(4)], *head, nn.Linear(32, 10))
    if name == "inception":
        return nn.Sequential(Inception(1, 16), Inception(48, 16), nn.MaxPool2d(2),
                             *head, nn.Linear(48, 10))
    if name == "encdec":
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                             nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), *head,
                             nn.Linear(16, 10))
    raise SystemExit(f"bench_budget: no network {name!r}; known: "
                     + ", ".join([*FILES, *BUILT, *HEAVY, *SIDES, *CHANNELS]))


def model_path(name: str, folder: str) -> str:
    """The ONNX file of network ``name`` (exported into ``folder`` where it is built here)."""
    if name in FILES:
        return FILES[name]
    from onnx_snn.zoo import export_onnx
    path = os.path.join(folder, f"{name}.onnx")
    side = SIDES.get(name, 28)
    export_onnx(_built(name).eval(), path, (CHANNELS.get(name, 1), side, side))
    return path


def measure(name: str, epochs, timesteps: int, images: int, folder: str) -> dict:
    """One network's features and seconds per reconstruction epoch (module doc)."""
    import onnx_snn
    from onnx_snn import auto_reconstruct as ar
    from onnx_snn.datasets import apply_preprocess, load_dataset
    from onnx_snn.runtimes.torch.reconstruct import ReconstructConfig, reconstruct

    path = model_path(name, folder)
    nm = onnx_snn.prepare(path)
    macs = ar.dense_macs(nm.model)
    nodes = len(nm.model.graph.node)
    elements = ar.activation_elements(nm.model)
    x = load_dataset("fashion-mnist", split="train").x
    x = x[np.random.default_rng(0).choice(len(x), images, replace=False)]
    k = SIDES.get(name, 28) // 28
    x = x.repeat(k, axis=-2).repeat(k, axis=-1)
    pre = nm.preprocess or {}
    x = apply_preprocess(x, pre.get("mean"), pre.get("std"))
    snn = onnx_snn.convert(path, x, timesteps, show_progress=False, reconstruct=0)
    seconds = {}
    for e in epochs:
        copy_ = copy.deepcopy(snn)
        t0 = time.perf_counter()
        reconstruct(copy_, nm.model, x, ReconstructConfig(epochs=e), show_progress=False)
        seconds[e] = time.perf_counter() - t0
    lo, hi = min(epochs), max(epochs)
    per_epoch = (seconds[hi] - seconds[lo]) / (hi - lo)
    per_step = per_epoch / (images * timesteps)
    return {"net": name, "macs": macs, "nodes": nodes, "elements": elements,
            "seconds": {str(k): round(v, 3) for k, v in seconds.items()},
            "epoch_s": round(per_epoch, 4), "per_image_step_us": round(per_step * 1e6, 3),
            "budget_cost": ar.step_cost(macs, nodes, elements=elements)}


def fit(rows) -> dict:
    """Seconds per image and step as a x MACs + b x nodes + c x elements, least squares on
    the relative error; the coefficients, each term in MACs (b / a, c / a), and each
    network's ratio of measured to fitted."""
    a = np.array([[r["macs"], r["nodes"], r["elements"]] for r in rows], float)
    y = np.array([r["per_image_step_us"] for r in rows], float)
    w = 1.0 / y
    coef, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
    pred = a @ coef
    return {"us_per_mac": float(coef[0]), "node_in_macs": float(coef[1] / coef[0]),
            "element_in_macs": float(coef[2] / coef[0]),
            "measured_over_fitted": {r["net"]: round(float(y[i] / pred[i]), 3)
                                     for i, r in enumerate(rows)}}


def main(argv=None) -> int:
    os.environ["ONNX_SNN_RECONSTRUCT"] = "0"       # (the conversion alone; reconstructed here)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default=",".join([*FILES, *BUILT]))
    p.add_argument("--epochs", default="1,3", help="two epoch counts (default 1,3)")
    p.add_argument("-T", "--timesteps", type=int, default=2)
    p.add_argument("--images", type=int, default=512)
    args = p.parse_args(argv)
    epochs = sorted({int(e) for e in args.epochs.split(",")})
    if len(epochs) < 2:
        p.error("--epochs needs two different counts")
    from _bench_common import machine
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in [n for n in args.nets.split(",") if n]:
            row = measure(name, epochs, args.timesteps, args.images, folder)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    summary = {"machine": machine(), "timesteps": args.timesteps, "images": args.images,
               "nets": rows}
    if len(rows) >= 3:
        summary["fit"] = fit(rows)
    budget = [r["per_image_step_us"] / r["budget_cost"] for r in rows]
    summary["us_per_budget_mac"] = {r["net"]: round(b * 1e6, 4) for r, b in zip(rows, budget)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
