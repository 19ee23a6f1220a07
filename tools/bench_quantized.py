#!/usr/bin/env python
"""Benchmark: a model quantized in the QDQ format, converted as its float model is.

The shipped Fashion-MNIST model is quantized with onnxruntime's static quantizer (QDQ format,
uint8 activations, int8 weights, MinMax calibration on 256 training images, as its
preprocessing feeds them); onnx-snn converts the float model and the quantized one with the
default method at -T, and evaluates the two DNNs and the two spiking models on the test set.
Prints JSON::

    python tools/bench_quantized.py [-T 2] [--test-images 10000] [--method refined] [--json FILE]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import emit, machine  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-T", "--timesteps", type=int, default=2)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--method", default="refined", help="conversion method (default: refined)")
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    import onnx_snn
    from onnx_snn.convert import resolve_data
    from onnx_snn.demo import shipped_model_path
    from onnx_snn.evaluate import evaluate

    src = shipped_model_path()
    model = onnx.load(str(src))
    pp = {p.key: p.value for p in model.metadata_props}.get("onnx_snn.preprocess")
    nm = onnx_snn.prepare(model)
    calib = resolve_data("fashion-mnist", nm.preprocess, split="train").take(256, seed=0)
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: calib.x[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    result = {"benchmark": "a QDQ-quantized model converted like its float model",
              "model": src.name, "timesteps": args.timesteps, "method": args.method, "test_images": args.test_images,
              "quantizer": "onnxruntime quantize_static, QDQ, uint8 activations, int8 weights, "
                           "256 calibration images", "preprocess": pp}
    with tempfile.TemporaryDirectory() as d:
        q = Path(d) / "qdq.onnx"
        quantize_static(str(src), str(q), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        for kind, path in (("float", src), ("qdq", q)):
            t0 = time.perf_counter()
            snn = onnx_snn.convert(str(path), "fashion-mnist", timesteps=args.timesteps,
                                   method=args.method, show_progress=False,
                                   reconstruct=0)     # the conversion of each idiom alone
            seconds = time.perf_counter() - t0
            dnn = evaluate(str(path), "fashion-mnist", limit=args.test_images, show_progress=False)
            s = evaluate(snn, "fashion-mnist", limit=args.test_images, show_progress=False)
            result[kind] = {"dnn_top1": round(dnn.top1, 2), "snn_top1": round(s.top1, 2),
                            "sites": len(snn.records), "convert_seconds": round(seconds, 1),
                            "notes": [n for n in snn.normalized.notes if "quantiz" in n]}
    result["environment"] = machine()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
