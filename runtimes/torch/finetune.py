"""Surrogate-gradient fine-tuning (SGL) of a spiking ONNX model.

Adam (amsgrad), lr 1e-3 (the paper's 1e-4 gained 0.7-1.8 points less in one epoch: docs/MEASUREMENTS.md),
warmed up linearly over the first 5 % of the iterations, then a cosine to 0 (``schedule="step"``:
divided by 5 at 60/80/90 % of them, the paper's schedule); a
sigmoid surrogate gradient (``surrogate="rectangle"``: the paper's) and no augmentation
(``augment=True``: random crop/flip), which did better in a few epochs (docs/MEASUREMENTS.md);
cross-entropy on the time-averaged outputs, or (``teacher``) distillation from a DNN: KL to
its outputs, computed in onnxruntime on each batch (teacher.py; ``"auto"``: the DNN the model
was converted from, when the conversion recorded its path and the file is unchanged),
mixed with the cross-entropy by ``distill``; backprop through the T steps; one dropout mask per batch reused over
the steps where the source DNN had dropout; thresholds, leaks (clamped to at most 1) and
weights trained. The test set is evaluated after every epoch and the best model is written
to the output file, atomically. The starting model is written there before training only
when the output does not exist yet; an existing output is replaced only by an epoch that
beats the starting top-1 and its own. A non-finite loss, parameter or test output stops the
run as diverged (:class:`TrainingDivergedError`) and leaves the last good model there.
Hyperparameters are checked up front (:class:`UsageError`). Checkpoints allow ``resume``.
Under ``torchrun`` the batches are sharded over the processes and gradients averaged with
DistributedDataParallel (gloo on CPU, nccl on CUDA); only rank 0 writes.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np
import onnx
import torch
import torch.nn.functional as Fn

from onnx_snn.convert import (MAX_BATCH_SIZE, check_count, check_recorded_timesteps, warn_other_timesteps,
                              check_seed, check_timesteps, remember_dataset,
                              resolve_data, same_values, warn_preprocess_override)
from onnx_snn.datasets import (Dataset, _class_count, check_finite, check_preprocess, data_splits,
                               dataset_files, folder_classes, model_classes, named_dataset,
                               recorded_data_name)
from onnx_snn.flags import check_flag, checks_arguments, checks_flags
from onnx_snn.errors import (DataError, ModelLoadError, OutputPathError, TrainingDivergedError,
                             UsageError, first_line)
from onnx_snn.scores import check_labels_for, class_scores
from onnx_snn.feeds import fixed_batch, input_specs, pad_batch, validate_feeds
from onnx_snn.model_io import (check_outputs, external_data_path, load_model, model_files,
                               model_items, write_all_atomic, write_bytes_atomic)
from onnx_snn.progress import Progress
from onnx_snn.spiking import format as fmt
from onnx_snn.values import is_real

from .network import SpikingNetwork
from .neuron import DEFAULT_SURROGATE, SURROGATES
from .teacher import (AUTO, Teacher, distillation_loss, load_teacher, renormalization, require_file,
                      source_dnn_of)

MILESTONES = (0.6, 0.8, 0.9)
LOSSES = ("mean", "per-step")
SCHEDULES = ("cosine", "step")


def lr_factor(it: int, total: int, cfg: "FinetuneConfig") -> float:
    """The learning rate's multiplier at iteration ``it`` of ``total`` (0-based)."""
    if cfg.schedule == "step":
        return cfg.lr_decay ** sum(it >= m * total for m in MILESTONES)
    warm = cfg.warmup * total
    if it < warm:
        return min(1.0, (it + 1) / warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (it - warm) / max(1.0, total - warm))))


@dataclass
class FinetuneConfig:
    epochs: int = 3
    #: one SGL epoch at T=2 from the default conversion reached 89.93 / 89.88 / 91.98 % (VGG-16,
    #: ResNet-20, the shipped model) at 1e-3 against 89.22 / 88.09 / 91.16 at 1e-4 and 84.55 /
    #: 87.46 on the deep nets at 3e-3 (docs/MEASUREMENTS.md, fine-tuning)
    lr: float = 1e-3
    batch_size: int = 64
    timesteps: Optional[int] = None          # None: the model's T
    weight_decay: float = 0.0
    lr_decay: float = 0.2                    # lr multiplied by this at each milestone
    #: "cosine": a linear warm-up over the first ``warmup`` of the iterations, then a cosine
    #: to 0 (one SGL epoch at T=2 from the default conversion: VGG-16 +0.61 and +0.43 points
    #: over "step" in two runs, ResNet-20 +0.02 and, at seed 1, +0.64; docs/MEASUREMENTS.md);
    #: "step": lr_decay at 60/80/90 % of them (the paper's, the default until 2026-12-05)
    schedule: str = "cosine"
    warmup: float = 0.05                     # with "cosine": the warm-up's share of the run
    #: random crop/flip of NCHW images. Off by default: the few epochs of fine-tuning a
    #: converted network gets underfit it, and without it one SGL epoch at T=2 reached 0.4-1.3
    #: points more top-1 (VGG-16, ResNet-20) and three epochs 1.4 more (VGG-16; docs/MEASUREMENTS.md)
    augment: bool = False
    seed: int = 0
    device: str = "auto"
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    eval_batch: int = 256
    initial_eval: bool = True
    surrogate: str = DEFAULT_SURROGATE       # or "rectangle", the paper's (neuron.py)
    #: a DNN whose outputs the spiking network learns (teacher.py): "auto" (the DNN it was
    #: converted from, when the conversion recorded its path and that file is unchanged),
    #: a path, or None (the labels alone: the default; distillation gained nothing measurable
    #: in one epoch at T=2: -0.15 / -0.36 / -0.53 points on VGG-16, ResNet-20, shipped; docs/MEASUREMENTS.md)
    teacher: Optional[str] = None
    #: with a teacher, the loss is distill * KL(teacher || student) + (1 - distill) * CE
    distill: float = 1.0
    temperature: float = 1.0                 # of the softmaxes the KL compares
    #: train the neurons' initial membranes (v_init) too; off: they keep the conversion's
    train_initial: bool = False
    #: what the loss reads: "mean", the T steps' average output (what the model outputs), or
    #: "per-step", the mean of each step's loss (TET, Deng et al., ICLR 2022)
    loss: str = "mean"
    #: the source DNN's dropout, one mask per batch reused over the steps; off: none
    dropout: bool = True

    def __post_init__(self):
        """Refuse what cannot train: a non-finite or non-positive lr, negative weight decay,
        an unknown device, T or sizes that are not whole numbers in range."""
        self.epochs = check_count(self.epochs, "epochs")
        self.batch_size = check_count(self.batch_size, "batch_size", MAX_BATCH_SIZE,
                                      why=" (MAX_BATCH_SIZE)")
        self.eval_batch = check_count(self.eval_batch, "eval_batch", MAX_BATCH_SIZE,
                                      why=" (MAX_BATCH_SIZE)")
        if self.timesteps is not None:
            self.timesteps = check_timesteps(self.timesteps)
        for name, lo, strict in (("lr", 0.0, True), ("weight_decay", 0.0, False),
                                 ("lr_decay", 0.0, True)):
            v = getattr(self, name)
            if not is_real(v) or not math.isfinite(v) or (v <= lo if strict else v < lo):
                raise UsageError(f"{name} must be a finite number {'>' if strict else '>='} {lo:g}, "
                                 f"not {v!r}")
            setattr(self, name, float(v))       # numpy's numbers too (np.int64(1) was refused)
        for name in ("distill", "temperature"):
            v = getattr(self, name)
            if not is_real(v) or not math.isfinite(v):
                raise UsageError(f"{name} must be a finite number, not {v!r}")
            setattr(self, name, float(v))
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if not is_real(self.warmup) or not 0.0 <= float(self.warmup) < 1.0:
            raise UsageError(f"warmup is the warm-up's share of the iterations: at least 0 and "
                             f"below 1, not {self.warmup!r}")
        self.warmup = float(self.warmup)
        if self.loss not in LOSSES:
            raise UsageError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"distill is the distillation term's share of the loss: between 0 "
                             f"and 1, not {self.distill}")
        if self.temperature <= 0:
            raise UsageError(f"temperature must be > 0, not {self.temperature}")
        if self.teacher is not None and (not isinstance(self.teacher, (str, os.PathLike))
                                         or not str(self.teacher)):
            raise UsageError(f"teacher is 'auto', a DNN's .onnx path or None, not {self.teacher!r}")
        if self.lr_decay > 1:
            raise UsageError(f"lr_decay multiplies the learning rate at each milestone: at most 1, "
                             f"not {self.lr_decay}")
        if not isinstance(self.device, str) or not DEVICE_RE.match(self.device):
            raise UsageError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.surrogate not in SURROGATES:
            raise UsageError(f"surrogate must be one of {', '.join(SURROGATES)}, not {self.surrogate!r}")
        self.seed = check_seed(self.seed)
        for name in ("augment", "initial_eval", "train_initial", "dropout"):   # "False" ran as True
            setattr(self, name, check_flag(getattr(self, name), name))
        self.limit_train = check_count(self.limit_train, "limit_train", allow_none=True)
        self.limit_test = check_count(self.limit_test, "limit_test", allow_none=True)


