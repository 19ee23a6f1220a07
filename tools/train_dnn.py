#!/usr/bin/env python3
"""Train a clipped-ReLU DNN from the model zoo and export it to ONNX for onnx-snn.

The recipe is the paper's (Datta & Beerel, DATE 2022): SGD lr 0.01, momentum 0.95, weight
decay 5e-4 (thresholds mu included), batch 128, lr divided by 5 at 60/80/90 % of the epochs,
random-crop (+ horizontal flip) augmentation, no BatchNorm, dropout.

Examples::

    python tools/train_dnn.py --arch fmnist_vgg --dataset fashion-mnist --epochs 10 \\
        --out runs/fmnist_vgg --export onnx_snn/models/fmnist_vgg.onnx
    python tools/train_dnn.py --arch vgg16 --dataset cifar10 --epochs 200 \\
        --out runs/vgg16_c10 --data-dir ~/data
    torchrun --nproc_per_node 4 tools/train_dnn.py --arch resnet20 --dataset cifar100 ...

Outputs in ``--out``: ``last.pt`` (model, optimizer, scheduler, epoch, RNG states; used by
``--resume``), ``best.pt`` (best test accuracy), ``train.json`` (the training record) and
``model.onnx`` (unless ``--export`` names another path).  A one-line JSON summary is
printed on stdout at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from onnx_snn import zoo
from onnx_snn.datasets import FASHION_MNIST_CLASSES, load_dataset
from onnx_snn.errors import (DataError, OnnxSnnError, OutputPathError, TrainingDivergedError,
                             UsageError)
from onnx_snn.model_io import sha256_file
from onnx_snn.progress import Progress

PROG = "train_dnn"
DATASET_ALIASES = {"fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
                   "fmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10",
                   "cifar100": "cifar100", "cifar-100": "cifar100"}
CROP_PADDING = {"fashion-mnist": 2, "cifar10": 4, "cifar100": 4}


# ------------------------------------------------------------------------- arguments

def _dataset(name: str) -> str:
    key = name.lower()
    if key not in DATASET_ALIASES:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {name!r}; choose from fashion-mnist, cifar10, cifar100")
    return DATASET_ALIASES[key]


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {v}")
    return v


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for required options and options without one."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False \
                or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_dnn.py",
        description="Train a clipped-ReLU DNN (VGG-11/16, ResNet-20, small Fashion-MNIST "
                    "nets) with the paper's recipe and export it to ONNX with onnx-snn "
                    "metadata (preprocessing, trained mu values, accuracy).",
        epilog="Multi-GPU / multi-node: launch with torchrun; --batch is then the global "
               "batch, split evenly across processes, and only rank 0 writes files.",
        formatter_class=_HelpFormatter)
    p.add_argument("--arch", required=True, choices=sorted(zoo.ARCHS),
                   help="network from onnx_snn/zoo.py")
    p.add_argument("--dataset", required=True, type=_dataset,
                   metavar="{fashion-mnist,cifar10,cifar100}",
                   help="training data (train split) and test data (test split)")
    p.add_argument("--epochs", type=_positive_int, default=200, help="training epochs")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder for checkpoints, train.json and model.onnx")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding the dataset files (default: $ONNX_SNN_DATA, then the "
                        "system location for Fashion-MNIST)")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10/100 with torchvision into --data-dir when missing "
                        "(needs the internet)")
    p.add_argument("--batch", type=_positive_int, default=128, help="(global) batch size")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate (SGD)")
    p.add_argument("--momentum", type=float, default=0.95, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4,
                   help="weight decay, applied to the thresholds mu too")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout after every hidden layer (default: 0.2 for the CIFAR nets, "
                        "0.1 for the Fashion-MNIST nets)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (besides the random crop)")
    p.add_argument("--crop-padding", type=int, default=None,
                   help="random-crop padding in pixels (default: 4 for CIFAR, 2 for "
                        "Fashion-MNIST; 0 turns cropping off)")
    p.add_argument("--levels", type=_positive_int, default=None, metavar="L",
                   help="train with every clipped ReLU rounded to L + 1 levels (clip-floor-"
                        "shift, QCFS): what a spiking layer emits over T = L steps, so that "
                        "the conversion at T = L loses less (docs/MEASUREMENTS.md: the Fashion-MNIST VGG-16, "
                        "+2.0 points at T=2; ResNet-20: no gain). Each mu is first fitted to "
                        "the rounding, unless the run continued was trained with the same L. "
                        "The exported model is still the plain clipped ReLU unless "
                        "--export-levels. Best as a few epochs on a trained model (--init-from)")
    p.add_argument("--export-levels", action="store_true",
                   help="with --levels: export the rounding too, written out as QCFS's "
                        "reference code does (Div, Clip, Mul, Add, Floor, Div, Mul), so that "
                        "the ONNX DNN is the rounded network (onnx-snn convert reads it as the "
                        "clipped ReLUs)")
    p.add_argument("--seed", type=int, default=0, help="seed for torch, numpy and random")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODEL.onnx",
                   help="continue from an exported model instead of a checkpoint (across "
                        "sessions, where only the committed .onnx and its train.json are kept): "
                        "its weights and mu, the epochs it records, the history of a train.json "
                        "beside it; the optimizer's momentum starts afresh")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/last.pt (starts afresh, with a note, when "
                        "there is none)")
    p.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy",
                   help="torch.onnx exporter: legacy (TorchScript) or dynamo (torch.export; "
                        "needs onnxscript and starts at opset 18)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset of the exported model")
    p.add_argument("--idiom", choices=zoo.IDIOMS, default="clip",
                   help="how the clipped ReLU is written in ONNX: Clip(x,0,mu), "
                        "Min(Relu(x),mu), or clamp with tensor bounds")
    p.add_argument("--export", type=Path, default=None, metavar="PATH.onnx",
                   help="where to write the ONNX model (default: <out>/model.onnx)")
    p.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="train on N random training images only (quick runs)")
    p.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only (quick runs)")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for torch (data is held in memory and augmented on "
                        "tensors, so there are no loader processes); default: torch's choice")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available), cpu, cuda or cuda:N")
    return p


# ------------------------------------------------------------------------- distributed

class Dist:
    """Process-group facts; a single process when not launched by torchrun."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = ((device_arg == "auto" and torch.cuda.is_available())
                    or device_arg.startswith("cuda"))
        if use_cuda and not torch.cuda.is_available():
            raise OnnxSnnError(f"--device {device_arg}: CUDA is not available here")
        if use_cuda:
            if device_arg.startswith("cuda:") and self.world == 1:
                self.device = torch.device(device_arg)
            else:
                self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        elif device_arg in ("auto", "cpu"):
            self.device = torch.device("cpu")
        else:
            raise OnnxSnnError(f"--device {device_arg}: use auto, cpu, cuda or cuda:N")
        self.enabled = self.world > 1
        if self.enabled:
            import torch.distributed as dist
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Sequence[float]) -> list:
        if not self.enabled:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


