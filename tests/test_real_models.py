"""Real architectures from real producers: torchvision models exported by both PyTorch
exporters, and the ONNX package's light model-zoo files.

Every supported model converts (small random calibration arrays, T = 1, ``datta`` for
speed), passes ``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime, and its
deploy graph at T = 2 gives the loop graph's spike counts bit for bit and its outputs within
float rounding; every
unsupported one is refused by the CLI with exit code 4 and an error naming the node.

Supported here: mobilenet_v2, resnet18, squeezenet1_1, shufflenet_v2_x0_5, densenet121 and
googlenet from both exporters; the light zoo's densenet121, inception_v2, resnet50,
shufflenet, squeezenet and vgg19. Refused: the light zoo's bvlc_alexnet, inception_v1 and
zfnet512 (an LRN layer), torchvision's efficientnet_b0 (SiLU: a Sigmoid) and convnext_tiny
(GELU / LayerNorm).
"""
from __future__ import annotations

import glob
import io
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from onnx_snn.cli import main  # noqa: E402

INPUT = (3, 64, 64)
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

# (torchvision name, exporter): a few quick ones run by default, the rest are marked slow
SUPPORTED = ["mobilenet_v2", "resnet18", "squeezenet1_1", "shufflenet_v2_x0_5", "densenet121",
             "googlenet"]
FAST = {("resnet18", "legacy"), ("mobilenet_v2", "legacy"), ("squeezenet1_1", "legacy"),
        ("squeezenet1_1", "dynamo")}
LIGHT_SUPPORTED = {"light_densenet121": True, "light_inception_v2": True,
                   "light_shufflenet": False, "light_squeezenet": False}
LIGHT_REFUSED = {"light_bvlc_alexnet": "LRN", "light_inception_v1": "LRN", "light_zfnet512": "LRN"}
#: light models whose synthetic weights drive the activations past MAX_ACTIVATION on any
#: input, zeros included (refused as the model's, not blamed on the data)
LIGHT_OVERFLOWING = {"light_resnet50": True, "light_vgg19": True}
TORCH_REFUSED = {"efficientnet_b0": ("Sigmoid", False), "convnext_tiny": ("", True)}


def export(name: str, exporter: str, folder: Path) -> Path:
    """A torchvision model with random weights, in eval mode, exported at 1x3x64x64."""
    torch.manual_seed(0)
    kw = {"weights": None}
    if name == "googlenet":
        kw.update(aux_logits=False, init_weights=True)
    model = getattr(torchvision.models, name)(**kw).eval()
    path = folder / f"{name}_{exporter}.onnx"
    return torch_export(model, torch.randn(1, *INPUT), path, exporter, opset=17)


def torch_export(model, x, path: Path, exporter: str, opset: int, dynamic_batch: bool = False) -> Path:
    """``model`` exported at input ``x`` by the legacy (free batch) or dynamo exporter (a free
    batch with ``dynamic_batch``), quietly."""
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=opset,
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        else:
            pytest.importorskip("onnxscript")
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"],
                              output_names=["logits"],
                              **({"dynamic_shapes": ({0: torch.export.Dim("N")},)}
                                 if dynamic_batch else {}))
    return path


def calib_for(model_path: Path, n: int = 2) -> np.ndarray:
    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    vi = next(i for i in m.graph.input if i.name not in inits)
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim][1:]
    return np.random.default_rng(0).standard_normal((n, *dims)).astype(np.float32)


def convert_and_run(path: Path) -> int:
    """Convert with the API, check the result fully, run it in onnxruntime; the sites."""
    import onnxruntime as ort

    import onnx_snn
    x = calib_for(path)
    snn = onnx_snn.convert(str(path), x, timesteps=1, method="datta", calib_samples=None,
                           show_progress=False)
    onnx.checker.check_model(snn.model, full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(snn.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 2
    out = sess.run(None, {inp.name: x[:batch]})
    assert out[0].shape[0] == batch and np.all(np.isfinite(out[0]))
    assert snn.records, "no spiking sites"
    # its deploy graph (at T=2: two copies of the step) gives the same spike counts, and the
    # same outputs up to float rounding: onnxruntime may fuse the last (non-spiking) layers
    # of the unrolled graph differently from the loop body's (light_shufflenet: 7e-7)
    from onnx_snn.runtimes.ort import ModelRunner
    dep = onnx_snn.deploy(snn.model, timesteps=2, spike_counts=True)
    onnx.checker.check_model(dep, full_check=True)
    loop, unrolled = ModelRunner(snn.model), ModelRunner(dep)
    feeds = loop.validate(x[:batch])
    a, b = loop.run_padded(feeds, 2), unrolled.run_padded(feeds, 2)
    for u, v in zip(a.outputs, b.outputs):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-5)
    assert a.spikes.keys() == b.spikes.keys()
    for k in a.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k])
    return len(snn.records)