# a misspelt field: a UsageError naming the fields, not a TypeError
FinetuneConfig.__init__ = checks_arguments(FinetuneConfig.__init__)


DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_top1: float
    test_top1: float
    seconds: float
    spikes_per_neuron: Dict[str, float] = field(default_factory=dict)
    #: per counted spiking max pool: output spikes per pooled neuron over the T steps
    pool_spikes_per_neuron: Dict[str, float] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    output: str
    timesteps: int
    initial_top1: Optional[float]
    best_top1: float
    best_epoch: int
    epochs: List[EpochRecord]
    seconds_per_epoch: float
    peak_rss_mb: float
    peak_cuda_mb: Optional[float]
    world_size: int
    written: bool = True        # this call wrote the output (False: no epoch beat the best so far)
    #: the top-1 of the output that existed when the run started (a fine-tune of the same
    #: model), on the same test data at the same T: an epoch replaces it only by beating this
    #: too (None: no such output, or not measured)
    existing_top1: Optional[float] = None
    teacher: Optional[str] = None   # the DNN it distilled from (None: the labels alone)
    #: resumed from a checkpoint: the epochs it had run before this call (None: not resumed)
    resumed_after: Optional[int] = None
    #: :func:`~onnx_snn.spiking.format.spiking_fingerprint` of the model this call wrote (the
    #: best epoch's, whose rates ``analyze --rates`` reads; None when it wrote none), so that
    #: its rates are refused for another model, as ``eval --json``'s are
    model_fingerprint: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ distributed helpers

def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _init_distributed(device: torch.device):
    import torch.distributed as dist
    world, rank, _ = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # destroyed before the interpreter tears down: left to exit, gloo's threads were
        # sometimes still joinable ("terminate called without an active exception", SIGABRT
        # in one process of a finished two-process run; CI, 2026-12-05)
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return world, rank


def _pick_device(name: str) -> torch.device:
    _, _, local = _dist_env()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not DEVICE_RE.match(str(name)):
        raise UsageError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available; use --device cpu")
        if name == "cuda":
            return torch.device("cuda", local % torch.cuda.device_count())
        if int(name[5:]) >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
        return torch.device(name)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: no MPS device is available; use --device cpu")
    return torch.device(name)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------ data

def _specs(view: fmt.SpikingView):
    """The spiking model's data inputs (not ``timesteps``, not the states)."""
    return input_specs(view.model, skip=(fmt.TIMESTEPS_INPUT, *view.state_inputs))


def _rows(x, sel):
    """Samples ``sel`` of a set's inputs: an array, or {input name: array} for a model of
    several inputs."""
    return {k: v[sel] for k, v in x.items()} if isinstance(x, dict) else x[sel]


def _padded(x, fixed: Optional[int]):
    """:func:`~onnx_snn.feeds.pad_batch` of an array, or of every array of a dict."""
    return {k: pad_batch(v, fixed) for k, v in x.items()} if isinstance(x, dict) else pad_batch(x, fixed)


def _tensors(x, device):
    """A batch of inputs as tensors on ``device`` (a dict of them for several inputs)."""
    if isinstance(x, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in x.items()}
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (2 px for 28x28, 4 px for 32x32) and, for colour
    images, a random horizontal flip; on tensors, one draw per image."""
    n, c, h, w = x.shape
    pad = 4 if h >= 32 else 2
    xp = Fn.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])                      # [n, h]
    cols = (dx[:, None] + torch.arange(w)[None, :])                      # [n, w]
    out = xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]
    if c == 3:
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


class _Once(logging.Filter):
    """Drops a record whose message was already let through."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


@contextmanager
def _said_once():
    """onnx_snn's log says each message once inside the block."""
    logger, once = logging.getLogger("onnx_snn"), _Once()
    logger.addFilter(once)
    try:
        yield
    finally:
        logger.removeFilter(once)


