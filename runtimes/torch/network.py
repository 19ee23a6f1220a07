"""``SpikingNetwork``: a spiking ONNX model as a trainable ``torch.nn.Module``, and back.

Every initializer of the file becomes a tensor of the module: weights, biases and the
neurons' thresholds, amplitudes and leaks are ``nn.Parameter`` (shared wherever the graph
uses them), everything else a buffer. The graph is interpreted node by node: the
time-invariant part once, the time-step part T times with the membrane states carried.
``to_onnx`` writes the same file back with the trained values, so the format (and what
onnxruntime computes) is preserved by construction.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Union

import logging

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from onnx_snn import json_text
from onnx_snn.datasets import array_like
from onnx_snn.errors import (DataError, ModelLoadError, TrainingDivergedError,
                             UnsupportedModelError, UsageError)
from onnx_snn.flags import checks_flags
from onnx_snn.graph import walk
from onnx_snn.model_io import load_model, save_model
from onnx_snn.recorded_files import recorded_files as _recorded_files
from onnx_snn.spiking import format as fmt

from .neuron import (DEFAULT_SURROGATE, SURROGATES, lif_scan, lif_step, max_pool_step,
                     signed_step)
from .ops import OPS, parse_attrs, run_op

log = logging.getLogger("onnx_snn")
#: the format's spiking pool functions -> the ONNX pool they apply to running sums
_POOLS = {fn: op for op, fn in fmt.POOL_OPS.items()}
#: inputs of these ops that, when initializers, are trainable weights
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div"}
#: training keeps a threshold or amplitude at least this fraction of its value in the file:
#: positive, and never below the file's own values (an absolute floor would change small
#: thresholds, which networks with small activations have, and break the match with
#: onnxruntime before any training)
_MIN_FRACTION = 1e-3


@dataclass
class _Node:
    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    attrs: dict
    site: Optional[str] = None


def _axis_zero(v, rank: Optional[int] = None) -> bool:
    """Whether an ONNX axis (or list of them) names axis 0 of a tensor of ``rank`` axes: 0,
    or -rank counted from the end; a negative axis of a tensor whose rank is unknown may."""
    vals = v if isinstance(v, (list, tuple)) else [v]
    return any(int(a) == 0 or (int(a) < 0 and (rank is None or int(a) + int(rank) == 0))
               for a in vals)


#: ops that work along one axis (their ``axis`` attribute; the default where it has one that
#: can be 0 or count from the end), and so along the batch when that axis is 0
_AXIS_OPS = {"Concat": None, "Softmax": -1, "LogSoftmax": -1, "Hardmax": -1,
             "ArgMax": 0, "ArgMin": 0, "TopK": -1, "LpNormalization": -1,
             "LayerNormalization": -1, "ScatterElements": 0, "OneHot": -1}


def _ranks(model: onnx.ModelProto) -> Dict[str, int]:
    """Every tensor's number of axes where shape inference knows it (in the graph and in its
    subgraphs, a Loop's body), or {} where inference fails."""
    from onnx_snn.graph import skeleton
    try:
        inferred = skeleton.infer_shapes(model)
    except Exception:        # noqa: BLE001 (without ranks, a negative axis refuses folding)
        return {}
    out: Dict[str, int] = {}

    def visit(g):
        for t in g.initializer:
            out[t.name] = len(t.dims)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                out[vi.name] = len(t.shape.dim)
        for n in g.node:
            for at in n.attribute:
                if at.type == onnx.AttributeProto.GRAPH:
                    visit(at.g)
    visit(inferred.graph)
    return out