def refused(path: Path, tmp_path: Path, needle: str) -> str:
    """The CLI refuses ``path`` with exit code 4 and one error line naming the node."""
    np.save(tmp_path / "calib.npy", calib_for(path))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["-q", "convert", str(path), "--calib", str(tmp_path / "calib.npy"),
                     "--method", "datta", "-T", "1", "-o", str(tmp_path / "out.snn.onnx")])
    lines = [l for l in err.getvalue().splitlines() if l.startswith("onnx-snn: error:")]
    assert code == 4, err.getvalue()
    assert len(lines) == 1, err.getvalue()
    assert "node '" in lines[0] and needle in lines[0], lines[0]
    assert not (tmp_path / "out.snn.onnx").exists()
    return lines[0]


def _torch_params():
    out = []
    for name in SUPPORTED:
        for exporter in ("legacy", "dynamo"):
            marks = [] if (name, exporter) in FAST else [pytest.mark.slow]
            out.append(pytest.param(name, exporter, id=f"{name}-{exporter}", marks=marks))
    return out


@pytest.mark.parametrize("name,exporter", _torch_params())
def test_torchvision_model_converts(name, exporter, tmp_path):
    path = export(name, exporter, tmp_path)
    assert convert_and_run(path) > 0


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if slow else [])
                                  for n, (_, slow) in TORCH_REFUSED.items()])
def test_torchvision_model_refused(name, tmp_path):
    path = export(name, "legacy", tmp_path)
    refused(path, tmp_path, TORCH_REFUSED[name][0])


def _light(names):
    files = {Path(f).stem: Path(f) for f in glob.glob(str(LIGHT_DIR / "*.onnx"))}
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no onnx light model-zoo files"))]
    return [pytest.param(files[n], id=n, marks=[pytest.mark.slow] if slow else [])
            for n, slow in names.items() if n in files]


@pytest.mark.parametrize("path", _light(LIGHT_SUPPORTED))
def test_light_zoo_model_converts(path):
    assert convert_and_run(path) > 0


@pytest.mark.parametrize("path", _light(LIGHT_OVERFLOWING))
def test_light_zoo_model_whose_weights_overflow_is_refused_as_the_models(path, tmp_path):
    np.save(tmp_path / "calib.npy", calib_for(path))
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["-q", "convert", str(path), "--calib", str(tmp_path / "calib.npy"),
                     "--method", "datta", "-T", "1", "-o", str(tmp_path / "out.snn.onnx")])
    assert code == 4, err.getvalue()
    assert "on an input of zeros: its weights drive them beyond" in err.getvalue(), err.getvalue()
    assert not (tmp_path / "out.snn.onnx").exists()


@pytest.mark.parametrize("path", _light({n: False for n in LIGHT_REFUSED}))
def test_light_zoo_model_refused(path, tmp_path):
    refused(path, tmp_path, LIGHT_REFUSED[path.stem])


def test_no_onnxruntime_noise(tmp_path, capfd):
    """onnxruntime logs nothing while onnx-snn converts and evaluates (torchvision's
    ShuffleNet makes its optimizer warn about Unsqueeze nodes; a spiking model's overridable
    ``timesteps`` input makes every session warn) -- at the file-descriptor level."""
    import onnx_snn
    path = export("shufflenet_v2_x0_5", "legacy", tmp_path)
    capfd.readouterr()
    x = calib_for(path)
    snn = onnx_snn.convert(str(path), x, timesteps=1, method="datta", show_progress=False)
    onnx_snn.evaluate(snn.model, (x, np.zeros(len(x), np.int64)), show_progress=False)
    err = capfd.readouterr().err
    assert "onnxruntime" not in err, err[:2000]


def test_every_light_zoo_file_is_classified():
    """A new light model in the onnx package gets a verdict here (supported or refused)."""
    stems = {Path(f).stem for f in glob.glob(str(LIGHT_DIR / "*.onnx"))}
    known = set(LIGHT_SUPPORTED) | set(LIGHT_REFUSED) | set(LIGHT_OVERFLOWING)
    assert stems <= known, stems - known


