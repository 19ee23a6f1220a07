"""Reconstruction: a converted network trained on its calibration images to follow its DNN.

``onnx-snn convert --reconstruct EPOCHS`` (:func:`reconstruct`). After the refinement, whose
thresholds, amplitudes and refitted weights are each chosen for one layer at a time, the
spiking network is trained for a few epochs on the calibration images (convert's default:
and more of the same data, :mod:`onnx_snn.auto_reconstruct`), without labels:

* every site's output, averaged over the T steps, learns the DNN's clipped activation there
  (its squared error over the site's mean square, averaged over the sites: each layer
  learns to give the next what the DNN's gave it, as in block reconstruction, Li et al.,
  "BRECQ", ICLR 2021, here all blocks at once);
* the first output learns the DNN's, read as class scores as every command here reads it
  (top-1, fine-tuning's cross-entropy): the KL divergence of their softmaxes at temperature
  ``temperature`` for an output of two or more scores per sample (Hinton et al. 2015), else
  (one value per sample, other shapes) their squared error over the DNN's mean square;
* every other output of a model of several (a second head) learns the DNN's output of the
  same name by its squared error over the DNN's mean square there, their mean weighing as
  much as the first output's loss (the first output and the sites alone left a second
  head's error where the conversion had it, or larger); an output that is a site's
  activation is left to the sites' loss.

Weights, thresholds, amplitudes and leaks train with the surrogate gradient through the T
steps, as in fine-tuning (Adam, a cosine learning rate from ``lr``, no warm-up); the DNN's
targets come from onnxruntime batch by batch. The trained values go back into the
conversion's records and refitted model (:func:`write_back`), and the spiking model is
rebuilt from them, so that every form written (the loop graph, the step graph, binary spikes,
deploy) carries them; a loss or parameter that turns non-finite keeps the conversion's.

The step's record (the model's history, the report's ``reconstruction``) has the loss, its
parts and the agreement with the DNN's top class on the calibration images before and after.
They are no test of it: the refinement fitted its weights on those images too, and its
``before`` is the better one there although the test set says otherwise (VGG-16 at T=2, one
``convert --reconstruct`` run on 2 threads: agreement 96.7 -> 96.1 %, test top-1 87.35 ->
88.68 %; the benchmark's run on one thread gave 88.98; convert's default on VGG-16,
2026-12-07: loss 0.191 -> 0.295, agreement 96.7 -> 94.1 %, and 89.31 % test top-1; the
default is 2.0-3.3 points above the refinement alone at T = 1-2 on the deep networks). Only a
loss that ends 2x above the conversion's there (``LOSS_WARNING``: a learning rate too large)
is warned about. The test is on images neither trained nor calibrated on (``held_out``: convert
holds out up to 1024 of the data where it holds more, else up to 256 of what it would train
or calibrate on, ``onnx_snn.auto_reconstruct.checked_rows``), where the
record's ``held_out`` has the same measures before and after: there the same VGG-16 default
went from 91.0 to 93.2 % agreement and from a loss of 0.476 to 0.343 (2026-12-07). With
``guard`` (convert's default) a reconstruction whose output loss there rose, or, for a
classifier, whose agreement with the DNN fell by more than two standard errors of the change
(:func:`follows_better`), is not kept: a few hundred images of random data and an lr of 3e-2
took a random-weight net from 60.3 to 0 % and from a loss of 0.021 to 0.31.

It needs PyTorch (``pip install 'onnx-snn[torch]'``) and is not the same to the bit on
another thread count (PyTorch's CPU kernels sum in an order that depends on it). ``convert``
does it by default where PyTorch is installed and the network's cost fits a budget
(:mod:`onnx_snn.auto_reconstruct`); the core install converts without it. Measured in README.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnx_snn import heap
from onnx_snn.errors import InternalError, UsageError
from onnx_snn.feeds import fixed_batch, input_specs, pad_batch
from onnx_snn.progress import Progress
from onnx_snn.scores import class_scores
from onnx_snn.sequential import _value
from onnx_snn.spiking import format as fmt
from onnx_snn.values import is_int, is_real

from .network import SpikingNetwork
from .teacher import distillation_loss

log = logging.getLogger("onnx_snn")

#: ReconstructConfig.epochs when ``--reconstruct`` is given without a number
DEFAULT_EPOCHS = 30        # (= onnx_snn.auto_reconstruct.MAX_EPOCHS, tested)
#: the most epochs ``--reconstruct`` takes (it trains on the calibration set only)
MAX_EPOCHS = 1000
#: a loss on the calibration images this many times the conversion's is warned about
#: (convert's default moved it by 0.96x on ResNet-20 and 1.50-1.54x on VGG-16, whose
#: refinement fitted those very images, and warned on the flagship network at 1.5; one epoch
#: at lr 1e-3 1.69x, an lr of 3e-2 8x)
LOSS_WARNING = 2.0
#: the batch the network is measured in before and after (its loss, its agreement)
MEASURE_BATCH = 64
#: the DNN's batches in onnxruntime (its exposed outputs: the sites' inputs, the outputs)
TARGET_BATCH = 256
#: the most one batch of those outputs, or of the spiking network's values of one step when
#: it is measured, may take: a network of many activations per image runs smaller batches
#: than TARGET_BATCH and MEASURE_BATCH (10 MB of activations per image: 13 images, not 256,
#: whose outputs took 2.6 GB); the three benchmarked networks keep theirs
BATCH_BYTES = 128 * 2 ** 20
#: the most one training pass may hold of the spiking network's values (every node's output,
#: float32, over the T steps, :func:`_bounded_batch`): a network of large feature maps trains
#: each batch of ``batch_size`` in parts of fewer samples whose gradients add up to the batch's
#: (the same step, to float rounding). The 3 x 56 x 56 depthwise-residual network of 1.2 M
#: activations per image held 1.6 GB at a batch of 32 (T = 2; 4.3 GB peak RSS end to end) and
#: trains in parts of 13; the benchmarked networks (0.11-0.16 M) keep whole batches up to T = 4
TRAIN_BYTES = 128 * 2 ** 20
#: the DNN's targets are kept between epochs up to this size (:class:`_Targets`)
TARGET_CACHE_BYTES = 512 * 2 ** 20
#: the held-out images' targets are kept up to this size (they are read twice: before and
#: after; beyond it they are run again, one more onnxruntime pass)
HELD_OUT_CACHE_BYTES = 64 * 2 ** 20
#: a site's target, its DNN activation clipped to [0, mu], is kept as a whole number of
#: mu / SITE_LEVELS (one byte) where that is at most a quarter of the site's output step
#: (its largest amplitude / T: :func:`coded_sites`), else as float32: 4096 images of
#: VGG-16's targets take 201 MiB, not 803, and are read once instead of run again each epoch
SITE_LEVELS = 255


@dataclass
class ReconstructConfig:
    """How :func:`reconstruct` trains (the defaults were measured: README)."""

    epochs: int = DEFAULT_EPOCHS
    lr: float = 3e-4
    batch_size: int = 32
    #: the softmaxes' temperature for a classifier's output
    temperature: float = 4.0
    #: the weight of the sites' loss and of the outputs'
    site_weight: float = 1.0
    output_weight: float = 1.0
    seed: int = 0

    def check(self) -> "ReconstructConfig":
        """Each field checked (UsageError names it), before any work."""
        if not is_int(self.epochs) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise UsageError(f"reconstruction epochs must be a whole number from 1 to "
                             f"{MAX_EPOCHS}, not {self.epochs!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise UsageError(f"reconstruction batch size must be a whole number >= 1, not "
                             f"{self.batch_size!r}")
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not is_real(v) or not math.isfinite(v) or v <= 0:
                raise UsageError(f"reconstruction {name} must be a finite number > 0, not {v!r}")
        for name in ("site_weight", "output_weight"):
            v = getattr(self, name)
            if not is_real(v) or not math.isfinite(v) or v < 0:
                raise UsageError(f"reconstruction {name} must be a finite number >= 0, not {v!r}")
        if not self.site_weight and not self.output_weight:
            raise UsageError("reconstruction: site_weight and output_weight are both 0: "
                             "nothing to learn")
        if not is_int(self.seed) or self.seed < 0:
            raise UsageError(f"reconstruction seed must be a whole number >= 0, not {self.seed!r}")
        return self


def coded_sites(records, timesteps: int) -> Dict[str, bool]:
    """{site: whether its targets are kept as bytes (:func:`site_codes`)}: where mu is finite
    and mu / :data:`SITE_LEVELS` is at most a quarter of the site's output step, the largest
    amplitude (beta mu, over its channels) over T; not where a trained clip bound far above
    the data (mu up to 100x its largest activation is kept) leaves the site's outputs a few
    codes wide, nor at large T (T = 32 needs an amplitude of mu / 2 or more)."""
    out = {}
    for s, r in records.items():
        mu = float(r.mu)
        amp = float(np.max(np.abs(np.asarray(r.beta, np.float64)))) * mu if np.size(r.beta) else 0.0
        out[s] = bool(math.isfinite(mu) and mu > 0 and math.isfinite(amp)
                      and mu / SITE_LEVELS <= amp / (4 * int(timesteps)))
    return out


def site_codes(a: np.ndarray, mu: float) -> np.ndarray:
    """``a`` clipped to [0, mu] as whole numbers of mu / :data:`SITE_LEVELS` (uint8, rounded
    to the nearest; all 0 where mu is not above 0): :func:`site_values` reads them back
    within mu / (2 SITE_LEVELS)."""
    mu = float(mu)
    if not mu > 0:
        return np.zeros(np.shape(a), np.uint8)
    q = np.clip(np.asarray(a, np.float32), 0.0, mu) * np.float32(SITE_LEVELS / mu)
    return np.rint(q, out=q).astype(np.uint8)


def site_values(codes: torch.Tensor, mu: float) -> torch.Tensor:
    """The float32 targets of :func:`site_codes`' ``codes``."""
    step = float(mu) / SITE_LEVELS if float(mu) > 0 else 0.0
    return codes.to(torch.float32).mul_(step)