def load_split(model, data, split, limit, data_dir, view: fmt.SpikingView, download=False,
               mean=None, std=None, classes=None) -> Dataset:
    """A split of the data, labelled (a folder: by the model's class names, else ``classes``,
    else its folders' sorted order), checked."""
    ds = resolve_data(data, check_preprocess(view.info.preprocess), mean, std, data_dir=data_dir,
                      split=split, download=download, specs=_specs(view),
                      take=(limit or None, 0 if split == "train" else None),
                      classes=model_classes(model) or classes or folder_classes(model))
    if ds.y is None:
        raise DataError(f"{ds.name}: fine-tuning needs labels (a .npz with x and y, a named "
                        "dataset or a folder of class folders), with --teacher too: it trains "
                        "classifiers, and the top-1 that picks the best epoch and the loss's "
                        "cross-entropy part read them (training on unlabeled data is not "
                        "supported); a regression model cannot be fine-tuned here")
    if limit:
        ds = ds.take(limit, seed=0 if split == "train" else None)
    # the shapes and types from two samples (no converted copy of the whole set); NaN/Inf
    # anywhere (a NaN in sample 100 made training diverge, blamed on the lr, exit 7)
    validate_feeds(_specs(view), _rows(ds.x, slice(0, 2)), f"{ds.name} data", samples=len(ds))
    if isinstance(ds.x, dict):   # a .npz with one array per model input, named after it
        for k, v in ds.x.items():
            check_finite(v, f"{ds.name} data (input {k!r})")
        if len(ds.x) == 1:       # one input: its array (augmentation works on arrays)
            ds = dataclasses.replace(ds, x=next(iter(ds.x.values())))
    else:
        check_finite(ds.x, f"{ds.name} data")
    return ds


def first_scores(out):
    """The first output of a forward pass (several outputs: the first holds the scores) as
    [N, classes] (:func:`onnx_snn.scores.class_scores`)."""
    return class_scores(out[0] if isinstance(out, list) else out)


# ------------------------------------------------------------------ evaluation

def _overflow(name: str, split: str) -> DataError:
    """The model as it was given outputs NaN/Inf on finite data: the data's scale (values
    whose activations overflow float32), not the learning rate."""
    return DataError(f"{name}: the model's outputs are not finite on this {split} data before "
                     "any training step: its values drive the activations past float32's "
                     "range; check the data's scale (and preprocessing)")


class _NonFinite(Exception):
    """The network produced NaN/Inf outputs on the test set."""


@torch.no_grad()
def evaluate_torch(net: SpikingNetwork, ds: Dataset, device, timesteps, batch=256,
                   desc="evaluating", show_progress=True, finite_check: bool = False,
                   fixed: Optional[int] = None):
    """Top-1 (%) and spikes per neuron per site (and per counted spiking pool, per pooled
    output) of the torch module on a dataset
    (``finite_check``: raise _NonFinite on NaN/Inf outputs). ``fixed``: the model's fixed
    batch size: batches of exactly that many, the last one padded with zeros (whose results
    are dropped)."""
    was = net.training
    net.eval()
    correct, n = 0, len(ds)
    batch = fixed or batch
    spikes: Dict[str, float] = {}
    bar = Progress(n, desc=desc, unit="sample", enabled=None if show_progress else False)
    for s in range(0, n, batch):
        nb = min(batch, n - s)
        xb = _tensors(_padded(_rows(ds.x, slice(s, s + batch)), fixed), device)
        out = first_scores(net(xb, timesteps))[:nb]
        if finite_check and not bool(torch.isfinite(out).all()):
            bar.close()
            net.train(was)
            raise _NonFinite()
        correct += int((out.argmax(1).cpu() == torch.from_numpy(ds.y[s:s + batch])).sum())
        for k, v in net.last_spikes.items():
            spikes[k] = spikes.get(k, 0.0) + float(v[:nb].sum())
        bar.update(nb, top1=100.0 * correct / (s + nb))
    bar.close()
    net.train(was)
    per_neuron = {site.name: spikes.get(site.name, 0.0) / n / max(site.neurons, 1) for site in net.sites}
    counted = set(net.view.counted_pools)    # and each counted pool's, per pooled output
    per_neuron.update({p.name: spikes.get(p.name, 0.0) / n / max(p.neurons, 1)
                       for p in net.info.pools if p.name in counted})
    return 100.0 * correct / n, per_neuron


# ------------------------------------------------------------------ the loop

def _image_like(x) -> bool:
    """NCHW images that crop/flip augmentation applies to (one input's)."""
    return not isinstance(x, dict) and x.ndim == 4 and x.shape[1] <= 4 and x.shape[2] >= 8 and x.shape[3] >= 8


def _finite_parameters(net) -> bool:
    """No parameter turned NaN or infinite (the model's own infinite constants aside)."""
    return not net.turned_non_finite(trainable_only=True)


def _existing_top1(existing: onnx.ModelProto, out_path: Path, test, device, T, cfg,
                   show_progress, fixed, log=lambda *a: None) -> Optional[float]:
    """The top-1 of the existing output ``existing`` (a fine-tune of the same model, as
    :func:`_check_existing_output` read it) on the run's test data at its T, which an epoch
    must beat to replace it (a rerun onto a better file replaced it with a worse one,
    beating only the starting top-1); None where it cannot be run."""
    try:
        other = SpikingNetwork(existing).to(device)
        top1, _ = evaluate_torch(other, test, device, T, cfg.eval_batch, f"{out_path.name} as it is",
                                 show_progress, finite_check=True, fixed=fixed)
    except Exception as e:   # noqa: BLE001 -- it cannot be measured: the starting top-1 decides
        log(f"note: the top-1 of the existing {out_path} could not be measured "
            f"({first_line(e)[:200]}); it is replaced by an epoch that beats the starting top-1")
        return None
    return float(top1)


def _check_existing_preprocess(existing: onnx.ModelProto, out_path: Path, test) -> None:
    """An existing output is judged on this run's test data (:func:`_existing_top1`): one
    that records another input normalization than the one this run applies would be scored
    on inputs it is never fed, and kept or replaced on that score (a file of 89 % as used
    kept on its 91.5 % under the run's normalization). Refused before the work; data that
    brings its own normalization (arrays: none applied here) is not checked."""
    applied = getattr(test, "preprocess", None)
    if applied is None:
        return
    recorded = check_preprocess(fmt.read_info(existing, str(out_path)).preprocess)
    if recorded is not None and not _same_preprocess(recorded, applied):
        raise OutputPathError(
            f"{out_path}: exists and records the input normalization mean {recorded['mean']}, "
            f"std {recorded['std']}, while this run normalizes with mean {applied['mean']}, "
            f"std {applied['std']}; fine-tuning replaces an existing output only with an epoch "
            "that beats it, and would score it on inputs it is not used with. Remove it, give "
            "another -o, or pass the --mean/--std it records")


def _check_existing_timesteps(existing: onnx.ModelProto, out_path: Path, T: int) -> None:
    """An existing output of another T would be scored at this run's T, and kept or replaced
    on that score (a file of T = 3 judged at T = 2 and replaced by a T = 2 model without a
    word): refused before the work, as another normalization is."""
    recorded = fmt.read_info(existing, str(out_path)).timesteps
    if recorded != T:
        raise OutputPathError(
            f"{out_path}: exists and is fitted for T = {recorded}, while this run fine-tunes "
            f"at T = {T}; fine-tuning replaces an existing output only with an epoch that "
            "beats it, and would score it at a T it is not used at. Remove it, give another "
            f"-o, or pass -T {recorded}")


