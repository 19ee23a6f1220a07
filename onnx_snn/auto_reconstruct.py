"""The default reconstruction: whether ``convert`` trains the conversion, and for how long.

``convert`` (and ``onnx-snn convert``) is called with ``reconstruct="auto"`` by default. With
the default method (``refined``) and PyTorch installed, the conversion is then reconstructed
(``runtimes/torch/reconstruct.py``: trained on the calibration images, without labels, to
follow its DNN) for as many epochs, up to :data:`MAX_EPOCHS`, as fit in :data:`BUDGET`:
each image's cost in one step (:func:`step_cost`: the DNN's multiply-accumulates in its
convolutions and dense layers, plus :data:`NODE_COST` per node for PyTorch's time per
layer and :data:`ELEMENT_COST` per element of the nodes' outputs, more for a model whose batch is fixed below :data:`BATCH`), times the images, times
T, times the epochs. Below :data:`MIN_EPOCHS` epochs of the calibration images it is skipped, with a note that says how to ask for it. Where the
calibration data holds more images than the conversion calibrates on (a named dataset, an
array file; not an image folder, of which only the calibration images are read), the same
budget is spread over more of them (:func:`training_images`: up to :data:`IMAGES`, at least
:data:`EPOCHS_PER_IMAGE` epochs each; the calibration images first, then others of the same
data, :func:`training_set`), at the learning rate :data:`LR`: on VGG-16 and ResNet-20 at T = 2
that followed the DNN better on the test set than the calibration images alone. The budget
keeps the default conversion of the quarter-width VGG-16 of Fashion-MNIST within issue 11's
60 s on 2 cores: 13.0 M MACs, 36 nodes and 0.108 M activations per image x T = 2 afford
14 500 image-epochs, 3 epochs of 4096 images (48.6 s end to end; 56 s before the targets were
kept in a byte); a
224 x 224 ImageNet network, or the full-width CIFAR VGG-16, is far above it and converts as
before, without PyTorch even being imported.

The other methods (``datta``, the paper's Algorithm 1 alone, ``deng``, ``max``) are never
reconstructed unless asked: they are the references. Without PyTorch (the core install) the
conversion is not reconstructed either, and the report says so. ``$ONNX_SNN_RECONSTRUCT=0``
turns the default off (the test suite does, for speed); ``reconstruct=0`` (``--reconstruct
0``) does for one call. PyTorch's training is not the same to the bit on another thread
count; the conversion without it is. Measured in README.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx

from .errors import UsageError
from .scales import REFINED

#: ``convert``'s default ``reconstruct``
AUTO = "auto"
#: the environment variable that sets what ``reconstruct="auto"`` means: ``auto`` or ``0``
ENV = "ONNX_SNN_RECONSTRUCT"
#: the epochs of ``--reconstruct`` without a number, and the most the default trains
#: (runtimes.torch.reconstruct.DEFAULT_EPOCHS, which a test keeps equal)
MAX_EPOCHS = 30
#: a budget of fewer epochs than this of the calibration images (of at most
#: :data:`MIN_EPOCHS_OF` of them) is not worth the time (10 epochs kept 2/3 of the gain of 30
#: on VGG-16 at T = 2: docs/FORMAT.md, "Reconstruction")
MIN_EPOCHS = 5
MIN_EPOCHS_OF = 512
#: what one node of the network costs per image and step, in MACs (PyTorch's time per
#: layer), and what one element of a node's output does (the elementwise work: the neurons'
#: steps and surrogate gradients, adds, pooling): fitted by least squares on the relative
#: error to one reconstruction epoch of 10 networks (`python tools/bench_budget.py`,
#: 2026-12-07 15:27-15:32, 2 threads, nothing else running: a 3-layer MLP, a chain of 40
#: 1 x 1 convolutions, full-resolution, depthwise-residual, inception and encoder-decoder
#: nets, the three trained Fashion-MNIST ones and the full-width VGG-16), whose times it
#: then predicts within 0.76-1.42x; with MACs and 1.5e5 per node alone (before), an epoch of
#: the same cost took 42-269 us per M: the depthwise-residual net of few MACs and 0.55 M
#: activations per image trained 107 s of the "minute" the budget gives VGG-16
NODE_COST = 3e5
ELEMENT_COST = 130.0
#: the reconstruction's batch (runtimes.torch.reconstruct.ReconstructConfig.batch_size, which
#: a test keeps equal), at which BUDGET's costs were measured: part of a step's time is paid
#: per step, whatever its samples (PyTorch's per-layer time, and convolutions run less well
#: on a batch of one), so a model of a fixed batch of b < BATCH samples costs
#: PER_SAMPLE + (1 - PER_SAMPLE) x BATCH / b times as much per image (:func:`batch_factor`)
BATCH = 32
#: the part of a step's cost paid per sample: 11x at a fixed batch of 1, 11 = p + (1 - p) x 32,
#: fitted to two models of a fixed batch of 1 against their free-batch twins (2026-12-07,
#: `onnx-snn convert M --calib ... -T 2`): an outside tester's 2-layer net 12x (48 s against
#: 4 s for 30 epochs of 512 images), VGG-16 of Fashion-MNIST 9.4x per image and epoch (75.7 s
#: for 3 epochs of 985 images against 34.0 s for 3 of 4096)
PER_SAMPLE = 21 / 31
#: (MACs + NODE_COST x nodes + ELEMENT_COST x activations) per image x images x T x epochs
#: the default may spend: what the quarter-width ResNet-20 of Fashion-MNIST spends at T = 2
#: on 3 epochs of 4010 images (37.9 M, 45.7 M and 44.6 M a step for VGG-16, ResNet-20 and
#: the shipped model, 3 epochs of 4096 images for the two others: each plan as it was, the
#: shipped model's 3617 images become 4096; the full-width VGG-16, 293 M, affords 3 epochs of
#: 512 images: none)
BUDGET = 1.1e12
#: the most a conversion may scale :data:`BUDGET` by (``convert --reconstruct-budget``)
MAX_BUDGET_SCALE = 100.0
#: the most images the default trains on: the calibration images and, where the calibration
#: data holds more (a named dataset, an array file), others drawn from it, as many as leave
#: each image :data:`EPOCHS_PER_IMAGE` epochs of the budget (the same work spread over more
#: images followed the DNN better on the test set: README, "Reconstruction")
IMAGES = 4096
#: the epochs the default keeps when it trains on more images than it calibrated on
EPOCHS_PER_IMAGE = 3
#: the most memory the images it draws beyond the calibration images may take (they are held
#: through the conversion: 4096 Fashion-MNIST images are 13 MB, 224 x 224 ones 2.5 GB)
TRAINING_BYTES = 256 * 2 ** 20
#: the default's learning rate (``--reconstruct E`` keeps ReconstructConfig's 3e-4, measured
#: on the calibration images alone; the default trains fewer epochs on more images)
LR = 1e-3
#: the most images held out of the reconstruction's training, where the data holds more than
#: the calibration and training images (a named dataset, an array file), on which a
#: reconstruction must follow the DNN at least as well as the conversion it starts from, or
#: the default does not keep it (runtimes.torch.reconstruct: ``held_out``, ``guard``); the
#: calibration images cannot judge it, the refinement fitted them (:func:`held_out_rows`)
HELD_OUT = 1024
#: fewer images left than this judge nothing (one image is 0.4 % of 256): no check
MIN_HELD_OUT = 256
#: the memory the held-out images may take beyond :data:`MIN_HELD_OUT` of them (1024
#: Fashion-MNIST images take 3.2 MB; 256 images of 3 x 224 x 224, 154 MB, are kept however)
HELD_OUT_BYTES = 64 * 2 ** 20
#: where the data holds too few images to hold out (an image folder, a file of the calibration
#: samples alone), the default holds out this fraction of the calibration images, at most
#: MIN_HELD_OUT of them, calibrates and trains on the rest and checks on those
#: (:func:`split_rows`, :func:`checked_rows`)
SPLIT_FRACTION = 0.25
#: fewer images than this to split off judge nothing: no check (calibration sets under 256)
MIN_SPLIT = 64
#: the nodes whose MACs the estimate counts
DENSE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Plan:
    """What the default does: ``epochs`` (0: no reconstruction), and ``why`` in words where
    it does less than :data:`MAX_EPOCHS` (None: nothing to say)."""

    epochs: int
    why: Optional[str] = None
    macs: Optional[int] = None
    #: the images it trains on (the calibration images first; None: no reconstruction)
    images: Optional[int] = None


def env_default() -> object:
    """What ``reconstruct="auto"`` means here: :data:`AUTO`, or 0 where :data:`ENV` says so."""
    value = os.environ.get(ENV, AUTO).strip().lower()
    if value in ("", AUTO, "1", "on", "yes", "true"):
        return AUTO
    if value in ("0", "off", "no", "false"):
        return 0
    raise UsageError(f"${ENV} is {os.environ[ENV]!r}: set it to 'auto' (the default "
                     "reconstruction) or '0' (none), or unset it; a number of epochs is "
                     "convert's --reconstruct EPOCHS")


def _per_sample(dims) -> Optional[int]:
    """The elements of one sample of a tensor of ``dims`` (the first is the batch)."""
    if not dims or any(d is None or d < 0 for d in dims[1:]):
        return None
    return int(np.prod(dims[1:], dtype=np.int64))


def dense_macs(model: onnx.ModelProto) -> Optional[int]:
    """Multiply-accumulates per image of ``model``'s convolutions and dense layers, from
    the shapes its graph records (a normalized model has them all); None where one of
    their shapes is not known (a free spatial dimension, say). The analyzer's own count
    (:func:`estimated_macs`' fallback) flattens the graph and infers its shapes again, which
    costs seconds on a 0.5 GB network that the budget then skips anyway."""
    from .analyze.flops import _collect     # (the analyzer's table of the graph's shapes)
    shapes = _collect(model).shapes
    total = 0
    for node in model.graph.node:
        if node.op_type not in DENSE_OPS:
            continue
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "ConvTranspose":   # each input element meets the kernel once
            n, k = _per_sample(shapes.get(node.input[0])), w and w[1:]
        elif node.op_type == "Conv":
            n, k = _per_sample(shapes.get(node.output[0])), w and w[1:]
        else:                                  # each output element sums over A's last axis
            a = shapes.get(node.input[0])
            transposed = any(at.name == "transA" and at.i for at in node.attribute)
            n = _per_sample(shapes.get(node.output[0]))
            k = a and [a[0] if transposed and node.op_type == "Gemm" else a[-1]]
        if n is None or not k or any(d is None or d < 0 for d in k):
            return None
        total += n * int(np.prod(k, dtype=np.int64))
    return total


def activation_elements(model: onnx.ModelProto, names: Optional[Sequence[str]] = None,
                        partial: bool = False) -> Optional[int]:
    """The elements per image of the tensors ``names`` (None: every node's output), from the
    shapes the graph records (a normalized model has them all), or None where one is not
    known (``partial``: those count 0): every node's outputs are what the training's
    elementwise work (the neurons' steps, their surrogate gradients, adds, concatenations,
    pooling) runs over, which a network of few MACs at full resolution spends most of its
    time in (:data:`ELEMENT_COST`)."""
    from .analyze.flops import _collect
    shapes = _collect(model).shapes
    if names is None:
        names = [o for node in model.graph.node for o in node.output if o]
    total = 0
    for name in dict.fromkeys(names):
        n = _per_sample(shapes.get(name))
        if n is None and not partial:
            return None
        total += n or 0
    return total


def _one_sample(sample_shapes: Mapping[str, Sequence[int]]) -> dict:
    """The inputs' shapes at a batch of one (the analyzer's ``input_shapes``)."""
    return {k: [1, *v[1:]] for k, v in sample_shapes.items()}


def estimated_elements(model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]]
                       ) -> int:
    """:func:`activation_elements`, or the same count on the graph the analyzer flattens at
    the calibration data's shapes where the graph leaves a shape free; what is known of it
    where neither knows all (an estimate: 0 at worst, the MACs and nodes still count)."""
    elements = activation_elements(model)
    if elements is not None:
        return elements
    try:
        from .analyze.flops import _infer, flatten
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = flatten(model, _one_sample(sample_shapes)).model
            elements = activation_elements(_infer(flat, []))
    except Exception:          # (an estimate only)
        elements = None
    if elements is not None:
        return elements
    return activation_elements(model, partial=True)


def estimated_macs(model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]]
                   ) -> Optional[int]:
    """:func:`dense_macs`, or the analyzer's count at the calibration data's shapes where
    the graph leaves a shape free; None where neither knows."""
    macs = dense_macs(model)
    if macs is not None:
        return macs
    try:
        from .analyze.flops import count_layers, total_macs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return total_macs(count_layers(model, _one_sample(sample_shapes)))
    except Exception:          # (an estimate only: no count means no automatic training)
        return None


def batch_factor(batch: Optional[int]) -> float:
    """How many times an image costs more in a model whose batch is fixed at ``batch``
    samples than at :data:`BATCH` (None, or :data:`BATCH` and more: 1)."""
    if not batch or int(batch) >= BATCH:
        return 1.0
    return PER_SAMPLE + (1 - PER_SAMPLE) * BATCH / max(int(batch), 1)


def step_cost(macs: int, nodes: int, batch: Optional[int] = None, elements: int = 0) -> float:
    """One image's cost in one step of training, in MACs: its MACs, :data:`NODE_COST` for
    each node (PyTorch's time per layer, which a deep narrow network is all of) and
    :data:`ELEMENT_COST` for each of the ``elements`` of the nodes' outputs, times
    :func:`batch_factor` where the model's ``batch`` is fixed (None: a free batch)."""
    return (float(macs) + NODE_COST * nodes + ELEMENT_COST * elements) * batch_factor(batch)


def check_budget_scale(scale) -> float:
    """``scale`` (``convert --reconstruct-budget``) as a float above 0 and at most
    :data:`MAX_BUDGET_SCALE`, else a UsageError."""
    from .values import is_real
    if not is_real(scale) or not math.isfinite(scale) or not 0 < scale <= MAX_BUDGET_SCALE:
        raise UsageError(f"the reconstruction's budget scale must be a number above 0 and at "
                         f"most {MAX_BUDGET_SCALE:g} (1: the default's budget), not {scale!r}")
    return float(scale)


def auto_epochs(cost: float, images: int, timesteps: int, scale: float = 1.0) -> int:
    """The epochs ``scale`` x :data:`BUDGET` pays for (``cost``: :func:`step_cost`), at most
    :data:`MAX_EPOCHS`."""
    work = max(float(cost), 1.0) * max(int(images), 1) * int(timesteps)
    return int(min(MAX_EPOCHS, math.floor(BUDGET * scale / work)))


def budget_passes(cost: float, timesteps: int, scale: float = 1.0) -> float:
    """The image-epochs ``scale`` x :data:`BUDGET` pays for (``cost``: :func:`step_cost`) at
    ``timesteps``."""
    return BUDGET * scale / (max(float(cost), 1.0) * int(timesteps))


def training_images(cost: float, images: int, available: Optional[int], timesteps: int,
                    sample_bytes: int = 0, scale: float = 1.0) -> int:
    """How many images the default trains on: as many as the budget pays
    :data:`EPOCHS_PER_IMAGE` epochs of, of the ``available`` ones (None: the ``images`` it
    calibrated on), and at most :data:`IMAGES`, or all the calibration images where there
    are more of them; more than the calibration images only as far as
    :data:`TRAINING_BYTES` holds them (``sample_bytes``: one sample's)."""
    pool = int(available or images)
    if sample_bytes > 0:
        pool = min(pool, max(int(images), TRAINING_BYTES // int(sample_bytes)))
    want = int(budget_passes(cost, timesteps, scale) // EPOCHS_PER_IMAGE)
    return max(1, min(pool, want, max(IMAGES, int(images))))


def training_rows(total: int, calibration_rows, images: int, seed: int) -> np.ndarray:
    """Which ``images`` of ``total`` samples the default trains on, of which
    ``calibration_rows`` calibrated the conversion: those first (or ``images`` of them, drawn
    at random with ``seed``, where they are more), then others drawn at random from the
    rest."""
    cal = np.asarray(calibration_rows, np.int64)
    gen = np.random.default_rng([seed, 1])
    if images < len(cal):
        return np.sort(gen.choice(cal, images, replace=False))
    rest = np.setdiff1d(np.arange(total), cal)
    extra = np.sort(gen.choice(rest, images - len(cal), replace=False))
    return np.concatenate([cal, extra.astype(np.int64)])


def rows_of(x, rows):
    """The samples ``rows`` of ``x`` (an array, or {input: array})."""
    return {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else x[rows]


def training_set(x, total: int, calibration_rows, images: int, seed: int):
    """The ``images`` samples the default trains on (:func:`training_rows`) of the data ``x``
    (an array, or {input: array}) of ``total`` samples."""
    return rows_of(x, training_rows(total, calibration_rows, images, seed))


def held_out_rows(total: int, used_rows, seed: int, sample_bytes: int = 0
                  ) -> Optional[np.ndarray]:
    """Which samples of ``total`` check the reconstruction (:data:`HELD_OUT`, drawn at random
    with ``seed`` from those not in ``used_rows``, the calibration and training images; no
    more than :data:`HELD_OUT_BYTES` hold, ``sample_bytes`` each, but :data:`MIN_HELD_OUT`
    of them whatever their size), or None where fewer than :data:`MIN_HELD_OUT` are left."""
    rest = np.setdiff1d(np.arange(int(total)), np.asarray(used_rows, np.int64))
    n = min(HELD_OUT, len(rest))
    if sample_bytes > 0:
        n = min(n, max(MIN_HELD_OUT, HELD_OUT_BYTES // int(sample_bytes)))
    if n < MIN_HELD_OUT:
        return None
    return np.sort(np.random.default_rng([seed, 2]).choice(rest, n, replace=False))


def split_rows(calibration_rows, train_rows, seed: int, fixed: Optional[int] = None):
    """(calibration rows, training rows, held-out rows) where the data holds fewer than
    :data:`MIN_SPLIT` samples beyond the calibration rows (an image folder, a file of the
    calibration samples alone): :data:`SPLIT_FRACTION` of the calibration rows, at most
    :data:`MIN_HELD_OUT`, drawn at random with ``seed``, are taken out of the calibration and
    of the training rows (``train_rows``; None: the calibration rows, and stays None); the
    rows unchanged and no held-out rows where that is fewer than :data:`MIN_SPLIT`. A model
    of a ``fixed`` batch calibrates on whole batches: the rows a whole batch leaves over are
    held out too, and nothing is where the calibration would lose more than the fraction
    (a batch of 256 and 300 samples: none). They must leave the calibration: the refinement
    fits its calibration images (on 128 of them the shipped model's output loss was 0.036, on
    fresh images 0.14), so those would judge every reconstruction worse than the conversion."""
    cal = np.asarray(calibration_rows, np.int64)
    n = min(MIN_HELD_OUT, int(len(cal) * SPLIT_FRACTION))
    if n < MIN_SPLIT:
        return cal, train_rows, None
    gen = np.random.default_rng([seed, 3])
    if fixed and int(fixed) > 1:
        b = int(fixed)
        keep = (len(cal) - n) // b * b
        if keep < b or keep < (1 - SPLIT_FRACTION) * (len(cal) // b * b):
            return cal, train_rows, None
        n = len(cal) - keep
    held = np.sort(gen.choice(cal, n, replace=False))
    train = None if train_rows is None else np.asarray(train_rows, np.int64)
    return (cal[~np.isin(cal, held)], None if train is None else train[~np.isin(train, held)],
            held)


def checked_rows(total: int, calibration_rows, images: Optional[int], seed: int,
                 sample_bytes: int = 0, fixed: Optional[int] = None):
    """(calibration rows, training rows or None for the calibration rows, held-out rows or
    None) of the default's reconstruction, which is always checked where the data allows: as
    :func:`reconstruction_rows` where it leaves :data:`MIN_HELD_OUT` or more samples to hold
    out; else, where the data holds :data:`MIN_SPLIT` or more beyond the calibration rows,
    up to :data:`MIN_HELD_OUT` of those, taken out of the training rows; else some of the
    calibration rows (:func:`split_rows`; ``fixed``: the model's fixed batch)."""
    cal = np.asarray(calibration_rows, np.int64)
    train, held = reconstruction_rows(total, cal, images, seed, sample_bytes)
    if held is not None:
        return cal, train, held
    spare = np.setdiff1d(np.arange(int(total)), cal)
    if len(spare) >= MIN_SPLIT:
        gen = np.random.default_rng([seed, 3])
        held = np.sort(gen.choice(spare, min(MIN_HELD_OUT, len(spare)), replace=False))
        return cal, None if train is None else train[~np.isin(train, held)], held
    return split_rows(cal, train, seed, fixed)


def reconstruction_rows(total: int, calibration_rows, images: Optional[int], seed: int,
                        sample_bytes: int = 0):
    """(the rows the reconstruction trains on, None for the calibration images themselves;
    the held-out rows that check it, None for none) of data of ``total`` samples, of which
    ``calibration_rows`` calibrated the conversion and the plan trains on ``images`` (None:
    the calibration images, as ``--reconstruct E`` does)."""
    cal = np.asarray(calibration_rows, np.int64)
    train = None
    if images and int(images) != len(cal):
        train = training_rows(total, cal, int(images), seed)
    used = cal if train is None else np.union1d(cal, train)
    return train, held_out_rows(total, used, seed, sample_bytes)


def sample_bytes(x) -> int:
    """One sample's bytes in ``x`` (an array, or {input: array})."""
    arrays = x.values() if isinstance(x, dict) else [x]
    return sum(int(np.asarray(a[:1]).nbytes) for a in arrays)


def torch_installed() -> bool:
    """Whether PyTorch imports (one that is installed but broken counts as absent: the
    default then converts without it, where ``--reconstruct`` would say why)."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def plan_for_data(method: str, timesteps: int, model: onnx.ModelProto, x,
                  have_torch: Optional[bool] = None, available: Optional[int] = None,
                  scale: float = 1.0) -> Plan:
    """:func:`plan` for a conversion calibrated on ``x`` (an array for the model's first
    input, or {input name: array}), drawn from ``available`` samples (None: ``x`` alone),
    within ``scale`` x the default's budget."""
    from .feeds import input_specs
    arrays = x if isinstance(x, dict) else {input_specs(model)[0][0]: x}
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    return plan(method, timesteps, model, len(next(iter(arrays.values()))), shapes, have_torch,
                available, sample_bytes(arrays), scale)


def plan(method: str, timesteps: int, model: onnx.ModelProto, images: int,
         sample_shapes: Mapping[str, Sequence[int]], have_torch: Optional[bool] = None,
         available: Optional[int] = None, sample_bytes: int = 0, scale: float = 1.0) -> Plan:
    """What ``reconstruct="auto"`` does for a conversion of ``model`` (the normalized DNN)
    by ``method`` at ``timesteps`` from ``images`` calibration samples of ``sample_shapes``,
    drawn from ``available`` samples (None: those alone), of which it may train on more
    (:func:`training_images`), within ``scale`` x the default's budget
    (:func:`check_budget_scale`)."""
    scale = check_budget_scale(scale)
    budget = "the default's budget" if scale == 1 else f"{scale:g}x the default's budget"
    if method != REFINED:
        return Plan(0)      # (the references stay as they are: nothing to say)
    # (the budget first: a large network is never worth importing PyTorch for)
    macs = estimated_macs(model, sample_shapes)
    if macs is None:
        return Plan(0, "its cost could not be estimated (a free dimension); --reconstruct "
                       f"{MAX_EPOCHS} trains it anyway")
    from .feeds import fixed_batch, input_specs
    nodes = len(model.graph.node)
    fixed = fixed_batch(input_specs(model))
    least = min(int(images), MIN_EPOCHS_OF)
    # (a network already above the budget by its MACs and nodes is not flattened again to
    # count its activations, which only add: seconds on a 0.5 GB network)
    over = auto_epochs(step_cost(macs, nodes, fixed), least, timesteps, scale) < MIN_EPOCHS
    elements = 0 if over else estimated_elements(model, sample_shapes)
    cost = step_cost(macs, nodes, fixed, elements)
    work = ((f"{macs / 1e6:.3g} M MACs and {nodes} nodes" if over else
             f"{macs / 1e6:.3g} M MACs, {nodes} nodes and {elements / 1e6:.3g} M activations")
            + f" per image x T = {timesteps}"
            + (f", trained {fixed} sample{'s' if fixed > 1 else ''} a step (the model's fixed "
               "batch)" if fixed and fixed < BATCH else ""))
    afforded = auto_epochs(cost, least, timesteps, scale)
    if afforded < MIN_EPOCHS:
        return Plan(0, f"{work} affords {afforded} epochs of {least} images in {budget} (it "
                       f"trains {MIN_EPOCHS} or more); --reconstruct {MAX_EPOCHS} trains it "
                       "anyway, --reconstruct-budget scales the budget", macs)
    if not (torch_installed() if have_torch is None else have_torch):
        return Plan(0, "PyTorch is not installed (pip install 'onnx-snn[torch]' to reconstruct "
                       "by default: +2 to +3 points at T = 1-2 on deep networks)", macs)
    n = training_images(cost, images, available, timesteps, sample_bytes, scale)
    epochs = auto_epochs(cost, n, timesteps, scale)
    if n != images:     # (the budget pays EPOCHS_PER_IMAGE of them, but for float rounding)
        epochs = max(epochs, EPOCHS_PER_IMAGE)
    if n > images:
        what = f"{n} images ({images} calibration images and {n - images} more of the same data)"
    elif n < images:
        what = f"{n} of the {images} calibration images"
    elif epochs < MAX_EPOCHS:
        what = f"the {images} calibration images"
    else:
        return Plan(epochs, None, macs, n)
    return Plan(epochs, f"{epochs} epochs of {what} x {work} in {budget}", macs, n)
