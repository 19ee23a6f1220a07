"""Model zoo: the paper's clipped-ReLU networks and small Fashion-MNIST nets, plus ONNX export.

Needs the ``torch`` extra (``pip install 'onnx-snn[torch]'``): this module imports torch, and
``import onnx_snn`` never imports it (nor this module).  Nothing else from ``onnx_snn`` is
needed to build or export a model.  ``tools/train_dnn.py`` trains these networks.

Every network here follows Datta & Beerel (DATE 2022) and DIET-SNN:

* no BatchNorm, max pooling, dropout as the regularizer;
* every hidden nonlinearity is a :class:`ClippedReLU` ``y = clip(x, 0, mu)`` with its own
  trainable scalar threshold ``mu`` (init 4.0, ``dy/dmu = 1`` where ``x > mu``);
* the last layer is a plain ``Linear`` (logits, no activation).

Architectures (``ARCHS``):

* ``vgg16``  64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512 (no fifth pool)
  -> FC 4096 -> FC 4096 -> classes;
* ``vgg11``  64,M,128,256,M,512,512,M,512,M,512,512 -> FC 4096 -> FC 4096 -> classes
  (the DIET-SNN variant);
* ``resnet20`` stem of three 3x3 convs (64) + max pool, four stages of two basic blocks at
  64,128,256,512 channels (stride 2 from the second stage, 1x1 conv shortcut when the shape
  changes, clipped ReLU after the residual add) -> flatten -> FC;
* ``fmnist_vgg``  conv32-conv32-M-conv64-conv64-M-fc256-fc10 for 1x28x28 inputs;
* ``fmnist_vgg11`` a narrow VGG-11 for 28x28 inputs: 16,M,32,64,M,128,128,M,256,256
  -> FC 512 -> FC 512 -> classes (about 3 min per Fashion-MNIST epoch on 2 CPU cores;
  the 32-64-128-256 widths took about 6).
* ``fmnist_vgg16`` / ``fmnist_resnet20`` the paper's VGG-16 and ResNet-20 layouts at a
  quarter of their widths for 1x28x28 inputs (trained on 2 CPU cores in about an hour each).

ONNX export (:func:`export_onnx`) writes one self-contained file with a dynamic batch axis
(input ``input``, output ``logits``) and ``onnx_snn.*`` metadata (preprocessing, trained mu
values, architecture, dataset, measured accuracy).  The clipped ReLU is emitted in one of
these idioms (``idiom=``):

* ``clip`` (default): ``Clip(x, 0, mu)`` with the trained mu as a scalar constant — what
  ``nn.ReLU6``/``Hardtanh`` and most frameworks produce.  Legacy exporter: ``Clip`` with
  ``min``/``max`` attributes at opsets 9/10, ``Clip`` with two ``Constant`` node inputs from
  opset 11; dynamo exporter: ``Clip`` with two scalar initializers.
* ``relu_min``: ``Min(Relu(x), mu)`` with mu a named scalar initializer (``...mu``).
* ``clip_tensor``: ``torch.clamp`` with tensor bounds kept at export — the legacy exporter
  gives ``Clip(x, zero, mu)`` from opset 11 (``Max``/``Min`` at 9/10) and the dynamo exporter
  ``Min(Max(x, 0), mu)``.  Useful to test converters against other exporters' idioms.

All idioms compute the same function and train the same way.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

IDIOMS = ("clip", "relu_min", "clip_tensor")

# Per-channel mean/std applied to inputs scaled to [0, 1].
PREPROCESS: Dict[str, Dict[str, List[float]]] = {
    "fashion-mnist": {"mean": [0.2860], "std": [0.3530]},
    "cifar10": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
    "cifar100": {"mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]},
}

# (channels, size, classes) of each dataset's images.
DATASET_SHAPES: Dict[str, Tuple[int, int, int]] = {
    "fashion-mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
}


# ------------------------------------------------------------------------- clipped ReLU

class _ClipFunction(torch.autograd.Function):
    """``clamp(x, 0, mu)`` with a lean backward: ``dy/dx = 1`` for ``0 < x < mu``,
    ``dy/dmu = 1`` for ``x >= mu`` (2-4x faster on the CPU than autograd through
    ``torch.clamp`` with tensor bounds, which spends most of its time on tie handling)."""

    @staticmethod
    def forward(ctx, x, mu):
        ctx.save_for_backward(x, mu)
        return torch.clamp(x, torch.zeros_like(mu), mu)

    @staticmethod
    def backward(ctx, grad):
        x, mu = ctx.saved_tensors
        above = x >= mu
        gx = gmu = None
        if ctx.needs_input_grad[0]:
            gx = grad.masked_fill((x <= 0) | above, 0)
        if ctx.needs_input_grad[1]:
            gmu = grad.masked_fill(~above, 0).sum().reshape(mu.shape).to(mu.dtype)
        return gx, gmu


class ClippedReLU(nn.Module):
    """``y = clamp(x, 0, mu)`` with one trainable scalar threshold ``mu`` (shape ``[]``).

    Gradients: ``dy/dx = 1`` for ``0 < x < mu`` and ``dy/dmu = 1`` for ``x > mu`` (0
    elsewhere).  ``idiom`` only changes how the operation is written out when exporting
    (see :func:`export_mode` and the module docstring); in eager mode every idiom runs the
    same fused autograd function, so training does not depend on it.  With
    ``fused=False`` the module runs the idiom's plain torch ops instead
    (``torch.clamp(x, 0, mu)`` with tensor bounds or ``torch.minimum(relu(x), mu)``): same
    values, same gradients except at exact ties (``x == 0`` or ``x == mu``), where autograd
    splits the gradient.
    """

    def __init__(self, mu: float = 4.0, idiom: str = "clip", fused: bool = True):
        super().__init__()
        if idiom not in IDIOMS:
            raise ValueError(f"idiom must be one of {IDIOMS}, not {idiom!r}")
        self.idiom = idiom
        self.fused = fused
        #: ``None``: the clip; an int L: the clip quantized to L + 1 levels (see
        #: :func:`quantized_clip`; set by :func:`set_levels`, never exported)
        self.levels: Optional[int] = None
        self.mu = nn.Parameter(torch.tensor(float(mu)))
        # Set by export_mode(): while exporting, run the idiom's own torch ops (the
        # "clip" idiom with mu as a Python float, so that both exporters write
        # Clip(x, 0, <constant>) rather than Max/Min pairs).
        self._exporting = False
        self._export_mu: Optional[float] = None
        #: set by export_mode(keep_levels=True): write the rounding out (QCFS's form)
        self._export_levels: Optional[int] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = self.mu.to(x.dtype)
        if self._exporting and self._export_levels:
            return qcfs_form(x, mu, self._export_levels)
        if self._exporting or not self.fused or torch.onnx.is_in_onnx_export():
            if self.idiom == "relu_min":
                return torch.minimum(F.relu(x), mu)
            if self.idiom == "clip" and self._export_mu is not None:
                return torch.clamp(x, 0.0, self._export_mu)
            return torch.clamp(x, torch.zeros_like(mu), mu)
        if self.levels:
            return quantized_clip(x, mu, self.levels)
        return _ClipFunction.apply(x, mu)

    def extra_repr(self) -> str:
        q = f", levels={self.levels}" if self.levels else ""
        return f"mu={float(self.mu.detach()):.4f}, idiom={self.idiom!r}{q}"


def quantized_clip(x: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
    """``clip(x, 0, mu)`` rounded to the ``levels + 1`` values ``mu k / levels``
    (k = 0..levels): ``mu / L * clamp(floor(x L / mu + 1/2), 0, L)``, the clip-floor-shift
    activation of Bu et al. (ICLR 2022, QCFS). It is what an integrate-and-fire neuron with
    threshold and amplitude ``mu`` and initial membrane ``mu / 2`` emits over T = L steps
    for a constant input ``x`` (time-averaged), so a DNN trained with it converts at T = L
    with no quantization error left for the conversion to absorb. The rounding passes the
    gradient straight through (``dy/dx = 1`` inside the clip, 0 outside, also where the
    input rounds to 0); mu gets the gradient of the formula (``y/mu - x/mu`` inside, 1
    above)."""
    s = torch.clamp(x * (levels / mu), 0.0, float(levels))
    # rounded after the clamp, so the gradient follows the unrounded value: an input that
    # rounds to 0 (or to the top) still learns
    return (s + (torch.floor(s + 0.5) - s).detach()) * (mu / levels)


@torch.no_grad()
def fit_levels(model: nn.Module, x: torch.Tensor, levels: int, grid: int = 40,
               batch: int = 256) -> List[float]:
    """Set every clipped ReLU's ``mu`` to the value, on a grid of ``grid`` fractions of its
    current mu, whose ``levels``-rounded output (:func:`quantized_clip`) is closest (mean
    squared error) to the clip at the current mu, layer after layer on the inputs ``x``
    with the layers before already rounded. Training with rounded activations starts from
    here: a trained network's mu clips its rare largest activations, and rounding to
    ``levels + 1`` values at that scale zeroes most of the others (the trained
    Fashion-MNIST VGG-16 rounded to 3 levels: 58.35 % top-1 at its own mu, 89.67 % after
    this fit, as ``train_dnn.py --levels 2 --init-from`` logs it). Returns the new mu values."""
    acts = clipped_relus(model)
    was_training, before = model.training, [a.levels for a in acts]
    model.eval()
    fractions = torch.linspace(1.0 / grid, 1.0, grid)
    try:
        for k, act in enumerate(acts):
            for j, a in enumerate(acts):
                a.levels = levels if j < k else None
            seen: List[torch.Tensor] = []
            hook = act.register_forward_hook(lambda mod, i, o: seen.append(i[0].detach()))
            try:
                for i in range(0, len(x), batch):
                    model(x[i:i + batch])
            finally:
                hook.remove()
            h = torch.cat([t.flatten() for t in seen])
            mu0 = act.mu.detach().clone()
            target = torch.clamp(h, torch.zeros_like(mu0), mu0)
            errors = [float(((quantized_clip(h, mu0 * f, levels) - target) ** 2).mean())
                      for f in fractions]
            act.mu.data.copy_(mu0 * fractions[int(torch.tensor(errors).argmin())])
    finally:
        for a, lv in zip(acts, before):
            a.levels = lv
        model.train(was_training)
    return mu_values(model)


def set_levels(model: nn.Module, levels: Optional[int]) -> Optional[int]:
    """Quantize every clipped ReLU of ``model`` to ``levels + 1`` levels (``None``: the plain
    clip). Returns the previous setting of the first one."""
    acts = clipped_relus(model)
    before = acts[0].levels if acts else None
    for m in acts:
        m.levels = levels
    return before


def clipped_relus(model: nn.Module) -> List[ClippedReLU]:
    """The model's clipped ReLUs in forward order (modules are registered in that order)."""
    return [m for m in model.modules() if isinstance(m, ClippedReLU)]