def _same_preprocess(a: dict, b: dict) -> bool:
    """Whether two {mean, std} records normalize alike (a value or one per channel), to the
    tolerance every other command compares them with (``convert.same_values``)."""
    try:
        return all(same_values(a[k], b[k]) for k in ("mean", "std"))
    except (KeyError, TypeError):
        return False


def _check_existing_output(out_path: Path, info, model_path) -> onnx.ModelProto:
    """An existing output is kept unless an epoch beats the starting model (and a resumed run
    holds its best model there), so it must be a spiking model of the same line as
    ``model_path``: converted from the same DNN (``onnx_snn.source``), with the same sites.
    Anything else (another model's fine-tune, the DNN, a stray file) is refused before any
    work: it would otherwise be "left as it was" and pass for this run's result. Returns the
    model it holds."""
    why, other = None, None
    try:
        existing = load_model(out_path)
    except Exception as e:      # noqa: BLE001 -- any reason it is no model
        why = f"it is not a model this tool can read ({first_line(e, 2)[:200]})"
    else:
        if not fmt.is_spiking(existing):
            why = "it is a DNN (an ONNX model without the spiking format's metadata)"
        else:
            try:
                other = fmt.read_info(existing, str(out_path))
            except Exception as e:      # noqa: BLE001 -- any reason it is not a spiking model
                why = f"it is not a spiking model ({first_line(e, 2)[:200]})"
    if other is not None:
        if info.source and other.source and other.source != info.source:
            why = "it is a spiking model of another DNN (onnx_snn.source differs)"
        elif [(s.name, list(s.shape)) for s in other.sites] != [(s.name, list(s.shape)) for s in info.sites]:
            why = "it is a spiking model with other sites"
    if why is not None:
        raise OutputPathError(
            f"{out_path}: exists, and fine-tuning replaces an existing output only with an "
            f"epoch that beats {model_path}, keeping it otherwise; but {why}, not an earlier "
            "fine-tune of this model. Remove it or give another -o")
    return existing