def _targets(session, names: List[str], outputs: Dict[str, str], records,
             feed: Dict[str, np.ndarray], coded: Dict[str, bool]):
    """({the spiking model's output: the DNN's matching output}, {site: its clipped
    activation, as :func:`site_codes` where ``coded`` says so, else float32}) for one batch,
    as tensors (``outputs``: which DNN output each follows)."""
    got = dict(zip(names, session.run(names, feed)))
    sites = {s: torch.from_numpy(site_codes(got[r.input], r.mu) if coded[s] else
                                 np.clip(got[r.input], 0.0, r.mu).astype(np.float32))
             for s, r in records.items()}
    return ({o: torch.from_numpy(np.asarray(got[d], np.float32)) for o, d in outputs.items()},
            sites)


def _followed_outputs(dnn: onnx.ModelProto, session, net: SpikingNetwork,
                      records) -> Dict[str, str]:
    """{the spiking model's output: the DNN output it learns}: each output the DNN's of the
    same name (a real tensor: class ids are not learnt), so that every head of a model of
    several trains, not the first alone, whatever their order; the first output the DNN's
    first where the DNN has none of its name. An output that is a site's activation is
    left to the sites' loss (its target there is the activation clipped to mu)."""
    real = {o.name for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)",
                                                                "tensor(float16)")}
    dnn_outputs = [o.name for o in dnn.graph.output]
    first = net.view.outputs[0]
    sited = {r.output for r in records.values()} | {r.input for r in records.values()}
    pairs = {first: first if first in dnn_outputs else dnn_outputs[0]}
    for o in net.view.outputs[1:]:
        if o in real and o in dnn_outputs and o not in sited:
            pairs[o] = o
    return pairs