class _Idiom(torch.nn.Module):
    """conv-relu, then one exporter idiom, conv-relu, dense: 'interp-nearest' and
    'interp-bilinear' are ``F.interpolate(size=(11, 11))`` (sizes computed from the shape with
    a free batch), 'adaptive' is ``adaptive_avg_pool2d`` 8 -> 3 (unequal windows: the dynamo
    exporter masks them with a Where)."""

    def __init__(self, idiom: str):
        super().__init__()
        self.idiom = idiom
        self.c1 = torch.nn.Conv2d(1, 4, 3, 2, 1)
        self.c2 = torch.nn.Conv2d(4, 6, 3, 1, 1)
        self.fc = torch.nn.Linear(6 * (3 * 3 if idiom == "adaptive" else 1), 10)

    def forward(self, x):
        import torch.nn.functional as F
        a = torch.relu(self.c1(x))
        if self.idiom == "adaptive":
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.c2(a)), 3), 1))
        mode = self.idiom.split("-")[1]
        u = F.interpolate(a, size=(11, 11), mode=mode,
                          **({} if mode == "nearest" else {"align_corners": False}))
        return self.fc(torch.relu(self.c2(u)).mean((2, 3)))


@pytest.mark.parametrize("idiom,exporter", [
    ("interp-nearest", "legacy"), ("interp-nearest", "dynamo"), ("interp-bilinear", "legacy"),
    ("interp-bilinear", "dynamo"), ("adaptive", "dynamo")])
def test_exporter_idioms_with_a_free_batch_convert(idiom, exporter, tmp_path):
    """Idioms that compute shapes or masks at run time convert, run any batch, and the two
    runtimes agree on the spiking network."""
    import builders as B
    torch.manual_seed(0)
    model = _Idiom(idiom).eval()
    x = torch.rand(2, 1, 16, 16)
    path = tmp_path / f"{idiom}.onnx"
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                              opset_version=13, dynamic_axes={"input": {0: "N"}})
        else:
            pytest.importorskip("onnxscript")
            torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18,
                              dynamic_shapes={"x": {0: torch.export.Dim("N")}})
    assert convert_and_run(path) == 2
    import onnx_snn
    data = np.random.default_rng(0).random((5, 1, 16, 16)).astype(np.float32)
    snn = onnx_snn.convert(str(path), data, timesteps=2, show_progress=False)
    B.assert_runtimes_agree(snn.model, data)


class _GradFloor(torch.autograd.Function):
    """QCFS's reference code: a floor with a straight-through gradient."""
    @staticmethod
    def forward(ctx, x):
        return x.floor()

    @staticmethod
    def backward(ctx, g):
        return g


class _QCFS(torch.nn.Module):
    """QCFS's activation (Bu et al., ICLR 2022) as its reference code writes it."""
    def __init__(self, levels: int = 4, thresh: float = 2.0):
        super().__init__()
        self.levels, self.thresh = levels, torch.nn.Parameter(torch.tensor([thresh]))

    def forward(self, x):
        x = torch.clamp(x / self.thresh, 0, 1)
        return _GradFloor.apply(x * self.levels + 0.5) / self.levels * self.thresh


class _TCL(torch.nn.Module):
    """TCL's trainable clipping layer (Ho & Chang, DAC 2021) as its reference code writes it."""
    def __init__(self, up: float = 2.0):
        super().__init__()
        self.up = torch.nn.Parameter(torch.tensor([up]))

    def forward(self, x):
        return self.up - torch.relu(self.up - torch.relu(x))


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
@pytest.mark.parametrize("act", ["qcfs", "tcl"])
def test_networks_trained_for_conversion_convert_one_site_per_activation(act, exporter, tmp_path):
    """The activations of two ANN-SNN conversion trainings, exported as their code writes
    them: QCFS's clip-floor-shift (refused at its Floor before) and TCL's clamp of two ReLUs
    (two spiking layers each before): one site per activation, mu their threshold."""
    import onnx_snn
    make = (lambda t: _QCFS(4, t)) if act == "qcfs" else _TCL
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), make(1.5),
        torch.nn.AvgPool2d(2), torch.nn.Conv2d(4, 8, 3, padding=1), make(2.5),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 16, 10)).eval()
    path = torch_export(model, torch.randn(2, 1, 16, 16), tmp_path / f"{act}_{exporter}.onnx",
                        exporter, opset=13, dynamic_batch=True)
    nm = onnx_snn.prepare(str(path))
    scale = 1.0 if act == "qcfs" else None     # QCFS divides by its threshold first
    assert [s.mu for s in nm.sites] == ([pytest.approx(scale)] * 2 if scale else
                                        [pytest.approx(1.5), pytest.approx(2.5)])
    assert convert_and_run(path) == 2
