"""The reconstruction (runtimes/torch/reconstruct.py, ``convert --reconstruct``)."""
import json
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

import builders as B  # noqa: E402
import onnx_snn  # noqa: E402
from onnx_snn.errors import MissingDependencyError, UsageError  # noqa: E402
from onnx_snn.runtimes.ort import run  # noqa: E402
from onnx_snn.runtimes.torch import SpikingNetwork  # noqa: E402
from onnx_snn.runtimes.torch.reconstruct import (ReconstructConfig, reconstruct,  # noqa: E402
                                                 write_back)
from onnx_snn.spiking import format as fmt  # noqa: E402


def _same_as_module(model: onnx.ModelProto, net: SpikingNetwork, x: np.ndarray):
    """onnxruntime on ``model`` gives the module's outputs and spike counts."""
    net.eval()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    r = run(model, x)
    np.testing.assert_allclose(r.outputs[0], y, rtol=0, atol=1e-5)
    for k in r.spikes:
        np.testing.assert_array_equal(r.spikes[k], net.last_spikes[k].numpy())


@pytest.mark.parametrize("make,signed", [(B.vgg, False), (B.resnet, False), (B.vgg, True)],
                         ids=["vgg", "resnet", "vgg-signed"])
def test_write_back_carries_every_trained_value_into_every_form(make, signed):
    """Every trained tensor (weights, a bias holding a folded offset, an offset of its own,
    thresholds, amplitudes, leaks) changed in the module goes back into the conversion, whose
    rebuilt loop model and step graph then compute what the module computes."""
    x = B.rand_input(32, seed=4)
    snn = onnx_snn.convert(make(), x, timesteps=2, signed_spikes=signed, show_progress=False)
    assert any(r.has_offset for r in snn.records.values())
    before = run(snn.model, x).outputs[0]
    net = SpikingNetwork(snn.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in net._trainable:
            t = net.tensor(name)
            t.mul_(0.8 + 0.4 * torch.rand(t.shape, generator=gen, dtype=t.dtype))
        net.project()
    write_back(snn, net)
    _same_as_module(snn.model, net, x)
    np.testing.assert_allclose(run(snn.step_model(), x).outputs[0], run(snn.model, x).outputs[0],
                               rtol=0, atol=1e-5)
    assert np.abs(run(snn.model, x).outputs[0] - before).max() > 1e-3
    info = fmt.read_info(snn.model)
    for rec in info.sites:
        t = net._effective(fmt.param_name(rec.name, "threshold")).detach().numpy().reshape(-1)
        np.testing.assert_allclose(np.asarray(rec.threshold).reshape(-1), t, rtol=1e-6)


def test_reconstruction_brings_a_poor_conversion_toward_its_dnn():
    """From a poor conversion (``max`` at T=2: thresholds at mu, most neurons silent) the
    trained network agrees with its DNN on more calibration samples and has a lower loss;
    the step is recorded in the file's history and the report, and every form is rebuilt."""
    x = B.rand_input(64, seed=5)
    snn = onnx_snn.convert(B.vgg(seed=3), x, timesteps=2, method="max", show_progress=False)
    dnn = onnx_snn.prepare(B.vgg(seed=3)).model
    rec = reconstruct(snn, dnn, x, ReconstructConfig(epochs=20, lr=3e-3, batch_size=16),
                      show_progress=False)
    assert rec["kept"]
    assert rec["after"]["loss"] < 0.8 * rec["before"]["loss"]
    assert rec["after"]["dnn_agreement"] > rec["before"]["dnn_agreement"]
    assert len(rec["epoch_losses"]) == 20
    history = fmt.read_info(snn.model).history
    assert history[-1]["step"] == "reconstruct" and history[0]["step"] == "convert"
    assert snn.report["reconstruction"] is rec
    net = SpikingNetwork(snn.model)
    _same_as_module(snn.model, net, x)
    from onnx_snn.convert import fitted_timesteps
    assert fitted_timesteps(fmt.read_info(snn.model)) == 2


def test_convert_reconstructs_when_asked_and_says_so(tmp_path):
    x = B.rand_input(32, seed=6)
    plain = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct=2)
    assert snn.report["reconstruction"]["epochs"] == 2 and "reconstruction" not in plain.report
    assert np.abs(run(snn.model, x).outputs[0] - run(plain.model, x).outputs[0]).max() > 0
    # binary spikes fold the trained amplitudes: the same outputs
    np.testing.assert_allclose(run(snn.binary_model(), x).outputs[0], run(snn.model, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


def test_a_diverged_reconstruction_keeps_the_conversion():
    x = B.rand_input(32, seed=7)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    was = snn.model.SerializeToString()
    rec = reconstruct(snn, onnx_snn.prepare(B.vgg()).model, x,
                      ReconstructConfig(epochs=2, lr=1e30), show_progress=False)
    assert not rec["kept"] and "non-finite" in rec["why"]
    m = onnx.ModelProto()
    m.ParseFromString(was)
    assert [numpy_init for numpy_init in m.graph.initializer] == list(snn.model.graph.initializer)
    assert json.loads(fmt.metadata(snn.model)[fmt.META_HISTORY])[-1]["kept"] is False


@pytest.mark.parametrize("value", [-1, 2.5, True, "3", ReconstructConfig(lr=0),
                                   ReconstructConfig(epochs=0), ReconstructConfig(batch_size=0),
                                   ReconstructConfig(site_weight=0, output_weight=0),
                                   ReconstructConfig(temperature=float("nan"))])
def test_bad_reconstruction_settings_are_refused_before_the_work(value):
    from onnx_snn.convert import reconstruct_config
    with pytest.raises(UsageError):
        reconstruct_config(value)


def test_without_torch_the_reconstruction_says_what_to_install(monkeypatch):
    from onnx_snn.convert import reconstruct_config
    assert reconstruct_config(None) is None and reconstruct_config(0) is None
    monkeypatch.setitem(sys.modules, "onnx_snn.runtimes.torch.reconstruct", None)
    with pytest.raises(MissingDependencyError, match="onnx-snn\\[torch\\]"):
        reconstruct_config(3)


def test_cli_constant_is_the_runtime_default():
    from onnx_snn.cli import RECONSTRUCT_EPOCHS, build_parser
    from onnx_snn.runtimes.torch.reconstruct import DEFAULT_EPOCHS
    assert RECONSTRUCT_EPOCHS == DEFAULT_EPOCHS
    args = build_parser().parse_args(["convert", "m.onnx", "--reconstruct"])
    assert args.reconstruct == DEFAULT_EPOCHS
    assert build_parser().parse_args(["convert", "m.onnx"]).reconstruct == 0


def test_a_reconstructed_file_is_fitted_for_its_T_whatever_its_method(caplog):
    """``max`` holds at any T as converted; once reconstructed at T=2 it is fitted for 2, and
    a run at another T says how to get a file for that T."""
    from onnx_snn.convert import fitted_timesteps, warn_other_timesteps
    x = B.rand_input(32, seed=8)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, method="max", show_progress=False)
    assert fitted_timesteps(snn.info) is None
    reconstruct(snn, onnx_snn.prepare(B.vgg()).model, x, ReconstructConfig(epochs=1),
                show_progress=False)
    assert fitted_timesteps(snn.info) == 2
    text = warn_other_timesteps(snn.info, [4], "m.snn.onnx")
    assert "reconstructed for T=2" in text and "-T 4 --reconstruct" in text


def test_cli_convert_reconstruct_writes_the_trained_model_and_says_so(tmp_path, capsys):
    from onnx_snn.cli import main
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", B.rand_input(32, seed=9))
    out = tmp_path / "m.snn.onnx"
    assert main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
                 "-o", str(out), "-q", "--reconstruct", "2", "--step-graph",
                 str(tmp_path / "step.onnx")]) == 0
    said = capsys.readouterr().out
    assert "reconstructed in" in said and "(2 epochs)" in said
    info = fmt.read_info(onnx.load(str(out)))
    assert info.history[-1]["step"] == "reconstruct" and info.history[-1]["kept"]
    x = B.rand_input(16, seed=10)
    np.testing.assert_allclose(run(str(tmp_path / "step.onnx"), x).outputs[0],
                               run(str(out), x).outputs[0], rtol=0, atol=1e-5)
