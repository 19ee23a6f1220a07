"""A readable, stable text rendering of an ONNX graph (used by the golden-graph tests and
``onnx-snn info --graph``): ops, edges, attributes, initializer shapes, neuron parameters
(rounded) and the spiking metadata, subgraphs and functions included."""
from __future__ import annotations

import json
from typing import List

import onnx
from onnx import helper, numpy_helper

from . import format as fmt

_VOLATILE_META = {fmt.META_SOURCE, fmt.META_HISTORY}


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _attrs(node: onnx.NodeProto) -> str:
    parts = []
    for a in sorted(node.attribute, key=lambda a: a.name):
        if a.type == onnx.AttributeProto.GRAPH:
            continue
        if a.ref_attr_name:  # a function body's reference to the caller's attribute
            parts.append(f"{a.name}=@{a.ref_attr_name}")
            continue
        if a.type == onnx.AttributeProto.TENSOR:
            t = numpy_helper.to_array(a.t)
            parts.append(f"{a.name}=tensor{list(t.shape)}")
            continue
        parts.append(f"{a.name}={_fmt_value(helper.get_attribute_value(a))}")
    return (" {" + ", ".join(parts) + "}") if parts else ""


def _shape(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return f"[{','.join(dims)}] {onnx.TensorProto.DataType.Name(t.elem_type).lower()}"


def _init_line(t: onnx.TensorProto) -> str:
    a = numpy_helper.to_array(t)
    if a.size <= 4:
        vals = ",".join(f"{float(v):.4g}" if a.dtype.kind == "f" else str(v) for v in a.reshape(-1))
        return f"{t.name} {list(a.shape)} = {vals}"
    return f"{t.name} {list(a.shape)} {a.dtype}"


def _graph_lines(g: onnx.GraphProto, indent: str) -> List[str]:
    lines = [f"{indent}inputs:"]
    lines += [f"{indent}  {i.name} {_shape(i)}" for i in g.input]
    lines.append(f"{indent}outputs:")
    lines += [f"{indent}  {o.name} {_shape(o)}" for o in g.output]
    if g.initializer:
        lines.append(f"{indent}initializers:")
        lines += [f"{indent}  {_init_line(t)}" for t in sorted(g.initializer, key=lambda t: t.name)]
    lines.append(f"{indent}nodes:")
    for n in g.node:
        dom = f"{n.domain}." if n.domain else ""
        lines.append(f"{indent}  {dom}{n.op_type} '{n.name}': {', '.join(n.input)} -> "
                     f"{', '.join(n.output)}{_attrs(n)}")
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                lines.append(f"{indent}    {a.name}: graph '{a.g.name}'")
                lines += _graph_lines(a.g, indent + "      ")
    return lines


def describe(model: onnx.ModelProto) -> str:
    """The text rendering of ``model`` (deterministic; volatile metadata left out)."""
    lines = ["opsets: " + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}"
                                    for o in sorted(model.opset_import, key=lambda o: o.domain))]
    lines += _graph_lines(model.graph, "")
    for f in model.functions:
        lines.append(f"function {f.domain}.{f.name}({', '.join(f.input)}) -> ({', '.join(f.output)}):")
        for n in f.node:
            lines.append(f"  {n.op_type}: {', '.join(n.input)} -> {', '.join(n.output)}{_attrs(n)}")
    lines.append("metadata:")
    for p in sorted(model.metadata_props, key=lambda p: p.key):
        if p.key in _VOLATILE_META:
            continue
        if p.key == fmt.META_SITES:
            for s in json.loads(p.value):
                keep = {k: s[k] for k in ("name", "input", "output", "shape", "mu", "mu_source",
                                          "alpha", "beta", "threshold", "amplitude", "leak",
                                          "v_init", "idiom")}
                if "neuron" in s:    # a signed neuron (plain ones have no key)
                    keep["neuron"] = s["neuron"]
                lines.append("  site " + " ".join(f"{k}={_fmt_value(v)}" for k, v in keep.items()))
            continue
        lines.append(f"  {p.key} = {p.value}")
    return "\n".join(lines) + "\n"