@checks_flags
def finetune(model_path: str, output: str, data=None, config: Optional[FinetuneConfig] = None,
             data_dir=None, resume: bool = False, checkpoint: Optional[str] = None,
             show_progress: bool = True, log=print, download: bool = False,
             mean=None, std=None, test_data=None) -> FinetuneResult:
    """Fine-tune ``model_path`` on ``data`` (default: the dataset the model records, as
    ``onnx-snn finetune`` takes it) and write the best model to ``output``.

    ``output`` gets the starting model before training only when it does not exist yet; an
    existing ``output`` is replaced (atomically) only by an epoch that beats the starting
    top-1 and that output's own, measured on the test data at the run's T
    (``FinetuneResult.existing_top1``; ``FinetuneResult.written`` says whether anything was
    written), and must be a spiking model of the same DNN and sites (else :class:`OutputPathError` before any work); with
    ``initial_eval`` off there is no starting top-1, and the first epoch replaces it. ``mean``/``std``
    normalize a named dataset or an image folder (default: the model's recorded preprocessing).

    The test accuracy, which picks the best epoch, is measured on ``test_data``: by default a
    named dataset's test split, and for arrays (.npy/.npz) the training samples themselves,
    with a warning (the history records which). A named dataset with a split (``NAME:test``)
    is refused: fine-tuning reads both of its splits."""
    if isinstance(config, Mapping):
        names = [f.name for f in fields(FinetuneConfig)]
        unknown = [k for k in config if k not in names]
        if unknown:
            raise UsageError(f"config: {', '.join(map(repr, unknown))} not a FinetuneConfig "
                             f"field; the fields are {', '.join(names)}")
        config = FinetuneConfig(**config)
    elif config is not None and not isinstance(config, FinetuneConfig):
        raise UsageError(f"config is a FinetuneConfig (or a dict of its fields), not "
                         f"{type(config).__name__}")
    for arg, what in ((model_path, "model_path"), (output, "output")):
        if not isinstance(arg, (str, os.PathLike)):
            raise UsageError(f"{what} is a file path, not {type(arg).__name__} (fine-tuning "
                             "reads a spiking model's file and writes one)")
    cfg = config or FinetuneConfig()
    if data is None:
        from onnx_snn.errors import file_problem
        from onnx_snn.recorded_files import recorded_dataset
        data = None if file_problem(model_path) else recorded_dataset(model_path)
        if data is None:
            load_model(model_path)        # a missing or damaged file: its own clear error
            raise DataError(f"{model_path}: no training data: pass data (fashion-mnist, mnist, "
                            "cifar10, cifar100, a .npz file or an image folder); the model "
                            "records no dataset")
        log(f"note: training on {data}, the dataset {model_path} records (data= for another)")
    for d, what in ((data, "data"), (test_data, "test data")):
        if named_dataset(d) is not None and ":" in str(d):
            raise UsageError(f"{d}: fine-tuning trains on {str(d).partition(':')[0]}'s training "
                             "split and measures the test split; drop the ':split' (other test "
                             f"data goes to --test-data)" if what == "data" else
                             f"{d}: --test-data takes a named dataset's test split; drop the ':split'")
    splits = data_splits(data)     # a .npz's x_train / x_test, a folder's train/ and val/
    test_same = (test_data is None and named_dataset(data) is None   # arrays: the same samples,
                 and not {"train", "test"} <= splits)                # unless a .npz holds both
    ckpt_path = Path(checkpoint or (str(output) + ".ckpt.pt"))
    inputs = model_files(model_path) + [f for d in (data, test_data) if isinstance(d, (str, os.PathLike))
                                        for f in dataset_files(d, data_dir)]
    teacher_path = _teacher_path(cfg, model_path)   # before any work: no output may be it
    if teacher_path is not None:
        inputs = inputs + model_files(teacher_path)
    # a model whose weights are in external data is written so too (<output>.data beside it)
    external = len(model_files(model_path)) > 1
    wanted = [(output, "output"), (ckpt_path, "checkpoint")]
    if external:
        wanted.append((external_data_path(output), "output's external data"))
    targets = check_outputs(wanted, inputs)
    out_path, ckpt_path = targets[str(output)], targets[str(ckpt_path)]
    device = _pick_device(cfg.device)
    world, rank = _init_distributed(device)
    main_proc = rank == 0
    _seed_all(cfg.seed + rank)
    model = load_model(model_path)
    view = fmt.read_spiking(model, model_path)
    info = view.info
    existing = None
    if out_path.exists():   # kept unless beaten: it must be this model's line, not any file
        existing = _check_existing_output(out_path, info, model_path)
    if cfg.timesteps is None:
        check_recorded_timesteps(info.timesteps, model_path)
    T = int(cfg.timesteps or info.timesteps)
    if main_proc:
        warn_other_timesteps(info, [T], str(model_path), "fine-tuning starts")
    with _said_once():   # a file that is the training and the test data: warned about once
        train = load_split(model, data, "train", cfg.limit_train, data_dir, view, download,
                           mean, std)
        test_split = "train" if test_same and splits == {"train"} else "test"
        # (a test folder of some of the classes: labelled by the names training learnt)
        test = load_split(model, data if test_data is None else test_data, test_split,
                          cfg.limit_test, data_dir, view, download, mean, std,
                          classes=train.class_names)
    if existing is not None and not resume:   # (a resumed run's own check names the change)
        _check_existing_preprocess(existing, out_path, test)
        _check_existing_timesteps(existing, out_path, T)
    if test_same and main_proc:
        log(f"warning: {train.name} holds no separate test set: the test accuracy that picks the "
            "best epoch is measured on training samples; pass held-out data with --test-data")
    data_record = {"train_data": recorded_data_name(train.name),   # a file's absolute path
                   "test_data": recorded_data_name(test.name), "test_is_train": test_same}
    augment = cfg.augment and _image_like(train.x)
    if cfg.augment and not augment and main_proc:
        what = (f"a model of {len(train.x)} inputs" if isinstance(train.x, dict) else
                f"inputs of shape {list(train.x.shape[1:])}")
        log(f"warning: {what}: not one input of NCHW images; --augment does nothing here")

    fixed = fixed_batch(_specs(view))
    batch_size = fixed or cfg.batch_size
    if fixed and main_proc and (cfg.batch_size != fixed or cfg.eval_batch != fixed):
        log(f"note: the model's input has a fixed batch size of {fixed}: training and evaluating "
            f"in batches of {fixed} (not --batch-size {cfg.batch_size}); a last incomplete "
            "training batch is left out")
    if fixed and len(train) < fixed * world:
        raise DataError(f"{train.name}: {len(train)} training samples, fewer than one batch of "
                        f"the model's fixed batch size ({fixed}){' per process' if world > 1 else ''}")
    net = SpikingNetwork(model, surrogate=cfg.surrogate,
                         train_initial=cfg.train_initial).to(device)
    net.warn_timesteps = False        # fine-tuning at another T is warned about above
    net.where = str(model_path)       # (its messages name the file)
    if not cfg.dropout:
        net.dropout = {}
    net.eval()
    with torch.no_grad():   # labels must be classes the model outputs
        raw = net(_tensors(_padded(_rows(test.x, slice(0, 1)), fixed), device), 1)
        raw = raw[0] if isinstance(raw, list) else raw
    probe = first_scores(raw)
    net.train()
    if probe.ndim != 2:     # the loss and top-1 read the first output as [batch, classes]
        first = view.outputs[0] if view.outputs else "?"
        raise DataError(f"{model_path}: its first output '{first}' has shape "
                        f"{['N'] + list(probe.shape[1:])}; fine-tuning needs [N, classes] logits "
                        "as the first output (re-export the DNN with the logits first)")
    if len(view.outputs) > 1 and main_proc:
        log(f"note: the model has {len(view.outputs)} outputs; the loss and top-1 read the first, "
            f"'{view.outputs[0]}'")
    check_labels_for(train.y, raw, train.name)
    check_labels_for(test.y, raw, test.name)
    teacher = _teacher(cfg, teacher_path, view, model_path, _padded(_rows(test.x, slice(0, 1)), fixed),
                       probe.cpu(), world,
                       log if main_proc else (lambda *a: None),
                       student_pp=train.preprocess or check_preprocess(info.preprocess))
    teacher_settings = _teacher_settings(teacher, cfg)
    # what a resumed run must share with the run it continues (its best top-1 and optimizer
    # state were measured and built with them); the epochs may grow
    run_settings = {"model_sha256": hashlib.sha256(model.SerializeToString()).hexdigest(),
                    "lr": cfg.lr, "batch_size": batch_size, "weight_decay": cfg.weight_decay,
                    "schedule": cfg.schedule,
                    "warmup": cfg.warmup if cfg.schedule == "cosine" else None,
                    "surrogate": cfg.surrogate, "augment": bool(augment), "seed": cfg.seed,
                    "train_initial": bool(cfg.train_initial), "loss": cfg.loss,
                    "dropout": bool(cfg.dropout), "train_data": data_record["train_data"],
                    "test_data": data_record["test_data"],
                    "train_data_sha256": _data_fingerprint(train),
                    "test_data_sha256": _data_fingerprint(test),
                    "limit_train": cfg.limit_train, "limit_test": cfg.limit_test,
                    "preprocess": train.preprocess, "output": os.path.realpath(output)}
    if ckpt_path.exists() and not resume:   # starting over replaces only this run's own
        _refuse_other_checkpoint(ckpt_path, run_settings)
    groups = net.parameter_groups()   # weight decay on weights only, not on neuron parameters
    opt = torch.optim.Adam([{"params": groups["weights"], "weight_decay": cfg.weight_decay},
                            {"params": groups["neurons"], "weight_decay": 0.0}],
                           lr=cfg.lr, amsgrad=True)
    steps_per_epoch = (len(train) // (batch_size * world) if fixed else
                       math.ceil(len(train) / (batch_size * world)))
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, cfg))
    ddp = net
    if world > 1:
        import inspect

        from torch.nn.parallel import DistributedDataParallel
        # no buffer syncing at each forward (the buffers are the model's constants, the same
        # on every rank); torch >= 2.13 names it forward_sync_buffers and warns, on every rank,
        # that broadcast_buffers is deprecated
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel.__init__).parameters
                   else "broadcast_buffers")
        ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                      **{no_sync: False})

    start_epoch, best, best_epoch, history, initial = 0, -1.0, 0, [], None
    standing = None                # the existing output's top-1, which an epoch must beat too
    gen_state, written, resumed_after = None, False, None
    fingerprint = None             # of the model written last
    existed = out_path.exists()

    # --mean/--std other than the recorded ones: the model is trained on (and remembers) them
    # (arrays carry their own: preprocess None)
    trained_on = train.preprocess if train.preprocess not in (None, info.preprocess) else None
    if trained_on is not None and main_proc and not warn_preprocess_override(
            str(model_path), mean, std, info.preprocess,
            f"the model is trained on them, and {output} records them"):
        # (nothing recorded to override: the model records its first preprocessing)
        log(f"note: training on inputs normalized with mean {trained_on['mean']} and std "
            f"{trained_on['std']}; {output} records them for the commands that read it")

    # an image folder labelled by its folders' sorted names, for a model that records no class
    # names: the file records them, so that a later folder of some of the classes (or named
    # in another order) is labelled as this one was (eval of two of ten folders scored 6.45 %)
    learnt_names = None
    if train.class_names and model_classes(model) is None and \
            _class_count(model) in (None, len(train.class_names)):
        learnt_names = list(train.class_names)

    def write_model(epochs_done, top1):
        nonlocal fingerprint
        hist = {**_hist(cfg, T, epochs_done, initial, top1, world, augment, batch_size, teacher),
                **data_record}
        if trained_on is not None:
            hist["preprocess"] = trained_on
        model = net.to_model(hist, T, trained_on)
        fmt.set_metadata(model, remember_dataset(fmt.metadata(model), data, trained=True))
        if learnt_names:       # (the folders' names it learnt its classes by)
            fmt.set_metadata(model, {fmt.META_CLASSES: json.dumps(learnt_names)})
        fingerprint = fmt.spiking_fingerprint(fmt.read_info(model))
        write_all_atomic(model_items(model, out_path, True if external else None, avoid=inputs))

    if resume and ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location=device, weights_only=True)
        except Exception as e:  # not a checkpoint (torch says KeyError: '174812789' of junk)
            why = f"{type(e).__name__}: {first_line(e, 4)[:300]}"
            if "weights only load failed" in why.lower():   # (not torch's advice to unpickle
                # a file of unknown origin, which runs its code: onnx-snn's hold tensors only)
                why = "it is no file of tensors, as onnx-snn's checkpoints are"
            raise ModelLoadError(f"{ckpt_path}: not a checkpoint file (torch.load cannot read "
                                 f"it: {why}); delete it, or run without --resume") from None
        if isinstance(state, dict):    # a run's own settings first: the clearest reason
            _check_resumed_run(state.get("run"), run_settings, ckpt_path)
        try:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, best, best_epoch = int(state["epoch"]), float(state["best"]), int(state["best_epoch"])
            history = [EpochRecord(**e) for e in state["history"]]
            initial = state.get("initial")
            standing = state.get("standing")
            torch.set_rng_state(state["rng"])
            gen_state = state.get("augment_rng")
            resumed_after = start_epoch
        except Exception as e:  # one of another model / run
            raise ModelLoadError(f"{ckpt_path}: not a usable checkpoint of this model "
                                 f"({first_line(e, 4)[:300]}); delete it, or run without "
                                 "--resume") from None
        _check_resumed_teacher(state, teacher_settings, ckpt_path)
        if state.get("timesteps") not in (None, T):   # its best top-1 was measured at that T
            raise UsageError(f"{ckpt_path}: this run trained at T={state['timesteps']}, and would "
                             f"resume at T={T}; pass -T {state['timesteps']}, or start over "
                             "without --resume")
        if not existed:
            # the run's best model so far is in its output: without it a resumed run could
            # end with nothing written (no later epoch beats the checkpoint's best)
            raise UsageError(f"{output}: --resume continues the run whose best model is in "
                             f"this file, and it does not exist (the checkpoint {ckpt_path} is "
                             "that run's); give -o that run's output, or run without --resume")
        if main_proc:
            log(f"resumed from {ckpt_path} after epoch {start_epoch} (best top-1 {best:.2f}%)")
    else:
        if resume and main_proc:
            log(f"note: no checkpoint at {ckpt_path}; starting from the model")
        if main_proc and not cfg.initial_eval and existed:
            log(f"note: {output} exists and is replaced by the first epoch: without the "
                "starting evaluation (initial_eval off) there is no top-1 to beat")
        if main_proc and cfg.initial_eval:
            try:
                initial, _ = evaluate_torch(net, test, device, T, cfg.eval_batch,
                                            "before fine-tuning", show_progress,
                                            finite_check=True, fixed=fixed)
            except _NonFinite:      # the model as converted: the data overflows it
                raise _overflow(test.name, "test") from None
            best, best_epoch = initial, 0
            if not existed:
                write_model(0, initial)
                written = True
                log(f"before fine-tuning: SNN top-1 {initial:.2f}% (T={T}); wrote it to {output}")
            else:
                standing = _existing_top1(existing, out_path, test, device, T, cfg,
                                          show_progress, fixed, log)
                if standing is None or standing <= initial:
                    log(f"before fine-tuning: SNN top-1 {initial:.2f}% (T={T}); {output} exists"
                        + (f" (top-1 {standing:.2f}%)" if standing is not None else "")
                        + " and is replaced only by an epoch that beats the starting top-1")
                else:
                    log(f"before fine-tuning: SNN top-1 {initial:.2f}% (T={T}); {output} exists "
                        f"with top-1 {standing:.2f}% on this test data, and is replaced only by "
                        "an epoch that beats that")

    def diverged(what):
        kept = (f"the last good model is in {output}" if written or (resume and out_path.exists())
                else f"{output} was left as it was" if existed else "no model was written")
        err = TrainingDivergedError(f"{what}; {kept}; try a smaller --lr")
        # the run so far, for a record of it (onnx-snn finetune --json writes it)
        err.record = {"diverged": what, "output": str(output), "timesteps": T,
                      "initial_top1": initial, "best_top1": best, "best_epoch": best_epoch,
                      "epochs": [asdict(h) for h in history], "written": bool(written)}
        return err

    gen = torch.Generator().manual_seed(cfg.seed)
    if gen_state is not None:
        gen.set_state(gen_state)
    epoch_seconds = []
    stepped = resume and start_epoch > 0      # whether any update has changed the model yet
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        perm = np.random.default_rng(cfg.seed + epoch).permutation(len(train))[rank::world]
        t0 = time.perf_counter()
        seen, correct, loss_sum = 0, 0, 0.0
        bar = Progress(len(perm), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="sample",
                       enabled=(None if show_progress else False) if main_proc else False)
        if fixed:   # whole batches of the model's size only
            perm = perm[:len(perm) - len(perm) % fixed]
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            xn = _rows(train.x, idx)
            if augment:
                xn = _augment(torch.from_numpy(xn), gen).numpy()
            soft = teacher(xn).to(device) if teacher is not None else None
            xb, yb = _tensors(xn, device), torch.from_numpy(train.y[idx]).to(device)
            if cfg.loss == "per-step":
                each = ddp(xb, T, record_spikes=False, per_step=True)
                each = each[0] if isinstance(each, list) else each
                loss = sum(_loss(first_scores(e), yb, soft, cfg) for e in each) / len(each)
                out = first_scores(each.mean(0))
            else:
                out = first_scores(ddp(xb, T, record_spikes=False))
                loss = _loss(out, yb, soft, cfg)
            if not torch.isfinite(loss):
                bar.close()
                if not stepped and not bool(torch.isfinite(out).all()):
                    raise _overflow(train.name, "training") from None
                raise diverged(f"the loss became {loss.item()} in epoch {epoch + 1}, batch "
                               f"{i // batch_size}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            try:
                opt.step()
            except RuntimeError as e:   # the update itself overflowed (a huge lr)
                if "overflow" not in str(e):
                    raise
                bar.close()
                raise diverged(f"the parameter update overflowed in epoch {epoch + 1}, batch "
                               f"{i // batch_size}") from None
            sched.step()
            first, stepped = not stepped, True
            net.project()
            if not _finite_parameters(net):
                bar.close()
                parts = list(xn.values()) if isinstance(xn, dict) else [xn]
                big = max((float(np.max(np.abs(v))) for v in parts if np.size(v)), default=0.0) \
                    if first else 0.0
                if big > 1e6:        # the very first update, on huge inputs
                    raise DataError(f"{train.name}: the first update made the parameters NaN/Inf "
                                    f"(its gradients overflowed); the batch holds values up to "
                                    f"{big:.3g}: check the data's scale (and preprocessing)")
                raise diverged(f"the parameters became NaN/Inf in epoch {epoch + 1}, batch "
                               f"{i // batch_size}")
            seen += len(idx)
            correct += int((out.argmax(1) == yb).sum())
            loss_sum += loss.item() * len(idx)
            bar.update(len(idx), loss=loss_sum / seen, acc=100.0 * correct / seen,
                       lr=sched.get_last_lr()[0])
        bar.close()
        epoch_seconds.append(time.perf_counter() - t0)
        if main_proc:
            try:
                top1, rates = evaluate_torch(net, test, device, T, cfg.eval_batch,
                                             f"epoch {epoch + 1} test", show_progress,
                                             finite_check=True, fixed=fixed)
            except _NonFinite:
                raise diverged(f"the network's test outputs became NaN/Inf after epoch {epoch + 1}") from None
            pools = {p.name for p in net.info.pools}
            history.append(EpochRecord(epoch + 1, loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1),
                                       top1, epoch_seconds[-1],
                                       {k: v for k, v in rates.items() if k not in pools},
                                       {k: v for k, v in rates.items() if k in pools}))
            on_disk = best_epoch if written else None   # the model -o holds from this run
            try:
                kept = ""
                if top1 > best:
                    best, best_epoch = top1, epoch + 1
                    if standing is None or top1 > standing:
                        write_model(epoch + 1, top1)
                        written = True
                        on_disk = best_epoch
                    else:
                        kept = f"; not written: {output} holds {standing:.2f}%"
                log(f"epoch {epoch + 1}: loss {loss_sum / max(seen, 1):.4f}, train {100.0 * correct / max(seen, 1):.2f}%, "
                    f"test {top1:.2f}% (best {best:.2f}% at epoch {best_epoch}{kept}), "
                    f"{epoch_seconds[-1]:.1f} s")
                _save_ckpt(ckpt_path, net, opt, sched, epoch + 1, best, best_epoch, history, initial, gen,
                           teacher_settings, T, run_settings, standing)
            except OutputPathError as e:
                if on_disk is None:
                    raise
                raise OutputPathError(str(e).replace(
                    "nothing was written",
                    f"this write changed nothing, but {output} holds the model of epoch {on_disk} "
                    "(its starting model at 0), written earlier in this run")) from None
        if world > 1:
            import torch.distributed as dist
            dist.barrier()
    peak_cuda = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return FinetuneResult(output=str(output), timesteps=T, initial_top1=initial, best_top1=best,
                          existing_top1=standing,
                          best_epoch=best_epoch, epochs=history,
                          # a resumed call that ran no epoch (its checkpoint had run them all):
                          # the run's epochs', so that its record does not read 0 s
                          seconds_per_epoch=float(np.mean(epoch_seconds or
                                                          [e.seconds for e in history] or [0.0])),
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          peak_cuda_mb=peak_cuda, world_size=world,
                          written=written, resumed_after=resumed_after,
                          teacher=teacher.path if teacher is not None else None,
                          model_fingerprint=fingerprint if written else None)


