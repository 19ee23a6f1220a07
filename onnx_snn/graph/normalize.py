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
from .sites import Site, find_and_canonicalize_sites
from .support import check_supported

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


def normalize(model: Union[str, Path, onnx.ModelProto], where: Optional[str] = None) -> NormalizedModel:
    """Load (if a path) and normalize ``model`` into a :class:`NormalizedModel`."""
    notes: List[str] = []
    dropouts: List[dict] = []
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
        return _normalize_graph(graph, model, meta, notes, dropouts, where, sha, path)
    except UnsupportedModelError as e:
        msg = str(e)
        raise UnsupportedModelError(msg if msg.startswith(str(where)) else f"{where}: {msg}") from None


def _normalize_graph(graph, model, meta, notes, dropouts, where, sha, path) -> NormalizedModel:
    _name_nodes(graph)
    graph = fold.fold_constants(graph)
    graph = canonical.sum_to_add(graph)
    graph = cleanup.remove_identity_and_dropout(graph, notes, dropouts)
    graph = cleanup.strip_final_softmax(graph, notes)
    graph = cleanup.drop_unused_outputs_of(graph)
    graph = fold.fold_batchnorm(graph, notes)
    graph = canonical.matmul_add_to_gemm(graph)
    graph = fold.fold_constants(graph)
    sites = find_and_canonicalize_sites(graph)
    if not sites:
        raise UnsupportedModelError(
            f"{where}: no ReLU-type activation found, so there is nothing to turn into spiking "
            "neurons; the converter expects Relu or clipped-ReLU (Clip(0, mu)) layers")
    check_supported(graph, {s.name for s in sites})
    plain = [s for s in sites if s.mu is None]
    if plain:
        notes.append(
            f"warning: {len(plain)} plain ReLU layer(s) without a trained threshold "
            f"({', '.join(s.name + '=' + (s.source_nodes[0] or '?') for s in plain)}): mu is "
            "estimated from the calibration data (--relu-percentile)")

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
                           source_metadata=meta)