def mu_values(model: nn.Module) -> List[float]:
    """Trained thresholds ``mu`` of every clipped ReLU, in forward order."""
    return [float(m.mu.detach().cpu()) for m in clipped_relus(model)]


def qcfs_form(x: torch.Tensor, mu: torch.Tensor, levels: int) -> torch.Tensor:
    """:func:`quantized_clip`'s values written as the QCFS reference code's activation
    (Bu et al., ICLR 2022: ``x / th``, clamp to [0, 1], ``floor(y L + 0.5) / L``, times ``th``),
    with a plain floor: what a QCFS-trained network's ONNX export holds (Div, Clip, Mul, Add,
    Floor, Div, Mul), for ``export_onnx(..., keep_levels=True)``."""
    y = torch.clamp(x / mu, 0.0, 1.0)
    return torch.floor(y * levels + 0.5) / levels * mu


def set_idiom(model: nn.Module, idiom: str) -> nn.Module:
    """Switch every clipped ReLU of ``model`` to ``idiom`` (in place; returns the model)."""
    if idiom not in IDIOMS:
        raise ValueError(f"idiom must be one of {IDIOMS}, not {idiom!r}")
    for m in clipped_relus(model):
        m.idiom = idiom
    return model


@contextlib.contextmanager
def export_mode(model: nn.Module, keep_levels: bool = False):
    """Within the block, clipped ReLUs run their idiom's own torch ops (for the exporters);
    ``clip``-idiom activations use their mu as a Python constant. ``keep_levels``: those
    quantized to levels (:func:`set_levels`) write the rounding out, in QCFS's form
    (:func:`qcfs_form`), instead of the plain clip."""
    acts = clipped_relus(model)
    for m in acts:
        m._exporting = True
        m._export_mu = float(m.mu.detach().cpu()) if m.idiom == "clip" else None
        m._export_levels = m.levels if keep_levels else None
    try:
        yield model
    finally:
        for m in acts:
            m._exporting = False
            m._export_mu = None
            m._export_levels = None