def _hist(cfg, T, epochs, initial, top1, world, augment, batch_size=None,
          teacher: Optional[Teacher] = None):
    h = {"epochs_done": epochs, "timesteps": T, "lr": cfg.lr,
         "batch_size": batch_size or cfg.batch_size,
         "optimizer": "adam-amsgrad", "weight_decay": cfg.weight_decay,
         "surrogate": cfg.surrogate, "augment": bool(augment),
         "top1_before": initial, "top1": top1, "world_size": world, "seed": cfg.seed}
    if cfg.train_initial:
        h["train_initial"] = True
    if not cfg.dropout:
        h["dropout"] = False
    if cfg.loss != "mean":
        h["loss"] = cfg.loss
    h["schedule"] = cfg.schedule if cfg.schedule == "step" else f"cosine, warm-up {cfg.warmup:g}"
    if teacher is not None:
        h.update(teacher=os.path.basename(teacher.path), teacher_is_source=teacher.is_source,
                 distill=cfg.distill, temperature=cfg.temperature)
    return h


def _loss(out: torch.Tensor, labels: torch.Tensor, soft: Optional[torch.Tensor],
          cfg: FinetuneConfig) -> torch.Tensor:
    """Cross-entropy on the labels, or with a teacher's outputs ``soft`` the mix of
    distillation and cross-entropy that ``cfg.distill`` sets."""
    if soft is None:
        return Fn.cross_entropy(out, labels)
    kd = distillation_loss(out, soft, cfg.temperature)
    if cfg.distill >= 1.0:
        return kd
    return cfg.distill * kd + (1.0 - cfg.distill) * Fn.cross_entropy(out, labels)


