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
The API's names are imported on first use (onnx and onnxruntime take most of a second), so
that ``import onnx_snn`` and the command line's start are light: a Ctrl-C while the command
line starts is an interrupt, not a traceback from inside an import.
"""
import importlib
import types

__version__ = "0.1.0"

#: each name of the API and the module that defines it
_API = {
    "OnnxSnnError": ".errors",
    "SpikingModel": ".convert", "build": ".convert", "calibrate": ".convert",
    "convert": ".convert", "prepare": ".convert",
    "SearchConfig": ".scales",
    "EvalResult": ".evaluate", "evaluate": ".evaluate",
    "deploy": ".spiking.deploy",
}

__all__ = ["__version__", "OnnxSnnError", "SpikingModel", "SearchConfig", "EvalResult",
           "build", "calibrate", "convert", "prepare", "evaluate", "deploy"]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))


class _Package(types.ModuleType):
    """The package, whose API functions ``convert``, ``calibrate`` and ``evaluate`` share their
    names with submodules: the import system binds each submodule on its package when it is
    first imported, which would hide the function of the same name. Those bindings are
    skipped (the submodules stay in ``sys.modules``), as the eager imports of the API
    rebound the names to the functions before."""

    def __setattr__(self, name, value):
        if name in _API and value is _sys.modules.get(f"{__name__}.{name}"):
            return    # the import system binding the submodule (anything else is assigned)
        super().__setattr__(name, value)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package
