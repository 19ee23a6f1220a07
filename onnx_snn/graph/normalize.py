"""The normalization pipeline: any exporter's ONNX in, one canonical convertible DNN out."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..model_io import check_model, default_opset, load_model, sha256_file
from . import canonical, cleanup, fold
from .ir import const_value, depends_on_inputs, node_label
from .passes import PassResult, graph_pass, run_passes
from .sites import CLAMP_OPS, Site, clamp_bounds, find_and_canonicalize_sites
from .support import check_supported, first_nonlinearity

log = logging.getLogger(__name__)


@dataclass
class NormalizedModel:
    """A DNN in canonical form: every activation is one node named after its site."""

    model: onnx.ModelProto
    sites: List[Site]
    notes: List[str] = field(default_factory=list)
    dropouts: List[dict] = field(default_factory=list)
    source_sha256: Optional[str] = None
    source_path: Optional[str] = None
    preprocess: Optional[dict] = None
    source_metadata: dict = field(default_factory=dict)
    #: what each normalization pass changed and why it left candidates alone (not printed)
    pass_log: List[PassResult] = field(default_factory=list)

    @property
    def opset(self) -> int:
        return default_opset(self.model)

    @property
    def input_names(self) -> List[str]:
        inits = {i.name for i in self.model.graph.initializer}
        return [i.name for i in self.model.graph.input if i.name not in inits]

    @property
    def output_names(self) -> List[str]:
        return [o.name for o in self.model.graph.output]

    def input_shape(self, name: Optional[str] = None) -> list:
        """Static dims as ints, dynamic ones as None."""
        name = name or self.input_names[0]
        vi = next(i for i in self.model.graph.input if i.name == name)
        return [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]

    def site(self, name: str) -> Site:
        return next(s for s in self.sites if s.name == name)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # shape inference is a help, not a requirement
        log.debug("shape inference failed: %s", e)
        return model


def _name_nodes(graph: gs.Graph) -> None:
    """Give every unnamed node a stable name (op and position) for reports and diffs."""
    taken = {n.name for n in graph.nodes if n.name}
    for i, n in enumerate(graph.nodes):
        if not n.name:
            name = f"{n.op}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)


def _warn_pooled_currents(graph: gs.Graph, sites, notes: list) -> None:
    """Max pooling of pre-activations (conv -> MaxPool -> clip) pools analog currents each
    step; it is accepted but converts less accurately than pooling spikes."""
    site_inputs = {s.input for s in sites}
    for n in graph.nodes:
        if n.op in ("MaxPool", "GlobalMaxPool") and n.outputs and n.outputs[0].name in site_inputs:
            notes.append(f"warning: '{n.name}' max-pools pre-activations (pooling before the "
                         "activation); the SNN pools input currents there, which converts less "
                         "accurately than pooling after the activation")


@graph_pass("canonicalize-sites")
def canonicalize_sites(graph: gs.Graph, result: PassResult) -> None:
    """Every Relu/Clip/Min/Max chain with lower bound 0 becomes one canonical ``Clip(h, 0, mu)``
    or ``Relu(h)`` node named after its site (see :mod:`.sites`); ``result.records`` are the
    :class:`Site` objects in topological order."""
    sites = find_and_canonicalize_sites(graph)
    result.records = sites
    result.changed = len(sites)
    names = {s.name for s in sites}
    data = depends_on_inputs(graph)
    for node in graph.nodes:
        if node.op not in CLAMP_OPS or node.name in names:
            continue
        x = node.inputs[0]
        if node.op in ("Min", "Max"):
            x = next((t for t in node.inputs if const_value(t) is None), x)
        if x.name not in data:
            result.skip(node, "it clamps shape arithmetic, not data")
        elif clamp_bounds(node) is None:
            result.skip(node, f"{node.op} of {len(node.inputs)} data tensors is not a clamp by a "
                              "constant")
    plain = [s for s in sites if s.mu is None]
    if plain:
        result.notes.append(
            f"warning: {len(plain)} plain ReLU layer(s) without a trained threshold "
            f"({', '.join(s.name + '=' + (s.source_nodes[0] or '?') for s in plain)}): mu is "
            "estimated from the calibration data (--relu-percentile)")


#: the normalization passes in the order they run; each can be applied on its own
PIPELINE: tuple = (
    fold.fold_constants,                 # weights and clip bounds become initializers
    canonical.sum_to_add,
    cleanup.remove_identity_and_dropout,
    cleanup.strip_final_softmax,
    cleanup.drop_unused_outputs,
    fold.fold_batchnorm,
    canonical.matmul_add_to_gemm,
    fold.fold_constants,                 # what the rewrites above made constant
    canonicalize_sites,
)


def normalize(model: Union[str, Path, onnx.ModelProto], where: Optional[str] = None) -> NormalizedModel:
    """Load (if a path) and normalize ``model`` into a :class:`NormalizedModel`."""
    notes: List[str] = []
    sha = path = None
    if isinstance(model, (str, Path)):
        path = str(model)
        where = where or path
        model = load_model(model)
        sha = sha256_file(path)
    else:
        where = where or "model"
        check_model(model, where)
    meta = {p.key: p.value for p in model.metadata_props}
    model = canonical.upgrade_opset(model, notes, where)
    model = _infer_shapes(model)
    try:
        graph = gs.import_onnx(model)
    except Exception as e:
        raise UnsupportedModelError(f"{where}: onnx-graphsurgeon cannot import the graph ({e})") from None
    try:
        return _normalize_graph(graph, model, meta, notes, where, sha, path)
    except UnsupportedModelError as e:
        msg = str(e)
        raise UnsupportedModelError(msg if msg.startswith(str(where)) else f"{where}: {msg}") from None


def _no_sites_error(graph: gs.Graph, where: str) -> UnsupportedModelError:
    expects = ("no ReLU-type activation found, so there is nothing to turn into spiking "
               "neurons; the converter expects Relu or clipped-ReLU (Clip(0, mu)) layers")
    first = first_nonlinearity(graph)
    if first is None:
        return UnsupportedModelError(f"{where}: {expects}")
    node, what = first
    return UnsupportedModelError(f"{where}: {node_label(node)} is {what}; {expects}")


def _normalize_graph(graph, model, meta, notes, where, sha, path) -> NormalizedModel:
    _name_nodes(graph)
    pass_log = run_passes(graph, PIPELINE)
    for r in pass_log:
        notes.extend(r.notes)
    records = {r.name: r.records for r in pass_log}
    dropouts: List[dict] = list(records[cleanup.remove_identity_and_dropout.name])
    sites: List[Site] = records[canonicalize_sites.name]
    if not sites:
        raise _no_sites_error(graph, where)
    check_supported(graph, {s.name for s in sites})

    graph.cleanup().toposort()
    _name_nodes(graph)
    _warn_pooled_currents(graph, sites, notes)
    tensors = {t.name for n in graph.nodes for t in n.outputs} | {t.name for t in graph.inputs}
    stale = [d for d in dropouts if d["tensor"] not in tensors]
    if stale:
        notes.append(f"warning: {len(stale)} dropout layer(s) sit inside an activation and are not "
                     "recorded for fine-tuning")
        dropouts[:] = [d for d in dropouts if d["tensor"] in tensors]
    out = gs.export_onnx(graph)
    out.ir_version = max(model.ir_version, 8)
    del out.metadata_props[:]
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    out = _infer_shapes(out)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:  # a bug here, not the user's
        raise RuntimeError(f"normalized model fails the ONNX checker: {e}") from None

    preprocess = None
    if "onnx_snn.preprocess" in meta:
        try:
            preprocess = json.loads(meta["onnx_snn.preprocess"])
        except json.JSONDecodeError:
            notes.append("warning: ignoring unreadable onnx_snn.preprocess metadata")
    return NormalizedModel(model=out, sites=sites, notes=notes, dropouts=dropouts,
                           source_sha256=sha, source_path=path, preprocess=preprocess,
                           source_metadata=meta, pass_log=pass_log)