# ------------------------------------------------------------------------- data

#: the paper's schedule: the lr times this at each milestone (60, 80 and 90 % of the epochs)
LR_DECAY = 0.2


def _lr_after(lr: float, done: int, milestones) -> float:
    """The learning rate after ``done`` epochs of the step schedule that starts at ``lr``."""
    return lr * LR_DECAY ** sum(done >= m for m in milestones)


def _init_from_onnx(net, args, optimizer, milestones, log, command):
    """Weights and mu from an exported model (by parameter name), the epochs it records, the
    history of the train.json beside it and the --levels it was trained with; the lr follows
    the schedule at that epoch."""
    import onnx
    path = args.init_from
    try:
        m = onnx.load(str(path))
    except Exception as e:
        raise OnnxSnnError(f"--init-from {path}: not a readable ONNX model ({e})") from None
    meta = {p.key: p.value for p in m.metadata_props}
    if meta.get("onnx_snn.arch") != args.arch:
        raise OnnxSnnError(f"--init-from {path}: a {meta.get('onnx_snn.arch')!r} model, not "
                           f"{args.arch!r}")
    state = zoo.onnx_parameters(m)
    own = net.state_dict()
    missing = [k for k in own if not k.endswith(".mu") and k not in state]
    if missing:
        raise OnnxSnnError(f"--init-from {path}: weights {missing[:3]} not found by name")
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items() if k in own}})
    for act, mu in zip(zoo.clipped_relus(net), json.loads(meta.get("onnx_snn.mu", "[]"))):
        act.mu.data.fill_(float(mu))
    done = int(meta.get("onnx_snn.epochs", 0))
    history, commands = [], [command]
    record = path.with_name(path.name[:-len(".onnx")] + ".train.json") if path.name.endswith(".onnx") else None
    if record is not None and record.is_file():
        rec = json.loads(record.read_text())
        history, commands = rec.get("history", []), rec.get("commands", []) + [command]
    for group in optimizer.param_groups:
        group["lr"] = _lr_after(args.lr, done, milestones)
    log(f"--init-from {path}: {done} epochs done; continuing (optimizer state starts afresh)")
    levels = json.loads(meta.get("onnx_snn.recipe", "{}")).get("levels")
    return done, history, commands, levels


