"""onnx-snn: turn a trained clipped-ReLU DNN (ONNX, any framework) into an ultra-low-latency
spiking neural network (1-4 time steps), after Datta & Beerel, DATE 2022.

Python API::

    import onnx_snn
    snn = onnx_snn.convert("model.onnx", calib="fashion-mnist", timesteps=2, method="datta")
    snn.save("model.snn.onnx")
    result = onnx_snn.evaluate("model.snn.onnx", "fashion-mnist")
    print(result.top1)
    onnx_snn.deploy("model.snn.onnx", "model.deploy.onnx")   # inference only, unrolled

This package never imports torch; the torch runtime lives in ``onnx_snn.runtimes.torch``.
"""
__version__ = "0.1.0"

from .errors import OnnxSnnError  # noqa: E402
from .convert import SpikingModel, build, calibrate, convert, prepare  # noqa: E402
from .scales import SearchConfig  # noqa: E402
from .evaluate import EvalResult, evaluate  # noqa: E402
from .spiking.deploy import deploy  # noqa: E402

__all__ = ["__version__", "OnnxSnnError", "SpikingModel", "SearchConfig", "EvalResult",
           "build", "calibrate", "convert", "prepare", "evaluate", "deploy"]
