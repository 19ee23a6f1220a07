"""Constants and small builders of the spiking ONNX format, version 1.

See DESIGN (docs/FORMAT.md in this repository) for the contract. In short: every site is a
call of the model-local function ``ai.onnx_snn.LIFNeuron(x, v, threshold, amplitude, leak)
-> (y, v_next)``::

    u      = leak * v + x
    s      = (u >= threshold)        # 0/1
    v_next = u - s * threshold       # soft reset
    y      = s * amplitude
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import onnx
from onnx import TensorProto, helper

FORMAT_VERSION = 1
DOMAIN = "ai.onnx_snn"
NEURON_OP = "LIFNeuron"

META_PREFIX = "onnx_snn."
META_FORMAT = "onnx_snn.format_version"
META_TIMESTEPS = "onnx_snn.timesteps"
META_METHOD = "onnx_snn.method"
META_SITES = "onnx_snn.sites"
META_PREPROCESS = "onnx_snn.preprocess"
META_SOURCE = "onnx_snn.source"
META_HISTORY = "onnx_snn.history"
META_DROPOUT = "onnx_snn.dropout"
META_GRAPH = "onnx_snn.graph"          # "loop" (single call) or "step"
META_OUTPUTS = "onnx_snn.outputs"      # the DNN's output names (JSON list)

TIMESTEPS_INPUT = "timesteps"
PARAMS = ("threshold", "amplitude", "leak", "v_init")


def param_name(site: str, param: str) -> str:
    return f"{site}.{param}"


def state_name(site: str) -> str:
    return f"{site}.v"


def next_state_name(site: str) -> str:
    return f"{site}.v_next"


def spikes_name(site: str) -> str:
    return f"{site}.spikes"


def neuron_function(opset: int) -> onnx.FunctionProto:
    """The model-local function that defines one integrate-and-fire step."""
    nodes = [
        helper.make_node("Mul", ["leak", "v"], ["leaked"]),
        helper.make_node("Add", ["leaked", "x"], ["u"]),
        helper.make_node("GreaterOrEqual", ["u", "threshold"], ["fired"]),
        helper.make_node("CastLike", ["fired", "x"], ["s"]) if opset >= 15 else
        helper.make_node("Cast", ["fired"], ["s"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["s", "threshold"], ["reset"]),
        helper.make_node("Sub", ["u", "reset"], ["v_next"]),
        helper.make_node("Mul", ["s", "amplitude"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN, NEURON_OP, ["x", "v", "threshold", "amplitude", "leak"], ["y", "v_next"], nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        doc_string=("Integrate-and-fire step with leak and soft reset: u = leak*v + x; "
                    "s = u >= threshold; v_next = u - s*threshold; y = s*amplitude"))


@dataclass
class SiteRecord:
    """One site as recorded in ``onnx_snn.sites``."""

    name: str
    input: str
    output: str
    shape: List[int]
    mu: float
    mu_source: str
    alpha: float
    beta: float
    threshold: float
    amplitude: float
    leak: float
    v_init: float
    objective: str
    objective_value: float
    idiom: str = ""
    source_nodes: List[str] = field(default_factory=list)
    sample_size: int = 0
    values_seen: int = 0

    @property
    def neurons(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class SpikingInfo:
    """What a spiking model's metadata says about it."""

    format_version: int
    timesteps: int
    method: str
    sites: List[SiteRecord]
    preprocess: Optional[dict]
    source: Optional[str]
    history: list
    dropout: list
    graph: str
    outputs: List[str]

    def site(self, name: str) -> SiteRecord:
        return next(s for s in self.sites if s.name == name)


def graphs(model: onnx.ModelProto) -> List[onnx.GraphProto]:
    """The main graph and every subgraph (the time loop's body) that holds initializers."""
    out = [model.graph]
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.append(a.g)
    return out


def all_initializers(model: onnx.ModelProto) -> Dict[str, onnx.TensorProto]:
    """Every initializer by name, those of the loop body included (layer weights used only
    inside the time step live there, so that onnxruntime can prepack them)."""
    return {t.name: t for g in graphs(model) for t in g.initializer}


def metadata(model: onnx.ModelProto) -> Dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def is_spiking(model: onnx.ModelProto) -> bool:
    return META_FORMAT in metadata(model)


def read_info(model: onnx.ModelProto) -> SpikingInfo:
    meta = metadata(model)
    sites = [SiteRecord(**{k: v for k, v in s.items() if k in SiteRecord.__dataclass_fields__})
             for s in json.loads(meta.get(META_SITES, "[]"))]
    return SpikingInfo(
        format_version=int(meta[META_FORMAT]),
        timesteps=int(meta.get(META_TIMESTEPS, 1)),
        method=meta.get(META_METHOD, ""),
        sites=sites,
        preprocess=json.loads(meta[META_PREPROCESS]) if meta.get(META_PREPROCESS) else None,
        source=meta.get(META_SOURCE),
        history=json.loads(meta.get(META_HISTORY, "[]")),
        dropout=json.loads(meta.get(META_DROPOUT, "[]")),
        graph=meta.get(META_GRAPH, "loop"),
        outputs=json.loads(meta.get(META_OUTPUTS, "[]")),
    )


def set_metadata(model: onnx.ModelProto, values: Dict[str, str]) -> None:
    current = metadata(model)
    current.update(values)
    del model.metadata_props[:]
    for k in sorted(current):
        model.metadata_props.add(key=k, value=current[k])
