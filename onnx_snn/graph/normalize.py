"""The normalization pipeline: any exporter's ONNX in, one canonical convertible DNN out."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

import onnx
import onnx_graphsurgeon as gs

from ..notes import WARNING_NOTE, interface
from ..datasets import (PREPROCESS_KEYS, dnn_preprocess, parse_preprocess, unread_preprocess,
                        unread_preprocess_note)
from ..errors import InternalError, ModelLoadError, UnsupportedModelError, listed
from ..model_io import check_finite_weights, check_model, default_opset, load, metadata_dict
from ..feeds import check_data_inputs
from ..spiking import format as fmt
from ..spiking.neuron import DOMAIN
from . import (canonical, cleanup, einsum, fold, inputs, precision, quantization, resize,
               skeleton, walk)
from .export import export
from .ir import const_value, depends_on_inputs, node_label, source_scope
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
    #: the warnings among ``notes`` already logged (build() logs each once per model, not
    #: once per conversion of it)
    logged: set = field(default_factory=set, repr=False)
    #: the source file kept its weights in external-data files (the spiking model is saved
    #: the same way)
    external_data: bool = False
    #: max pools moved ahead of the activations they read (``normalize(pool_first=True)``)
    pools_moved: int = 0

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


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # shape inference is a help, not a requirement
        log.debug("shape inference failed: %s", e)
        return model


def _dims(shape) -> List[Union[int, str, None]]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]


class _OutputShapeNote(str):
    """The note that an output's declared shape is not the computed one, with the output's
    name and declared dims: dropped when the normalized graph computes the declared shape
    after all (a pass corrected what the first inference got wrong: a ceil-mode pool)."""

    output: str
    declared: list


def _drop_settled_notes(notes: List[str], model: onnx.ModelProto) -> None:
    final = {o.name: _dims(o.type.tensor_type.shape) for o in model.graph.output
             if o.type.tensor_type.HasField("shape")}
    notes[:] = [n for n in notes if not (isinstance(n, _OutputShapeNote) and n.output in final
                                         and _same_dims(final[n.output], n.declared))]


def _same_dims(a, b) -> bool:
    return len(a) == len(b) and all(not (isinstance(x, int) and isinstance(y, int) and x != y)
                                    for x, y in zip(a, b))


def _infer_checking_outputs(model: onnx.ModelProto, notes: List[str], where: str) -> onnx.ModelProto:
    """Shape inference on ``model``, checked against the producer's shape annotations
    (``value_info``, the outputs' shapes): hints that onnxruntime does not enforce. When they
    fit the graph, inference keeps them (constant folding uses them: a tf2onnx reshape whose
    shape is computed from another reshape's output). When one does not (a tensor declared
    [N, 6, 9, 9] that the graph computes as [N, 6, 8, 8]: inference failed, and the neurons'
    states took the stale shape), the intermediate annotations are dropped and recomputed,
    and an output declared with a shape the graph does not compute gets the computed one,
    with a note; an output that fits keeps its declaration (its named dimensions)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:          # a conflict with the annotations, or an op inference fails
        log.debug("strict shape inference failed (%s); annotations recomputed", e)
    del model.graph.value_info[:]           # the skeleton's: this function's to change
    declared = {}
    for o in model.graph.output:
        tt = o.type.tensor_type
        if o.type.HasField("tensor_type") and tt.HasField("shape"):
            declared[o.name] = _dims(tt.shape)
            tt.ClearField("shape")
    inferred = _infer_shapes(model)
    for o in inferred.graph.output:
        if o.name not in declared:
            continue
        tt = o.type.tensor_type
        got = _dims(tt.shape) if tt.HasField("shape") else None
        want = declared[o.name]
        if got is not None and not _same_dims(got, want):
            note = _OutputShapeNote(f"{where}: output '{o.name}' is declared {_shape_text(want)} "
                                    f"but the graph computes {_shape_text(got)}: the computed "
                                    "shape is used")
            note.output, note.declared = o.name, want
            notes.append(note)
            continue
        tt.ClearField("shape")
        tt.shape.SetInParent()
        for d in want:
            dim = tt.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif d:
                dim.dim_param = d
    return inferred


def _shape_text(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _import(sk: skeleton.Skeleton) -> gs.Graph:
    """The onnx-graphsurgeon graph of a (shape-inferred) skeleton's model with the left-out
    initializers back as constants: what importing the whole model gives, the constants
    reading the full model's own tensors (lazily, as for any initializer)."""
    graph = gs.import_onnx(sk.model)
    for node, proto in zip(graph.nodes, sk.model.graph.node):   # gs keeps no node metadata
        if proto.metadata_props:
            scope = source_scope(metadata_dict(proto))
            if scope:
                node.source_scope = scope
    if sk.stubs:
        from onnx_graphsurgeon.ir.tensor import LazyValues
        for t in graph.inputs:
            tp = sk.stubs.get(t.name)
            if tp is None:
                continue
            t.to_constant(LazyValues(tp))
            t.data_location = int(tp.data_location) if tp.HasField("data_location") else None
            t.__dict__.pop("type", None)   # a Variable's attribute; constants have none
        graph.inputs = [t for t in graph.inputs if t.name not in sk.stubs]
    return graph


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


def _free_reserved_names(graph: gs.Graph, notes: list) -> None:
    """Rename what would clash with the spiking graph's own names, before any pass names
    its sites: a tensor inside the graph named like the format's (``lif0.threshold``,
    ``snn.x``), not one of its inputs or outputs, which the user feeds and reads by name
    (:func:`onnx_snn.spiking.rewrite.check_reserved_names` refuses those). Node names, shared
    or reserved, were renamed on the file as read (:func:`_renamed_nodes`)."""
    ends = {t.name for t in list(graph.inputs) + list(graph.outputs)}
    tensors = graph.tensors()
    taken = set(tensors) | {n.name for n in graph.nodes}

    moved = []
    for name, t in tensors.items():
        if name and name not in ends and fmt.may_be_reserved(name):
            t.name = walk.fresh_name(f"model_{name}", taken, fmt.may_be_reserved)
            moved.append(f"tensor '{name}' -> '{t.name}'")
    if moved:
        notes.append(f"renamed {len(moved)} name(s) the spiking format reserves: "
                     + "; ".join(moved[:8]) + ("; ..." if len(moved) > 8 else ""))


def _note_pooled_currents(graph: gs.Graph, sites, notes: list) -> None:
    """Max pooling of pre-activations (conv -> MaxPool -> clip) pools the running input
    currents each step (rate-exact: the time average is the max of the time averages)."""
    site_inputs = {s.input for s in sites}
    pooled = [n.name for n in graph.nodes if n.op in ("MaxPool", "GlobalMaxPool")
              and n.outputs and n.outputs[0].name in site_inputs]
    if pooled:
        notes.append(f"{len(pooled)} max pool(s) read pre-activations ({', '.join(pooled[:4])}"
                     f"{', ...' if len(pooled) > 4 else ''}): the SNN pools the running input "
                     "currents there and the neurons fire on the pooled map")


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
            WARNING_NOTE + f"{len(plain)} plain ReLU layer(s) without a trained threshold "
            f"({listed(s.name + '=' + (s.source_nodes[0] or '?') for s in plain)}): mu is "
            "estimated from the calibration data (--relu-percentile)")


#: the normalization passes in the order they run; each can be applied on its own
PIPELINE: tuple = (
    precision.compute_in_float32,        # float16/float64 models: float32 throughout
    precision.float64_round_trips,       # float32 -> float64 -> float32 Casts: the identity
    inputs.uint8_input_to_float,         # raw uint8 pixels in: float32 of the same values
    canonical.ml_scaler_to_affine,       # skl2onnx's StandardScaler: Sub and Mul
    fold.fold_constants,                 # weights and clip bounds become initializers
    fold.refuse_training_batchnorm,      # before its statistics outputs are dropped
    quantization.refuse_integer_operators,
    quantization.fake_quantization,      # QDQ activations: clipped ReLUs (weights: folded above)
    quantization.rounding_to_identity,   # QCFS/LSQ quantizers written out: their clipped ReLU
    canonical.sum_to_add,
    einsum.einsum_to_matmul,             # Einsum with a constant operand: a MatMul
    canonical.zero_slope_to_relu,        # LeakyRelu(alpha=0) and kin: a ReLU
    canonical.hard_sigmoid_to_clip,      # clip(a x + b, 0, 1) = a clip(x + b/a, 0, 1/a)
    canonical.relu_pairs_to_clip,        # c - relu(c - relu(x)), relu(x) - relu(x - c)
    canonical.channel_clamps_to_unit_clip,   # min(relu(x), c[C,1,1]) = c clip(x / c, 0, 1)
    canonical.masked_relu_to_relu,       # Where(x > 0, x, 0), x * Cast(x > 0): a ReLU
    canonical.reshape_keeps_batch,       # x.view(1, -1): batches run
    canonical.reduce_max_to_global_pool,
    canonical.auto_pads_to_explicit_pads,    # auto_pad SAME/VALID written out in pads
    canonical.ceil_pools_to_explicit_pads,   # the windows onnxruntime computes, in floor mode
    canonical.nonnegative_identities,    # Abs / ReduceL1 of an activation: Identity / ReduceSum
    canonical.constant_where_to_mask,   # dynamo's masked_fill of adaptive pooling windows
    resize.resize_constant_form,         # F.interpolate(size=...) with a free batch; axes
    cleanup.remove_identity_and_dropout,
    cleanup.strip_output_head,           # before the softmax an ArgMax may read
    cleanup.strip_final_softmax,
    cleanup.strip_final_sigmoid,
    cleanup.strip_final_activation,      # a ReLU on the outputs: not a spiking layer
    cleanup.drop_unused_outputs,
    fold.fold_batchnorm,
    canonical.matmul_add_to_gemm,
    canonical.gemm_scales_into_weights,  # alpha and beta into the constants: refittable
    fold.fold_constants,                 # what the rewrites above made constant
    canonicalize_sites,
)


def normalize(model: Union[str, Path, onnx.ModelProto], where: Optional[str] = None,
              pool_first: bool = False, outputs: Optional[List[str]] = None) -> NormalizedModel:
    """Load (if a path) and normalize ``model`` into a :class:`NormalizedModel`.
    ``pool_first``: move each max pool that reads an activation ahead of it
    (:func:`.canonical.pool_before_sites`; the same DNN). ``outputs``: the graph outputs to
    keep (:func:`select_outputs`; None: all)."""
    notes: List[str] = []
    sha = path = None
    external = False
    if isinstance(model, (str, Path)):
        path = str(model)
        where = where or path
        loaded = load(model, check=False, sha256=True)
        model, sha, external = loaded.model, loaded.sha256, loaded.external_data
    else:
        where = where or "model"
    given = model
    dense = skeleton.densified(model)
    if dense is not None:
        model = dense
        notes.append("sparse initializer(s) or Constant(s) read as the dense tensors they "
                     "stand for")
    model = _inline_functions(model, notes, where)
    model = _sorted_nodes(model, notes, where, owned=path is not None or model is not given)
    model = _renamed_nodes(model, notes, owned=path is not None or model is not given)
    # the checker, the opset converter, shape inference and the import all run on the
    # skeleton: the weights are read once (here) and copied once (into the result)
    sk = skeleton.split(model, verify=True)
    if outputs is not None:   # first: what it drops is not checked (an exporter's custom head)
        select_outputs(sk, outputs, where, notes)
    once_each_output(sk, notes, where)
    refuse_text_outputs(sk, where)
    check_data_inputs(model, where)
    drop_unread_inputs(sk, notes)
    _check_batch_axes(model, where, sk.model.graph)
    _check_domains(sk.model, where)
    check_model(model, where, sk)
    # a model given as a ModelProto is not load()ed; a head --outputs dropped is not checked
    kept = None if outputs is None else set().union(
        *(walk.read_names(g) for g in walk.subgraphs(sk.model.graph)))
    check_finite_weights(model, where, only=kept)
    meta = metadata_dict(model)
    sk.model = _infer_checking_outputs(canonical.upgrade_opset(sk.model, notes, where), notes, where)
    try:
        graph = _import(sk)
    except Exception as e:
        raise UnsupportedModelError(f"{where}: onnx-graphsurgeon cannot import the graph ({e})") from None
    try:
        nm = _normalize_graph(graph, sk.model, meta, notes, where, sha, path, pool_first)
    except UnsupportedModelError as e:
        msg = str(e)
        raise UnsupportedModelError(msg if msg.startswith(str(where)) else f"{where}: {msg}") from None
    nm.external_data = external
    # a graph input or output named as the spiking format names its own tensors: refused
    # now, not after a calibration pass (the rewrite checks it again)
    from ..spiking import rewrite
    try:
        rewrite.check_reserved_names(nm, len(rewrite.spiking_pools(nm, {s.name: s for s in nm.sites})))
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{where}: {e}") from None
    return nm


def select_outputs(sk: skeleton.Skeleton, names: List[str], where: str, notes: List[str]) -> None:
    """Keep only the graph outputs ``names`` of the skeleton's model (in that order), the
    nodes that compute them and the inputs they read, in place. Exporters that make
    intermediate tensors outputs (tf2onnx's ``from_function``, a debugging export) otherwise
    keep layers alive that the converter must refuse or cannot pair (a clamp's Min as an
    output of its own), and a head of custom ops can be cut off this way (the domain check
    and the ONNX checker then see the kept part only); an unknown or repeated name is a
    UsageError listing the outputs there are."""
    from ..errors import UsageError
    from . import walk
    model = sk.model
    have = [o.name for o in model.graph.output]
    names = list(names)
    if not names:
        raise UsageError(f"--outputs: name at least one of {where}'s outputs: {', '.join(have)}")
    unknown = [n for n in names if n not in have]
    if unknown:
        raise UsageError(f"--outputs: {', '.join(repr(n) for n in unknown)} "
                         f"{'is not an output' if len(unknown) == 1 else 'are not outputs'} of "
                         f"{where}; its outputs are: {', '.join(have)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--outputs: each output once, not {', '.join(names)}")
    if names == have:
        return
    by_name = {o.name: o for o in model.graph.output}
    kept = [onnx.ValueInfoProto() for _ in names]
    for k, n in zip(kept, names):
        k.CopyFrom(by_name[n])
    nodes = walk.prune(list(model.graph.node), names)
    dropped = len(model.graph.node) - len(nodes)
    del model.graph.output[:]
    model.graph.output.extend(kept)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    notes.append(interface(f"--outputs: kept {', '.join(names)} of the {len(have)} outputs "
                           f"({dropped} node(s) computed only the others)"))


def once_each_output(sk: skeleton.Skeleton, notes: List[str], where: str) -> None:
    """Each graph output listed once (an exporter may list a tensor twice: the spiking graph
    makes one step output per name), in place; a graph without outputs is refused."""
    model = sk.model
    names = [o.name for o in model.graph.output]
    if not names:
        raise ModelLoadError(f"{where}: the graph has no outputs, so there is nothing to "
                             "compute; export it with its outputs")
    twice = sorted({n for n in names if names.count(n) > 1})
    if not twice:
        return
    kept, seen = [], set()
    for o in model.graph.output:
        if o.name not in seen:
            seen.add(o.name)
            kept.append(o)
    del model.graph.output[:]
    model.graph.output.extend(kept)
    notes.append(interface(f"output(s) {', '.join(repr(n) for n in twice)} listed more than "
                           "once: kept once"))


def refuse_text_outputs(sk: skeleton.Skeleton, where: str) -> None:
    """A graph output of strings (a class-name table an exporter exposes as a Constant) is
    refused by name, with the numeric outputs that ``--outputs`` can keep: graph-surgeon
    cannot write a string constant back, which failed as an internal error."""
    g = sk.model.graph
    producers = {o: n for n in g.node for o in n.output}

    def text(o) -> bool:
        if o.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            return True
        n = producers.get(o.name)
        return n is not None and n.op_type == "Constant" and any(
            a.name in ("value_string", "value_strings")
            or (a.name == "value" and a.t.data_type == onnx.TensorProto.STRING) for a in n.attribute)
    texts = [o.name for o in g.output if text(o)]
    if not texts:
        return
    rest = [o.name for o in g.output if o.name not in texts]
    raise UnsupportedModelError(
        f"{where}: output(s) {', '.join(repr(t) for t in texts)} hold text (strings), which a "
        "spiking network cannot compute; "
        + (f"keep the numeric ones with --outputs {' '.join(rest)} (the API: outputs=[...])"
           if rest else "the model has no numeric output to convert"))


def own_constant_outputs(graph: gs.Graph) -> int:
    """A weight that is also a graph output (an exporter exposing a bias or a class table
    that a layer reads) becomes two constants: the layers read a copy under a fresh name, and
    the output keeps its own, which the conversion keeps as it is (a layer's weights may be
    refitted, and the spiking graph moves what its steps read). The spiking graph's output
    was left without a producer: its own check failed. Returns how many were split."""
    outputs = {id(t) for t in graph.outputs}
    taken = {t.name for t in graph.tensors().values()}
    split = 0
    for t in list(graph.tensors().values()):
        if not isinstance(t, gs.Constant) or id(t) not in outputs or not t.outputs:
            continue
        copy = gs.Constant(walk.fresh_name(f"{t.name}_weight", taken), values=t.values)
        for node in list(t.outputs):
            node.inputs = [copy if i is t else i for i in node.inputs]
        split += 1
    return split


def drop_unread_inputs(sk: skeleton.Skeleton, notes: List[str]) -> None:
    """Remove the graph inputs that no node and no output reads (keras2onnx's
    ``keras_learning_phase``, a side input of a head that ``--outputs`` dropped), in place:
    the data would have to feed them, and a bool or integer one was refused as an input
    type the converter does not take. A model that reads none of its inputs keeps them."""
    model = sk.model
    ins = list(model.graph.input)
    unread = walk.unread_inputs(model.graph, walk.read_names(model.graph), ins[:sk.n_inputs])
    if not unread:
        return
    del model.graph.input[:]
    model.graph.input.extend(vi for vi in ins if vi.name not in unread)
    sk.n_inputs -= len(unread)
    notes.append(interface(f"dropped the input(s) {', '.join(unread)}: nothing reads them"))


def _inline_functions(model: onnx.ModelProto, notes: List[str], where: str) -> onnx.ModelProto:
    """A model calling model-local functions (onnxscript, the dynamo exporter's modules,
    custom-domain layers made of standard ops) with every call replaced by the function's
    body, recursively; the spiking format's own functions are left (such a model is refused
    as already spiking)."""
    if not model.functions or any(f.domain == DOMAIN for f in model.functions):
        return model
    from onnx import inliner
    try:
        inlined = inliner.inline_local_functions(model, convert_version=True)
    except Exception as e:
        raise UnsupportedModelError(f"{where}: its model-local functions could not be inlined "
                                    f"({str(e).strip()[:200]})") from None
    notes.append(f"inlined {len(model.functions)} model-local function(s): "
                 + ", ".join(sorted({f"{f.domain}.{f.name}" for f in model.functions})))
    del inlined.functions[:]
    return inlined


#: what a node of another domain usually is, and what to do
_DOMAIN_HELP = {
    "com.microsoft": ("onnxruntime's contrib ops (FusedConv, FusedGemm, QLinear... ops from its "
                      "offline graph optimizer or quantizer): convert the model as it was "
                      "exported, not the optimized file onnxruntime wrote "
                      "(SessionOptions.optimized_model_filepath)"),
}


#: onnxruntime's contrib Q/DQ (its quantizer's UseQDQContribOps, int16 and int4): the
#: standard ops' meaning, read by the quantization pass like them
_CONTRIB_QDQ = {"QuantizeLinear", "DequantizeLinear"}


def _check_domains(model: onnx.ModelProto, where: str) -> None:
    """Refuse, before any pass reads the graph by op names, a node of another domain (after
    the model-local functions are inlined) that the passes could take for a standard op: one
    named like a standard op (a custom ``Relu`` may compute anything; only onnxruntime with
    its custom-op library knows it), or one of onnxruntime's contrib ops (FusedConv is a
    convolution and its activation in one node). Other custom ops (a classifier head's
    ai.onnx.ml ZipMap, which a pass drops) are left to the support check. The spiking
    format's own domain is left to the already-spiking check."""
    graphs = walk.subgraphs(model.graph)
    # a QOperator model (QLinearConv and onnxruntime's QGemm beside it) is refused by the
    # quantization pass, with what to do about quantized models
    qoperator = any(n.op_type in quantization.INTEGER_OPS and n.domain in ("", "ai.onnx")
                    for g in graphs for n in g.node)
    for g in graphs:
        for n in g.node:
            if n.domain in ("", "ai.onnx", DOMAIN) or (
                    n.domain != "com.microsoft" and not onnx.defs.has(n.op_type)) or (
                    n.domain == "com.microsoft" and (qoperator or n.op_type in _CONTRIB_QDQ)):
                continue
            what = _DOMAIN_HELP.get(n.domain, "no model-local function defines it, so its "
                                    "meaning is unknown; export it with standard ONNX ops, or "
                                    "define it as a model-local function of standard ops")
            raise UnsupportedModelError(
                f"{where}: node '{n.name or n.op_type}' ({n.domain}::{n.op_type}) is not a "
                f"standard ONNX op: {what}")


def _check_batch_axes(model: onnx.ModelProto, where: str,
                      graph: Optional[onnx.GraphProto] = None) -> None:
    """Refuse an input without a batch axis: one that the model itself unsqueezes at axis 0
    (an export of one unbatched sample). Its first axis would be read as the batch, and the
    data's samples as something else. ``graph``: the inputs and nodes to look at (default
    the model's; the skeleton's after ``--outputs``), the constants are read from ``model``."""
    consts = walk.constant_tensors([model.graph])      # initializers and Constant nodes
    graph = model.graph if graph is None else graph
    for vi in graph.input:
        if vi.name in consts:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in vi.type.tensor_type.shape.dim]
        if 0 in dims:
            raise ModelLoadError(f"{where}: input '{vi.name}' has shape {dims}, with an axis of "
                                 "size 0: it holds no values (no sample to convert or run); "
                                 "export it with the real sizes, or a free batch axis")
        readers = [n for n in graph.node if vi.name in n.input]
        if not readers or any(n.op_type != "Unsqueeze" or n.input[0] != vi.name for n in readers):
            continue
        axes = []
        for n in readers:
            a = walk.attr(n, "axes")
            if a is None and len(n.input) > 1:
                t = consts.get(n.input[1])
                a = None if t is None else onnx.numpy_helper.to_array(t).reshape(-1).tolist()
            axes.append(a)
        first = vi.type.tensor_type.shape.dim[:1]
        if first and not first[0].HasField("dim_value"):
            continue       # a free first axis is a batch-like axis the model moves (seq-first)
        if all(a is not None and 0 in [int(v) for v in a] for a in axes):
            raise UnsupportedModelError(
                f"{where}: input '{vi.name}' of shape {dims} has no batch axis: the model adds "
                f"one itself (node '{readers[0].name or 'Unsqueeze'}' unsqueezes axis 0), so it "
                "runs one sample at a time; re-export it with a batch axis (e.g. "
                f"torch.onnx.export with an input of shape {[1] + dims} and "
                f"dynamic_axes={{'{vi.name}': {{0: 'N'}}}}, without the unsqueeze)")