# ------------------------------------------------------------------------- networks

def _conv_out(n: int, stride: int = 1, kernel: int = 3, padding: int = 1) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def _init_weights(model: nn.Module) -> None:
    """He (fan-in) init for convs and hidden FCs, zero biases; keeps activations O(1)
    through deep BatchNorm-free stacks."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linears and m is linears[-1]:
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class VGG(nn.Module):
    """VGG without BatchNorm: ``cfg`` lists conv widths and ``"M"`` (2x2 max pool);
    every conv and hidden FC is followed by a clipped ReLU and dropout."""

    def __init__(self, cfg: Sequence, num_classes: int, in_channels: int = 3,
                 input_size: int = 32, hidden: Sequence[int] = (4096, 4096),
                 dropout: float = 0.2, idiom: str = "clip", bias: bool = True,
                 mu: float = 4.0):
        super().__init__()
        layers: List[nn.Module] = []
        c, size = in_channels, input_size
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1, bias=bias),
                           ClippedReLU(mu, idiom)]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                c = int(v)
        if size < 1:
            raise ValueError(f"input size {input_size} is too small for {cfg}")
        self.features = nn.Sequential(*layers)
        head: List[nn.Module] = []
        n = c * size * size
        for h in hidden:
            head += [nn.Linear(n, int(h), bias=bias), ClippedReLU(mu, idiom)]
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            n = int(h)
        head.append(nn.Linear(n, num_classes, bias=bias))
        self.classifier = nn.Sequential(*head)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """conv3x3(stride) - clip - dropout - conv3x3, plus identity or 1x1-conv shortcut,
    then a clipped ReLU after the residual add."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.2,
                 idiom: str = "clip", bias: bool = True, mu: float = 4.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.act1 = ClippedReLU(mu, idiom)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=bias)
        else:
            self.shortcut = nn.Identity()
        self.act2 = ClippedReLU(mu, idiom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.drop(self.act1(self.conv1(x))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """The paper's ResNet-20: 3-conv stem + max pool, four stages of basic blocks, FC."""

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 32,
                 stem: int = 64, widths: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (2, 2, 2, 2), dropout: float = 0.2,
                 idiom: str = "clip", bias: bool = True, mu: float = 4.0):
        super().__init__()
        layers: List[nn.Module] = []
        c = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(c, stem, 3, padding=1, bias=bias), ClippedReLU(mu, idiom)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c = stem
        layers.append(nn.MaxPool2d(2, 2))
        self.stem = nn.Sequential(*layers)
        size = input_size // 2
        stages: List[nn.Module] = []
        for i, (w, nb) in enumerate(zip(widths, blocks)):
            for j in range(nb):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(c, w, stride, dropout, idiom, bias, mu))
                size = _conv_out(size, stride)
                c = w
        if size < 1:
            raise ValueError(f"input size {input_size} is too small for resnet20")
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(c * size * size, num_classes, bias=bias)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(x, 1))


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
VGG11_CFG = [64, "M", 128, 256, "M", 512, 512, "M", 512, "M", 512, 512]
FMNIST_VGG_CFG = [32, 32, "M", 64, 64, "M"]
FMNIST_VGG11_CFG = [16, "M", 32, 64, "M", 128, 128, "M", 256, 256]
#: the paper's VGG-16 layout at a quarter of its widths (13 convs, 4 max pools, no fifth)
FMNIST_VGG16_CFG = [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128]


