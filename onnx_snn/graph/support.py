"""What the spiking rewrite can carry, and a check that names the first node it cannot."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .cleanup import HEAD_TAIL, _path_to_output, head_nodes
from .ir import const_value, depends_on_inputs, is_empty, node_label, rank

#: layers whose output is a linear function of their (spiking) input
LINEAR_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg",
    "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Pad",
}
#: data movement and shape computation
STRUCTURAL_OPS = {
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
    "Shape", "Size", "Gather", "GatherND", "Cast", "Constant", "ConstantOfShape", "Expand", "Identity",
    "Range", "Tile", "DepthToSpace", "SpaceToDepth",
    # nearest (each output copies one input) or linear (a fixed weighted sum of neighbours,
    # like an average pool); see _resize_unsupported
    "Resize",
}
#: exact on spike trains of one amplitude per layer (max of spikes is a spike)
SPIKE_OPS = {"MaxPool", "GlobalMaxPool"}
#: the canonical activation nodes that become neurons
SITE_OPS = {"Clip", "Relu"}

SUPPORTED_OPS = LINEAR_OPS | STRUCTURAL_OPS | SPIKE_OPS
#: supported in shape arithmetic alone, on sizes that no data flows into (tf2onnx writes a
#: Keras Dense on a 4-D tensor, a tensordot, as Reshape to [prod(N, H, W), C] with the
#: product a ReduceProd of the Shape's gathered sizes; the batch keeps it from folding)
SHAPE_ONLY_OPS = {"ReduceProd", "ReduceMin", "ReduceMax"}

#: operations that multiply or divide two data tensors are not linear in the spikes
_BILINEAR = {"Mul", "Div", "MatMul"}

SUPPORTED_HELP = ("supported layers: Conv, Gemm, MatMul, Add, MaxPool, AveragePool (1-D, "
                  "2-D, 3-D), GlobalAveragePool, GlobalMaxPool, Flatten, Reshape, Concat, Pad, "
                  "nearest and linear Resize and shape ops; "
                  "activations: "
                  "Relu, Clip(lo, hi) (ReLU6, Hardtanh), Relu+Min(mu), Max(x, c)(+Min(mu)), a "
                  "Where-ReLU, LeakyRelu(0) and HardSigmoid(alpha > 0)")
#: what to do about an activation the spiking neuron cannot express
_ACTIVATION_FIX = ("the neurons compute ReLUs and clipped ReLUs only, so replace it in the DNN "
                   "(a LeakyRelu, PRelu, Sigmoid, Tanh, SiLU, Gelu or HardSwish by "
                   "a ReLU or ReLU6, a layer or "
                   "instance normalization by BatchNormalization) and fine-tune it briefly "
                   "before converting")


def check_supported(graph: gs.Graph, site_names: set, detail: Optional[dict] = None) -> None:
    """Raise :class:`UnsupportedModelError` naming the first node that cannot be converted.
    ``detail``: node name -> why a pass left it (added to a refused Resize's message)."""
    detail = detail or {}
    graph.toposort()
    dynamic = depends_on_inputs(graph)
    spiking = _after_sites(graph, site_names)
    shape_only = None       # the first unsupported node of shape arithmetic alone
    for node in graph.nodes:
        more = f" ({detail[node.name]})" if node.name in detail else ""   # why a pass left it
        if node.domain not in ("", "ai.onnx", None):
            raise UnsupportedModelError(
                f"{node_label(node)}: custom-domain op '{node.domain}' is not supported{more}; "
                + SUPPORTED_HELP)
        if node.name in site_names and node.op in SITE_OPS:
            continue
        if node.op in SHAPE_ONLY_OPS and not _reads_data(node, dynamic):
            continue
        if node.op not in SUPPORTED_OPS and not _reads_data(node, dynamic):
            # sizes, not data (a free batch size kept it from folding): a layer refused
            # further on is what the user has to change, so it is named first
            shape_only = shape_only or (node, more)
            continue
        if node.op not in SUPPORTED_OPS:
            head = _output_head_why(graph, node)
            if head:
                raise UnsupportedModelError(f"{node_label(node)} {head}")
            if node.op in ("Max", "Min") and sum(i.name in dynamic for i in node.inputs) > 1:
                which = ", ".join(f"'{i.name}'" for i in node.inputs if i.name in dynamic)
                raise UnsupportedModelError(
                    f"{node_label(node)} takes the elementwise {node.op.lower()}imum of "
                    f"{which} (a maxout, or branches merged by their {node.op.lower()}imum): a "
                    "neuron's spike count cannot follow the larger or smaller of two other "
                    "layers' values step by step; merge the branches with an Add or a Concat in "
                    f"the DNN and fine-tune it briefly; {SUPPORTED_HELP}")
            if node.op in _NONLINEAR:
                gate = _gated_product(node, dynamic)
                fix = _ACTIVATION_FIX if gate is None else (
                    f"it gates {node_label(gate)}, a product of two data tensors (a "
                    "squeeze-and-excitation or attention gate), which a ReLU in its place would "
                    "not make linear in the spikes: retrain the DNN without the gate")
                raise UnsupportedModelError(f"{node_label(node)}{_PIECE_OF.get(node.op, '')} is a "
                                            f"nonlinearity the spiking rewrite cannot express{more}: "
                                            f"{fix}; {SUPPORTED_HELP}")
            if node.op in _UNSUPPORTED_HINTS:
                hint = _UNSUPPORTED_HINTS[node.op]
                if node.op == "ReduceMax" and _reduces_channels(node):
                    hint = ("a maximum over the channels (CBAM's channel pooling) is no spike "
                            "count of one neuron; replace it in the DNN (a mean over the "
                            "channels, ReduceMean, is linear) and fine-tune")
                raise UnsupportedModelError(f"{node_label(node)} is not supported: {hint}; "
                                            f"{SUPPORTED_HELP}")
            if node.op in _COMPARES and _reads_data(node, dynamic):
                raise UnsupportedModelError(f"{node_label(node)} {_COMPARES_WHY}; "
                                            f"{_ACTIVATION_FIX}; {SUPPORTED_HELP}")
            raise UnsupportedModelError(f"{node_label(node)} is not supported{more}; "
                                        f"{SUPPORTED_HELP}")
        if node.op == "MaxPool" and len(node.outputs) > 1 and _is_read(graph, node.outputs[1]):
            raise UnsupportedModelError(
                f"{node_label(node)} gives the indices of its maxima ('{node.outputs[1].name}'), "
                "which the model reads (a MaxUnpool, an argmax-based decoder): a max pool of "
                "spike counts has no single index that stays the same over the time steps; "
                "export the DNN without the indices (upsample by Resize or ConvTranspose "
                f"instead of unpooling); {SUPPORTED_HELP}")
        if _multiplies_data(node, dynamic) and _reads_data(node, spiking):
            raise UnsupportedModelError(f"{node_label(node)} {_BILINEAR_WHY}; {SUPPORTED_HELP}")
        why = _resize_unsupported(node) if node.op == "Resize" else None
        if why:
            raise UnsupportedModelError(f"{node_label(node)}: Resize {why}{more}; only a nearest "
                                        "or linear Resize of the spatial axes by constant scales "
                                        "or sizes is supported")
        for o in node.outputs:
            kind = _other_float(o.dtype) if o.name in dynamic else None
            if kind and node.op == "Cast":        # a float32 model's step in another type
                raise UnsupportedModelError(
                    f"{node_label(node)} casts data to {kind} inside a float32 model; only "
                    "float32 layers are supported (float16 and float64 models as a whole are "
                    "converted in float32, not a step inside a float32 one): remove this Cast "
                    "and the Cast back to float32 from the DNN (or export the step in float32)")
            if kind:
                raise UnsupportedModelError(
                    f"{node_label(node)} computes '{o.name}' in {kind}; only float32 layers "
                    "are supported (float16 and float64 models are converted in float32; "
                    "bfloat16, float8 and a float16/float64 step inside a float32 model are "
                    "not): convert the model to float32")
    if shape_only is not None:
        node, more = shape_only
        raise UnsupportedModelError(
            f"{node_label(node)} is not supported{more}: it is shape arithmetic ({node.op} of "
            "tensor sizes, no data flows into it) that a free size of the input, such as the "
            "batch, keeps from being computed once; export the model with fixed input sizes "
            "(no dynamic axes), or without the op that computes a size; " + SUPPORTED_HELP)
    for t in graph.inputs:
        try:
            dtype = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
        except TypeError:
            dtype = None
        if dtype != np.float32:
            raise UnsupportedModelError(
                f"graph input '{t.name}' is {t.dtype}; only float32 inputs are supported, and "
                "raw uint8 pixels that the graph casts to float32 first: re-export the model "
                "with a float32 input")


_BILINEAR_WHY = ("multiplies or divides two data tensors, which is not linear in the spikes "
                 "(an attention product; a gate such as squeeze-and-excitation's x * "
                 "sigmoid(...), which stays one after its activation is replaced; a "
                 "normalization's division): retrain the DNN without that part")

def _reduces_channels(node: gs.Node) -> bool:
    """Whether a reduction takes axis 1 (the channels) or every axis (no axes given)."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and not is_empty(node.inputs[1]):
        axes = const_value(node.inputs[1])
    if axes is None:
        return True
    r = rank(node.inputs[0])
    return any(int(a) == 1 or (r is not None and int(a) + r == 1) for a in np.ravel(axes))


#: what to do about an unsupported op that has a supported equivalent
_UNSUPPORTED_HINTS = {
    "ReduceMax": ("a maximum over the data's axes is converted when it spans every spatial "
                  "axis (a global max pool); over some of them, write it as a MaxPool whose "
                  "kernel spans those axes (F.max_pool2d(x, (H, 1)) for the height alone)"),
    "ReduceMin": ("a minimum of spikes is no spike count; replace it in the DNN (a MaxPool or "
                  "AveragePool) and fine-tune"),
    "LpPool": ("an LP pool (a p-norm of each window) is not linear in the spikes (only p = 1 "
               "of a tensor that cannot be negative, a sum pool, without ceil_mode or "
               "dilations, is converted); replace it by a MaxPool or AveragePool in the DNN "
               "and fine-tune"),
    "GlobalLpPool": ("an LP pool (a p-norm of each window) is not linear in the spikes (only "
                     "p = 1 of a tensor that cannot be negative, a sum, is converted); replace "
                     "it by a GlobalMaxPool or GlobalAveragePool in the DNN and fine-tune"),
    **{op: ("a recurrent layer (sigmoid and tanh gates carried across the sequence) has no "
            "integrate-and-fire form; model the sequence with convolutions over its axis "
            "(Conv1d) and ReLUs in the DNN, or convert only the part before it")
       for op in ("LSTM", "GRU", "RNN")},
}

#: comparisons of the data (a mask, a step) that no pass read as a ReLU written with a mask
_COMPARES = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal", "Not", "And", "Or",
             "Xor", "Where"}
_COMPARES_WHY = ("compares the data (a thresholded ReLU, x where x > theta else 0, as Keras's "
                 "ReLU(threshold=...) exports; or a mask): a step the spiking neurons cannot "
                 "express (a ReLU written as Where(x > 0, x, 0) or x * Cast(x > 0) is read as "
                 "one)")


#: Resize coordinate modes whose nearest-neighbour form the torch runtime computes
RESIZE_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                      "tf_half_pixel_for_nn")
#: ... and whose linear form it computes (tf_half_pixel_for_nn is for nearest only)
LINEAR_RESIZE_COORDINATES = RESIZE_COORDINATES[:4]


def _resize_unsupported(node: gs.Node) -> Optional[str]:
    """Why a Resize cannot be carried (None when it can): a nearest-neighbour resize of the
    spatial axes by constant scales or sizes, in a coordinate mode of RESIZE_COORDINATES, or
    a bilinear one of an NCHW tensor (no antialiasing) in a mode of LINEAR_RESIZE_COORDINATES.
    Both are linear in the spikes; a nearest one also keeps them spikes."""
    a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in node.attrs.items()}
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear"):
        return f"in mode '{mode}'"
    if ctm not in (RESIZE_COORDINATES if mode == "nearest" else LINEAR_RESIZE_COORDINATES):
        return f"in mode '{mode}' with coordinate_transformation_mode '{ctm}'"
    if mode == "linear" and int(a.get("antialias", 0)):
        return "with antialias"
    if mode == "linear" and int(a.get("exclude_outside", 0)):
        return "in mode 'linear' with exclude_outside (onnxruntime allows it only antialiased)"
    if a.get("axes") is not None or a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "with axes or keep_aspect_ratio_policy"
    ins = list(node.inputs)
    scales = const_value(ins[2]) if len(ins) > 2 and not is_empty(ins[2]) else None
    sizes = const_value(ins[3]) if len(ins) > 3 and not is_empty(ins[3]) else None
    given = [v for v in (scales, sizes) if v is not None and v.size]
    if not given:
        return "by scales or sizes that are not constant"
    x = ins[0]
    rank = (scales if scales is not None and scales.size else sizes).size
    if mode == "linear" and rank != 4:
        return f"in mode 'linear' of a {rank}-D tensor (only NCHW: bilinear)"
    if scales is not None and scales.size:
        if scales.size < 2 or float(scales[0]) != 1.0 or float(scales[1]) != 1.0:
            return "of the batch or channel axis"
    else:
        dims = list(x.shape) if x.shape is not None else None
        if dims is None or len(dims) != sizes.size or not isinstance(dims[1], int) \
                or int(sizes[1]) != dims[1]:
            return "to sizes whose channel count is not the input's"
        if not (isinstance(dims[0], int) and int(sizes[0]) == dims[0]):
            # (a nearest one too: it resized a batch of 16 to 64, and the spiking loop failed)
            return (f"to sizes with batch {int(sizes[0])}, which fixes the batch (the input's "
                    f"is {dims[0]}); resize by scales instead")
    return None


def _other_float(dtype) -> Optional[str]:
    """The name of a floating-point type other than float32 (float16, bfloat16, float64, the
    float8 types), else None."""
    if dtype is None:
        return None
    try:
        d = np.dtype(dtype)
    except TypeError:
        return None
    name = str(d)
    if d == np.float32 or not (d.kind == "f" or "float" in name):
        return None
    return name


def _reads_data(node: gs.Node, dynamic: set) -> bool:
    """Whether any input of ``node`` depends on the data (``dynamic``: depends_on_inputs),
    not on constants and shapes alone."""
    return any(t.name in dynamic for t in node.inputs if not is_empty(t))


def _after_sites(graph: gs.Graph, site_names: set) -> set:
    """Names of the tensors computed from a site's output (spikes in the spiking graph); a
    product of tensors outside it (``x * gain`` of two model inputs before the first spiking
    layer) is the same at every step, an input current like any other."""
    after = set()
    for node in graph.nodes:       # toposorted by the caller
        if node.name in site_names or any(t.name in after for t in node.inputs if not is_empty(t)):
            after.update(o.name for o in node.outputs)
    return after


def _multiplies_data(node: gs.Node, dynamic: set) -> bool:
    """Mul/MatMul of two data tensors, or Div by one."""
    if node.op not in _BILINEAR:
        return False
    ins = [t for t in node.inputs if not is_empty(t)]
    return sum(t.name in dynamic for t in ins) > 1 or (
        node.op == "Div" and len(ins) > 1 and ins[1].name in dynamic)


def _gated_product(node: gs.Node, dynamic: set, depth: int = 6) -> Optional[gs.Node]:
    """The product of two data tensors that ``node``'s output reaches through at most
    ``depth`` ops of one data input (a gate's sigmoid, then reshapes, scalings, expands), or
    None: the gate of squeeze-and-excitation and attention, whose product a replaced
    activation would leave."""
    own = _elementwise_ancestors(node.inputs[0], dynamic) if node.inputs else set()
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for out in n.outputs:
                for c in out.outputs:
                    if _multiplies_data(c, dynamic):
                        other = [t for t in c.inputs if t is not out and t.name in dynamic]
                        if any(_elementwise_ancestors(t, dynamic) & own for t in other):
                            return None   # x * sigmoid(x), a GELU: an activation, no gate
                        return c
                    if c.op not in _GATE_STOPS and \
                            sum(t.name in dynamic for t in c.inputs if not is_empty(t)) == 1:
                        nxt.append(c)
        frontier = nxt
    return None


#: ops of one data input that keep each value's place (a gate's own input is read through them)
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Cast", "Identity", "Neg", "Relu", "Clip", "Erf",
                "Tanh", "Sigmoid", "Softplus", "Exp"}
#: where the walk from a gate's activation to its product stops: a layer with weights (an
#: activation that feeds a convolution whose output is gated later, MobileNetV3's HardSwish
#: before a squeeze-and-excitation block, is the gated data, not the gate); elementwise ops,
#: reshapes, slices, resizes and pools pass (Attention U-Net upsamples its sigmoid gate)
_GATE_STOPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul",
               "MatMulInteger", "QLinearMatMul", "Einsum", "LSTM", "GRU", "RNN"}


def _elementwise_ancestors(t, dynamic: set, depth: int = 8) -> set:
    """``t``'s name and those of the tensors it is computed from through elementwise ops of
    one data input (at most ``depth`` steps): what a product of ``x`` and ``f(x)`` shares."""
    names = set()
    for _ in range(depth):
        names.add(t.name)
        producers = t.inputs
        if not producers or producers[0].op not in _ELEMENTWISE:
            break
        data = [i for i in producers[0].inputs if i.name in dynamic]
        if len(data) != 1:
            break
        t = data[0]
    return names


def first_nonlinearity(graph: gs.Graph, site_names: set = frozenset()) -> Optional[Tuple[gs.Node, str]]:
    """The first node, in topological order, that computes a nonlinear function of the input
    data and is not one of the sites, with a phrase saying what it is; None when none does."""
    graph.toposort()
    dynamic = depends_on_inputs(graph)
    for node in graph.nodes:
        if node.name in site_names and node.op in SITE_OPS:
            continue
        if not _reads_data(node, dynamic):
            continue  # shape arithmetic
        if node.op in _NONLINEAR:
            return node, "a nonlinearity the spiking rewrite cannot express"
        if _multiplies_data(node, dynamic):
            return node, _BILINEAR_WHY
    return None


#: post-processing of a classifier's outputs (a serving signature's class ids)
_POSTPROCESS = {"ArgMax", "ArgMin", "TopK", "Softmax", "LogSoftmax"}


def _is_read(graph: gs.Graph, t) -> bool:
    """Whether a node or the graph's outputs read the tensor ``t``."""
    return not is_empty(t) and (bool(t.outputs) or any(o is t for o in graph.outputs))


def _output_head_why(graph: gs.Graph, node: gs.Node) -> Optional[str]:
    """Why ``node`` is refused when it post-processes the outputs and the normalization left
    it (``cleanup.strip_output_head`` drops an ArgMax, or a TopK of the largest, over the
    classes of [N, classes] scores; ``strip_final_softmax`` a Softmax whose output goes to the
    outputs alone): what to do instead; None for any other node."""
    if node.op not in _POSTPROCESS | {"Sigmoid"}:
        return None
    head = head_nodes(node)        # everything downstream must be post-processing or layout
    if head is None and node.op in ("Softmax", "LogSoftmax"):
        cut = head_nodes(node, HEAD_TAIL + ("Slice", "Split"))
        if cut is not None and any(c.op in ("Slice", "Split") for c in cut):
            return (f"is the output head's {node.op}, cut into several outputs (one per class, "
                    "as skl2onnx writes zipmap='columns'): the spiking model outputs logits, "
                    "all classes in one [N, classes] output. Export the classifier with one "
                    "scores output (skl2onnx: options={id(model): {'zipmap': False}}, or the "
                    "default ZipMap), whose final Softmax is dropped")
    if node.op in ("Softmax", "LogSoftmax") and _over_the_batch(node):
        return (f"is a {node.op} over the batch axis (axis 0): it normalizes across the samples "
                "of a batch, not over each sample's classes, so no spiking model (which runs "
                "each sample alone) can compute it; export the model with its Softmax over the "
                "classes (axis 1 or -1), or without it")
    if node.op in ("Softmax", "LogSoftmax", "Sigmoid") and head is None \
            and _post_processes(node):
        _, why = _path_to_output(graph, node.outputs[0], monotone=True,
                                 positive=node.op in ("Softmax", "Sigmoid"))
        if why.startswith("its output feeds ") and why.endswith("not a graph output"):
            why += ": it can reorder the classes"
        several = (", or convert it with only the outputs you need, such as its class ids "
                   "alone (convert --outputs NAME; outputs= in Python)"
                   if len(graph.outputs) > 1 else "")
        return (f"is the output head's {node.op}: a spiking model outputs time-averaged logits, "
                f"and the conversion drops a final {node.op} only with reshapes and "
                "order-keeping ops after it on the way to an output alone (Log, Exp, Sqrt, one "
                f"positive scale or one shift for all classes), not here ({why}); export the "
                "model without its post-processing (its logits) and apply that to the spiking "
                f"model's outputs{several}")
    if head is None:
        return None
    after = ", ".join(f"'{c.name}' ({c.op})" for c in head[1:])
    if node.op in ("Softmax", "LogSoftmax"):
        what = (f"is the output head's {node.op}, and its output is also read by {after}: a "
                f"final {node.op} is dropped (the spiking model outputs time-averaged logits) "
                "only when its output goes to the model's outputs alone")
    else:
        what = (f"post-processes the outputs ({node.op}{', then ' + after if after else ''}) in "
                "a way the conversion does not drop (it drops an ArgMax, or a TopK of the "
                "largest, over axis 1 of [N, classes] scores)")
    return (f"{what}; a spiking model outputs the time-averaged logits: export the model "
            "without its post-processing and apply it to the spiking model's outputs")


def _post_processes(node: gs.Node) -> bool:
    """Whether everything downstream of ``node`` computes from its values and constants alone,
    with no layer or activation: a head on the outputs, not a gate such as SiLU's
    x * sigmoid(x) or an attention's softmax."""
    seen, made, todo = {id(node)}, {id(t) for t in node.outputs}, [node]
    while todo:
        for t in todo.pop().outputs:
            for c in t.outputs:
                if id(c) in seen:
                    continue
                if c.op in SITE_OPS or c.op in SPIKE_OPS or c.op in (LINEAR_OPS - _ELEMENTWISE):
                    return False
                if any(id(i) not in made and not is_empty(i) and const_value(i) is None
                       for i in c.inputs):
                    return False        # it reads other data too
                seen.add(id(c))
                made.update(id(o) for o in c.outputs)
                todo.append(c)
    return True


#: elementwise linear ops (with a constant: a scale or shift of a head's values)
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Neg"}


def _over_the_batch(node: gs.Node) -> bool:
    """Whether a Softmax/LogSoftmax normalizes over axis 0: its own ``axis``, or, written as
    opset 13 reads an older one, a Flatten at axis 0 before it (all of the batch in one row)."""
    if node.attrs.get("axis", None) == 0:
        return True
    x = node.inputs[0] if node.inputs else None
    src = x.inputs[0] if x is not None and len(x.inputs) == 1 else None
    return src is not None and src.op == "Flatten" and src.attrs.get("axis", 1) == 0


#: what an op usually is a piece of, when an exporter writes a layer out in elementwise ops
_PIECE_OF = {"Erf": " (likely part of a GELU written out by the exporter)",
             "Pow": (" (likely part of a LayerNorm's variance written out by the exporter, or "
                     "of an LP pool, Pow, AveragePool, Pow: nn.LPPool2d, which a MaxPool or "
                     "AveragePool can replace)"),
             "Sqrt": " (likely part of a normalization written out by the exporter)",
             "Reciprocal": " (likely part of a normalization written out by the exporter)"}

_NONLINEAR = {
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "LRN", "LeakyRelu", "PRelu", "Elu", "Selu",
    "Celu", "Gelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Exp", "Log", "Sqrt",
    "Pow", "Abs", "Erf", "ThresholdedRelu", "Mish", "Sin", "Cos", "Reciprocal",
    "LpNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "Max", "Min", "Clip", "Relu", "Sign", "Floor", "Ceil", "Round",
}
