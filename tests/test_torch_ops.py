"""Every operator of the torch runtime (runtimes/torch/ops.py) against onnx.reference.

Each case is a one-node ONNX model at a given opset, built with onnx.helper and run on small
seeded random inputs by onnx.reference.ReferenceEvaluator (or by onnxruntime where the
reference evaluator is marked as wrong or lacking, see `ref="ort"`) and by `run_op` on torch
tensors, with the node's attributes parsed by `parse_attrs` exactly as the network does.
Outputs must have the same shape and dtype; floats agree to rtol 1e-5 / atol 1e-6, everything
else exactly.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from onnx_snn.runtimes.torch.ops import OPS, parse_attrs, run_op  # noqa: E402

RNG = np.random.default_rng(20240611)


def f32(*shape):
    """Multiples of 1/8 in [-2, 2]: sums of products of a few hundred of them are exact in
    float32, so the order of accumulation cannot make two correct runtimes differ."""
    return (RNG.integers(-16, 17, size=shape) / 8).astype(np.float32)


def nonzero(*shape):
    """Like f32, without zeros (divisors)."""
    sign = np.where(RNG.random(shape) < 0.5, -1, 1)
    return (sign * RNG.integers(1, 17, size=shape) / 8).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def ints(lo, hi, *shape, dtype=np.int64):
    return RNG.integers(lo, hi, size=shape).astype(dtype)


def tensor(a):
    return numpy_helper.from_array(np.asarray(a))


@dataclass
class Case:
    op: str
    inputs: List[Optional[np.ndarray]]
    attrs: dict = field(default_factory=dict)
    opset: int = 13
    outputs: int = 1
    ref: str = "onnx"  # or "ort": onnxruntime, where onnx.reference is wrong or lacks it
    exact: bool = False  # bit-identical to the reference, not only within 1e-5


CASES = []


def case(name, op, inputs, attrs=None, opset=13, outputs=1, ref="onnx", exact=False):
    CASES.append(pytest.param(Case(op, list(inputs), dict(attrs or {}), opset, outputs, ref, exact),
                              id=f"{op}-{name}-op{opset}"))


# ---------------------------------------------------------------------------- Conv
for n, shape in ((1, (2, 4, 9)), (2, (2, 4, 7, 8)), (3, (1, 2, 5, 6, 4))):
    k = [3] * n
    case(f"{n}d", "Conv", [f32(*shape), f32(3, shape[1], *k)], {})
    case(f"{n}d-bias-pads-strides", "Conv", [f32(*shape), f32(3, shape[1], *k), f32(3)],
         {"pads": [1] * 2 * n, "strides": [2] * n})
x, w = f32(2, 4, 9, 10), f32(6, 4, 3, 2)
b = f32(6)
case("kernel_shape-attr", "Conv", [x, w, b], {"kernel_shape": [3, 2]})
case("strides-dilations", "Conv", [x, w, b], {"strides": [2, 3], "dilations": [2, 1]})
case("asym-pads", "Conv", [x, w, b], {"pads": [0, 1, 2, 0]})
case("asym-pads-stride2-dil2", "Conv", [x, w, b], {"pads": [1, 0, 0, 2], "strides": [2, 2],
                                                    "dilations": [2, 2]})
case("groups2", "Conv", [x, f32(6, 2, 3, 3), b], {"group": 2, "pads": [1, 1, 1, 1]})
case("depthwise", "Conv", [x, f32(4, 1, 3, 3), None], {"group": 4, "strides": [2, 2]})
case("depthwise-multiplier", "Conv", [x, f32(8, 1, 3, 3), f32(8)], {"group": 4})
for mode in ("SAME_UPPER", "SAME_LOWER", "VALID"):
    for s in (1, 2, 3):
        case(f"{mode}-s{s}", "Conv", [x, f32(5, 4, 4, 3), f32(5)],
             {"auto_pad": mode, "strides": [s, s]})
    case(f"{mode}-dil2", "Conv", [x, f32(5, 4, 2, 3)], {"auto_pad": mode, "dilations": [2, 2]})
case("SAME_UPPER-1d", "Conv", [f32(1, 2, 10), f32(3, 2, 4)], {"auto_pad": "SAME_UPPER", "strides": [3]})

# ---------------------------------------------------------------------------- ConvTranspose
x = f32(2, 4, 5, 6)
case("plain", "ConvTranspose", [x, f32(4, 3, 3, 3)], {})
case("bias-stride2-pads", "ConvTranspose", [x, f32(4, 3, 3, 3), f32(3)],
     {"strides": [2, 2], "pads": [1, 1, 1, 1]})
case("output_padding", "ConvTranspose", [x, f32(4, 3, 3, 3), f32(3)],
     {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]})
case("stride-kernel-4x4", "ConvTranspose", [x, f32(4, 2, 4, 4), f32(2)],
     {"strides": [2, 2], "pads": [1, 1, 1, 1]})
case("dilations", "ConvTranspose", [x, f32(4, 3, 3, 2)], {"dilations": [2, 3], "strides": [1, 2]})
# onnx.reference's ConvTranspose fails on group > 1 (reshape error): onnxruntime
case("groups", "ConvTranspose", [x, f32(4, 3, 3, 3), f32(6)], {"group": 2, "strides": [2, 1]}, ref="ort")
case("depthwise", "ConvTranspose", [x, f32(4, 1, 2, 2)], {"group": 4, "strides": [2, 2]}, ref="ort")
case("asym-pads", "ConvTranspose", [x, f32(4, 3, 3, 3), f32(3)],
     {"strides": [2, 2], "pads": [0, 1, 2, 0]})
case("asym-pads-output_padding", "ConvTranspose", [x, f32(4, 3, 3, 3), f32(3)],
     {"strides": [2, 3], "pads": [1, 0, 0, 2], "output_padding": [1, 2]})
case("kernel_shape-attr", "ConvTranspose", [x, f32(4, 3, 3, 2)], {"kernel_shape": [3, 2]})
case("1d", "ConvTranspose", [f32(2, 3, 7), f32(3, 2, 3), f32(2)], {"strides": [3], "pads": [1, 1]})
case("3d", "ConvTranspose", [f32(1, 2, 3, 4, 3), f32(2, 2, 2, 2, 2)], {"strides": [2, 2, 2]})
for mode in ("SAME_UPPER", "SAME_LOWER", "VALID"):
    case(f"{mode}", "ConvTranspose", [x, f32(4, 3, 3, 4), f32(3)], {"auto_pad": mode, "strides": [2, 2]})
    case(f"{mode}-s1-odd-total", "ConvTranspose", [x, f32(4, 3, 4, 3), f32(3)], {"auto_pad": mode})
# onnx.reference's ConvTranspose fails when output_shape needs pads (col2im size error): onnxruntime
case("output_shape", "ConvTranspose", [x, f32(4, 3, 3, 3)], {"strides": [2, 2], "output_shape": [10, 12]},
     ref="ort")
case("output_shape-SAME_UPPER", "ConvTranspose", [x, f32(4, 3, 3, 3), f32(3)],
     {"strides": [2, 2], "output_shape": [9, 12], "auto_pad": "SAME_UPPER"}, ref="ort")
case("output_shape-N-C-given", "ConvTranspose", [x, f32(4, 3, 3, 3)],
     {"strides": [2, 2], "output_shape": [11, 13]})

# ---------------------------------------------------------------------------- Gemm / MatMul
for ta in (0, 1):
    for tb in (0, 1):
        a = f32(5, 3) if ta else f32(3, 5)
        bb = f32(4, 5) if tb else f32(5, 4)
        case(f"tA{ta}-tB{tb}", "Gemm", [a, bb], {"transA": ta, "transB": tb})
        case(f"tA{ta}-tB{tb}-C-alpha-beta", "Gemm", [a, bb, f32(3, 4)],
             {"transA": ta, "transB": tb, "alpha": 0.5, "beta": 2.0})
case("C-row", "Gemm", [f32(3, 5), f32(4, 5), f32(4)], {"transB": 1})
case("C-col", "Gemm", [f32(3, 5), f32(5, 4), f32(3, 1)], {"beta": -1.5})
case("C-scalar", "Gemm", [f32(3, 5), f32(5, 4), f32(1)], {"alpha": 3.0})
case("C-beta0", "Gemm", [f32(3, 5), f32(5, 4), f32(3, 4)], {"beta": 0.0})
case("no-C-alpha", "Gemm", [f32(3, 5), f32(5, 4)], {"alpha": 0.25, "beta": 3.0})
case("2d", "MatMul", [f32(3, 5), f32(5, 4)])
case("batched", "MatMul", [f32(2, 3, 5), f32(2, 5, 4)])
case("bcast-3d-2d", "MatMul", [f32(2, 3, 5), f32(5, 4)])
case("bcast-2d-3d", "MatMul", [f32(3, 5), f32(2, 5, 4)])
case("bcast-batch-dims", "MatMul", [f32(2, 1, 3, 5), f32(1, 4, 5, 2)])
case("1d-2d", "MatMul", [f32(5), f32(5, 4)])
case("2d-1d", "MatMul", [f32(3, 5), f32(5)])
case("1d-1d", "MatMul", [f32(5), f32(5)])
case("1d-3d", "MatMul", [f32(5), f32(2, 5, 3)])

# ---------------------------------------------------------------------------- elementwise
for op in ("Add", "Sub", "Mul", "Div"):
    case("same", op, [f32(2, 3, 4), nonzero(2, 3, 4)])
    case("bcast", op, [f32(2, 3, 4), nonzero(3, 1)])
    case("bcast-both", op, [f32(2, 1, 4), nonzero(3, 1)])
    case("random-floats", op, [RNG.standard_normal((3, 4)).astype(np.float32),
                               RNG.uniform(0.5, 2, (3, 4)).astype(np.float32)])
    case("scalar", op, [f32(2, 3), np.array(1.5, dtype=np.float32)])
    case("int64", op, [ints(-20, 20, 2, 5), ints(1, 7, 5)])
    case("int32", op, [ints(-20, 20, 6, dtype=np.int32), ints(1, 7, 6, dtype=np.int32) *
                       np.array([1, -1, 1, -1, 1, -1], dtype=np.int32)])
case("float", "Neg", [f32(2, 3)])
case("int64", "Neg", [ints(-5, 5, 4)])
for op in ("Greater", "GreaterOrEqual"):
    case("float", op, [f32(3, 4), f32(3, 4)])
    case("bcast", op, [f32(2, 3, 4), f32(4)])
    case("ties", op, [np.array([1, 2, 3, 2], np.float32), np.array([2, 2, 2, 2], np.float32)])
    case("int64", op, [ints(-3, 3, 5), ints(-3, 3, 5)])

# ---------------------------------------------------------------------------- pooling
x = f32(2, 3, 9, 10)
for op in ("MaxPool", "AveragePool"):
    case("k2", op, [x], {"kernel_shape": [2, 2]})
    case("k3-s2", op, [x], {"kernel_shape": [3, 3], "strides": [2, 2]})
    case("k3-s2-pads", op, [x], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})
    case("k3-s2-ceil", op, [x], {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1})
    case("k2-s2-ceil", op, [x], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1})
    case("k3-s2-pads-ceil", op, [x], {"kernel_shape": [3, 3], "strides": [2, 2],
                                      "pads": [1, 1, 1, 1], "ceil_mode": 1})
    case("k3-s3-pads-ceil", op, [f32(1, 2, 7, 7)], {"kernel_shape": [3, 3], "strides": [3, 3],
                                                    "pads": [1, 1, 1, 1], "ceil_mode": 1})
    case("asym-pads", op, [x], {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [0, 1, 1, 0]})
    case("asym-pads-ceil", op, [x], {"kernel_shape": [3, 3], "strides": [2, 2],
                                     "pads": [1, 0, 0, 1], "ceil_mode": 1})
    case("rect-kernel-stride", op, [x], {"kernel_shape": [3, 2], "strides": [1, 3]})
    case("1d", op, [f32(2, 3, 11)], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]})
    case("3d", op, [f32(1, 2, 5, 6, 4)], {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2]})
    case("k2-s2-pads-ceil-last-window-in-pad", op, [f32(1, 2, 5, 7)],
         {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1})
    case("k3-s2-asym-pads-ceil-last-window-in-pad", op, [f32(1, 2, 6, 6)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 2, 1], "ceil_mode": 1})
    for mode in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        # onnx.reference's MaxPool SAME_LOWER loses an output row here: onnxruntime
        case(mode, op, [x], {"kernel_shape": [3, 4], "strides": [2, 2], "auto_pad": mode},
             ref="ort" if (op, mode) == ("MaxPool", "SAME_LOWER") else "onnx")
    case("dilations", op, [x], {"kernel_shape": [2, 3], "dilations": [2, 2]}, opset=19)
    case("dilations-pads-strides", op, [x], {"kernel_shape": [3, 3], "dilations": [2, 1],
                                             "strides": [2, 2], "pads": [2, 1, 2, 1]}, opset=19)
    case("dilations-ceil", op, [x], {"kernel_shape": [2, 2], "dilations": [2, 2],
                                     "strides": [2, 2], "ceil_mode": 1}, opset=19)
case("dilations-opset12", "MaxPool", [x], {"kernel_shape": [2, 2], "dilations": [2, 1]}, opset=12)
# onnx.reference's MaxPool fails on integers (NaN padding): onnxruntime
case("int8", "MaxPool", [ints(-100, 100, 1, 2, 4, 4, dtype=np.int8)], {"kernel_shape": [2, 2]}, opset=12,
     ref="ort")
case("int8-pads", "MaxPool", [ints(-100, 100, 1, 2, 5, 4, dtype=np.int8)],
     {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1], "strides": [2, 2]}, opset=12, ref="ort")
for inc in (0, 1):
    case(f"pads-count_include_pad{inc}", "AveragePool", [x],
         {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": inc})
    case(f"asym-pads-count_include_pad{inc}", "AveragePool", [x],
         {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1], "strides": [2, 1], "count_include_pad": inc})
    case(f"pads-ceil-count_include_pad{inc}", "AveragePool", [x],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
          "count_include_pad": inc})
    case(f"asym-pads-ceil-count_include_pad{inc}", "AveragePool", [x],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [2, 0, 0, 1], "ceil_mode": 1,
          "count_include_pad": inc})
    case(f"SAME_UPPER-count_include_pad{inc}", "AveragePool", [x],
         {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER", "count_include_pad": inc})
    case(f"dilations-pads-count_include_pad{inc}", "AveragePool", [x],
         {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 0, 1], "count_include_pad": inc},
         opset=19)
for op in ("GlobalAveragePool", "GlobalMaxPool"):
    # onnx.reference's GlobalMaxPool gets the output rank wrong except in 2-D: onnxruntime
    case("2d", op, [f32(2, 3, 5, 4)])
    case("1d", op, [f32(2, 3, 7)], ref="ort" if op == "GlobalMaxPool" else "onnx")
    case("3d", op, [f32(1, 2, 3, 4, 2)], ref="ort" if op == "GlobalMaxPool" else "onnx")

# ---------------------------------------------------------------------------- reductions
x = f32(2, 3, 4, 5)
for op in ("ReduceMean", "ReduceSum"):
    for keep in (0, 1):
        case(f"all-keepdims{keep}", op, [x], {"keepdims": keep}, opset=13)
        case(f"all-keepdims{keep}", op, [x], {"keepdims": keep}, opset=18)
        case(f"axes-input-keepdims{keep}", op, [x, i64(2, 3)], {"keepdims": keep}, opset=18)
    case("axes-input-neg", op, [x, i64(-1, 1)], {}, opset=18)
    case("axes-input-empty", op, [x, np.zeros(0, np.int64)], {}, opset=18)
    case("noop_with_empty_axes", op, [x], {"noop_with_empty_axes": 1}, opset=18)
    case("noop_with_empty_axes-empty-input", op, [x, np.zeros(0, np.int64)],
         {"noop_with_empty_axes": 1}, opset=18)
case("axes-attr", "ReduceMean", [x], {"axes": [2, 3]}, opset=13)
case("axes-attr-neg-keepdims0", "ReduceMean", [x], {"axes": [-3], "keepdims": 0}, opset=13)
case("axes-attr", "ReduceSum", [x], {"axes": [1, -1]}, opset=11)
case("axes-input", "ReduceSum", [x, i64(2, 3)], {}, opset=13)
case("axes-input-neg-keepdims0", "ReduceSum", [x, i64(-1, 0)], {"keepdims": 0}, opset=13)
case("noop_with_empty_axes", "ReduceSum", [x], {"noop_with_empty_axes": 1}, opset=13)
case("int64", "ReduceSum", [ints(-9, 9, 3, 4), i64(1)], {}, opset=13)
# shape arithmetic's (tf2onnx's tensordot: the product of gathered sizes); any float too
sizes = np.array([5, 28, 28], np.int64)
for op in ("ReduceProd", "ReduceMin", "ReduceMax"):
    for keep in (0, 1):
        case(f"sizes-keepdims{keep}", op, [sizes], {"axes": [0], "keepdims": keep}, opset=13)
        case(f"sizes-all-keepdims{keep}", op, [sizes], {"keepdims": keep}, opset=18)
    case("axes-attr-2", op, [x], {"axes": [1, -1]}, opset=13)
    case("axes-input-keepdims0", op, [x, i64(-1, 0)], {"keepdims": 0}, opset=18)
    case("noop_with_empty_axes", op, [x, np.zeros(0, np.int64)], {"noop_with_empty_axes": 1}, opset=18)

# ---------------------------------------------------------------------------- shape ops
for axis in (0, 1, 2, 3, 4, -1, -3):
    case(f"axis{axis}", "Flatten", [f32(2, 3, 4, 5)], {"axis": axis})
case("default", "Flatten", [f32(2, 3, 4)])
x = f32(2, 3, 4)
case("minus1", "Reshape", [x, i64(4, -1)])
case("zero-copies", "Reshape", [x, i64(0, -1)])
case("zero-middle", "Reshape", [x, i64(2, 0, 2, -1)])
case("zeros-minus1", "Reshape", [x, i64(0, 0, -1)])
case("plain", "Reshape", [x, i64(6, 4)], opset=14)
case("zero-allowzero0", "Reshape", [x, i64(0, 12)], {"allowzero": 0}, opset=14)
case("empty-allowzero1", "Reshape", [np.zeros((0, 4), np.float32), i64(4, 0)], {"allowzero": 1}, opset=14)
case("int64", "Reshape", [ints(0, 9, 6), i64(2, 3)])
case("scalar", "Reshape", [np.array([3.5], np.float32), np.zeros(0, np.int64)])
for perm in ([0, 2, 3, 1], [3, 1, 0, 2], None):
    case(f"perm{perm}".replace(" ", ""), "Transpose", [f32(2, 3, 4, 5)], {"perm": perm} if perm else {})
x = f32(1, 3, 1, 4, 1)
case("all", "Squeeze", [x], {}, opset=11)
case("axes-attr", "Squeeze", [x], {"axes": [0, -1]}, opset=11)
case("all", "Squeeze", [x], {}, opset=13)
case("axes-input", "Squeeze", [x, i64(2)], {}, opset=13)
case("axes-input-neg", "Squeeze", [x, i64(-1, 0, 2)], {}, opset=13)
x = f32(3, 4)
case("axes-attr", "Unsqueeze", [x], {"axes": [0, 3]}, opset=11)
case("axes-attr-neg", "Unsqueeze", [x], {"axes": [-1]}, opset=11)
case("axes-input", "Unsqueeze", [x, i64(1)], {}, opset=13)
case("axes-input-multi", "Unsqueeze", [x, i64(3, 0, 1)], {}, opset=13)
case("axes-input-neg", "Unsqueeze", [x, i64(-1, -4)], {}, opset=13)
case("scalar", "Unsqueeze", [np.array(2.0, np.float32), i64(0)], {}, opset=13)
for axis in (0, 1, -1, -3):
    case(f"axis{axis}", "Concat", [f32(2, 3, 4), f32(2, 3, 4), f32(2, 3, 4)], {"axis": axis})
case("uneven", "Concat", [f32(2, 1, 4), f32(2, 3, 4)], {"axis": -2})
case("int64", "Concat", [i64(1, 2), i64(3), i64(4, 5, 6)], {"axis": 0})
case("single", "Concat", [f32(2, 3)], {"axis": 1})
x = f32(2, 7, 6)
case("equal", "Split", [x], {"axis": 2}, opset=13, outputs=3)
case("input", "Split", [x, i64(2, 4, 1)], {"axis": 1}, opset=13, outputs=3)
case("input-neg-axis", "Split", [x, i64(1, 5)], {"axis": -1}, opset=13, outputs=2)
case("attr", "Split", [x], {"axis": 1, "split": [3, 4]}, opset=11, outputs=2)
case("equal-default-axis", "Split", [f32(4, 3)], {}, opset=11, outputs=2)
case("num_outputs-even", "Split", [x], {"axis": 2, "num_outputs": 3}, opset=18, outputs=3)
case("num_outputs-uneven-7-by-2", "Split", [x], {"axis": 1, "num_outputs": 2}, opset=18, outputs=2)
case("num_outputs-uneven-7-by-3", "Split", [x], {"axis": 1, "num_outputs": 3}, opset=18, outputs=3)
case("num_outputs-uneven-7-by-4", "Split", [x], {"axis": -2, "num_outputs": 4}, opset=18, outputs=4)
case("input", "Split", [x, i64(4, 3)], {"axis": 1}, opset=18, outputs=2)
x = f32(5, 6, 7)
case("basic", "Slice", [x, i64(1), i64(4)])
case("axes", "Slice", [x, i64(1, 2), i64(3, 6), i64(2, 1)])
case("steps", "Slice", [x, i64(0, 1), i64(7, 6), i64(2, 1), i64(2, 3)])
case("neg-indices", "Slice", [x, i64(-3, -5), i64(-1, 100), i64(-1, 1)])
case("neg-axes-steps", "Slice", [x, i64(1), i64(-1), i64(-2), i64(2)])
case("int-max-end", "Slice", [x, i64(2), i64(np.iinfo(np.int64).max), i64(0)])
case("huge-neg-start", "Slice", [x, i64(-(2 ** 40)), i64(3), i64(1)])
case("start-beyond", "Slice", [x, i64(10), i64(20), i64(2)])
case("empty-start-ge-end", "Slice", [x, i64(4), i64(2), i64(0)])
case("neg-step", "Slice", [x, i64(-1), i64(-(2 ** 62)), i64(2), i64(-1)])
case("neg-step-2", "Slice", [x, i64(5, 4), i64(0, -100), i64(1, 0), i64(-2, -1)])
case("neg-step-clamped-start", "Slice", [x, i64(100), i64(1), i64(2), i64(-3)])
case("omitted-axes-steps", "Slice", [x, i64(1, 0), i64(3, 2), None, i64(1, 2)])
case("int32-inputs", "Slice", [x, np.array([1], np.int32), np.array([5], np.int32),
                               np.array([1], np.int32)])
case("attr", "Slice", [x], {"starts": [1, -2], "ends": [100, -1], "axes": [0, 2]}, opset=9)
case("attr-no-axes", "Slice", [x], {"starts": [1, 2], "ends": [3, 5]}, opset=9)
case("int64", "Slice", [i64(4, 5, 6, 7), i64(-2), i64(100)])
x = f32(2, 3, 4, 5)
case("plain", "Shape", [x], opset=13)
case("plain", "Shape", [x], opset=15)
case("start", "Shape", [x], {"start": 1}, opset=15)
case("end", "Shape", [x], {"end": 2}, opset=15)
case("neg-start-end", "Shape", [x], {"start": -3, "end": -1}, opset=15)
case("out-of-range", "Shape", [x], {"start": -10, "end": 10}, opset=15)
case("scalar", "Shape", [np.array(1.0, np.float32)], opset=15)
case("4d", "Size", [x])
case("scalar", "Size", [np.array(1.0, np.float32)])
case("empty", "Size", [np.zeros((3, 0), np.float32)])
x = f32(4, 5, 3)
case("axis0", "Gather", [x, i64(3, 0, 1)], {"axis": 0})
case("axis1-neg-indices", "Gather", [x, i64(-1, 2, -5)], {"axis": 1})
case("neg-axis", "Gather", [x, i64(2, 0)], {"axis": -1})
case("scalar-index", "Gather", [x, np.array(-2, np.int64)], {"axis": 1})
case("2d-indices", "Gather", [x, np.array([[0, 1], [3, -1]], np.int64)], {"axis": 0})
# GatherND: dynamo's adaptive average pool (windows of a [H, W, N, C] map), slices, batch_dims
hwnc = f32(4, 4, 2, 3)
case("windows", "GatherND", [hwnc, ints(-4, 4, 3, 3, 2, 2, 2)], {"batch_dims": 0}, ref="ort")
case("full-index", "GatherND", [f32(2, 3, 4), ints(0, 2, 5, 3)], {}, ref="ort")
case("batch-dims-1", "GatherND", [f32(2, 3, 4, 5), ints(0, 3, 2, 6, 2)], {"batch_dims": 1}, ref="ort")
case("batch-dims-2", "GatherND", [f32(2, 3, 4, 5), ints(-4, 4, 2, 3, 1)], {"batch_dims": 2},
     ref="ort")
case("int32-indices", "Gather", [x, np.array([1, -1], np.int32)], {"axis": 2})
case("shape-vector", "Gather", [i64(8, 3, 32, 32), np.array(0, np.int64)], {"axis": 0})
case("same-rank", "Expand", [f32(3, 1), i64(3, 4)])
case("higher-rank", "Expand", [f32(3, 1), i64(2, 1, 5)])
case("ones-in-shape", "Expand", [f32(2, 3), i64(1, 1)])
case("lower-rank-shape", "Expand", [f32(2, 1, 3), i64(4, 1)])
case("int64", "Expand", [i64(1, 2), i64(3, 1)])
case("2d", "Tile", [f32(2, 3), i64(2, 3)])
case("3d-ones", "Tile", [f32(2, 1, 3), i64(1, 4, 1)])
case("int64", "Tile", [i64(1, 2, 3), i64(2)])
x = f32(2, 8, 3, 2)
case("DCR", "DepthToSpace", [x], {"blocksize": 2, "mode": "DCR"})
case("CRD", "DepthToSpace", [x], {"blocksize": 2, "mode": "CRD"})
case("default-mode", "DepthToSpace", [f32(1, 9, 2, 2)], {"blocksize": 3})
case("CRD-b3", "DepthToSpace", [f32(1, 18, 2, 3)], {"blocksize": 3, "mode": "CRD"})
case("b2", "SpaceToDepth", [f32(2, 3, 4, 6)], {"blocksize": 2})
case("b3", "SpaceToDepth", [f32(1, 2, 6, 3)], {"blocksize": 3})
# Resize, nearest: every coordinate and rounding mode, integer, fractional and down scales,
# sizes (checked against onnxruntime, whose arithmetic the runtime follows)
x = f32(2, 3, 5, 7)
for ctm in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"):
    for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        for sc in ((1, 1, 2, 2), (1, 1, 1.5, 3), (1, 1, 0.6, 0.5)):
            case(f"{ctm}-{nm}-{sc[2]}x{sc[3]}", "Resize",
                 [x, None, np.array(sc, np.float32)],
                 {"mode": "nearest", "coordinate_transformation_mode": ctm, "nearest_mode": nm},
                 ref="ort")
case("sizes", "Resize", [x, None, None, np.array([2, 3, 9, 4], np.int64)],
     {"mode": "nearest", "coordinate_transformation_mode": "half_pixel"}, ref="ort")
case("default-modes-op11", "Resize", [x, np.zeros(0, np.float32), np.array([1, 1, 2, 3], np.float32)],
     {"mode": "nearest"}, opset=11, ref="ort")
# Resize, linear (bilinear on NCHW): every coordinate mode, up, fractional and down scales, sizes;
# spikes of one amplitude and real values, bit-identical to onnxruntime
for ctm in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
    for sc in ((1, 1, 2, 2), (1, 1, 1.5, 3), (1, 1, 0.6, 0.5), (1, 1, 2.3, 1.7), (1, 1, 1, 4)):
        for kind, data in (("spikes", (f32(2, 3, 5, 7) > 0.4).astype(np.float32) * 1.37),
                           ("real", f32(2, 3, 5, 7))):
            case(f"linear-{ctm}-{sc[2]}x{sc[3]}-{kind}", "Resize",
                 [data, None, np.array(sc, np.float32)],
                 {"mode": "linear", "coordinate_transformation_mode": ctm}, ref="ort", exact=True)
for mode in ("nearest", "linear"):     # onnxruntime's output size: float32 product, truncated
    case(f"{mode}-10x0.7", "Resize", [f32(1, 2, 10, 10), None, np.array([1, 1, 0.7, 1.3], np.float32)],
         {"mode": mode}, ref="ort", exact=True)
case("linear-sizes", "Resize", [f32(2, 3, 5, 7), None, None, np.array([2, 3, 9, 4], np.int64)],
     {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, ref="ort", exact=True)
case("linear-1x1", "Resize", [f32(1, 2, 1, 1), None, None, np.array([1, 2, 3, 2], np.int64)],
     {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, ref="ort", exact=True)
case("linear-default-op11", "Resize", [f32(2, 3, 4, 4), np.zeros(0, np.float32),
                                       np.array([1, 1, 2, 2], np.float32)],
     {"mode": "linear"}, opset=11, ref="ort", exact=True)

# ---------------------------------------------------------------------------- Cast
x = (f32(3, 4) * 5).astype(np.float32)
for name, to in (("float-int64", TP.INT64), ("float-int32", TP.INT32), ("float-double", TP.DOUBLE),
                 ("float-float16", TP.FLOAT16), ("float-bool", TP.BOOL), ("float-int8", TP.INT8),
                 ("float-int16", TP.INT16), ("float-float", TP.FLOAT)):
    case(name, "Cast", [x], {"to": to})
case("float-uint8", "Cast", [np.abs(x)], {"to": TP.UINT8})
case("float-bool-zeros", "Cast", [np.array([0.0, -0.0, 1e-30, -2.0], np.float32)], {"to": TP.BOOL})
case("int64-float", "Cast", [ints(-100, 100, 5)], {"to": TP.FLOAT})
case("int64-int32", "Cast", [ints(-100, 100, 5)], {"to": TP.INT32})
case("bool-float", "Cast", [np.array([True, False, True])], {"to": TP.FLOAT})
case("bool-int64", "Cast", [np.array([True, False])], {"to": TP.INT64})
case("double-float", "Cast", [RNG.standard_normal(6)], {"to": TP.FLOAT})
case("float16-float", "Cast", [f32(6).astype(np.float16)], {"to": TP.FLOAT})
case("int32-int64", "Cast", [ints(-9, 9, 4, dtype=np.int32)], {"to": TP.INT64}, opset=19)

# ---------------------------------------------------------------------------- constants
case("value-tensor", "Constant", [], {"value": tensor(f32(2, 3))})
case("value-int-tensor", "Constant", [], {"value": tensor(i64(1, -1))})
case("value_float", "Constant", [], {"value_float": 0.25})
case("value_floats", "Constant", [], {"value_floats": [1.0, -2.5]})
case("value_int", "Constant", [], {"value_int": 7})
case("value_ints", "Constant", [], {"value_ints": [4, -1, 2]})
case("default", "ConstantOfShape", [i64(2, 3)])
case("float", "ConstantOfShape", [i64(3, 1, 2)], {"value": tensor(np.array([1.5], np.float32))})
case("int64", "ConstantOfShape", [i64(4)], {"value": tensor(np.array([-7], np.int64))})
case("int32", "ConstantOfShape", [i64(2, 2)], {"value": tensor(np.array([3], np.int32))})
case("bool", "ConstantOfShape", [i64(2)], {"value": tensor(np.array([True]))})
case("scalar-shape", "ConstantOfShape", [np.zeros(0, np.int64)], {"value": tensor(np.array([2.0], np.float32))})
case("zero-dim", "ConstantOfShape", [i64(0, 3)])
case("float", "Identity", [f32(2, 3)])
case("int64", "Identity", [i64(1, 2)])
case("float", "Range", [np.array(0.5, np.float32), np.array(3.7, np.float32), np.array(0.4, np.float32)],
     opset=11)
case("float-neg-delta", "Range", [np.array(2, np.float32), np.array(-1, np.float32),
                                  np.array(-0.75, np.float32)], opset=11)
case("int64", "Range", [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)], opset=11)
case("int64-neg", "Range", [np.array(5, np.int64), np.array(-2, np.int64), np.array(-2, np.int64)], opset=11)
case("int64-empty", "Range", [np.array(5, np.int64), np.array(2, np.int64), np.array(1, np.int64)], opset=11)
case("int32", "Range", [np.array(0, np.int32), np.array(6, np.int32), np.array(2, np.int32)], opset=11)
case("double", "Range", [np.array(0.0), np.array(1.0), np.array(0.3)], opset=11)

# ---------------------------------------------------------------------------- Pad
x = f32(2, 3, 4, 5)
case("attr-constant", "Pad", [x], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "value": 1.5}, opset=2)
case("attr-reflect", "Pad", [x], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "reflect"}, opset=2)
case("attr-edge", "Pad", [x], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "edge"}, opset=2)
case("constant", "Pad", [x, i64(0, 0, 1, 2, 0, 0, 2, 1)], opset=13)
case("constant-value", "Pad", [x, i64(0, 1, 1, 0, 1, 0, 2, 1), np.array(-2.0, np.float32)], opset=13)
# onnx.reference's Pad refuses negative pads (cropping): onnxruntime
case("constant-neg-pads", "Pad", [x, i64(0, 0, -1, 1, 0, 0, 2, -2)], opset=13, ref="ort")
case("edge-neg-pads", "Pad", [x, i64(0, 0, -1, 2, 0, 0, 2, -2)], {"mode": "edge"}, opset=13, ref="ort")
case("reflect", "Pad", [x, i64(0, 0, 2, 1, 0, 0, 1, 3)], {"mode": "reflect"}, opset=13)
case("edge", "Pad", [x, i64(0, 0, 2, 1, 0, 0, 1, 3)], {"mode": "edge"}, opset=13)
case("reflect-channels", "Pad", [x, i64(0, 1, 0, 0, 0, 2, 0, 0)], {"mode": "reflect"}, opset=13)
case("edge-all-dims", "Pad", [x, i64(1, 1, 1, 1, 1, 1, 1, 1)], {"mode": "edge"}, opset=13)
case("reflect-1d-tensor", "Pad", [f32(6), i64(2, 3)], {"mode": "reflect"}, opset=13)
case("edge-2d-tensor", "Pad", [f32(3, 4), i64(1, 0, 2, 3)], {"mode": "edge"}, opset=13)
case("int64-constant", "Pad", [i64(1, 2, 3), i64(1, 2), np.array(9, np.int64)], opset=13)
case("axes", "Pad", [x, i64(1, 2, 3, 0), np.array(0.5, np.float32), i64(1, 3)], opset=18)
case("axes-neg", "Pad", [x, i64(1, 2, 0, 2), None, i64(-2, -1)], opset=18)
case("axes-reflect", "Pad", [x, i64(2, 1, 1, 3), None, i64(-1, 2)], {"mode": "reflect"}, opset=18)
case("reflect-large", "Pad", [f32(2, 3), i64(0, 4, 0, 5)], {"mode": "reflect"}, opset=13)
case("wrap", "Pad", [x, i64(0, 0, 1, 2, 0, 0, 2, 3)], {"mode": "wrap"}, opset=19)
case("wrap-axes", "Pad", [x, i64(2, 1, 1, 3), None, i64(1, 3)], {"mode": "wrap"}, opset=19)


# ---------------------------------------------------------------------------- running
def _model(c: Case) -> onnx.ModelProto:
    names = [f"x{i}" if v is not None else "" for i, v in enumerate(c.inputs)]
    outs = [f"y{i}" for i in range(c.outputs)]
    node = h.make_node(c.op, names, outs, **c.attrs)
    graph = h.make_graph(
        [node], "g",
        [h.make_tensor_value_info(n, h.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
         for n, v in zip(names, c.inputs) if v is not None],
        [h.make_empty_tensor_value_info(o) for o in outs])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", c.opset)], ir_version=9)


def _feeds(c: Case) -> dict:
    return {f"x{i}": v for i, v in enumerate(c.inputs) if v is not None}


def _reference(c: Case, model: onnx.ModelProto):
    if c.ref == "ort":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(None, _feeds(c))
    return ReferenceEvaluator(model).run(None, _feeds(c))


def _torch(c: Case, model: onnx.ModelProto):
    attrs = parse_attrs(model.graph.node[0])
    if c.op == "Split":  # set by SpikingNetwork._check_ops
        attrs["_n_outputs"] = c.outputs
    inputs = [torch.from_numpy(np.array(v, copy=True)) if v is not None else None for v in c.inputs]
    with torch.no_grad():
        return run_op(c.op, attrs, inputs)


@pytest.mark.parametrize("c", CASES)
def test_op_matches_reference(c: Case):
    model = _model(c)
    expected = [np.asarray(e) for e in _reference(c, model)]
    got = [t.detach().cpu().numpy() for t in _torch(c, model)]
    assert len(got) == len(expected) == c.outputs
    for g, e in zip(got, expected):
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        if np.issubdtype(e.dtype, np.floating) and not c.exact:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(g, e)


def test_every_op_has_a_case():
    covered = {p.values[0].op for p in CASES}
    assert not set(OPS) - covered, f"ops without a case in {__file__}: {sorted(set(OPS) - covered)}"
    assert not covered - set(OPS), f"cases for ops the runtime lacks: {sorted(covered - set(OPS))}"


def _unet(ctm="half_pixel", nearest="round_prefer_floor", sizes=False, mode="nearest", opset=13):
    """conv-clip, max pool, conv-clip, Resize x2 (``mode``), concat with the skip, conv-clip,
    global pool, dense: a U-Net-like decoder step."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)
    inits = [nh.from_array(w(4, 1, 3, 3), "w1"), nh.from_array(w(4, 4, 3, 3), "w2"),
             nh.from_array(w(4, 8, 3, 3), "w3"), nh.from_array(w(10, 4), "w4"),
             nh.from_array(np.array(0, np.float32), "lo"), nh.from_array(np.array(2, np.float32), "hi")]
    if sizes:
        inits.append(nh.from_array(np.array([2, 4, 12, 12], np.int64), "sz"))
        rs = h.make_node("Resize", ["b", "", "", "sz"], ["u"], mode=mode, name="up",
                         coordinate_transformation_mode=ctm, nearest_mode=nearest)
    else:
        inits.append(nh.from_array(np.array([1, 1, 2, 2], np.float32), "sc"))
        rs = h.make_node("Resize", ["b", "", "sc"], ["u"], mode=mode, name="up",
                         coordinate_transformation_mode=ctm, nearest_mode=nearest)
    nodes = [h.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4),
             h.make_node("Clip", ["c1", "lo", "hi"], ["a"]),
             h.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Conv", ["p", "w2"], ["c2"], pads=[1] * 4),
             h.make_node("Clip", ["c2", "lo", "hi"], ["b"]), rs,
             h.make_node("Concat", ["u", "a"], ["cat"], axis=1),
             h.make_node("Conv", ["cat", "w3"], ["c3"], pads=[1] * 4),
             h.make_node("Clip", ["c3", "lo", "hi"], ["d"]),
             h.make_node("GlobalAveragePool", ["d"], ["g"]), h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("Gemm", ["f", "w4"], ["y"], transB=1)]
    n = 2 if sizes else "N"
    g = h.make_graph(nodes, "unet", [h.make_tensor_value_info("input", TP.FLOAT, [n, 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [n, 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("mode,ctm,nearest,sizes", [
    ("nearest", "half_pixel", "round_prefer_floor", False), ("nearest", "asymmetric", "floor", False),
    ("nearest", "pytorch_half_pixel", "round_prefer_ceil", False),
    ("nearest", "align_corners", "ceil", False), ("nearest", "tf_half_pixel_for_nn", "floor", False),
    ("nearest", "half_pixel", "floor", True), ("linear", "half_pixel", None, False),
    ("linear", "align_corners", None, False), ("linear", "asymmetric", None, True)])
def test_resize_in_both_runtimes(mode, ctm, nearest, sizes):
    """A nearest-neighbour Resize (every coordinate and rounding mode) carries spikes; a
    bilinear one sums neighbours with fixed weights, like an average pool. Either way the
    torch runtime equals onnxruntime on the spiking graph (same spike counts), and at large T
    the spiking network follows its DNN (the upsampled rates are the DNN's)."""
    import builders as B
    from onnx_snn.runtimes.ort import run
    m = _unet(ctm, nearest or "round_prefer_floor", sizes, mode=mode)
    x = B.rand_input(16 if not sizes else 2)
    _, _, snn = B.converted(m, x, T=4)
    B.assert_runtimes_agree(snn.model, x)
    _, _, big = B.converted(m, x, T=512, method="max")
    got, want = run(big.model, x).outputs[0], run(m, x).outputs[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("mode,attrs,needle", [
    ("cubic", {}, "mode 'cubic'"),
    ("linear", {"coordinate_transformation_mode": "tf_half_pixel_for_nn"}, "tf_half_pixel_for_nn"),
    ("linear", {"exclude_outside": 1}, "exclude_outside")])
def test_other_resizes_are_refused_naming_them(mode, attrs, needle):
    # (antialias: refused when it shrinks, dropped on this enlarging one; tests/test_resize.py)
    from onnx_snn.errors import UnsupportedModelError
    from onnx_snn.graph.normalize import normalize
    m = _unet(mode=mode, opset=18)
    up = next(n for n in m.graph.node if n.name == "up")
    for k, v in attrs.items():
        for at in up.attribute:
            if at.name == k:
                up.attribute.remove(at)
                break
        up.attribute.append(onnx.helper.make_attribute(k, v))
    with pytest.raises(UnsupportedModelError, match=f"'up'.*{needle}"):
        normalize(m)


@pytest.mark.parametrize("ctm,scale", [("half_pixel", 2.0), ("align_corners", 1.5),
                                       ("asymmetric", 0.6)])
def test_bilinear_resize_gradient(ctm, scale):
    """Fine-tuning trains through a bilinear Resize: its gradient is the exact adjoint of the
    fixed weights (finite differences, float64)."""
    import torch
    from onnx_snn.runtimes.torch.ops import resize
    x = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([1.0, 1.0, scale, scale])
    f = lambda t: resize({"mode": "linear", "coordinate_transformation_mode": ctm}, t,
                         None, scales)[0]
    assert torch.autograd.gradcheck(f, (x,))


def test_linear_resize_to_sizes_needs_the_batch_it_fixes():
    """onnxruntime's linear Resize keeps the batch: constant sizes with a batch of 2 work on a
    model whose batch is 2 and are refused, named, where the batch is dynamic."""
    from onnx_snn.errors import UnsupportedModelError
    from onnx_snn.graph.normalize import normalize
    m = _unet(sizes=True, mode="linear")
    normalize(m)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(UnsupportedModelError, match="'up'.*fixes the batch"):
        normalize(m)