def vgg16(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2,
          idiom: str = "clip", input_size: int = 32, bias: bool = True) -> VGG:
    """VGG-16 (CIFAR): 13 convs, no fifth pool, FC 4096 - 4096 - classes."""
    return VGG(VGG16_CFG, num_classes, in_channels, input_size, (4096, 4096), dropout, idiom, bias)


def vgg11(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2,
          idiom: str = "clip", input_size: int = 32, bias: bool = True) -> VGG:
    """VGG-11 (DIET-SNN variant): 8 convs, 4 pools, FC 4096 - 4096 - classes."""
    return VGG(VGG11_CFG, num_classes, in_channels, input_size, (4096, 4096), dropout, idiom, bias)


def resnet20(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.2,
             idiom: str = "clip", input_size: int = 32, bias: bool = True) -> ResNet:
    """ResNet-20 (the paper's variant, 64-512 channels)."""
    return ResNet(num_classes, in_channels, input_size, dropout=dropout, idiom=idiom, bias=bias)


def fmnist_vgg(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.1,
               idiom: str = "clip", input_size: int = 28, bias: bool = True) -> VGG:
    """conv32-conv32-M-conv64-conv64-M-fc256-fc10 (the shipped example's network)."""
    return VGG(FMNIST_VGG_CFG, num_classes, in_channels, input_size, (256,), dropout, idiom, bias)