class _Targets:
    """The DNN's targets (:func:`_targets`) of the training samples, run once and kept
    where they fit in :data:`TARGET_CACHE_BYTES` (every epoch reads them: 10 % of an epoch
    on VGG-16), else run again for each batch; the sites' as one-byte codes where
    :func:`coded_sites` says so, kept or not, read back as float32 by each call (the same
    targets either way)."""

    def __init__(self, session, names, outputs, records, x, size: int, fixed: Optional[int],
                 timesteps: int, cache_bytes: Optional[int] = None):
        self.coded = coded_sites(records, timesteps)
        self.run = lambda b: _targets(session, names, outputs, records, b, self.coded)
        self.mu = {s: r.mu for s, r in records.items()}
        self.x, self.size, self.fixed = x, size, fixed
        self.cache = None
        n = len(next(iter(x.values())))
        for rows, b in _batches(x, size, fixed=fixed):
            got = _kept(self.run(b), len(rows))
            if self.cache is None:      # the first batch: room for all, or none kept
                if not self.cache_fits(got, n, cache_bytes):
                    return
                self.cache = tuple({k: t.new_empty((n, *t.shape[1:])) for k, t in part.items()}
                                   for part in got)
            idx = torch.as_tensor(np.asarray(rows, np.int64))
            for part, kept in zip(got, self.cache):
                for k, t in part.items():
                    kept[k][idx] = t

    @staticmethod
    def cache_fits(first, n: int, limit: Optional[int] = None) -> bool:
        """Whether ``n`` samples' targets like ``first``'s fit in ``limit`` bytes (None:
        :data:`TARGET_CACHE_BYTES`, read at the call)."""
        tensors = [t for part in first for t in part.values()]
        rows = max(len(tensors[0]), 1)
        size = sum(t.numel() * t.element_size() for t in tensors) / rows
        return size * n <= (TARGET_CACHE_BYTES if limit is None else limit)

    def __call__(self, rows, batch, k: int):
        """The targets of the samples ``rows`` (whose inputs are ``batch``, ``k`` of them
        its own: a padded batch's)."""
        if self.cache is None:
            outs, codes = _kept(self.run(batch), k)
        else:
            idx = torch.from_numpy(np.asarray(rows[:k], np.int64))
            outs, codes = ({name: t[idx] for name, t in part.items()} for part in self.cache)
        return outs, {s: site_values(c, self.mu[s]) if self.coded[s] else c
                      for s, c in codes.items()}

    def batches(self):
        """The targets of all the samples, batch by batch (for :meth:`_Loss.scales`); kept
        targets are read without building the batches' inputs."""
        if self.cache is not None:
            n = len(next(iter(self.x.values())))
            for a in range(0, n, self.size):
                rows = np.arange(a, min(a + self.size, n))
                yield self(rows, None, len(rows))
            return
        for rows, b in _batches(self.x, self.size, fixed=self.fixed):
            yield self(rows, b, len(rows))