def _sorted_nodes(model: onnx.ModelProto, notes: List[str], where: str,
                  owned: bool = False) -> onnx.ModelProto:
    """``model`` with its nodes in a topological order (onnxruntime runs a graph whose nodes
    are listed out of order; the ONNX checker and the passes need them sorted): the model
    itself when they are, or when it is ``owned`` (read from a file here: sorted in place),
    else a copy with them sorted (the caller's model is not changed). A tensor that nothing
    makes, or a cycle, is refused naming the node."""
    order, why = walk.topological_order(model.graph)
    if order is None:
        raise ModelLoadError(f"{where}: the graph cannot run: {why}. The file is damaged or "
                             "was built wrong; re-export the model")
    if order == sorted(order):
        return model
    if owned:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    walk.reorder_nodes(out.graph, order)
    late = sum(1 for pos, k in enumerate(order) if k != pos)
    notes.append(f"sorted the graph's nodes topologically ({late} of {len(order)} were listed "
                 "out of order)")
    return out


def _renamed_nodes(model: onnx.ModelProto, notes: List[str], owned: bool) -> onnx.ModelProto:
    """``model`` with nodes that share a name, or are named as the spiking format names its
    own, renamed by :func:`onnx_snn.model_io.rename_nodes` (the scheme of every command):
    in place when ``owned``, else in a copy (the caller's model is not changed)."""
    from ..model_io import rename_nodes
    names = [n.name for n in model.graph.node if n.name]
    if len(set(names)) == len(names) and not any(fmt.may_be_reserved(x) for x in names):
        return model
    out = model
    if not owned:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    moved = rename_nodes(out)
    notes.append(f"renamed {len(moved)} node name(s) the spiking format reserves or that two "
                 "nodes shared: " + "; ".join(moved[:8]) + ("; ..." if len(moved) > 8 else ""))
    return out