def fmnist_vgg11(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.1,
                 idiom: str = "clip", input_size: int = 28, bias: bool = True) -> VGG:
    """A narrow VGG-11 for 28x28 inputs: 16,M,32,64,M,128,128,M,256,256 - FC 512 - 512."""
    return VGG(FMNIST_VGG11_CFG, num_classes, in_channels, input_size, (512, 512), dropout,
               idiom, bias)


def fmnist_vgg16(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.1,
                 idiom: str = "clip", input_size: int = 28, bias: bool = True) -> VGG:
    """The paper's VGG-16 at a quarter of its widths for 28x28 inputs: 13 convs
    16,16,M,32,32,M,64,64,64,M,128,128,128,M,128,128,128 (no fifth pool) - FC 256 - 256."""
    return VGG(FMNIST_VGG16_CFG, num_classes, in_channels, input_size, (256, 256), dropout,
               idiom, bias)


def fmnist_resnet20(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.1,
                    idiom: str = "clip", input_size: int = 28, bias: bool = True) -> ResNet:
    """The paper's ResNet-20 at a quarter of its widths for 28x28 inputs: stem of three
    16-wide convs + max pool, stages of two basic blocks at 16, 32, 64, 128 channels."""
    return ResNet(num_classes, in_channels, input_size, stem=16, widths=(16, 32, 64, 128),
                  dropout=dropout, idiom=idiom, bias=bias)


ARCHS: Dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "vgg11": vgg11,
    "resnet20": resnet20,
    "fmnist_vgg": fmnist_vgg,
    "fmnist_vgg11": fmnist_vgg11,
    "fmnist_vgg16": fmnist_vgg16,
    "fmnist_resnet20": fmnist_resnet20,
}