def _scores(student: torch.Tensor, teacher: torch.Tensor):
    """(student, teacher) as class scores [N, C >= 2] of the same shape, or None where the
    first output is not read so (one value per sample, other shapes)."""
    s, t = class_scores(student), class_scores(teacher)
    return (s, t) if s.dim() == 2 and s.shape[1] >= 2 and s.shape == t.shape else None


def _output_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                 scale: float) -> torch.Tensor:
    """The first output's loss: KL at ``temperature`` for class scores (:func:`_scores`),
    else the squared error over ``scale`` (the DNN output's mean square)."""
    scores = _scores(student, teacher)
    if scores is not None:
        return distillation_loss(*scores, temperature)
    return torch.mean((student.reshape(teacher.shape) - teacher) ** 2) / scale


class _Loss:
    """The reconstruction loss of a batch, with each site's and output's scale (the DNN's
    mean square there over the training samples) fixed by :meth:`scales`. The outputs' loss
    is the first output's (:func:`_output_loss`) plus, for a model of several outputs, the
    mean of the others' squared errors over their scales."""

    def __init__(self, records, cfg: ReconstructConfig, first: str):
        self.records, self.cfg, self.first = records, cfg, first
        self.site_scale: Dict[str, float] = {}
        self.output_scale: Dict[str, float] = {}

    def scales(self, batches) -> None:
        sq: Dict[str, float] = {}
        n: Dict[str, int] = {}
        for outs, sites in batches:
            for key, t in [(("o", k), v) for k, v in outs.items()] + \
                    [(("s", k), v) for k, v in sites.items()]:
                sq[key] = sq.get(key, 0.0) + float(torch.sum(t.double() ** 2))
                n[key] = n.get(key, 0) + t.numel()
        # a site that never fires in the DNN on these images (mean square 0) scales by 1
        scale = {key: (sq[key] / n[key] if n[key] and sq[key] > 0 else 1.0) for key in sq}
        self.site_scale = {s: scale.get(("s", s), 1.0) for s in self.records}
        self.output_scale = {k: v for (kind, k), v in scale.items() if kind == "o"}

    def parts(self, outs, per_site, target_outs, target_sites):
        """(the sites' loss, the outputs'), unweighted."""
        out = outs[self.first]
        site = out.new_zeros(())
        if self.records:
            site = sum(torch.mean((per_site[s] - target_sites[s]) ** 2) / self.site_scale[s]
                       for s in self.records) / len(self.records)
        for name, t in target_outs.items():
            if outs[name].numel() != t.numel():
                raise UsageError(f"reconstruction: the spiking model's output {name!r} has "
                                 f"{outs[name].numel() // max(len(t), 1)} values per sample, "
                                 f"the DNN's it follows {t.numel() // max(len(t), 1)}; pass "
                                 "the DNN it was converted from, as normalized: "
                                 "onnx_snn.prepare(model).model")
        output = _output_loss(out, target_outs[self.first], self.cfg.temperature,
                              self.output_scale.get(self.first, 1.0))
        others = [name for name in target_outs if name != self.first]
        if others:          # (the others together weigh as much as the first)
            output = output + sum(torch.mean((outs[k].reshape(target_outs[k].shape)
                                              - target_outs[k]) ** 2)
                                  / self.output_scale.get(k, 1.0) for k in others) / len(others)
        return site, output

    def __call__(self, out, per_site, target_out, target_sites) -> torch.Tensor:
        site, output = self.parts(out, per_site, target_out, target_sites)
        return self.cfg.site_weight * site + self.cfg.output_weight * output


