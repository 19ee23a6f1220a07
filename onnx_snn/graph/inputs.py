"""One pass: an image input of raw uint8 pixels becomes a float32 input of the same values.

Some exports take the image as it comes from a file, ``[N, C, H, W]`` uint8, and convert it
inside the graph (``Cast`` to float, then the model's own scaling and normalization): an
end-to-end PyTorch module with its transforms, a TF serving signature. Spiking neurons and the
calibration take float32, so such an input (every reader of it a Cast to float32) becomes a
float32 input that holds the same pixel values, 0-255, and its Casts go. Data is then fed as
raw pixels: a named dataset's [0, 1] images times 255 (``PIXELS_255``, the preprocessing the
spiking model records), arrays as they are.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from .passes import PassResult, graph_pass

#: the preprocessing that feeds [0, 1] images as raw 0-255 pixels: (x - 0) / (1 / 255)
PIXELS_255 = {"mean": [0.0], "std": [1.0 / 255.0]}


def is_pixels_255(preprocess) -> bool:
    return bool(preprocess) and list(preprocess.get("mean", [])) == [0.0] and \
        len(preprocess.get("std", [])) == 1 and abs(preprocess["std"][0] * 255.0 - 1.0) < 1e-9


@graph_pass("uint8-input-to-float")
def uint8_input_to_float(graph: gs.Graph, result: PassResult) -> None:
    """A uint8 graph input read only by Casts to float32 becomes a float32 input of the same
    values (the Casts become Identity, which the next pass removes); ``result.records`` names
    each such input. A uint8 input read otherwise is left (and refused, named)."""
    for t in graph.inputs:
        if t.dtype is None or np.dtype(t.dtype) != np.uint8 or not t.outputs:
            continue
        readers = list(t.outputs)
        if not all(r.op == "Cast" and int(r.attrs.get("to", 0)) == TensorProto.FLOAT
                   for r in readers):
            result.skip(readers[0], f"it reads the uint8 input '{t.name}' as integers")
            continue
        t.dtype = np.float32
        for r in readers:
            r.op, r.attrs = "Identity", {}
        result.changed += 1
        result.records.append(t.name)
        result.notes.append(f"input '{t.name}' takes uint8 pixels: the spiking model takes them "
                            "as float32 of the same values (0-255); named datasets are fed as "
                            "raw pixels")


__all__ = ["uint8_input_to_float", "PIXELS_255", "is_pixels_255"]