def build(arch: str, num_classes: int = 10, in_channels: int = 3, idiom: str = "clip",
          dropout: Optional[float] = None, input_size: Optional[int] = None,
          bias: bool = True) -> nn.Module:
    """Build ``arch`` from :data:`ARCHS`; ``dropout``/``input_size`` default per arch
    (0.2 and 32 for the CIFAR nets, 0.1 and 28 for the Fashion-MNIST nets)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, idiom=idiom, bias=bias)
    if dropout is not None:
        kwargs["dropout"] = dropout
    if input_size is not None:
        kwargs["input_size"] = input_size
    return ARCHS[arch](**kwargs)


# ------------------------------------------------------------------------- ONNX export

def _metadata_value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def export_onnx(model: nn.Module, path: os.PathLike, input_shape: Sequence[int],
                exporter: str = "legacy", opset: int = 13,
                metadata: Optional[dict] = None, verify: bool = True,
                keep_levels: bool = False) -> "object":
    """Export ``model`` (in eval mode, on the CPU) to a single self-contained ONNX file.

    ``input_shape`` is ``(C, H, W)`` (or ``(N, C, H, W)``; N is made dynamic either way).
    ``exporter`` is ``"legacy"`` (TorchScript, ``dynamo=False``) or ``"dynamo"``
    (``torch.export`` + onnxscript; it starts at opset 18 and converts down when asked).
    ``metadata`` entries become ``metadata_props`` (keys without a dot get the ``onnx_snn.``
    prefix; non-string values are JSON-encoded); ``onnx_snn.mu`` is filled from the model
    when not given.  The file is checked with ``onnx.checker`` and, when ``verify`` and
    onnxruntime is installed, compared with torch (atol 1e-4).  Written atomically.
    ``keep_levels``: clipped ReLUs quantized to levels (:func:`set_levels`) are written with
    their rounding (QCFS's Floor form), not as the plain clip.
    Returns the saved ``onnx.ModelProto``.
    """
    import onnx

    if exporter not in ("legacy", "dynamo"):
        raise ValueError(f"exporter must be 'legacy' or 'dynamo', not {exporter!r}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (2,) + shape
    elif len(shape) == 4:
        shape = (max(2, shape[0]),) + shape[1:]  # batch 1 would get specialized away
    else:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), not {input_shape}")

    net = copy.deepcopy(model).cpu().float().eval()
    example = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    dyn = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with export_mode(net, keep_levels), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            import io
            buf = io.BytesIO()
            torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes=dyn, do_constant_folding=True)
            proto = onnx.load_from_string(buf.getvalue())
        else:
            with _quiet_dynamo():
                program = torch.onnx.export(net, (example,), dynamo=True, opset_version=opset,
                                            input_names=["input"], output_names=["logits"],
                                            dynamic_axes=dyn, external_data=False,
                                            verbose=False)
            proto = program.model_proto  # every initializer inline, no external data
        expected = net(example).numpy()

    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        # the dynamo exporter starts at opset 18 and its down-conversion fails for some
        # ops (e.g. Shape 15 -> 13); it then keeps 18.  Say so rather than hide it.
        warnings.warn(f"the {exporter} exporter wrote opset {got_opset}, not the requested "
                      f"{opset}", stacklevel=2)
    meta = {"onnx_snn.mu": mu_values(net), "onnx_snn.exporter": exporter,
            "onnx_snn.idiom": sorted({m.idiom for m in clipped_relus(net)}),
            "onnx_snn.input_shape": list(shape[1:]), "onnx_snn.torch_version": torch.__version__}
    for k, v in (metadata or {}).items():
        meta[k if "." in k else f"onnx_snn.{k}"] = v
    kept = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, _metadata_value(v)

    onnx.checker.check_model(proto, full_check=True)
    if verify:
        _verify_with_onnxruntime(proto, example.numpy(), expected)

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save_model(proto, tmp, save_as_external_data=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return proto


@contextlib.contextmanager
def _quiet_dynamo():
    """Silence the dynamo exporter's progress prints and its logged version-converter
    tracebacks (export_onnx reports the resulting opset itself)."""
    import logging
    names = ("onnxscript", "torch.onnx", "torch.export", "torch._export", "torch._dynamo")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _verify_with_onnxruntime(proto, x, expected, atol: float = 1e-4) -> None:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a core dependency
        return
    import numpy as np
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    err = float(np.max(np.abs(got - expected)))
    if not np.allclose(got, expected, atol=atol, rtol=1e-4):
        raise RuntimeError(f"exported ONNX model differs from torch by {err:.3g} (atol {atol})")


def onnx_parameters(proto) -> Dict[str, torch.Tensor]:
    """The parameters of an exported model, by name: its initializers, plus the tensors the
    legacy exporter writes otherwise under a parameter's name: an ``Identity`` of another
    parameter with the same values (ResNet-20's shortcut biases get the same gradient as the
    residual conv's bias, so they stay equal) and ``Constant`` nodes."""
    from onnx import numpy_helper
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
             for i in proto.graph.initializer}
    for node in proto.graph.node:
        if len(node.output) != 1 or node.output[0] in state:
            continue
        if node.op_type == "Identity" and node.input[0] in state:
            state[node.output[0]] = state[node.input[0]].clone()
        elif node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                state[node.output[0]] = torch.from_numpy(numpy_helper.to_array(value).copy())
    return state


def onnx_op_types(model_or_path) -> List[str]:
    """Op types of the main graph's nodes, in order (convenience for tests and reports)."""
    import onnx
    if hasattr(model_or_path, "graph"):
        proto = model_or_path
    else:
        proto = onnx.load(os.fspath(model_or_path))
    return [n.op_type for n in proto.graph.node]