def _mixes_batch(node: _Node, const, rank=lambda name: None) -> Optional[str]:
    """Why ``node`` would compute something else on a batch of T x N than on T batches of
    N (it reads, moves or sizes axis 0), or None. ``const(name)`` is the constant value of an
    input, or None; ``rank(name)`` its number of axes, or None (a negative axis of an input of
    unknown rank may then be axis 0), asked only for a negative axis. Used by
    :meth:`SpikingNetwork.time_foldable`."""
    a, op = node.attrs, node.op

    def const_input(k):
        return const(node.inputs[k]) if len(node.inputs) > k and node.inputs[k] else None

    def out_rank():
        """The rank a negative axis counts from: the input's (the output's for Unsqueeze and
        OneHot, which add axes)."""
        r = rank(node.inputs[0]) if node.inputs and node.inputs[0] else None
        if r is None:
            return None
        if op == "Unsqueeze":
            axes = a.get("axes", const_input(1))
            return None if axes is None else r + np.asarray(axes).size
        return r + 1 if op == "OneHot" else r

    def at0(v) -> bool:
        """Whether the axis (or axes) ``v`` of this node names axis 0."""
        vals = list(np.asarray(v).reshape(-1))
        return _axis_zero(vals, out_rank() if any(int(x) < 0 for x in vals) else None)

    if op == "Size":
        return "counts the batch"
    if op == "Reshape" and len(node.inputs) > 1:
        shape = const_input(1)
        if shape is not None and int(np.asarray(shape).reshape(-1)[0]) not in (0, -1):
            return "sets axis 0 to a constant"
    if op == "Transpose" and (not a.get("perm") or int(a["perm"][0]) != 0):
        return "moves axis 0"
    if op == "Flatten" and at0(a.get("axis", 1)):
        return "flattens axis 0"
    if op in _AXIS_OPS and ("axis" in a or _AXIS_OPS[op] is not None) \
            and at0(a.get("axis", _AXIS_OPS[op])):
        return "works along axis 0"
    if op == "GatherElements" and const(node.inputs[0]) is None and at0(a.get("axis", 0)):
        return "gathers along axis 0"
    if op == "CumSum":
        axis = const(node.inputs[1]) if len(node.inputs) > 1 else None
        if axis is None or at0(axis):
            return "sums along axis 0"
    if op == "Compress" and ("axis" not in a or at0(a["axis"])):
        return "selects along axis 0 (or flattens)"
    if op == "MeanVarianceNormalization" and at0(a.get("axes", [0, 2, 3])):
        return "normalizes over axis 0"
    if op == "Split" and at0(a.get("axis", 0)):        # ONNX's default axis is 0
        return "splits axis 0"
    if op == "GatherND" and const(node.inputs[0]) is None:
        return "indexes axis 0"
    if op == "Squeeze" and a.get("axes") is None and len(node.inputs) < 2:
        return "squeezes every axis of size 1 (axis 0 too, at a batch of 1)"
    if op == "Pad":
        pads = a.get("pads", const_input(1))
        if pads is None:
            return "may pad axis 0"
        pads = np.asarray(pads).reshape(-1)
        if len(node.inputs) > 3 and node.inputs[3]:         # opset 18: the axes padded
            axes = const_input(3)
            if axes is None:
                return "may pad axis 0"
            axes = [int(v) for v in np.asarray(axes).reshape(-1)]
            if any(at0(ax) and (pads[i] != 0 or pads[i + len(axes)] != 0)
                   for i, ax in enumerate(axes)):
                return "pads axis 0"
        elif "axes" not in a and pads.size and (pads[0] != 0 or pads[pads.size // 2] != 0):
            return "pads axis 0"
    if op == "Gather" and at0(a.get("axis", 0)) and const(node.inputs[0]) is None:
        return "gathers along axis 0"
    if op.startswith("Reduce"):
        axes = a.get("axes", const_input(1))
        if axes is None or np.asarray(axes).size == 0:
            if not int(a.get("noop_with_empty_axes", 0)):
                return "reduces over every axis"
        elif at0(axes):
            return "reduces over axis 0"
    if op == "Slice":
        if "starts" in a:                                    # opset < 10: attributes
            axes = a.get("axes")
            if axes is None or at0(axes):
                return "slices axis 0"
        elif len(node.inputs) < 4 or not node.inputs[3]:     # no axes: every axis
            return "slices every axis"
        else:
            axes = const_input(3)
            if axes is None or at0(axes):
                return "slices axis 0"
    if op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes", const_input(1))
        if axes is not None and at0(axes):
            return "squeezes or inserts axis 0"
    if op == "Tile":
        reps = const_input(1)
        if reps is None or int(np.asarray(reps).reshape(-1)[0]) != 1:
            return "may repeat axis 0"
    return None


def _key(name: str) -> str:
    return "t_" + re.sub(r"[^0-9a-zA-Z_]", "_", name)


def _run_plain(node: _Node, env: Dict[str, torch.Tensor]) -> None:
    """A stateless node: its outputs from its inputs in ``env``."""
    outs = run_op(node.op, node.attrs, [env.get(i) if i else None for i in node.inputs])
    for name, val in zip(node.outputs, outs):
        env[name] = val


def _pool_of(node: _Node):
    """The ONNX pool a spiking pool node applies to its running sums, as a function."""
    return lambda t: run_op(_POOLS[node.op], node.attrs, [t])[0]


def _folded_sites(model: onnx.ModelProto) -> set:
    """Sites whose amplitudes ``convert --binary-spikes`` folded into the next layer."""
    try:
        rec = json.loads(fmt.metadata(model).get(fmt.META_BINARY, "{}"))
    except json.JSONDecodeError:
        return set()
    return {k for k, v in rec.items() if v == "folded"} if isinstance(rec, dict) else set()


def _input_tensor(name: str, v) -> torch.Tensor:
    """An input as a tensor of numbers, of its own dtype (:meth:`SpikingNetwork.forward` casts
    it to the type the network computes in), from a tensor, a numpy array or nested lists; a
    DataError for anything else."""
    if isinstance(v, (list, tuple)):            # nested lists of numbers, as numpy reads them
        v = array_like(v, f"input {name!r}")    # (ragged ones: a DataError)
        if v.dtype.kind not in "biufc":
            raise DataError(f"input {name!r} is a list of things that are not numbers "
                            f"({v.dtype})")
    if isinstance(v, np.ndarray) or (not isinstance(v, torch.Tensor) and hasattr(v, "__array__")):
        v = torch.from_numpy(np.ascontiguousarray(v))
    if not isinstance(v, torch.Tensor) or v.dtype == torch.bool or v.is_complex():
        raise DataError(f"input {name!r} must be a tensor or array of numbers, not "
                        f"{type(v).__name__}{'' if not isinstance(v, torch.Tensor) else ' ' + str(v.dtype)}")
    if v.dim() == 0 or v.shape[0] == 0:
        raise DataError(f"input {name!r} has shape {list(v.shape)}: give a batch of at least one sample")
    if v.device.type == "cpu" and v.is_floating_point():
        # a NaN current fires no spike: the output would look like any other. Checked as
        # onnxruntime's runner checks its feeds (in float32, which the network computes in:
        # a float64 beyond its range is Inf there); on a GPU the check would make every
        # forward wait for the device (fine-tuning checks its data before it starts)
        ok = torch.isfinite(v.detach().float())
        if not bool(ok.all()):
            bad = int(ok.numel() - ok.sum())
            first = int((~ok.reshape(len(v), -1).all(dim=1)).nonzero()[0, 0])
            raise DataError(f"input {name!r}: {bad} NaN/Inf values, the first in sample {first}; "
                            "clean the data before use")
    return v


def _feed_timesteps(inputs: dict, timesteps):
    """T from a feed's ``timesteps`` entry (the loop graph's input of that name, which
    onnxruntime honours), removed from ``inputs``; the ``timesteps`` argument otherwise. Both,
    different: a DataError."""
    if fmt.TIMESTEPS_INPUT not in inputs:
        return timesteps
    fed = inputs.pop(fmt.TIMESTEPS_INPUT)
    if fed is None:       # (onnxruntime refuses it; it ran at the model's T)
        raise DataError(f"the feed's '{fmt.TIMESTEPS_INPUT}' is None; give T, or leave the "
                        "entry out for the model's T")
    try:
        fed = np.asarray(fed.detach().cpu() if torch.is_tensor(fed) else fed).reshape(()).item()
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"the feed's '{fmt.TIMESTEPS_INPUT}' must be one whole number (T), "
                        f"not {fed!r}") from None
    if timesteps is not None and timesteps != fed:
        raise DataError(f"timesteps={timesteps!r} and the feed's '{fmt.TIMESTEPS_INPUT}' = "
                        f"{fed} differ; give T once")
    return fed


def _check_current(node: _Node, x: torch.Tensor, v: torch.Tensor, where: str,
                   folded: Optional[int] = None) -> None:
    """A neuron's current keeps its membrane's per-sample shape (u = leak v + x is the next
    membrane): a site whose record and membrane were edited to another shape than its layer's
    ran into PyTorch's broadcasting error, reported as a bug in onnx-snn (exit 70); it is a
    damaged file (exit 3). ``folded``: ``x`` holds T steps of ``v``'s samples."""
    xs, vs = tuple(x.shape[1:]), tuple(v.shape[1:])
    if xs == vs:
        return
    try:
        fits = torch.broadcast_shapes(xs, vs) == vs
    except RuntimeError:
        fits = False
    if not fits:
        raise ModelLoadError(f"{where}: site {node.site}'s current has per-sample shape "
                             f"{list(xs)}, its record and membrane {list(vs)}; the file is "
                             "damaged or was edited, convert the model again")


def _leak_capped(leak: torch.Tensor) -> torch.Tensor:
    """``min(max(leak, 0), 1)`` whose gradient passes at 1: the converted IF neurons' leak is
    exactly 1, where ``clamp(max=1)``'s gradient is 0 and the leak would never train (a step
    above 1, or below 0, is projected back by :meth:`SpikingNetwork.project`: a file holds
    leaks in [0, 1])."""
    return torch.where(leak > 1.0, torch.ones_like(leak),
                       torch.where(leak < 0.0, torch.zeros_like(leak), leak))


def _image_channels(model: onnx.ModelProto) -> set:
    """The channel counts a 4-D first input may have (axis 1, NCHW, or axis 3, NHWC: what a
    recorded per-channel mean/std may match); empty when it is not a fixed 4-D input."""
    dims = [d.dim_value if d.HasField("dim_value") else 0
            for d in model.graph.input[0].type.tensor_type.shape.dim] if model.graph.input else []
    return {d for d in (dims[1], dims[3]) if d > 0} if len(dims) == 4 else set()


class SpikingNetwork(nn.Module):
    """A spiking ONNX model as a module: ``forward(x, timesteps=None)`` returns the
    time-averaged first output and ``self.last_spikes`` (per-site totals over T, ``[N]``, and
    the same for every spiking max pool whose output spikes the file counts)."""

    @checks_flags
    def __init__(self, model: onnx.ModelProto, train_thresholds: bool = True,
                 train_leaks: bool = True, train_amplitudes: bool = True,
                 surrogate: str = DEFAULT_SURROGATE, train_initial: bool = False):
        """``surrogate``: the spike's surrogate gradient, ``sigmoid`` or the paper's
        ``rectangle`` (see :mod:`onnx_snn.runtimes.torch.neuron`). ``train_initial``: the
        neurons' initial membranes (``v_init``) are trained too (else they keep the
        conversion's)."""
        super().__init__()
        files: List[str] = []
        where = None
        if isinstance(model, (str, os.PathLike)):      # a file: to_onnx never writes over it
            from onnx_snn.model_io import model_files
            where = os.fspath(model)
            model, files = load_model(model), model_files(where)
        elif not isinstance(model, onnx.ModelProto):
            raise UsageError(f"SpikingNetwork takes a spiking model's path or its "
                             f"onnx.ModelProto, not {type(model).__name__}")
        self.source_files = files
        if surrogate not in SURROGATES:
            raise UsageError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATES)}")
        self.surrogate = surrogate
        self.source = model
        where = where or model.graph.name or "model"
        self.view = fmt.read_spiking(model, where)
        self.where = where
        self.info = self.view.info
        self.timesteps = self.info.timesteps
        #: the T it has run at, each warned about once when its parameters were fitted for
        #: another (:func:`onnx_snn.convert.warn_other_timesteps`); finetune, which says so
        #: itself, sets ``warn_timesteps`` False
        self.warned_timesteps: set = set()
        self.warn_timesteps = True
        self.warned_integers = False   # integer inputs to a model of normalized ones: once
        self.where = files[0] if files else (model.graph.name or "model")
        self.sites = self.info.sites
        self._names: Dict[str, str] = {}          # onnx initializer name -> attribute key
        self._floors: Dict[str, str] = {}         # threshold/amplitude name -> its floor's key
        self._trainable: List[str] = []
        self.hoisted, self.body, self.outputs = self._split_graph(self.view)
        # what changes from step to step: a neuron parameter read from these is not prepared once
        self._per_step = {o for n in self.body for o in n.outputs} | set(self.view.state_inputs)
        self._check_ops()
        frozen = set()
        folded = _folded_sites(model)    # --binary-spikes: amplitude 1 in the next layer's weights
        for s in self.sites:
            if s.name in folded:         # stays 1, so the spikes stay 0/1 after training
                frozen.add(fmt.param_name(s.name, "amplitude"))
            if not train_thresholds:
                frozen.add(fmt.param_name(s.name, "threshold"))
            if not train_leaks:
                frozen.add(fmt.param_name(s.name, "leak"))
            if not train_amplitudes:
                frozen.add(fmt.param_name(s.name, "amplitude"))
            if not train_initial:
                frozen.add(fmt.param_name(s.name, "v_init"))
        self._register_initializers(model, frozen)
        self.dropout = {d["tensor"]: float(d["ratio"]) for d in self.info.dropout}
        self.last_spikes: Dict[str, torch.Tensor] = {}
        #: run each layer once on all T steps (a batch of T x N), the neurons and spiking pools
        #: scanned over the steps (each layer's neurons one autograd node), where the graph
        #: allows (:meth:`time_foldable`): the same values as the step-by-step run
        #: (tests/test_runtime_torch.py) in fewer, larger operations (`python
        #: tools/count_ops.py`: a training step at T = 2 launches 416 kernels, not 508; at T = 4
        #: 566, not 960; signed neurons still step one by one inside it). None (the default):
        #: when training on CUDA tensors, where a step is launch-bound and backprop keeps every
        #: step's activations anyway; not under no_grad (it holds all T steps' activations at
        #: once, the step-by-step run one step's), nor on the CPU, where it measured no faster
        #: (`python tools/bench_sgl.py -T 2 4 --compare-fold --no-peer`, README). True: fold
        #: wherever the graph allows (else step by step); False: never.
        self.fold_time: Optional[bool] = None
        self._foldable = self.time_foldable()
        made = set(self.view.data_inputs)
        for node in self.hoisted:          # time-invariant values computed from the inputs
            if made.intersection(node.inputs):
                made.update(node.outputs)
        self._hoisted_data = made

    # ------------------------------------------------------------------ building
    @classmethod
    def from_onnx(cls, path: Union[str, os.PathLike, onnx.ModelProto], **kw) -> "SpikingNetwork":
        """The network of a spiking model file (or ModelProto); :meth:`to_onnx` never writes
        over the file it came from."""
        if isinstance(path, onnx.ModelProto):
            return cls(path, **kw)
        return cls(path, **kw)

    @staticmethod
    def _split_graph(view: fmt.SpikingView):
        """(time-invariant nodes, one time step's nodes, per-step output names), each cut
        down to what the outputs and the next states need (spikes are counted natively)."""
        site_of = {n.name: s for s, n in view.neurons.items()}
        counted = set(view.counted_pools)     # pools whose output spikes the file counts
        site_of.update({n.name: p for p, n in view.pools.items() if p in counted})

        def conv(nodes):
            return [_Node(n.op_type, n.name, list(n.input), list(n.output), parse_attrs(n),
                          site_of.get(n.name) if n.op_type in fmt.NEURON_OPS or
                          n.op_type in _POOLS else None)
                    for n in nodes]

        outputs = [view.step_outputs[o] for o in view.outputs]
        body = walk.prune(view.body, outputs + [st.names.next for st in view.states])
        needed = set(outputs) | {x for n in body for x in walk.node_inputs(n)}
        hoisted = walk.prune(view.hoisted, needed)
        return conv(hoisted), conv(body), outputs

    def _check_ops(self):
        for n in self.hoisted + self.body:
            if n.op in fmt.NEURON_OPS or n.op in _POOLS:
                continue
            if n.op not in OPS:
                raise UnsupportedModelError(f"node '{n.name}' ({n.op}) has no torch implementation "
                                            "in onnx_snn.runtimes.torch")
            if n.op == "Split":
                n.attrs["_n_outputs"] = len(n.outputs)

    def _neuron_params(self) -> Dict[str, str]:
        """Trainable neuron parameter name -> its kind (threshold, amplitude, leak, v_init)."""
        return {fmt.param_name(s.name, p): p for s in self.sites
                for p in fmt.NEURON_PARAMS + ("v_init",)}

    def _register_initializers(self, model, frozen):
        used_as_weight = set()
        for n in self.hoisted + self.body:
            if n.op in _WEIGHT_OPS:
                used_as_weight.update(n.inputs)
        site_params = self._neuron_params()
        for init in fmt.all_initializers(model).values():
            arr = numpy_helper.to_array(init).copy()
            t = torch.from_numpy(arr)
            key = _key(init.name)
            self._names[init.name] = key
            trainable = (arr.dtype.kind == "f" and init.name not in frozen and
                         (init.name in site_params or init.name in used_as_weight) and
                         init.name != fmt.TIMESTEPS_INPUT)
            if trainable:
                setattr(self, key, nn.Parameter(t))
                self._trainable.append(init.name)
            else:
                self.register_buffer(key, t)
            if site_params.get(init.name) in ("threshold", "amplitude") and arr.dtype.kind == "f":
                floor = key + "__floor"   # not in state_dict: checkpoints stay as they were
                self.register_buffer(floor, torch.from_numpy(np.asarray(np.abs(arr) * _MIN_FRACTION)),
                                     persistent=False)
                self._floors[init.name] = floor

    # ------------------------------------------------------------------ running
    def tensor(self, name: str) -> torch.Tensor:
        return getattr(self, self._names[name])

    def _neuron_inputs(self, p, env, params):
        """A neuron's (threshold, amplitude, leak) as the step uses them: floored, leak <= 1.
        ``params`` keeps them for the rest of the forward pass when they do not change over
        the steps (computed once, not every step: fewer kernels, and one gradient node each)."""
        key = tuple(p)
        if key in params:
            return params[key]
        out = (self._floored(p[0], env[p[0]]), self._floored(p[1], env[p[1]]),
               _leak_capped(env[p[2]]))
        if not self._per_step.intersection(p):
            params[key] = out
        return out

    def _freed(self, keep) -> Dict[int, List[str]]:
        """{i: the values the body's node i reads last, which the step may drop once it has
        run}: every value a body node computes but those in ``keep`` (what the caller reads
        after the step: outputs, sites, next states). Cached per ``keep``."""
        cache = self.__dict__.setdefault("_freed_cache", {})
        key = frozenset(keep)
        if key not in cache:
            made = {o for node in self.body for o in node.outputs if o}
            last = {}
            for i, node in enumerate(self.body):
                for name in node.inputs:
                    if name:
                        last[name] = i
            out: Dict[int, List[str]] = {}
            for name, i in last.items():
                if name in made and name not in key:
                    out.setdefault(i, []).append(name)
            cache[key] = out
        return cache[key]

    def _run(self, nodes, env, masks, spikes, params=None, constant: Optional[int] = None,
             free: Optional[Dict[int, List[str]]] = None):
        """One step of ``nodes``; ``constant`` = T: each neuron takes its input as a constant
        current for T steps and outputs its mean output (spikes: its count), in one pass.
        ``free`` (:meth:`_freed`): values dropped from ``env`` once their last reader ran, so
        that a step holds the layers it still needs, not all of them (measuring 64 images of
        a full-resolution net of 0.55 M activations per image peaked 2624 MB, then 2555)."""
        params = {} if params is None else params
        for i, n in enumerate(nodes):
            if n.op in fmt.NEURON_OPS:
                signed = n.op == fmt.SIGNED_NEURON_OP
                x, v = env[n.inputs[0]], env[n.inputs[1]]
                _check_current(n, x, v, self.where)
                p = n.inputs[3:] if signed else n.inputs[2:]     # threshold, amplitude, leak
                th, amp, leak = self._neuron_inputs(p, env, params)
                c = env[n.inputs[2]] if signed else None         # the signed neuron's count

                def step(v, c):
                    if signed:
                        y, v, c, s = signed_step(x, v, c, th, amp, leak, self.surrogate)
                        return y, v, c, s.abs()      # spikes of either sign are counted
                    y, v, s = lif_step(x, v, th, amp, leak, self.surrogate)
                    return y, v, c, s
                if constant:          # T steps of the same current: the mean output, the count
                    y, fired = 0, 0
                    for _ in range(constant):
                        y_t, v, c, s = step(v, c)
                        y, fired = y + y_t, fired + s
                    y, s = y / constant, fired
                else:
                    y, v, c, s = step(v, c)
                env[n.outputs[0]], env[n.outputs[1]] = y, v
                if signed:
                    env[n.outputs[2]] = c
                spikes[n.site] = s
            elif n.op in _POOLS:
                x, c, m = (env[i] for i in n.inputs)
                y, c_next, m_next = max_pool_step(x, c, m, _pool_of(n))
                env[n.outputs[0]], env[n.outputs[1]], env[n.outputs[2]] = y, c_next, m_next
                if n.site is not None:      # a counted pool: each nonzero output is a spike
                    spikes[n.site] = (y.detach() != 0).to(y.dtype)
            else:
                _run_plain(n, env)
            if self.training and self.dropout:
                self._dropout(n.outputs, env, masks)
            for name in (free.get(i, ()) if free else ()):
                env.pop(name, None)

    def _dropout(self, outputs, env, masks, T: int = 1):
        """Dropout on the ``outputs`` that have it: one mask per sample, drawn on the first
        use in a forward pass and reused at every step (``T`` > 1: the values of T steps,
        stacked along axis 0, take it T times)."""
        for o in outputs:
            p = self.dropout.get(o)
            if not p:
                continue
            x = env[o]
            if o not in masks:
                keep = torch.full((x.shape[0] // T, *x.shape[1:]), 1.0 - p, dtype=x.dtype,
                                  device=x.device)
                masks[o] = torch.bernoulli(keep) / (1.0 - p)
            m = masks[o]
            env[o] = x * (m if T == 1 else m.repeat(T, *([1] * (x.dim() - 1))))

    def time_foldable(self) -> Optional[str]:
        """None when the T steps can run folded (each layer once on a batch of T x N), else
        why not: every state is carried by the one neuron or spiking pool that reads it (no
        other node reads a state or a next state), the neurons' parameters do not change over
        the steps, the outputs are computed in the step, the batch is free and no node in the
        step reads, moves or sizes axis 0 (:func:`_mixes_batch`: a constant Reshape that sets it,
        Size, reductions, slices, concatenations, gathers, transposes along it)."""
        states = {st.names.input: st.names.next for st in self.view.states}
        nexts = set(states.values())

        def const(name):
            key = self._names.get(name)
            return None if key is None else getattr(self, key).detach().cpu().numpy()
        # values computed from constants and Shape outputs alone (a Reshape's target built
        # from Shape -> Gather -> Concat): their axis 0 is not the batch, and the batch they
        # read from a Shape is T x N for a folded run, consistent with its data
        static = set(self._names)
        for n in self.hoisted + self.body:
            if n.op == "Shape" or all(i in static for i in n.inputs if i):
                static.update(n.outputs)
        inferred: List[Dict[str, int]] = []

        def rank(name):           # shape inference once, only if a negative axis asks
            if not inferred:
                inferred.append(_ranks(self.view.model))
            return inferred[0].get(name)
        carried = set()
        for n in self.body:
            if nexts.intersection(n.inputs):
                return f"node '{n.name}' reads a next state"
            slots = ()
            if n.op in fmt.NEURON_OPS:
                signed = n.op == fmt.SIGNED_NEURON_OP
                slots = (1, 2) if signed else (1,)
                if self._per_step.intersection(n.inputs[3:] if signed else n.inputs[2:]):
                    return f"neuron '{n.name}' has parameters that change over the steps"
            elif n.op in _POOLS:
                slots = (1, 2)
            own = set()
            for k in slots:
                if states.get(n.inputs[k]) != n.outputs[k]:
                    return f"node '{n.name}' does not carry its own state"
                own.add(n.inputs[k])
            if set(states).intersection(n.inputs) - own:
                return f"node '{n.name}' reads a state it does not carry"
            carried |= own
            why = None if all(i in static for i in n.inputs if i) else _mixes_batch(n, const, rank)
            if why:
                return f"{n.op} '{n.name}' {why}"
        if carried != set(states):
            return "a state is not carried by a neuron or pool"
        if not set(self.outputs) <= {o for n in self.body for o in n.outputs}:
            return "an output is time-invariant"
        for vi in self.source.graph.input:
            d = vi.type.tensor_type.shape.dim
            if vi.name in self.view.data_inputs and d and d[0].HasField("dim_value"):
                return f"input '{vi.name}' has a fixed batch"
        return None

    def _initial_state(self, st: fmt.StateSpec, n: int, like: torch.Tensor) -> torch.Tensor:
        shape = [n] + list(st.shape)
        if st.init is None:
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        return self.tensor(st.init).to(like.dtype).expand(shape).clone()

    def _warn_integer_inputs(self, inputs: Dict[str, torch.Tensor]) -> None:
        """Integer inputs (uint8 pixels) are taken as the values the model computes on; a
        model that records a preprocessing other than raw 0-255 pixels (a normalization)
        expects those values normalized, so a warning says so, once (onnxruntime's path warns
        about integer arrays too)."""
        from onnx_snn.graph.inputs import is_pixels_255
        pp = self.info.preprocess
        if self.warned_integers or not pp or is_pixels_255(pp):
            return
        integer = [k for k, v in inputs.items() if not v.dtype.is_floating_point]
        if integer:
            log.warning("%s: input %r holds integers, taken as the model's input values as they "
                        "are; the model records the preprocessing (x - %s) / %s: if these are "
                        "raw pixels, scale them to [0, 1] and normalize them first", self.where,
                        integer[0], pp.get("mean"), pp.get("std"))
            self.warned_integers = True

    def _start(self, x, timesteps: Optional[int]):
        """What a run does before its steps, for :meth:`forward` and :meth:`site_outputs`:
        the inputs checked and converted, T chosen (the file's, or one fed or given: warned
        when another than it was fitted for), the hoisted nodes run and the states set;
        (T, env, masks, states, the first input, the batch size)."""
        names = self._input_names()
        if not isinstance(x, dict) and len(names) != 1:
            raise DataError(f"the model has {len(names)} inputs {names}: pass a dict "
                            "{name: tensor} with one tensor per input")
        inputs = dict(x) if isinstance(x, dict) else {names[0]: x}
        timesteps = _feed_timesteps(inputs, timesteps)
        if timesteps is not None:
            from onnx_snn.convert import check_timesteps
            timesteps = check_timesteps(timesteps, "timesteps")   # 0, 2.5, "2", True refused
        else:              # the file's T: above MAX_TIMESTEPS a damaged file (T=100000 ran)
            from onnx_snn.convert import check_recorded_timesteps
            check_recorded_timesteps(self.timesteps, self.where)
        T = int(timesteps or self.timesteps)
        if self.warn_timesteps:
            from onnx_snn.convert import warn_other_timesteps_once
            warn_other_timesteps_once(self.info, T, self.where, self.warned_timesteps)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise DataError(f"missing input(s) {missing}; the model takes {names}")
        unknown = [k for k in inputs if k not in names]
        if unknown:   # (they were put beside the weights, unread, or replaced one)
            raise DataError(f"input(s) {unknown} are not the model's; it takes {names} (and "
                            f"'{fmt.TIMESTEPS_INPUT}', as the loop graph does)")
        dtype = self._compute_dtype()
        inputs = {k: _input_tensor(k, v) for k, v in inputs.items()}
        self._warn_integer_inputs(inputs)
        inputs = {k: v if v.dtype == dtype else v.to(dtype) for k, v in inputs.items()}
        self._check_shapes(inputs)
        env: Dict[str, torch.Tensor] = {name: getattr(self, key) for name, key in self._names.items()}
        env.update(inputs)
        first = next(iter(inputs.values()))
        n = first.shape[0]
        masks: Dict[str, torch.Tensor] = {}
        self._run(self.hoisted, env, masks, {})
        states = {st.names.input: self._initial_state(st, n, first) for st in self.view.states}
        return T, env, masks, states, first, n

    @checks_flags
    def forward(self, x: Union[torch.Tensor, Dict[str, torch.Tensor]],
                timesteps: Optional[int] = None, record_spikes: bool = True,
                per_step: bool = False):
        """The outputs averaged over the T steps (``per_step``: each output's T steps
        stacked, ``[T, N, ...]``, whose mean over the first axis is the average)."""
        T, env, masks, states, first, n = self._start(x, timesteps)
        params: Dict[tuple, tuple] = {}   # the neurons' parameters, prepared once for the T steps
        fold = (first.is_cuda and torch.is_grad_enabled()) if self.fold_time is None \
            else self.fold_time
        if fold and self._foldable is None:
            outs = self._forward_folded(env, states, T, n, masks, params, record_spikes,
                                        per_step)
            if outs is not None:
                return outs[0] if len(outs) == 1 else outs
        acc = [None] * len(self.outputs)
        each = [[] for _ in self.outputs]   # the steps' outputs, for per_step
        counted = self.view.counted       # the sites, then the counted spiking pools
        totals = {s: torch.zeros(n, device=first.device) for s in counted} if record_spikes else {}
        for _ in range(T):
            step = dict(env)
            step.update(states)
            fired: Dict[str, torch.Tensor] = {}
            self._run(self.body, step, masks, fired, params)
            for i, o in enumerate(self.outputs):
                if per_step:
                    each[i].append(step[o])
                else:
                    acc[i] = step[o] if acc[i] is None else acc[i] + step[o]
            states = {st.names.input: step[st.names.next] for st in self.view.states}
            if record_spikes:
                for s in counted:
                    totals[s] += fired[s].detach().reshape(n, -1).sum(1)
        self.last_spikes = totals
        outs = [torch.stack(e) for e in each] if per_step else [a / T for a in acc]
        return outs[0] if len(outs) == 1 else outs

    @checks_flags
    def site_outputs(self, x: Union[torch.Tensor, Dict[str, torch.Tensor]],
                     timesteps: Optional[int] = None, constant: bool = False,
                     grad: bool = False, every_output: bool = False):
        """(the first output averaged over the T steps, {site: its output averaged over the T
        steps, [N, *site shape]}) for one input ``x``; ``constant``: every neuron driven by
        the constant current it receives, its mean output over T steps (one pass: each layer
        fed the previous layers' mean outputs), which is the spiking network without its
        temporal error (a current that moves from step to step), its rounding alone.
        ``grad``: with the surrogate gradients (for training on the sites' outputs, as
        :mod:`onnx_snn.runtimes.torch.reconstruct` does); else without any.
        ``every_output``: the first item is {output name: it averaged over the T steps} of
        every output the model has, not the first output alone."""
        with torch.set_grad_enabled(bool(grad) and torch.is_grad_enabled()):
            return self._site_outputs(x, timesteps, constant, every_output)

    def _site_outputs(self, x, timesteps, constant, every_output=False):
        T, env, masks, states, _, _ = self._start(x, timesteps)
        by_site = {nd.site: nd.outputs[0] for nd in self.body if nd.op in fmt.NEURON_OPS}
        params: Dict[tuple, tuple] = {}
        names = list(self.view.outputs) if every_output else [self.view.outputs[0]]
        outs, sites = {}, {}
        free = self._freed(set(self.outputs) | set(by_site.values())
                           | {st.names.next for st in self.view.states})
        for _ in range(1 if constant else T):
            step = dict(env)
            step.update(states)
            self._run(self.body, step, masks, {}, params, constant=T if constant else None,
                      free=free)
            for name, o in zip(names, self.outputs):
                outs[name] = outs.get(name, 0) + step[o]
            for name, o in by_site.items():
                sites[name] = sites.get(name, 0) + step[o]
            states = {st.names.input: step[st.names.next] for st in self.view.states}
        k = 1 if constant else T
        outs = {name: y / k for name, y in outs.items()}
        return (outs if every_output else outs[names[0]]), {name: y / k for name, y in sites.items()}

    def _forward_folded(self, env, states, T, n, masks, params, record_spikes, per_step=False):
        """The T steps at once: every step node runs once on ``[T * N, ...]`` (step t's
        samples at rows t*N..), neurons and spiking pools scan over the steps; the outputs
        and spike totals as the step-by-step loop sums them. None (nothing run) when a
        time-invariant value the step reads is not a float tensor with a batch axis."""
        reads = {i for node in self.body for i in node.inputs}
        tiled = {}
        for name in self._hoisted_data & reads:
            t = env[name]
            if not torch.is_floating_point(t) or t.dim() == 0 or t.shape[0] != n:
                return None
            tiled[name] = t.repeat(T, *([1] * (t.dim() - 1)))
        env.update(tiled)
        fired: Dict[str, torch.Tensor] = {}

        def steps(t):      # one unbind (its gradient one stack), not T selects
            return t.reshape(T, n, *t.shape[1:]).unbind(0)

        def folded(ys):    # one stack (its gradient one unbind), not a cat's T slices
            return torch.stack(ys).flatten(0, 1)

        for node in self.body:
            if node.op in fmt.NEURON_OPS:
                signed = node.op == fmt.SIGNED_NEURON_OP
                x = env[node.inputs[0]]
                v = states[node.inputs[1]]
                _check_current(node, x, v, self.where, folded=T)
                th, amp, leak = self._neuron_inputs(node.inputs[3:] if signed else node.inputs[2:],
                                                    env, params)
                if not signed:    # one autograd node for the T steps
                    y, s = lif_scan(x.reshape(T, n, *x.shape[1:]), v, th, amp, leak, self.surrogate)
                    env[node.outputs[0]] = y.flatten(0, 1)
                    fired[node.site] = s
                else:
                    xs, c, ys, ss = steps(x), states[node.inputs[2]], [], []
                    for t in range(T):
                        y, v, c, s = signed_step(xs[t], v, c, th, amp, leak, self.surrogate)
                        ys.append(y)
                        ss.append(s.abs())       # spikes of either sign are counted
                    env[node.outputs[0]] = folded(ys)
                    fired[node.site] = torch.stack(ss)
            elif node.op in _POOLS:
                xs = steps(env[node.inputs[0]])
                c, m = states[node.inputs[1]], states[node.inputs[2]]
                ys = []
                pool = _pool_of(node)
                for t in range(T):
                    y, c, m = max_pool_step(xs[t], c, m, pool)
                    ys.append(y)
                env[node.outputs[0]] = folded(ys)
                if node.site is not None:
                    fired[node.site] = (torch.stack(ys).detach() != 0).to(ys[0].dtype)
            else:
                _run_plain(node, env)
            if self.training and self.dropout:
                self._dropout(node.outputs, env, masks, T)
        outs = []
        for o in self.outputs:
            if per_step:
                outs.append(env[o].reshape(T, n, *env[o].shape[1:]))
                continue
            ys = steps(env[o])
            acc = ys[0]
            for t in range(1, T):        # summed in step order, as the loop does
                acc = acc + ys[t]
            outs.append(acc / T)
        totals = {}
        if record_spikes:
            for s in self.view.counted:
                totals[s] = fired[s].detach().reshape(T, n, -1).sum(2).sum(0).to(torch.get_default_dtype())
        self.last_spikes = totals
        return outs

    @checks_flags
    def turned_non_finite(self, trainable_only: bool = False) -> List[str]:
        """The tensors holding NaN or infinity where the file has finite values (a model's
        own infinite constant, such as an additive mask of -inf, is not one): what a
        diverged training leaves. One device synchronization when there are none.
        ``trainable_only``: the parameters alone (what an optimizer step changes: the check
        after every training step need not read the buffers)."""
        if not hasattr(self, "_file_non_finite"):     # the file's own non-finite values
            source = fmt.all_initializers(self.source)
            self._file_non_finite = {}
            for name in self._names:
                init = source.get(name)
                if init is not None and init.data_type in (onnx.TensorProto.FLOAT,
                                                           onnx.TensorProto.DOUBLE,
                                                           onnx.TensorProto.FLOAT16):
                    a = numpy_helper.to_array(init)
                    if not np.all(np.isfinite(a)):
                        self._file_non_finite[name] = torch.from_numpy(~np.isfinite(a))
        names, flags = [], []
        for name in (self._trainable if trainable_only else self._names):
            t = self.tensor(name)
            if not torch.is_floating_point(t):
                continue
            ok = torch.isfinite(self._effective(name))
            mask = self._file_non_finite.get(name)
            if mask is not None and mask.shape == ok.shape:
                ok = ok | mask.to(ok.device)
            names.append(name)
            flags.append(ok.all())
        if not flags or bool(torch.stack(flags).all()):
            return []
        return [n for n, f in zip(names, flags) if not bool(f)]

    def _compute_dtype(self) -> torch.dtype:
        """The floating type of the module's tensors: float32 as loaded, another after
        ``net.double()`` / ``.half()`` / ``.to(dtype)`` (inputs are cast to it: float32 inputs
        beside double weights failed inside the first convolution)."""
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        for t in self.buffers():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def _input_names(self) -> List[str]:
        return self.view.data_inputs

    def _check_shapes(self, inputs: Dict[str, torch.Tensor]) -> None:
        """Each input against the model's fixed dimensions: a DataError naming them (a model
        exported with a fixed batch fed another one failed deep inside a Reshape)."""
        declared = {i.name: i.type.tensor_type.shape.dim for i in self.view.model.graph.input
                    if i.type.HasField("tensor_type")}
        for name in self._input_names():
            dims, t = declared.get(name), inputs[name]
            if dims is None or not hasattr(t, "shape"):
                continue
            want = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            got = list(t.shape)
            if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
                shown = "[" + ", ".join("?" if w is None else str(w) for w in want) + "]"
                fix = (f"; the model was exported with a fixed batch of {want[0]}: feed batches "
                       f"of {want[0]} (pad the last one), or re-export it with a free batch axis"
                       if len(got) == len(want) and want[0] not in (None, got[0]) else "")
                raise DataError(f"input {name!r} has shape {got}; the model takes {shown}{fix}")

    # ------------------------------------------------------------------ parameters
    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Weights and neuron parameters, for optimizers that treat them differently."""
        neuron = self._neuron_params()
        groups = {"weights": [], "neurons": []}
        for name in self._trainable:
            groups["neurons" if name in neuron else "weights"].append(self.tensor(name))
        return groups

    @torch.no_grad()
    def project(self) -> None:
        """Keep parameters in their valid range after an optimizer step."""
        for name in self._neuron_params():
            self.tensor(name).copy_(self._effective(name))

    def _effective(self, name: str) -> torch.Tensor:
        """A tensor as the forward pass uses it (leak in [0, 1], threshold and amplitude > 0)."""
        t = self.tensor(name)
        kind = self._neuron_params().get(name)
        if kind == "leak":
            return _leak_capped(t)
        if kind in ("threshold", "amplitude"):
            return self._floored(name, t)
        return t

    def _floored(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A threshold or amplitude kept at or above its floor (_MIN_FRACTION of the file's
        value): the identity on the file's own values."""
        key = self._floors.get(name)
        return t if key is None else torch.maximum(t, getattr(self, key))

    # ------------------------------------------------------------------ export
    def to_model(self, history: Optional[dict] = None,
                 timesteps: Optional[int] = None,
                 preprocess: Optional[dict] = None) -> onnx.ModelProto:
        """The source model with this module's current values, metadata updated
        (``timesteps`` changes the model's default T, ``preprocess`` the recorded input
        normalization: the one the module was trained with). Both are checked as the file's
        reader checks them: a file this writes always loads."""
        from onnx_snn.convert import check_timesteps
        from onnx_snn.datasets import check_preprocess
        if timesteps is not None:
            timesteps = check_timesteps(timesteps, "timesteps")
        if preprocess is not None:
            try:
                preprocess = check_preprocess(preprocess, "preprocess")
            except ModelLoadError:
                raise UsageError(f"preprocess must be {{'mean': [...], 'std': [...]}} of finite "
                                 f"numbers, std > 0, not {preprocess!r}") from None
            channels = _image_channels(self.source)
            for key in ("mean", "std"):
                n = len(preprocess[key])
                if channels and n != 1 and n not in channels:
                    raise UsageError(f"preprocess has {n} {key} values, and the model's images "
                                     f"have {' or '.join(map(str, sorted(channels)))} "
                                     "channels: one value, or one per channel")
        if history is not None and not isinstance(history, Mapping):
            raise UsageError(f"history must be a mapping (a dict of what the step did), not "
                             f"{type(history).__name__}")
        bad = self.turned_non_finite()
        if bad:   # (a NaN threshold: the reader refuses such a file as damaged)
            raise TrainingDivergedError(f"the network's {', '.join(bad[:5])}"
                                        f"{' and more' if len(bad) > 5 else ''} hold NaN or "
                                        "infinite values; nothing written (train with a smaller "
                                        "lr, or restore a good state)")
        model = copy.deepcopy(self.source)
        for init in fmt.all_initializers(model).values():
            if init.name == fmt.TIMESTEPS_INPUT and timesteps:
                init.CopyFrom(numpy_helper.from_array(np.array(int(timesteps), np.int64), init.name))
            elif init.name in self._names:
                val = self._effective(init.name).detach().cpu().numpy()
                init.CopyFrom(numpy_helper.from_array(val.astype(numpy_helper.to_array(init).dtype),
                                                      init.name))
        fmt.sync_site_records(model)     # the records: the values just written
        meta = fmt.metadata(model)
        hist = json.loads(meta.get(fmt.META_HISTORY, "[]"))
        if history is not None:
            hist.append({"step": "finetune",
                         "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         **history})
        try:     # numpy values as Python's, NaN as null (strict JSON)
            hist_text = json_text.dumps(hist, indent=None)
        except (TypeError, ValueError) as e:
            raise UsageError(f"history must hold JSON values (numbers, strings, lists, dicts): "
                             f"{e}") from None
        meta_new = {fmt.META_HISTORY: hist_text}
        if timesteps:
            meta_new[fmt.META_TIMESTEPS] = str(int(timesteps))
        if preprocess is not None:
            meta_new[fmt.META_PREPROCESS] = json.dumps(preprocess)
        fmt.set_metadata(model, meta_new)
        return model

    def to_onnx(self, path, *inputs, history: Optional[dict] = None, timesteps: Optional[int] = None,
                preprocess: Optional[dict] = None):
        """Write the network back in the spiking format to ``path`` (never over ``inputs``,
        nor over the file :meth:`from_onnx` read, nor over the files the model's history
        names: the DNN it was converted from, its calibration and training data)."""
        return save_model(self.to_model(history, timesteps, preprocess), path, *inputs,
                          *getattr(self, "source_files", []), *_recorded_files(self.source))