def _teacher_path(cfg: FinetuneConfig, model_path) -> Optional[str]:
    """The teacher's file, found before any work (None: none). A named one must exist, and
    ``auto`` must find the DNN the model was converted from."""
    if cfg.teacher is None or cfg.distill == 0:
        return None
    if cfg.teacher == AUTO:
        path = source_dnn_of(model_path)
        if path is None:
            fmt.read_spiking(load_model(model_path), str(model_path))  # its own error first
            raise ModelLoadError(f"{model_path}: --teacher auto: the DNN this model was converted "
                                 "from was not found (its conversion did not record the path, or "
                                 "the file there is gone or changed); pass --teacher DNN.onnx")
        return path
    require_file(cfg.teacher)
    return os.fspath(cfg.teacher)


def _teacher(cfg: FinetuneConfig, path: Optional[str], view: fmt.SpikingView, model_path,
             probe_x: np.ndarray, probe_out: torch.Tensor, world: int, log,
             student_pp: Optional[dict] = None) -> Optional[Teacher]:
    """The teacher at ``path``, checked against the student (None: no teacher).
    ``student_pp``: the normalization of the student's inputs; a teacher that records
    another one gets its inputs renormalized to it."""
    if probe_out.ndim != 2:
        if path is not None:
            raise UsageError(f"distillation needs a model whose first output is [batch, classes]; "
                             f"{model_path} answers with shape {list(probe_out.shape)}")
        return None
    if path is None:
        return None
    # the processes of a distributed run on this machine share the cores it lets us use
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or 1)
    threads = max(1, cores // max(local, 1))
    teacher = load_teacher(path, probe_x, probe_out, source=view.info.source, threads=threads,
                           sha256=view.info.source if cfg.teacher == AUTO else None,
                           student_name=view.outputs[0] if view.outputs else None)
    from onnx_snn.evaluate import _dnn_preprocess
    own = _dnn_preprocess(teacher.runner.model, str(path))
    if not isinstance(probe_x, dict):
        teacher.renorm = renormalization(student_pp, own, np.shape(probe_x))
    if teacher.renorm is not None:
        log(f"note: the teacher records another input normalization (mean {own['mean']}, std "
            f"{own['std']}) than the student's data (mean {student_pp['mean']}, std "
            f"{student_pp['std']}): its inputs are renormalized to it")
    what = "the DNN it was converted from" if teacher.is_source else "not the DNN it was converted from"
    kind = ", its softmax read as probabilities" if teacher.probabilities else ""
    log(f"distilling from {path} ({what}{kind}; loss {cfg.distill:g} x KL at temperature "
        f"{cfg.temperature:g}{f' + {1 - cfg.distill:g} x cross-entropy' if cfg.distill < 1 else ''})")
    return teacher


def _teacher_settings(teacher: Optional[Teacher], cfg: FinetuneConfig) -> Optional[dict]:
    """What a checkpoint records of the loss, so that a resumed run keeps it."""
    if teacher is None:
        return None
    return {"sha256": teacher.sha256, "name": os.path.basename(teacher.path),
            "distill": cfg.distill, "temperature": cfg.temperature}


def _describe(settings: Optional[dict]) -> str:
    if not settings:
        return "on the labels alone (no teacher)"
    return (f"distilling from {settings['name']} (sha256 {settings['sha256'][:12]}), distill "
            f"{settings['distill']:g}, temperature {settings['temperature']:g}")


def _data_fingerprint(ds, sample: int = 1 << 18) -> str:
    """sha256 of a dataset's shapes, labels and an evenly strided sample of at most ``sample``
    values per input: in-memory arrays are all named "array", and a run resumed on other
    arrays was scored against the first arrays' best and overwrote it."""
    h = hashlib.sha256()
    xs = ds.x if isinstance(ds.x, dict) else {"": ds.x}
    for k in sorted(xs):
        a = np.asarray(xs[k])
        flat = a.reshape(-1)
        h.update(f"{k}:{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(flat[::max(1, flat.size // sample)]).tobytes())
    if ds.y is not None:
        h.update(np.ascontiguousarray(np.asarray(ds.y)).tobytes())
    return h.hexdigest()[:16]


def _check_resumed_run(was: Optional[dict], now: dict, ckpt_path: Path) -> None:
    """A resumed run continues with the model, data and hyperparameters it started with
    (checkpoints from before this check record none: not checked)."""
    if not was:
        return
    if "schedule" not in was:     # a run from before the option: it ran the step schedule
        was = {**was, "schedule": "step"}
    names = {"model_sha256": "the model (sha256)", "lr": "--lr", "batch_size": "--batch-size",
             "weight_decay": "--weight-decay", "surrogate": "--surrogate", "augment": "--augment",
             "seed": "--seed", "train_data": "--data", "test_data": "--test-data",
             "limit_train": "--limit-train", "limit_test": "--limit-test",
             "train_initial": "--train-initial", "preprocess": "--mean/--std", "loss": "--loss",
             "dropout": "--no-dropout",
             "schedule": "--schedule", "warmup": "--warmup",
             "train_data_sha256": "the training data's contents (sha256 of a sample)",
             "test_data_sha256": "the test data's contents (sha256 of a sample)"}
    # data files as absolute paths (a run recorded before that, as typed: the same file
    # typed another way, ./d.npz for d.npz, is the same data)
    was = {k: recorded_data_name(v) if k in ("train_data", "test_data") else v
           for k, v in was.items()}

    def shown(flag: str, value) -> str:
        """A switch as the flag reads (--no-dropout is on where dropout is False)."""
        if not isinstance(value, bool):
            return repr(value)
        return "on" if value != flag.startswith("--no-") else "off"
    diff = [f"{names.get(k, k)} {shown(names[k], was[k])} -> {shown(names[k], now.get(k))}"
            for k in was if k in names and was[k] != now.get(k)]
    if diff:
        raise UsageError(f"{ckpt_path}: this run started with other settings than this call's "
                         f"({'; '.join(diff)}); resume with the run's own, or start over "
                         "without --resume")


def _refuse_other_checkpoint(ckpt_path: Path, now: dict) -> None:
    """A run started without --resume writes its checkpoint over what is there; that may be
    an earlier run of the same output (the same -o, through any path; whatever its model),
    never the checkpoint of a run that wrote another file, nor a file that is no checkpoint."""
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        state = None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch"} <= set(state):
        raise UsageError(f"{ckpt_path}: exists and is not a fine-tuning checkpoint, and this run "
                         "would write its checkpoint there; pass another --checkpoint, or move "
                         "the file")
    was = state.get("run") or {}
    if "output" in was and os.path.realpath(was["output"]) != now.get("output"):
        raise UsageError(f"{ckpt_path}: the checkpoint of another run (writing {was['output']}); "
                         "starting over would overwrite it: pass another --checkpoint, delete "
                         "it, or continue that run with --resume and its -o")


def _check_resumed_teacher(state: dict, now: Optional[dict], ckpt_path: Path) -> None:
    """A resumed run trains with the loss it started with (checkpoints from before
    distillation record none and are taken as they are)."""
    if "teacher" not in state:
        return
    def loss(settings):   # what the loss depends on (not the file's name)
        return settings and (settings["sha256"], settings["distill"], settings["temperature"])
    was = state["teacher"]
    if loss(was) != loss(now):
        raise UsageError(f"{ckpt_path}: this run started {_describe(was)}, and would resume "
                         f"{_describe(now)}; pass the same --teacher (or none), --distill and "
                         "--temperature, or start over without --resume")


def _save_ckpt(path: Path, net, opt, sched, epoch, best, best_epoch, history, initial, gen,
               teacher: Optional[dict] = None, timesteps: Optional[int] = None,
               run: Optional[dict] = None, standing: Optional[float] = None):
    """Atomically (a temporary file renamed; removed on any failure or signal)."""
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch, "best": best,
                "best_epoch": best_epoch, "history": [asdict(h) for h in history],
                "initial": initial, "rng": torch.get_rng_state(), "augment_rng": gen.get_state(),
                "teacher": teacher, "timesteps": timesteps, "run": run, "standing": standing}, buf)
    write_bytes_atomic(buf.getvalue(), path)