def _no_sites_error(graph: gs.Graph, where: str) -> UnsupportedModelError:
    expects = ("no ReLU-type activation found, so there is nothing to turn into spiking "
               "neurons; the converter expects Relu or clipped-ReLU (Clip(0, mu)) layers")
    first = first_nonlinearity(graph)
    if first is None:
        return UnsupportedModelError(f"{where}: {expects}")
    node, what = first
    return UnsupportedModelError(f"{where}: {node_label(node)} is {what}; {expects}")


def _normalize_graph(graph, model, meta, notes, where, sha, path, pool_first=False) -> NormalizedModel:
    _free_reserved_names(graph, notes)
    _name_nodes(graph)
    split = own_constant_outputs(graph)          # before folding changes a weight in place
    pass_log = run_passes(graph, PIPELINE)
    split += own_constant_outputs(graph)         # a Constant node's (or an Identity's) folded now
    if split:
        notes.append("a weight that is also a graph output is kept as that output; its layers "
                     "read a copy")
    for r in pass_log:
        notes.extend(r.notes)
    records = {r.name: r.records for r in pass_log}
    dropouts: List[dict] = list(records[cleanup.remove_identity_and_dropout.name])
    sites: List[Site] = records[canonicalize_sites.name]
    # why a pass left a node the support check refuses (a Resize, a Scaler, a HardSigmoid),
    # for its message
    detail = {**dict(records.get(resize.resize_constant_form.name, [])),
              **dict(records.get(canonical.ml_scaler_to_affine.name, [])),
              **dict(records.get(canonical.hard_sigmoid_to_clip.name, [])),
              **dict(records.get(canonical.masked_relu_to_relu.name, [])),
              **dict(next((r.skipped for r in pass_log
                           if r.name == quantization.fake_quantization.name), []))}
    if not sites:
        try:      # an unsupported layer is named first, as when the model has sites too
            check_supported(graph, set(), detail)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"{e} (besides, the model has no ReLU-type activation "
                                        "to turn into spiking neurons)") from None
        raise _no_sites_error(graph, where)
    check_supported(graph, {s.name for s in sites}, detail)
    moved = 0
    if pool_first:
        r = canonical.pool_before_sites(graph, sites)
        pass_log.append(r)
        moved = r.changed
        renamed = dict(r.records)      # a dropout on a moved activation stays after it
        for d in dropouts:
            d["tensor"] = renamed.get(d["tensor"], d["tensor"])
        notes.append(f"--pool-first: moved {moved} max pool(s) ahead of their activation"
                     + (f"; left {len(r.skipped)}: " + "; ".join(f"'{n}': {w}" for n, w in r.skipped)
                        if r.skipped else ""))

    graph.cleanup().toposort()
    _name_nodes(graph)
    if not pool_first:
        _note_pooled_currents(graph, sites, notes)
    tensors = {t.name for n in graph.nodes for t in n.outputs} | {t.name for t in graph.inputs}
    stale = [d for d in dropouts if d["tensor"] not in tensors]
    if stale:
        notes.append(WARNING_NOTE + f"{len(stale)} dropout layer(s) sit inside an activation and are not "
                     "recorded for fine-tuning")
        dropouts[:] = [d for d in dropouts if d["tensor"] in tensors]
    out = export(graph)
    out.ir_version = max(model.ir_version, 8)
    del out.metadata_props[:]
    for k, v in meta.items():
        out.metadata_props.add(key=k, value=v)
    # the left-out weights need no second look: each is a copy of a tensor of the source,
    # which passed the checker above, or was made from an array (its size is its shape's)
    sk = skeleton.split(out)
    inferred = _infer_shapes(sk.model)
    if inferred is not sk.model:
        skeleton.restore(inferred, out, sk)
        _drop_settled_notes(notes, inferred)
    try:
        onnx.checker.check_model(inferred)   # = checking ``out`` (see graph.skeleton)
    except onnx.checker.ValidationError as e:  # a bug here, not the user's
        raise InternalError(f"{where}: the normalized model fails the ONNX checker ({e}); "
                            "please report this with the model") from None

    preprocess = None
    if fmt.META_PREPROCESS in meta:
        # checked here, where every command reads a DNN: a damaged record is refused by name
        # (convert refused some forms as "the model", ignored others; eval ignored them all
        # and scored raw pixels: 51.6 % where 93.4 % was right)
        named = where or path or "the DNN"
        preprocess = parse_preprocess(meta[fmt.META_PREPROCESS], named)
        if unread_preprocess(preprocess):     # said once, and not carried into the SNN
            notes.append(WARNING_NOTE + unread_preprocess_note(preprocess, named))
            preprocess = {k: v for k, v in preprocess.items() if k in PREPROCESS_KEYS}
        preprocess = dnn_preprocess(preprocess, named)
    if preprocess is None and records.get(inputs.uint8_input_to_float.name):
        preprocess = dict(inputs.PIXELS_255)      # named datasets fed as raw 0-255 pixels
    return NormalizedModel(model=out, sites=sites, notes=notes, dropouts=dropouts,
                           source_sha256=sha, source_path=path, preprocess=preprocess,
                           source_metadata=meta, pass_log=pass_log, pools_moved=moved)
