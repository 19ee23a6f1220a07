"""Golden-graph regression tests: the converter's output for small models of several
producers is stored as readable text in tests/golden/. A change that alters it fails with a
diff; regenerate on purpose with ``pytest tests/test_golden.py --update-golden``."""
import difflib
from pathlib import Path

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


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_graph(name, update_golden):
    src = CASES[name]
    model = str(src) if isinstance(src, Path) else src()
    snn = onnx_snn.convert(model, B.rand_input(64, seed=7), timesteps=2, method="datta",
                           show_progress=False)
    text = describe(snn.model)
    path = GOLDEN / f"{name}.txt"
    if update_golden or not path.exists():
        if not update_golden:
            pytest.fail(f"{path} does not exist; create it with --update-golden")
        path.write_text(text)
        return
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{name}.txt", "converter output", n=2))
        pytest.fail(f"converted graph differs from the golden file (rerun with --update-golden "
                    f"if the change is intended):\n{diff[:6000]}")