def augment(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, on a batch (NCHW)."""
    n, c, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = xp[torch.arange(n, device=x.device)[:, None, None, None],
               torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of an epoch's shuffled order (like DistributedSampler: the same
    permutation on every rank, padded to a multiple of the world size)."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)
    if world > 1:
        total = math.ceil(n / world) * world
        if total > n:
            perm = torch.cat([perm, perm[: total - n]])
        perm = perm[rank::world]
    return perm


# ------------------------------------------------------------------------- helpers

def _save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _rng_state(gen: torch.Generator) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "augment": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    gen.set_state(state["augment"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        with_cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in with_cuda])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, dist_: Dist, batch: int = 1000) -> float:
    """Top-1 accuracy in % over (x, y), sharded across ranks."""
    model.eval()
    idx = torch.arange(dist_.rank, len(x), dist_.world)
    correct = 0
    for i in range(0, len(idx), batch):
        b = idx[i:i + batch]
        xb = ((x[b].to(dist_.device, non_blocking=True) - mean) / std)
        pred = model(xb).argmax(1)
        correct += int((pred.cpu() == y[b]).sum())
    c, n = dist_.all_sum([correct, len(idx)])
    return 100.0 * c / max(n, 1)


def _evaluate_both(net, x, y, mean, std, dist_, levels):
    """(top-1 of the plain clipped-ReLU network, which is what is exported; top-1 with the
    activations rounded to ``levels + 1`` levels, or None without ``levels``)."""
    zoo.set_levels(net, None)
    plain = evaluate(net, x, y, mean, std, dist_)
    if not levels:
        return plain, None
    zoo.set_levels(net, levels)
    return plain, evaluate(net, x, y, mean, std, dist_)


# ------------------------------------------------------------------------- main

def run(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    dist_ = Dist(args.device)
    try:
        return _train(args, argv, dist_)
    finally:
        dist_.close()


def _train(args: argparse.Namespace, argv: Sequence[str], dist_: Dist) -> dict:
    log = (lambda msg: print(f"{PROG}: {msg}", file=sys.stderr, flush=True)) if dist_.main \
        else (lambda msg: None)
    if args.workers:
        torch.set_num_threads(args.workers)
    out: Path = args.out
    export_path: Path = args.export or out / "model.onnx"
    if args.export_levels and not args.levels:
        raise UsageError("--export-levels exports the rounding of --levels L: give --levels")
    if export_path.suffix.lower() != ".onnx":
        raise OutputPathError(f"--export {export_path}: the file name must end in .onnx")
    if dist_.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputPathError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    dist_.barrier()
    if not export_path.parent.is_dir():  # checked now rather than after hours of training
        raise OutputPathError(f"--export {export_path}: folder {export_path.parent} does not "
                              "exist; create it first")
    if not 0.0 <= (args.dropout if args.dropout is not None else 0.0) < 1.0:
        raise OnnxSnnError(f"--dropout {args.dropout}: must be in [0, 1)")

    # seeds: the same on every rank (so the model is initialized identically); the
    # augmentation stream differs per rank
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    aug_gen = torch.Generator().manual_seed(args.seed * 1000 + 1 + dist_.rank)

    # data, in memory
    if args.download and not dist_.main:
        dist_.barrier()  # rank 0 downloads first; the others then read its files
    train = load_dataset(f"{args.dataset}:train", data_dir=args.data_dir,
                         download=args.download and dist_.main)
    if args.download and dist_.main:
        dist_.barrier()
    test = load_dataset(f"{args.dataset}:test", data_dir=args.data_dir)
    if args.limit_train:
        train = train.take(args.limit_train, seed=args.seed)
    if args.limit_test:
        test = test.take(args.limit_test)
    channels, size, classes = zoo.DATASET_SHAPES[args.dataset]
    if train.x.shape[1:] != (channels, size, size) or test.x.shape[1:] != train.x.shape[1:]:
        raise DataError(f"{args.dataset}: expected images of shape {(channels, size, size)}, "
                        f"got {train.x.shape[1:]} (train) and {test.x.shape[1:]} (test)")
    classes = max(classes, int(train.y.max()) + 1)
    pre = zoo.PREPROCESS[args.dataset]
    dev = dist_.device
    mean = torch.tensor(pre["mean"], device=dev).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"], device=dev).view(1, -1, 1, 1)
    on_dev = dev.type == "cuda"
    x_train = torch.from_numpy(train.x)
    y_train = torch.from_numpy(train.y)
    x_test, y_test = torch.from_numpy(test.x), torch.from_numpy(test.y)
    if on_dev:
        x_train, y_train = x_train.to(dev), y_train.to(dev)
    padding = CROP_PADDING[args.dataset] if args.crop_padding is None else args.crop_padding

    # model and the paper's optimizer / schedule
    net = zoo.build(args.arch, classes, channels, idiom=args.idiom, dropout=args.dropout,
                    input_size=size).to(dev)
    zoo.set_levels(net, args.levels)
    model: nn.Module = net
    if dist_.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    milestones = sorted({max(1, int(round(f * args.epochs))) for f in (0.6, 0.8, 0.9)})
    milestones = [m for m in milestones if m < args.epochs] or [args.epochs]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=LR_DECAY)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    command = " ".join(shlex.quote(a) for a in ["python", "tools/train_dnn.py", *argv])
    dropout = next((m.p for m in net.modules() if isinstance(m, nn.Dropout)), 0.0)
    start_epoch, best_acc, best_epoch, history, commands = 0, -1.0, -1, [], [command]
    last_path, best_path = out / "last.pt", out / "best.pt"
    trained_levels = None   # the --levels of the run this one continues
    if args.resume:
        if last_path.is_file():
            ckpt = torch.load(last_path, map_location=dev, weights_only=False)
            for key in ("arch", "dataset"):
                if ckpt.get(key) != getattr(args, key):
                    raise OnnxSnnError(f"--resume: {last_path} is a {key} {ckpt.get(key)!r} run, "
                                       f"not {getattr(args, key)!r}; use another --out")
            net.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            # the lr decay follows this run's --epochs, also when it differs from the first run's
            from collections import Counter
            scheduler.milestones = Counter(milestones)
            done = ckpt["epoch"] + 1
            # this run's --lr, --momentum and --weight-decay: the checkpoint's optimizer state
            # (momentum buffers) continues, its hyperparameters are what this command says
            before = ckpt.get("args", {})
            changed = [f"--{k.replace('_', '-')} {before[k]:g} -> {getattr(args, k):g}"
                       for k in ("lr", "momentum", "weight_decay")
                       if k in before and before[k] != getattr(args, k)]
            for group in optimizer.param_groups:
                group["initial_lr"] = args.lr
                group["momentum"], group["weight_decay"] = args.momentum, args.weight_decay
                group["lr"] = _lr_after(args.lr, done, milestones)
            if changed:
                log(f"--resume: {', '.join(changed)} (this run's values from epoch {done + 1})")
            _set_rng_state(ckpt["rng"], aug_gen)  # rank 0's streams, saved by rank 0
            start_epoch = ckpt["epoch"] + 1
            if dist_.rank:  # keep the other ranks' augmentation streams distinct
                aug_gen.manual_seed(args.seed * 1000 + 1 + dist_.rank + 7919 * start_epoch)
            best_acc, best_epoch = ckpt["best_acc"], ckpt["best_epoch"]
            trained_levels = ckpt.get("args", {}).get("levels")
            history = ckpt["history"]
            commands = ckpt.get("commands", []) + [command]
            log(f"resuming {last_path} after epoch {start_epoch} (best {best_acc:.2f}% at "
                f"epoch {best_epoch + 1})")
        else:
            log(f"--resume: no {last_path} yet; starting from scratch")
    if args.init_from and start_epoch == 0:
        start_epoch, history, commands, trained_levels = _init_from_onnx(
            net, args, optimizer, milestones, log, command)
        scheduler.last_epoch = start_epoch

    if args.levels and args.levels != trained_levels:   # not when continuing such a run
        fit_x = train.take(min(512, len(train)), seed=args.seed).x
        unfitted = evaluate(net, x_test, y_test, mean, std, dist_)
        mus = zoo.fit_levels(net, (torch.from_numpy(fit_x).to(dev) - mean) / std, args.levels)
        log(f"--levels {args.levels}: mu fitted to the rounding on {len(fit_x)} training "
            f"images: {', '.join(f'{m:.3g}' for m in mus)}; rounded test top-1 "
            f"{unfitted:.2f}% -> {evaluate(net, x_test, y_test, mean, std, dist_):.2f}%")
    per_rank_batch = max(1, args.batch // dist_.world)
    log(f"{args.arch} on {args.dataset}: {len(x_train)} training / {len(x_test)} test images, "
        f"{sum(p.numel() for p in net.parameters())} parameters, device {dev}, "
        f"world size {dist_.world}, " + (f"epochs {start_epoch + 1}..{args.epochs}"
                                          if start_epoch < args.epochs else
                                          "training already complete: exporting the best model"))

    for epoch in range(start_epoch, args.epochs):
        model.train()
        t0 = time.perf_counter()
        order = shard_indices(len(x_train), epoch, args.seed, dist_.rank, dist_.world)
        lr = optimizer.param_groups[0]["lr"]
        bar = Progress(len(order), desc=f"epoch {epoch + 1}/{args.epochs}", unit="img",
                       enabled=None if dist_.main else False)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, len(order), per_rank_batch):
            b = order[i:i + per_rank_batch]
            if on_dev:
                b = b.to(dev)
            xb = augment(x_train[b], padding, args.flip, aug_gen)
            xb = (xb.to(dev, non_blocking=True) - mean) / std
            yb = y_train[b].to(dev, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDivergedError(
                    f"epoch {epoch + 1}: the loss became {float(loss)}; lower --lr (the last "
                    f"good state is in {last_path} if an epoch completed)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(b)
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(1) == yb).sum())
            seen += n
            bar.update(n, loss=loss_sum / seen, acc=100.0 * correct / seen)
        bar.close()
        scheduler.step()
        train_seconds = time.perf_counter() - t0
        loss_tot, correct_tot, seen_tot = dist_.all_sum([loss_sum, correct, seen])
        test_acc, quant_acc = _evaluate_both(net, x_test, y_test, mean, std, dist_, args.levels)
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_tot / seen_tot,
                  "train_accuracy": 100.0 * correct_tot / seen_tot, "test_accuracy": test_acc,
                  "train_seconds": round(train_seconds, 2),
                  "seconds": round(time.perf_counter() - t0, 2), "mu": zoo.mu_values(net)}
        if args.levels:
            record.update(levels=args.levels, quantized_test_accuracy=quant_acc)
        history.append(record)
        improved = test_acc > best_acc
        if improved:
            best_acc, best_epoch = test_acc, epoch
        if dist_.main:
            if improved:
                _save({"model": net.state_dict(), "arch": args.arch, "dataset": args.dataset,
                       "epoch": epoch, "test_accuracy": test_acc, "num_classes": classes,
                       "in_channels": channels, "input_size": size, "idiom": args.idiom,
                       "dropout": dropout}, best_path)
            _save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "epoch": epoch, "best_acc": best_acc,
                   "best_epoch": best_epoch, "history": history, "rng": _rng_state(aug_gen),
                   "arch": args.arch, "dataset": args.dataset, "args": vars(args),
                   "commands": commands}, last_path)
        quant = f" (rounded to {args.levels + 1} levels: {quant_acc:.2f}%)" if args.levels else ""
        log(f"epoch {epoch + 1}/{args.epochs}: loss {record['train_loss']:.4f}, train "
            f"{record['train_accuracy']:.2f}%, test {test_acc:.2f}%{quant} (best {best_acc:.2f}%), "
            f"lr {lr:g}, {train_seconds:.1f} s")
        dist_.barrier()

    # final: best weights, measured accuracy, ONNX export, training record
    if not best_path.is_file():
        raise OnnxSnnError(f"{best_path}: no checkpoint to export (did training run?)")
    best = torch.load(best_path, map_location=dev, weights_only=False)
    net.load_state_dict(best["model"])
    test_acc, quant_acc = _evaluate_both(net, x_test, y_test, mean, std, dist_, args.levels)
    summary = {}
    if dist_.main:
        mus = zoo.mu_values(net)
        train_secs = [h["train_seconds"] for h in history]
        seconds_per_epoch = round(sum(train_secs) / len(train_secs), 2) if train_secs else None
        metadata = {
            "onnx_snn.preprocess": {"mean": pre["mean"], "std": pre["std"]},
            "onnx_snn.mu": mus,
            "onnx_snn.arch": args.arch,
            "onnx_snn.dataset": args.dataset,
            "onnx_snn.test_accuracy": round(test_acc, 2),
            "onnx_snn.test_images": len(x_test),
            "onnx_snn.num_classes": classes,
            "onnx_snn.epochs": len(history),
            "onnx_snn.best_epoch": best["epoch"] + 1,
            "onnx_snn.recipe": {"optimizer": "SGD", "lr": args.lr, "momentum": args.momentum,
                                "weight_decay": args.weight_decay, "batch": args.batch,
                                "milestones": milestones, "gamma": 0.2,
                                "dropout": dropout, "crop_padding": padding,
                                "flip": args.flip, "seed": args.seed, "levels": args.levels},
            "onnx_snn.producer": "tools/train_dnn.py",
        }
        if args.levels:
            metadata["onnx_snn.quantized_test_accuracy"] = round(quant_acc, 2)
        if args.dataset == "fashion-mnist":
            metadata["onnx_snn.classes"] = list(FASHION_MNIST_CLASSES)
        export_path.parent.mkdir(parents=True, exist_ok=True)
        zoo.export_onnx(net, export_path, (channels, size, size), exporter=args.exporter,
                        opset=args.opset, metadata=metadata,
                        keep_levels=bool(args.levels and args.export_levels))
        summary = {
            "arch": args.arch, "dataset": args.dataset, "epochs": len(history),
            "best_epoch": best["epoch"] + 1, "test_accuracy": round(test_acc, 2),
            "best_test_accuracy": round(best_acc, 2), "test_images": len(x_test),
            "levels": args.levels,
            "quantized_test_accuracy": round(quant_acc, 2) if args.levels else None,
            "seconds_per_epoch": seconds_per_epoch, "mu": [round(m, 4) for m in mus],
            "onnx": str(export_path), "onnx_sha256": sha256_file(export_path),
            "onnx_bytes": export_path.stat().st_size, "exporter": args.exporter,
            "opset": args.opset, "idiom": args.idiom, "device": str(dev),
            "world_size": dist_.world, "torch": torch.__version__,
            "train_images": len(x_train), "preprocess": pre,
            "command": commands[0], "commands": commands, "dropout": dropout,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "history": history,
        }
        _write_json(summary, out / "train.json")
    dist_.barrier()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        summary = run(args, argv)
    except OnnxSnnError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if summary:
        short = {k: v for k, v in summary.items() if k not in ("history", "args", "preprocess")}
        print(json.dumps(short), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
