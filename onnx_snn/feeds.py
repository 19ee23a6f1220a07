"""Checking user data against a model's inputs before anything runs."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import onnx

from .datasets import INPUT_KEYS, LABEL_KEYS, array_like, check_finite, input_key
from .errors import DataError

InputSpec = Tuple[str, List[Optional[int]]]


def shown_shape(dims) -> list:
    """An input's dims for a message: a free one (None) as N."""
    return ["N" if e is None else e for e in dims]


def input_specs(model: onnx.ModelProto, skip: Tuple[str, ...] = ()) -> List[InputSpec]:
    """(name, dims) of the model's real inputs; dynamic dims are None."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits or vi.name in skip:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]
        specs.append((vi.name, dims))
    return specs


def check_data_inputs(model: onnx.ModelProto, where: str) -> None:
    """A model with no input to feed is refused (UnsupportedModelError, exit 4), naming its
    inputs: every one of them has an initializer of its name (an input with a default, legal
    ONNX; old exporters list the weights so), which the tools take as weights, so that the
    whole network folded into a constant ("no ReLU-type activation found", or "the model has
    0 inputs") and no message named the input that has a default."""
    from .errors import UnsupportedModelError
    if input_specs(model):
        return
    names = [vi.name for vi in model.graph.input]
    if not names:
        raise UnsupportedModelError(f"{where}: the graph has no inputs: nothing to feed data "
                                    "to; export the model with its data input")
    shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    raise UnsupportedModelError(
        f"{where}: every graph input ({shown}) has an initializer of its name (a default "
        "value), which is read as a weight, so the model has no input left to feed data to; "
        f"if {names[0]!r} is the data input, remove its initializer (del "
        "model.graph.initializer[i] in onnx) and save the model again")


def _savez_call(names: List[str]) -> str:
    """How to save one array per input: keyword arguments, or a dict where a name is not a
    Python identifier (tf2onnx's 'input_1:0'); the labels as ``labels`` where an input is
    called ``y``, and a Python dict where one is called as np.savez's own parameters."""
    import keyword
    if {"file", "allow_pickle"} & set(names):
        return "not np.savez (an input is named as its parameters); pass a dict from Python"
    labels = "labels=labels" if "y" in names else "y=labels"
    if all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        return "np.savez(path, " + ", ".join(f"{n}=..." for n in names) + f", {labels})"
    return "np.savez(path, **{" + ", ".join(f"{n!r}: ..." for n in names) + f"}}, {labels})"


def validate_feeds(specs: List[InputSpec], x: Union[np.ndarray, Dict[str, np.ndarray]],
                   what: str = "data", samples: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Return {input name: float32 array}; raise :class:`DataError` naming what does not fit.
    ``samples``: how many samples the whole data holds, when ``x`` is the first few of it (the
    shapes in messages are the data's, not the slice's)."""
    names = [n for n, _ in specs]
    if isinstance(x, dict):
        missing = [n for n in names if n not in x]
        generic = input_key(x)
        if len(names) == 1 and missing and generic is not None:   # a one-input model's 'x'
            x, missing = {names[0]: x[generic]}, []
        if missing:
            one = (f"'{INPUT_KEYS[0]}' (or {', '.join(INPUT_KEYS[1:])}, in any case) for the "
                   "inputs, or " if len(names) == 1 else "")
            raise DataError(f"{what}: missing input(s) {missing}; the model takes {names} "
                            f"(a .npz needs {one}one array per input named after it, and "
                            f"'{LABEL_KEYS[0]}' (or {', '.join(LABEL_KEYS[1:])}) for labels; it "
                            f"has {sorted(x)})")
        feeds = {n: array_like(x[n], f"{what} (input {n!r})") for n in names}
    else:
        if len(names) != 1:
            raise DataError(f"{what}: the model has {len(names)} inputs {names}; give one array "
                            f"per input, named after it (a .npz: {_savez_call(names)}; in Python: "
                            "a dict)")
        feeds = {names[0]: array_like(x, what)}
    n = None
    for name, dims in specs:
        arr = feeds[name]
        if arr.dtype.kind not in "fiu":
            raise DataError(f"{what}: input '{name}' has non-numeric dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
        if arr.ndim != len(dims) or any(e is not None and e != s for e, s in zip(dims[1:], arr.shape[1:])):
            shown = shown_shape(dims)
            shape = list(arr.shape)
            if shape and samples is not None:
                shape[0] = samples
            raise DataError(f"{what}: shape {shape} does not fit the model input "
                            f"'{name}' of shape {shown}{_layout_hint(arr.shape, dims)}")
        if n is not None and arr.shape[0] != n:
            raise DataError(f"{what}: inputs have different numbers of samples")
        n = arr.shape[0]
        if n == 0:
            raise DataError(f"{what}: no samples")
        check_finite(arr, f"{what} (input '{name}')")
        feeds[name] = arr
    return feeds


def _layout_hint(shape: tuple, dims: List[Optional[int]]) -> str:
    """What would make per-sample data of ``shape`` fit ``dims`` when only its layout is off:
    a missing or extra unit axis, channels last instead of first (or the reverse), or the
    same values flattened; else ''."""
    want, have = dims[1:], list(shape[1:])
    fits = (lambda got: len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got)))
    if fits(list(shape)):
        return ("; it is one sample without the batch axis: give x[None] (numpy: "
                "np.expand_dims(x, 0)) for one sample")
    for i in range(len(have) + 1):
        if fits(have[:i] + [1] + have[i:]):
            return f"; insert the missing axis of size 1 (numpy: np.expand_dims(x, {i + 1}))"
    for i, n in enumerate(have):
        if n == 1 and fits(have[:i] + have[i + 1:]):
            return f"; drop its axis {i + 1} of size 1 (numpy: x.squeeze({i + 1}))"
    if len(have) == 3 and fits([have[2], have[0], have[1]]):
        return ("; the data is channels-last (NHWC) and the model takes channels-first (NCHW): "
                "x.transpose(0, 3, 1, 2)")
    if len(have) == 3 and fits([have[1], have[2], have[0]]):
        return ("; the data is channels-first (NCHW) and the model takes channels-last (NHWC): "
                "x.transpose(0, 2, 3, 1)")
    if all(w is not None for w in want) and int(np.prod(have)) == int(np.prod(want)) and have:
        return f"; it has as many values per sample: reshape it to {['N'] + list(want)}"
    if all(w is not None for w in want) and want:
        return (f"; the data is of other images or features than the model takes: give data "
                f"of its shape (a .npy or .npz of {['N'] + list(want)}, or a dataset of that "
                "size)")
    return ""


def pad_batch(x: np.ndarray, size: Optional[int]) -> np.ndarray:
    """``x`` with zero samples appended up to ``size`` samples (a model's fixed batch size;
    the padding's results are to be dropped); ``x`` itself when it has as many or no size."""
    if not size or len(x) >= size:
        return x
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def fixed_batch(specs: List[InputSpec]) -> Optional[int]:
    dims = specs[0][1] if specs else []
    return dims[0] if dims and dims[0] else None
