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
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from onnx_snn.errors import NotSpikingModelError, UnsupportedModelError
from onnx_snn.model_io import load_model, save_model
from onnx_snn.spiking import format as F
from onnx_snn.spiking.rewrite import _state_dependent

from .neuron import lif_step
from .ops import OPS, parse_attrs, run_op

#: inputs of these ops that, when initializers, are trainable weights
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div"}
_MIN_THRESHOLD = 1e-4


@dataclass
class _Node:
    op: str
    name: str
    inputs: List[str]
    outputs: List[str]
    attrs: dict
    site: Optional[str] = None


def _key(name: str) -> str:
    return "t_" + re.sub(r"[^0-9a-zA-Z_]", "_", name)


class SpikingNetwork(nn.Module):
    """A spiking ONNX model as a module: ``forward(x, timesteps=None)`` returns the
    time-averaged first output and ``self.last_spikes`` (per-site totals over T, ``[N]``)."""

    def __init__(self, model: onnx.ModelProto, train_thresholds: bool = True,
                 train_leaks: bool = True, train_amplitudes: bool = True):
        super().__init__()
        if not F.is_spiking(model):
            raise NotSpikingModelError(f"{model.graph.name or 'model'}: not a spiking model (no "
                                       "onnx_snn.format_version metadata); convert it first")
        self.source = model
        self.info = F.read_info(model)
        self.timesteps = self.info.timesteps
        self.sites = self.info.sites
        self._names: Dict[str, str] = {}          # onnx initializer name -> attribute key
        self._trainable: List[str] = []
        self.hoisted, self.body, self.outputs = self._split_graph(model)
        self._check_ops()
        frozen = set()
        for s in self.sites:
            if not train_thresholds:
                frozen.add(F.param_name(s.name, "threshold"))
            if not train_leaks:
                frozen.add(F.param_name(s.name, "leak"))
            if not train_amplitudes:
                frozen.add(F.param_name(s.name, "amplitude"))
        self._register_initializers(model, frozen)
        self.dropout = {d["tensor"]: float(d["ratio"]) for d in self.info.dropout}
        self.last_spikes: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def from_onnx(cls, path: Union[str, onnx.ModelProto], **kw) -> "SpikingNetwork":
        model = load_model(path) if isinstance(path, str) else path
        return cls(model, **kw)

    def _split_graph(self, model):
        g = model.graph
        site_by_neuron = {f"{s.name}.neuron": s.name for s in self.sites}

        def conv(nodes):
            return [_Node(n.op_type, n.name, list(n.input), list(n.output), parse_attrs(n),
                          site_by_neuron.get(n.name) if n.op_type == F.NEURON_OP else None)
                    for n in nodes]

        loop = next((n for n in g.node if n.op_type == "Loop"), None)
        names = self.info.outputs or [o.name for o in g.output if not o.name.endswith(".spikes")]
        if self.info.graph == "loop" and loop is not None:
            body = loop.attribute[0].g
            idx = list(g.node).index(loop)
            hoisted_all = list(g.node[:idx])
            body_nodes = [n for n in body.node if n.name != "loop.cond"]
            made = {o for n in body_nodes for o in n.output}
            # time-invariant outputs are made outside the loop and keep their names
            outputs = [f"{o}.step" if f"{o}.step" in made else o for o in names]
        else:
            states = [F.state_name(s.name) for s in self.sites]
            flags = _state_dependent(list(g.node), states)
            hoisted_all = [n for n, f in zip(g.node, flags) if not f]
            body_nodes = [n for n, f in zip(g.node, flags) if f]
            outputs = names
        # keep only what the outputs and next states need (spike counters are done natively)
        needed = set(outputs) | {F.next_state_name(s.name) for s in self.sites}
        keep_body = []
        for n in reversed(body_nodes):
            if any(o in needed for o in n.output):
                keep_body.append(n)
                needed.update(i for i in n.input if i)
        keep_body.reverse()
        keep_hoisted = []
        for n in reversed(hoisted_all):
            if any(o in needed for o in n.output):
                keep_hoisted.append(n)
                needed.update(i for i in n.input if i)
        keep_hoisted.reverse()
        return conv(keep_hoisted), conv(keep_body), outputs

    def _check_ops(self):
        for n in self.hoisted + self.body:
            if n.op == F.NEURON_OP:
                continue
            if n.op not in OPS:
                raise UnsupportedModelError(f"node '{n.name}' ({n.op}) has no torch implementation "
                                            "in onnx_snn.runtimes.torch")
            if n.op == "Split":
                n.attrs["_n_outputs"] = len(n.outputs)

    def _register_initializers(self, model, frozen):
        used_as_weight = set()
        for n in self.hoisted + self.body:
            if n.op in _WEIGHT_OPS:
                used_as_weight.update(n.inputs)
        site_params = {F.param_name(s.name, p) for s in self.sites
                       for p in ("threshold", "amplitude", "leak")}
        for init in F.all_initializers(model).values():
            arr = numpy_helper.to_array(init).copy()
            t = torch.from_numpy(arr)
            key = _key(init.name)
            self._names[init.name] = key
            trainable = (arr.dtype.kind == "f" and init.name not in frozen and
                         (init.name in site_params or init.name in used_as_weight) and
                         init.name != F.TIMESTEPS_INPUT)
            if trainable:
                setattr(self, key, nn.Parameter(t))
                self._trainable.append(init.name)
            else:
                self.register_buffer(key, t)

    # ------------------------------------------------------------------ running
    def tensor(self, name: str) -> torch.Tensor:
        return getattr(self, self._names[name])

    def _run(self, nodes, env, masks):
        for n in nodes:
            if n.op == F.NEURON_OP:
                x, v = env[n.inputs[0]], env[n.inputs[1]]
                th = env[n.inputs[2]].clamp(min=_MIN_THRESHOLD)
                amp = env[n.inputs[3]].clamp(min=_MIN_THRESHOLD)
                leak = env[n.inputs[4]].clamp(max=1.0)
                y, v_next, s = lif_step(x, v, th, amp, leak)
                env[n.outputs[0]], env[n.outputs[1]] = y, v_next
                env[f"{n.site}.__s"] = s
            else:
                outs = run_op(n.op, n.attrs, [env.get(i) if i else None for i in n.inputs])
                for name, val in zip(n.outputs, outs):
                    env[name] = val
            if self.training and self.dropout:
                for o in n.outputs:
                    p = self.dropout.get(o)
                    if p:
                        if o not in masks:  # one mask per batch, reused over the T steps
                            keep = torch.full_like(env[o], 1.0 - p)
                            masks[o] = torch.bernoulli(keep) / (1.0 - p)
                        env[o] = env[o] * masks[o]

    def forward(self, x: Union[torch.Tensor, Dict[str, torch.Tensor]],
                timesteps: Optional[int] = None, record_spikes: bool = True):
        T = int(timesteps or self.timesteps)
        inputs = x if isinstance(x, dict) else {self._input_names()[0]: x}
        env: Dict[str, torch.Tensor] = {name: getattr(self, key) for name, key in self._names.items()}
        env.update(inputs)
        first = next(iter(inputs.values()))
        n = first.shape[0]
        masks: Dict[str, torch.Tensor] = {}
        self._run(self.hoisted, env, masks)
        states = {}
        for s in self.sites:
            v0 = self.tensor(F.param_name(s.name, "v_init"))
            states[F.state_name(s.name)] = v0.to(first.dtype).expand([n] + list(s.shape)).clone()
        acc = [None] * len(self.outputs)
        spikes = {s.name: torch.zeros(n, device=first.device) for s in self.sites} if record_spikes else {}
        for _ in range(T):
            step = dict(env)
            step.update(states)
            self._run(self.body, step, masks)
            for i, o in enumerate(self.outputs):
                acc[i] = step[o] if acc[i] is None else acc[i] + step[o]
            for s in self.sites:
                states[F.state_name(s.name)] = step[F.next_state_name(s.name)]
                if record_spikes:
                    sp = step[f"{s.name}.__s"].detach()
                    spikes[s.name] += sp.reshape(n, -1).sum(1)
        self.last_spikes = spikes
        outs = [a / T for a in acc]
        return outs[0] if len(outs) == 1 else outs

    def _input_names(self) -> List[str]:
        inits = set(F.all_initializers(self.source))
        skip = {F.TIMESTEPS_INPUT} | {F.state_name(s.name) for s in self.sites}
        return [i.name for i in self.source.graph.input if i.name not in inits and i.name not in skip]

    # ------------------------------------------------------------------ parameters
    def parameter_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Weights and neuron parameters, for optimizers that treat them differently."""
        neuron = {F.param_name(s.name, p) for s in self.sites for p in ("threshold", "amplitude", "leak")}
        groups = {"weights": [], "neurons": []}
        for name in self._trainable:
            groups["neurons" if name in neuron else "weights"].append(self.tensor(name))
        return groups

    @torch.no_grad()
    def project(self) -> None:
        """Keep parameters in their valid range after an optimizer step."""
        for s in self.sites:
            self.tensor(F.param_name(s.name, "leak")).clamp_(max=1.0)
            self.tensor(F.param_name(s.name, "threshold")).clamp_(min=_MIN_THRESHOLD)
            self.tensor(F.param_name(s.name, "amplitude")).clamp_(min=_MIN_THRESHOLD)

    def _effective(self, name: str) -> torch.Tensor:
        """A tensor as the forward pass uses it (leak <= 1, threshold > 0)."""
        t = self.tensor(name)
        if name.endswith(".leak") and name[:-5] in {s.name for s in self.sites}:
            return t.clamp(max=1.0)
        if name.endswith(".threshold") and name[:-10] in {s.name for s in self.sites}:
            return t.clamp(min=_MIN_THRESHOLD)
        if name.endswith(".amplitude") and name[:-10] in {s.name for s in self.sites}:
            return t.clamp(min=_MIN_THRESHOLD)
        return t

    # ------------------------------------------------------------------ export
    def to_model(self, history: Optional[dict] = None,
                 timesteps: Optional[int] = None) -> onnx.ModelProto:
        """The source model with this module's current values, metadata updated
        (``timesteps`` changes the model's default T)."""
        model = copy.deepcopy(self.source)
        for init in F.all_initializers(model).values():
            if init.name == F.TIMESTEPS_INPUT and timesteps:
                init.CopyFrom(numpy_helper.from_array(np.array(int(timesteps), np.int64), init.name))
            elif init.name in self._names:
                val = self._effective(init.name).detach().cpu().numpy()
                init.CopyFrom(numpy_helper.from_array(val.astype(numpy_helper.to_array(init).dtype),
                                                      init.name))
        meta = F.metadata(model)
        sites = json.loads(meta[F.META_SITES])
        for s in sites:
            th, amp, leak = (float(self._effective(F.param_name(s["name"], p)).detach().reshape(-1)[0])
                             for p in ("threshold", "amplitude", "leak"))
            s.update(threshold=th, amplitude=amp, leak=leak, alpha=th / s["mu"], beta=amp / s["mu"])
        hist = json.loads(meta.get(F.META_HISTORY, "[]"))
        if history is not None:
            hist.append({"step": "finetune",
                         "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         **history})
        meta_new = {F.META_SITES: json.dumps(sites), F.META_HISTORY: json.dumps(hist)}
        if timesteps:
            meta_new[F.META_TIMESTEPS] = str(int(timesteps))
        F.set_metadata(model, meta_new)
        return model

    def to_onnx(self, path, *inputs, history: Optional[dict] = None, timesteps: Optional[int] = None):
        return save_model(self.to_model(history, timesteps), path, *inputs)
