"""Golden-graph regression tests: the converter's output for small models of several
producers is stored as readable text in tests/golden/. A change that alters it fails with a
diff; regenerate on purpose with ``pytest tests/test_golden.py --update-golden``.

The graphs are rendered from a ``max`` conversion, whose neuron parameters the model fixes
(threshold = amplitude = mu), so that they show structure; what the datta search chooses for
the same models is kept separately, per site, in golden/searched_params.json and compared
with a tolerance, so that a change to the search rewrites one file, not every graph."""
import difflib
import json
from pathlib import Path

import numpy as np

import pytest

import builders as B
import onnx_snn
from onnx_snn.spiking.summary import describe

GOLDEN = Path(__file__).parent / "golden"
DATA = Path(__file__).parent / "data"

CASES = {
    # onnx.helper graphs, several opsets and idioms
    "helper_vgg_clipattr_bn_dropout_op9": lambda: B.vgg(9, "clip"),
    "helper_vgg_clipinput_op11": lambda: B.vgg(11, "clip_const_nodes"),
    "helper_vgg_relumin_matmul_op13": lambda: B.vgg(13, "relu_min", matmul=True),
    "helper_vgg_maxmin_op17": lambda: B.vgg(17, "max_min", bn=False),
    "helper_vgg_minmax_op21": lambda: B.vgg(21, "min_max"),
    "helper_vgg_relu6_op13": lambda: B.vgg(13, "relu6", pool="AveragePool"),
    "helper_vgg_plainrelu_op13": lambda: B.vgg(13, "relu"),
    "helper_resnet_clip_sum_op13": lambda: B.resnet(13, "clip", sum_op=True),
    "helper_resnet_relumin_op21": lambda: B.resnet(21, "relu_min"),
    # PyTorch's two exporters (files made by tools/make_test_models.py)
    "torch_legacy_vgg_clip_op11": DATA / "torch_legacy_vgg_clip_op11.onnx",
    "torch_legacy_vgg_relu_op13": DATA / "torch_legacy_vgg_relu_op13.onnx",
    "torch_legacy_resnet_clip_op13": DATA / "torch_legacy_resnet_clip_op13.onnx",
    "torch_legacy_resnet_relumin_op17": DATA / "torch_legacy_resnet_relumin_op17.onnx",
    "torch_dynamo_vgg_clip_op18": DATA / "torch_dynamo_vgg_clip_op18.onnx",
    "torch_dynamo_resnet_clip_op18": DATA / "torch_dynamo_resnet_clip_op18.onnx",
}


def _model(name):
    src = CASES[name]
    return str(src) if isinstance(src, Path) else src()


def _diff_or_update(path: Path, text: str, update: bool, label: str) -> None:
    if update or not path.exists():
        if not update:
            pytest.fail(f"{path} does not exist; create it with --update-golden")
        path.write_text(text)
        return
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{path.name}", label, n=2))
        pytest.fail(f"{label} differs from the golden file (rerun with --update-golden "
                    f"if the change is intended):\n{diff[:6000]}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_graph(name, update_golden):
    snn = onnx_snn.convert(_model(name), B.rand_input(64, seed=7), timesteps=2, method="max",
                           show_progress=False)
    _diff_or_update(GOLDEN / f"{name}.txt", describe(snn.model), update_golden,
                    "converted graph")


#: signed neurons (``--signed-spikes``, format version 3): the second state, the signed
#: function and the counter of spikes of either sign
SIGNED = ("helper_vgg_maxmin_op17", "helper_resnet_clip_sum_op13")


@pytest.mark.parametrize("name", SIGNED)
def test_golden_graph_signed(name, update_golden):
    snn = onnx_snn.convert(_model(name), B.rand_input(64, seed=7), timesteps=2, method="max",
                           show_progress=False, signed_spikes=True)
    _diff_or_update(GOLDEN / f"{name}_signed.txt", describe(snn.model), update_golden,
                    "converted graph (signed neurons)")


SEARCHED = GOLDEN / "searched_params.json"


def test_searched_parameters(update_golden):
    """datta at T=2 on the same models: alpha, beta and v_init of every site."""
    got = {}
    for name in sorted(CASES):
        snn = onnx_snn.convert(_model(name), B.rand_input(64, seed=7), timesteps=2,
                               method="datta", show_progress=False)
        got[name] = {s: [round(float(r.alpha), 4), round(float(r.beta), 4), round(float(r.v_init), 4)]
                     for s, r in snn.records.items()}
    if update_golden or not SEARCHED.exists():
        if not update_golden:
            pytest.fail(f"{SEARCHED} does not exist; create it with --update-golden")
        lines = [f" {json.dumps(n)}: {json.dumps(got[n], sort_keys=True)}" for n in sorted(got)]
        SEARCHED.write_text("{\n" + ",\n".join(lines) + "\n}\n")
        return
    want = json.loads(SEARCHED.read_text())
    assert sorted(got) == sorted(want)
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), name
        for site, vals in want[name].items():
            np.testing.assert_allclose(got[name][site], vals, atol=2e-3,
                                       err_msg=f"{name} {site} (alpha, beta, v_init)")