def _batches(x: Dict[str, np.ndarray], size: int, order=None, fixed: Optional[int] = None):
    """(rows, {input: batch}) of ``x`` in batches of ``size``; with a model's ``fixed``
    batch, each padded with zero samples up to it (their results are dropped: see
    :func:`_kept`)."""
    idx = np.arange(len(next(iter(x.values())))) if order is None else order
    for a in range(0, len(idx), size):
        rows = idx[a:a + size]
        yield rows, _batch(x, rows, fixed)


def _batch(x: Dict[str, np.ndarray], rows, fixed: Optional[int] = None) -> Dict[str, np.ndarray]:
    """{input: the samples ``rows`` of ``x``}, padded with zero samples up to a model's
    ``fixed`` batch."""
    return {k: pad_batch(np.ascontiguousarray(v[rows]), fixed) for k, v in x.items()}


def _kept(t, n: int):
    """The first ``n`` samples of a batch's result (a tensor, or {name: tensor}): a padded
    batch's own."""
    if isinstance(t, tuple):
        return tuple(_kept(e, n) for e in t)
    if isinstance(t, dict):
        return {k: v[:n] for k, v in t.items()}
    return t[:n]


def _bounded_batch(dnn: onnx.ModelProto, names: Optional[List[str]], cap: int,
                   limit: Optional[int] = None) -> int:
    """``cap``, or fewer images where their values of ``names`` (None: every node's output,
    one step of the network) would take more than ``limit`` bytes (None:
    :data:`BATCH_BYTES`) in float32 (the shapes the normalized DNN records; where one is not
    known, ``cap``)."""
    from onnx_snn.auto_reconstruct import activation_elements
    per = activation_elements(dnn, names)
    if not per:
        return cap
    limit = BATCH_BYTES if limit is None else limit
    return int(max(1, min(cap, limit // (4 * per))))


def _parts(rows: np.ndarray, size: int) -> List[np.ndarray]:
    """``rows`` in as few parts of at most ``size`` as there must be, of near-equal sizes
    (32 in parts of 13: 11, 11, 10)."""
    return [p for p in np.array_split(rows, -(-len(rows) // max(size, 1))) if len(p)]


def _inputs(dnn: onnx.ModelProto, x) -> Dict[str, np.ndarray]:
    """The calibration inputs as {input name: array} in the type each input declares (an
    API caller's float64 array went to onnxruntime as doubles)."""
    specs = [n for n, _ in input_specs(dnn)]
    if not isinstance(x, dict):
        x = {specs[0]: x}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in dnn.graph.input}
    out = {}
    for k, v in x.items():
        dtype = onnx.helper.tensor_dtype_to_np_dtype(types[k]) if types.get(k) else np.float32
        out[k] = np.asarray(v, dtype)
    return out


def reconstruct(snn, dnn: onnx.ModelProto, x, config: Optional[ReconstructConfig] = None,
                threads: Optional[int] = None, show_progress: bool = True,
                extra: Optional[dict] = None, measure_rows: Optional[int] = None,
                held_out=None, guard: bool = False) -> dict:
    """Train the converted ``snn`` (a :class:`onnx_snn.convert.SpikingModel`) on the
    calibration inputs ``x`` (an array, or {input name: array}) to follow ``dnn`` (the
    normalized DNN it was converted from: its sites' inputs are the records' ``input``
    tensors) and write the result back into ``snn`` (unless the training diverged); returns
    the step's record (also appended to the model's history and put in the report), with
    ``extra``'s keys (``convert``'s default says ``automatic``, and why fewer epochs).
    ``measure_rows``: the loss and agreement before and after are measured on the first
    this many samples of ``x`` (the calibration images, where the default trains on more;
    None: all). ``held_out``: inputs neither trained nor calibrated on (an array, or {input
    name: array}; None: none), on which the network is measured before and after too
    (the record's ``held_out``); with ``guard``, the trained values are kept only where they
    follow the DNN there at least as well as the conversion's (:func:`follows_better`), as
    convert's default does; without, a loss there is warned about."""
    from onnx_snn.calibrate import make_session

    cfg = (config or ReconstructConfig()).check()
    t0 = time.perf_counter()
    records = dict(snn.records)
    known = {o for n in dnn.graph.node for o in n.output} | {i.name for i in dnn.graph.input}
    missing = [r.input for r in records.values() if r.input not in known]
    if missing:
        raise UsageError(f"reconstruction: the DNN given has no tensor {missing[0]!r}, which a "
                         "site of the spiking model reads; pass the DNN it was converted from "
                         "as normalized: onnx_snn.prepare(model).model")
    session = make_session(dnn, threads, where="the DNN", spin=False, arena=False,
                           outputs=[r.input for r in records.values()])
    names = [o.name for o in session.get_outputs()]
    x = _inputs(dnn, x)
    fixed = fixed_batch(input_specs(dnn))     # a model of one batch size: that size, padded
    batch_size = fixed or cfg.batch_size
    # the samples one training pass runs (a batch's gradients add up over its parts)
    part_size = fixed or _bounded_batch(dnn, None, batch_size, TRAIN_BYTES // snn.timesteps)
    eval_size = fixed or _bounded_batch(
        dnn, [r.input for r in records.values()] + [o.name for o in dnn.graph.output],
        TARGET_BATCH)             # the DNN's batches in onnxruntime
    # the spiking network's batches when it is measured (no gradient): 256 images of the
    # shipped model held 1.1 GB at once, 3x the training's peak
    # (one step's values within BATCH_BYTES, the T steps' within TRAIN_BYTES)
    measure_size = fixed or _bounded_batch(dnn, None, MEASURE_BATCH,
                                           min(BATCH_BYTES, TRAIN_BYTES // snn.timesteps))

    def as_torch(batch):
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    net = SpikingNetwork(snn.model)
    net.dropout = {}          # the DNN's targets are its inference: no dropout
    outputs = _followed_outputs(dnn, session, net, records)
    first = net.view.outputs[0]
    loss_fn = _Loss(records, cfg, first)
    targets = _Targets(session, names, outputs, records, x, eval_size, fixed, snn.timesteps)
    loss_fn.scales(targets.batches())
    held = None
    if held_out is not None:
        held_out = _inputs(dnn, held_out)
        held = (held_out, _Targets(session, names, outputs, records, held_out, eval_size, fixed,
                                   snn.timesteps, HELD_OUT_CACHE_BYTES),
                len(next(iter(held_out.values()))))

    def measured(on=None) -> dict:
        """Over the calibration set (or ``on``: (inputs, their targets, how many)), the
        network as it runs: the mean loss, its parts, and the fraction of samples whose top
        class is the DNN's (for a classifier; each sample's, under ``agrees``)."""
        xs, tg, count = on or (x, targets, measured_n)
        net.eval()
        sums = {"loss": 0.0, "site_loss": 0.0, "output_loss": 0.0, "dnn_agreement": 0.0}
        agrees = []
        n = 0
        with torch.no_grad():
            for rows, b in _batches(xs, measure_size, order=np.arange(count), fixed=fixed):
                k = len(rows)
                t_out, t_sites = tg(rows, b, k)
                out, per_site = _kept(net.site_outputs(as_torch(b), every_output=True), k)
                site, output = loss_fn.parts(out, per_site, t_out, t_sites)
                sums["site_loss"] += float(site) * k
                sums["output_loss"] += float(output) * k
                sums["loss"] += float(cfg.site_weight * site + cfg.output_weight * output) * k
                scores = _scores(out[first], t_out[first])
                if scores is not None:
                    s, t = scores
                    agrees.append((s.argmax(1) == t.argmax(1)).numpy())
                else:
                    sums.pop("dnn_agreement", None)
                n += k
        if "dnn_agreement" in sums:
            agrees = np.concatenate(agrees) if agrees else np.zeros(0, bool)
            sums["dnn_agreement"] = float(np.sum(agrees))
        out = {k: v / max(n, 1) for k, v in sums.items()}
        if on is not None and "dnn_agreement" in out:
            out["agrees"] = agrees
        return out

    n = len(next(iter(x.values())))
    measured_n = n if measure_rows is None else max(1, min(int(measure_rows), n))
    heap.trim()              # (the DNN's runs: each phase starts from what is live)
    before = measured()
    held_before = measured(held) if held else None
    heap.trim()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    steps = cfg.epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, steps) / steps)))
    gen = np.random.default_rng(cfg.seed)
    bar = Progress(cfg.epochs * n, desc="reconstructing", unit="sample",
                   enabled=None if show_progress else False)
    epoch_losses = []

    def _step(rows) -> Optional[float]:
        """The gradients of the batch ``rows``, summed over its parts (each part's loss
        weighted by its share of the batch); the batch's loss, or None where one is not
        finite."""
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for part in _parts(rows, part_size):
            b = _batch(x, part, fixed)
            k = len(part)
            t_out, t_sites = targets(part, b, k)
            out, per_site = _kept(net.site_outputs(as_torch(b), grad=True, every_output=True), k)
            part_loss = loss_fn(out, per_site, t_out, t_sites)
            if not torch.isfinite(part_loss):
                return None
            (part_loss * (k / len(rows))).backward()
            loss += float(part_loss.detach()) * k / len(rows)
        return loss

    try:
        for _ in range(cfg.epochs):
            net.train()
            total = 0.0
            order = gen.permutation(n)
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                loss = _step(rows)
                if loss is None:
                    break
                opt.step()
                sched.step()
                net.project()
                total += loss * len(rows)
                bar.update(len(rows), loss=loss)
            else:
                epoch_losses.append(total / n)
                continue
            break              # a non-finite loss: the trained values are not kept
    finally:
        bar.close()
    heap.trim()
    diverged = len(epoch_losses) < cfg.epochs or bool(net.turned_non_finite())
    after = None if diverged else measured()
    held_after = None if diverged or not held else measured(held)
    better = None if held_after is None else follows_better(held_before, held_after)
    kept = not diverged and (better is not False or not guard)
    record = {"step": "reconstruct",
              "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "timesteps": int(snn.timesteps), "epochs": int(cfg.epochs),
              "images": int(n), **({} if measured_n == n else {"measured_images": measured_n}),
              "lr": float(cfg.lr), "batch_size": int(batch_size),
              **({} if part_size >= min(batch_size, n) else {"batch_parts_of": int(part_size)}),
              "temperature": float(cfg.temperature), "site_weight": float(cfg.site_weight),
              "output_weight": float(cfg.output_weight), "seed": int(cfg.seed),
              "before": before, "after": after, "epoch_losses": epoch_losses,
              "measured_on": "the calibration images, which the refinement fitted too"
                             + ("" if measured_n == n else
                                f" (the first {measured_n} of the {n} trained on)"),
              "kept": kept, "seconds": round(time.perf_counter() - t0, 2), **(extra or {})}
    if held:
        record["held_out"] = {"images": held[2], "before": _public(held_before),
                              "after": _public(held_after), "followed_better": better}
    worse = None if better is not False else (
        f"on {held[2]} held-out images (neither trained nor calibrated on) it "
        + _compared(held_before, held_after))
    if diverged:
        record["why"] = ("the loss or a parameter turned non-finite: the conversion's values "
                         "are kept (a smaller lr may train)")
        log.warning("reconstruction: %s", record["why"])
    elif worse and guard:
        record["why"] = worse + ": the conversion's values are kept"
        log.info("reconstruction: %s", record["why"])
    elif worse:
        record["warning"] = worse + "; the conversion without --reconstruct may do better"
        log.warning("reconstruction: %s", record["warning"])
    elif after["loss"] > LOSS_WARNING * before["loss"]:
        # (no verdict on these images, see the module's doc; a loss this much higher is
        # more than their bias: a learning rate too large, say)
        record["warning"] = (f"the loss on the calibration images went from {before['loss']:.4g} "
                             f"to {after['loss']:.4g}; check the result's accuracy (a smaller "
                             "lr may do better)")
        log.warning("reconstruction: %s", record["warning"])
    if kept:
        write_back(snn, net)
    _append_history(snn, record)
    return record


def follows_better(before: dict, after: dict) -> bool:
    """Whether the network measured ``after`` (:func:`reconstruct`'s measure on held-out
    images) follows the DNN at least as well as ``before``: its output's loss, what it
    trained, is not higher, and, for a classifier, its agreement with the DNN's top class is
    not lower by more than two standard errors of the change (se: the square root of the
    samples that changed, over all; on 1024 images where 10 % change, 1 point), which the
    argmax's jitter stays within: the shipped model's default went from a loss of 0.141 to
    0.112 there while its agreement moved 96.2 -> 95.8 % (4 images; its test top-1 90.38 ->
    91.00 %). A random-weight net trained at too large an lr rose from 0.021 to 0.31 and fell
    from 60.3 to 0 % (of 300 images); an outside tester's small nets whose loss rose a
    little (+4 to +20 %) lost 0.4-1.3 points on 2000 fresh samples where kept."""
    if not after["output_loss"] <= before["output_loss"]:
        return False
    if "agrees" not in before or "agrees" not in after:
        return True
    a, b = np.asarray(before["agrees"], bool), np.asarray(after["agrees"], bool)
    drop = float(np.sum(a) - np.sum(b))            # samples that agree no more, net
    return drop <= 2 * math.sqrt(float(np.sum(a != b)))


def _compared(before: dict, after: dict) -> str:
    """How the reconstruction changed the held-out measure, in words."""
    loss = (f"follows the DNN's output with a loss of {after['output_loss']:.4g}, the "
            f"conversion {before['output_loss']:.4g}")
    if "dnn_agreement" in before and "dnn_agreement" in after:
        return (f"agrees with the DNN's top class on {100 * after['dnn_agreement']:.1f} % of "
                f"them, the conversion on {100 * before['dnn_agreement']:.1f} %, and {loss}")
    return loss


def _public(measure: Optional[dict]) -> Optional[dict]:
    """A measure as the record keeps it (without the samples' agreements)."""
    return None if measure is None else {k: v for k, v in measure.items() if k != "agrees"}


def _site_params(records) -> Dict[str, tuple]:
    """{initializer name: (site, parameter)} of every site's neuron parameters."""
    return {fmt.param_name(s, p): (s, p) for s in records for p in fmt.PARAMS}


def write_back(snn, net: SpikingNetwork) -> None:
    """Put ``net``'s trained values into ``snn``: the weights into (a copy of) its normalized
    model, the neuron parameters and current offsets into its records, and rebuild its loop
    model from them, so that every form it writes carries them."""
    from onnx_snn.convert import _self_check
    from onnx_snn.spiking import rewrite

    nm = dataclasses.replace(snn.normalized, model=copy.deepcopy(snn.normalized.model))
    records = copy.deepcopy(snn.records)
    inits = {t.name: t for t in nm.model.graph.initializer}
    producers = {o: n for n in nm.model.graph.node for o in n.output}
    params = _site_params(records)
    offsets = {fmt.OffsetNames(s).offset: s for s in records}
    biases = {fmt.OffsetNames(s).bias: s for s in records}
    for name in net._trainable:
        value = net._effective(name).detach().cpu().numpy()
        if name in params:
            site, p = params[name]
            rec = records[site]
            if p == "threshold":
                rec.alpha = _value(value / rec.mu)
            elif p == "amplitude":
                if rec.folded_amplitude is not None:
                    raise InternalError(f"reconstruction: site {site}'s amplitude is folded")
                rec.beta = _value(value / rec.mu)
            elif p == "leak":
                rec.leak = float(np.asarray(value).reshape(-1)[0])
            else:
                rec.v_init = _value(value)
        elif name in offsets:
            records[offsets[name]].offset = _value(value)
        elif name in biases:
            # the site's offset folded into its layer's bias: the offset takes what changed
            rec = records[biases[name]]
            layer = producers[rec.input]
            old = np.zeros(1)
            if len(layer.input) > 2 and layer.input[2]:
                old = numpy_helper.to_array(inits[layer.input[2]]).astype(np.float64).reshape(-1)
            scale = 1.0
            if layer.op_type == "Gemm":
                scale = next((a.f for a in layer.attribute if a.name == "beta"), 1.0)
            rec.offset = _value((value.astype(np.float64).reshape(-1) - old) * scale)
        elif name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(
                value.astype(numpy_helper.to_array(inits[name]).dtype), name))
        else:
            raise InternalError(f"reconstruction: the trained tensor {name} is neither a "
                                "weight of the DNN nor a site's parameter")
    meta = fmt.metadata(snn.model)
    history = json.loads(meta.get(fmt.META_HISTORY, "[]"))
    meta = rewrite.base_metadata(nm, records, snn.timesteps, snn.method, history)
    model = rewrite.loop_model(nm, records, snn.timesteps, meta, snn.input_shapes, snn.pools)
    _self_check(model)
    snn.model, snn.normalized, snn.records = model, nm, records
    for row in snn.report.get("sites", []):      # the report's table: the values written
        rec = records.get(row.get("name"))
        if rec is not None:
            row.update(alpha=rec.alpha, beta=rec.beta, threshold=rec.threshold,
                       amplitude=rec.amplitude, v_init=rec.v_init, offset=rec.offset,
                       leak=rec.leak)


def _append_history(snn, record: dict) -> None:
    """The step's record at the end of the model's history and in its report."""
    from onnx_snn import json_text
    meta = fmt.metadata(snn.model)
    history = json.loads(meta.get(fmt.META_HISTORY, "[]"))
    history.append(record)
    fmt.set_metadata(snn.model, {fmt.META_HISTORY: json_text.dumps(history, indent=None)})
    snn.report["reconstruction"] = record
