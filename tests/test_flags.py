"""On/off arguments of the Python API: "False" and "no" are refused, not taken as True."""

from __future__ import annotations
import inspect
from typing import Optional

import numpy as np
import pytest

import builders as B
import onnx_snn
from onnx_snn.errors import UsageError
from onnx_snn.flags import check_flag, checks_flags


def _api():
    """Every public function and method whose parameters include one with a True/False
    default (found, so that a new one is checked too)."""
    import importlib
    found = {n: getattr(onnx_snn, n) for n in ("build", "calibrate", "convert", "prepare",
                                                "evaluate", "deploy")}
    found["evaluate_prefixes"] = importlib.import_module("onnx_snn.evaluate").evaluate_prefixes
    found.update({f"SpikingModel.{k}": v for k, v in vars(onnx_snn.SpikingModel).items()
                  if inspect.isfunction(v) and not k.startswith("_")})
    analyze = importlib.import_module("onnx_snn.analyze")
    found.update({f"analyze.{k}": getattr(analyze, k) for k in analyze.__all__
                  if inspect.isfunction(getattr(analyze, k))})
    try:
        from onnx_snn.runtimes.torch import SpikingNetwork
        from onnx_snn.runtimes.torch.finetune import finetune
        found.update({f"SpikingNetwork.{k}": v for k, v in vars(SpikingNetwork).items()
                      if inspect.isfunction(v) and (not k.startswith("_") or k == "__init__")})
        found["finetune"] = finetune
    except ImportError:
        pass
    return {n: f for n, f in found.items()
            if any(isinstance(p.default, bool) for p in inspect.signature(f).parameters.values())}


def test_every_api_flag_is_checked():
    api = _api()
    assert {"convert", "prepare", "evaluate", "SpikingModel.save"} <= set(api)
    unchecked = [n for n, f in api.items() if not hasattr(f, "__wrapped__")]
    assert not unchecked, f"add @checks_flags to {unchecked}"


@pytest.mark.parametrize("value", ["False", "no", 0, 1, None])
def test_a_non_bool_flag_is_refused_before_any_work(value, tmp_path):
    """pool_first="False" converted the pooled network (the history said pool_first: true),
    and save(step="no") wrote a step graph."""
    x = B.rand_input(8)
    with pytest.raises(UsageError, match=r"convert: pool_first must be True or False"):
        onnx_snn.convert(B.vgg(13, "clip"), x, 2, "datta", pool_first=value)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, 2, "datta", show_progress=False)
    with pytest.raises(UsageError, match=r"SpikingModel.save: step must be True or False"):
        snn.save(tmp_path / "m.snn.onnx", step=value)
    assert not (tmp_path / "m.snn.onnx").exists()
    with pytest.raises(UsageError, match=r"evaluate: show_progress"):
        onnx_snn.evaluate(snn.model, x, show_progress=value)


def test_true_false_numpy_bools_and_optional_none_pass():
    @checks_flags
    def f(a, on: bool = False, maybe: Optional[bool] = True):
        return on, maybe
    assert f(1, True, None) == (True, None)
    assert f(1, on=np.bool_(True)) == (True, True)
    with pytest.raises(UsageError, match="f: maybe must be True or False, not 'yes'"):
        f(1, maybe="yes")
    with pytest.raises(UsageError, match=r"f\(\): .*unexpected keyword argument 'onn'; it takes a, on, maybe"):
        f(1, onn=True)
    assert check_flag(np.bool_(False), "x") is False


def test_a_config_dict_or_a_misspelt_option_is_a_usage_error():
    x = B.rand_input(8)
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, 2, "datta", {"beta_step": 0.01},
                           show_progress=False)
    assert snn.info.method == "datta" and snn.report["config"]["beta_step"] == 0.01
    with pytest.raises(UsageError, match="config must be a SearchConfig"):
        onnx_snn.convert(B.vgg(13, "clip"), x, 2, "datta", 4)
    with pytest.raises(UsageError, match="unknown conversion option.*per_chanel"):
        onnx_snn.convert(B.vgg(13, "clip"), x, 2, "datta", per_chanel=False)
