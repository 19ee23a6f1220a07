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


def _scaled_gemm(beta: float, bias: bool) -> onnx.ModelProto:
    """conv - clip - Gemm(beta, with or without C) - clip - dense: an offset folded into a
    Gemm's bias divided by its beta, or into a bias the layer did not have."""
    b = B.GraphBuilder(13, 0)
    x = b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip", 2.0)], axis=1)
    ins = [x, b.const((b.rng.standard_normal((16, 576)) * 0.06).astype(np.float32), "W")]
    if bias:
        ins.append(b.const((b.rng.standard_normal(16) * 0.1).astype(np.float32), "B"))
    x = b.act(b.node("Gemm", ins, transB=1, beta=beta), "clip", 2.0)
    return b.model("input", b.gemm(x, 16, 10), (1, 12, 12), 10, f"gemm_beta{beta}")


def _no_bias() -> onnx.ModelProto:
    b = B.GraphBuilder(13, 0)
    x = b.act(b.conv("input", 1, 4, bias=False), "clip", 2.0)
    x = b.act(b.conv(x, 4, 8, bias=False), "clip", 2.0)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    return b.model("input", b.gemm(x, 8, 10), (1, 12, 12), 10, "no_bias")


@pytest.mark.parametrize("make,signed", [(B.vgg, False), (B.resnet, False), (B.vgg, True),
                                         (lambda: _scaled_gemm(0.5, True), False),
                                         (lambda: _scaled_gemm(2.0, False), False),
                                         (_no_bias, False)],
                         ids=["vgg", "resnet", "vgg-signed", "gemm-beta", "gemm-no-c", "no-bias"])
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


def test_batches_shrink_for_a_network_of_many_activations(monkeypatch):
    """The DNN's batches and the measure's shrink where their values would pass BATCH_BYTES
    (here: to one image), and measure the same network the same way."""
    import onnx_snn.runtimes.torch.reconstruct as R
    x = B.rand_input(24, seed=5)
    dnn = onnx_snn.prepare(B.vgg(seed=3)).model
    snn = onnx_snn.convert(B.vgg(seed=3), x, timesteps=2, method="max", show_progress=False)
    cfg = ReconstructConfig(epochs=1, lr=1e-9, batch_size=8)
    base = reconstruct(onnx_snn.convert(B.vgg(seed=3), x, timesteps=2, method="max",
                                        show_progress=False), dnn, x, cfg, show_progress=False)
    names = [r.input for r in snn.records.values()] + [o.name for o in dnn.graph.output]
    per = R._bounded_batch(dnn, names, 10 ** 6)
    assert R._bounded_batch(dnn, names, 256) == min(256, per) and per == R.BATCH_BYTES // (
        4 * sum(int(np.prod(s[1:])) for s in _shapes(dnn, dict.fromkeys(names))))
    seen = []
    real = R._batches

    def spy(xs, size, *a, **k):
        seen.append(size)
        return real(xs, size, *a, **k)
    monkeypatch.setattr(R, "BATCH_BYTES", 1)
    monkeypatch.setattr(R, "_batches", spy)
    small = reconstruct(snn, dnn, x, cfg, show_progress=False)
    assert 1 in seen and set(seen) <= {1, 8}        # (the training's batch is its own)
    for k in ("loss", "site_loss", "output_loss", "dnn_agreement"):
        assert small["before"][k] == pytest.approx(base["before"][k], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("limit", [1, 2], ids=["parts-of-1", "parts-of-2"])
def test_a_batch_trained_in_parts_takes_the_whole_batch_step(monkeypatch, limit):
    """Where one training pass would hold more than TRAIN_BYTES, each batch trains in parts
    whose gradients add up to the batch's: the same epoch losses and the same trained
    values as whole batches (to float rounding), and the record says so; a batch of 7 in
    parts of at most 2 runs 4 passes of 2, 2, 2, 1."""
    import onnx_snn.runtimes.torch.reconstruct as R
    x = B.rand_input(18, seed=5)
    dnn = onnx_snn.prepare(B.vgg(seed=3)).model
    cfg = ReconstructConfig(epochs=2, lr=3e-3, batch_size=7)
    per = R._bounded_batch(dnn, None, 10 ** 6, 10 ** 9 // 2)   # images in 1e9 bytes at T = 2
    done = []
    for bound in (None, limit):
        if bound is not None:      # parts of `limit` images at T = 2
            monkeypatch.setattr(R, "TRAIN_BYTES", int(10 ** 9 * limit // per + 1))
        snn = onnx_snn.convert(B.vgg(seed=3), x, timesteps=2, method="max",
                               show_progress=False, reconstruct=0)
        rec = reconstruct(snn, dnn, x, cfg, show_progress=False)
        done.append((rec, {r: (s.threshold, s.amplitude) for r, s in snn.records.items()},
                     {t.name: onnx.numpy_helper.to_array(t) for t in
                      snn.normalized.model.graph.initializer}))
    (whole, wrec, wts), (parts, prec, pts) = done
    assert "batch_parts_of" not in whole and parts["batch_parts_of"] == limit
    np.testing.assert_allclose(parts["epoch_losses"], whole["epoch_losses"], rtol=1e-4)
    assert whole["epoch_losses"][1] != whole["epoch_losses"][0]       # it trained
    for name, w in wts.items():
        np.testing.assert_allclose(pts[name], w, rtol=1e-3, atol=1e-5, err_msg=name)
    for site, (th, amp) in wrec.items():
        np.testing.assert_allclose(prec[site][0], th, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(prec[site][1], amp, rtol=1e-3, atol=1e-6)
    assert [len(p) for p in R._parts(np.arange(7), 2)] == [2, 2, 2, 1]
    assert [len(p) for p in R._parts(np.arange(32), 13)] == [11, 11, 10]
    assert [len(p) for p in R._parts(np.arange(5), 8)] == [5]


def _shapes(model, names):
    """The shapes ``model`` (normalized) records for ``names``."""
    from onnx_snn.analyze.flops import _collect
    shapes = _collect(model).shapes
    return [shapes[n] for n in names]


def test_convert_reconstructs_when_asked_and_says_so(tmp_path):
    x = B.rand_input(32, seed=6)
    plain = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct=2)
    assert snn.report["reconstruction"]["epochs"] == 2 and "reconstruction" not in plain.report
    assert np.abs(run(snn.model, x).outputs[0] - run(plain.model, x).outputs[0]).max() > 0
    # binary spikes fold the trained amplitudes: the same outputs
    np.testing.assert_allclose(run(snn.binary_model(), x).outputs[0], run(snn.model, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


def _without_history(model: onnx.ModelProto) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    fmt.set_metadata(m, {fmt.META_HISTORY: "[]"})
    return m.SerializeToString()


def test_a_diverged_reconstruction_keeps_the_conversion():
    """Every weight (the loop body's too), parameter and record as converted; the history
    says it was not kept."""
    x = B.rand_input(32, seed=7)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    was = _without_history(snn.model)
    rec = reconstruct(snn, onnx_snn.prepare(B.vgg()).model, x,
                      ReconstructConfig(epochs=2, lr=1e30), show_progress=False)
    assert not rec["kept"] and "non-finite" in rec["why"]
    assert _without_history(snn.model) == was
    # held-out images: nothing measured after a divergence, nothing said of them
    rec = reconstruct(snn, onnx_snn.prepare(B.vgg()).model, x,
                      ReconstructConfig(epochs=2, lr=1e30), show_progress=False,
                      held_out=B.rand_input(8, seed=8), guard=True)
    assert rec["held_out"]["after"] is None and rec["held_out"]["followed_better"] is None
    assert "non-finite" in rec["why"]
    assert json.loads(fmt.metadata(snn.model)[fmt.META_HISTORY])[-1]["kept"] is False


def test_a_fixed_batch_model_and_float64_data_reconstruct():
    """A DNN of batch size 1 (the conversion calibrates in batches of it) is trained in
    batches of it, the last ones padded and the padding dropped; float64 calibration arrays
    are fed as the float32 the model declares (both crashed after the whole conversion)."""
    x = B.rand_input(9, seed=11)
    m = B.vgg()
    for vi in list(m.graph.input) + list(m.graph.output):
        d = vi.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = 1
    snn = onnx_snn.convert(m, x, timesteps=2, show_progress=False, reconstruct=1)
    assert snn.report["reconstruction"]["kept"] and snn.report["reconstruction"]["batch_size"] == 1
    snn = onnx_snn.convert(B.vgg(), x.astype(np.float64), timesteps=2, show_progress=False,
                           reconstruct=1)
    assert snn.report["reconstruction"]["kept"]


@pytest.mark.parametrize("mu", [1.0, 0.37, 6.0, 1e-3])
def test_site_targets_are_kept_in_a_byte_within_half_a_level(mu):
    """A site's target, the DNN's activation clipped to [0, mu], is kept as a byte
    (runtimes.torch.reconstruct.site_codes) and read back within mu / 510: 0 and mu exactly
    where the activation is at or past them, nothing outside [0, mu]."""
    import onnx_snn.runtimes.torch.reconstruct as R
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.uniform(-0.5 * mu, 1.5 * mu, 5000), [0.0, mu, -mu, 2 * mu,
                                                                 mu * (1 - 1e-7)]]).astype(np.float32)
    codes = R.site_codes(a, mu)
    assert codes.dtype == np.uint8 and codes.shape == a.shape
    back = R.site_values(torch.from_numpy(codes), mu).numpy()
    want = np.clip(a, 0.0, mu)
    assert np.max(np.abs(back - want)) <= mu / (2 * R.SITE_LEVELS) * (1 + 1e-5)
    assert back.min() == 0.0 and back.max() <= np.float32(mu) * (1 + 1e-6)
    np.testing.assert_array_equal(codes[-5:], [0, R.SITE_LEVELS, 0, R.SITE_LEVELS,
                                               R.SITE_LEVELS])
    # every level is reachable, so the targets are not coarser than a byte allows
    assert len(np.unique(codes)) == R.SITE_LEVELS + 1


def test_a_site_that_never_fires_has_zero_targets():
    import onnx_snn.runtimes.torch.reconstruct as R
    for mu in (0.0, -1.0, float("nan")):
        codes = R.site_codes(np.array([0.5, -2.0, 3.0], np.float32), mu)
        np.testing.assert_array_equal(codes, [0, 0, 0])
        assert R.site_values(torch.from_numpy(codes), mu).tolist() == [0.0, 0.0, 0.0]


def test_sites_are_coded_in_a_byte_only_where_it_is_fine_enough():
    """runtimes.torch.reconstruct.coded_sites: a byte where mu / 255 is at most a quarter of
    the site's output step (its largest amplitude / T); float32 for a clip bound far above
    the data (a small beta), at large T, and for a mu that is not finite."""
    import onnx_snn.runtimes.torch.reconstruct as R
    rec = lambda mu, beta: fmt.SiteRecord("s", "i", "o", [2], mu=mu, beta=beta)  # noqa: E731
    recs = {"usual": rec(1.5, 0.7), "per-channel": rec(2.0, [0.001, 0.8]),
            "bound far above": rec(100.0, 0.01), "dead": rec(1.0, 0.0),
            "infinite": rec(float("inf"), 0.5), "zero": rec(0.0, 1.0)}
    at2 = R.coded_sites(recs, 2)
    assert at2 == {"usual": True, "per-channel": True, "bound far above": False,
                   "dead": False, "infinite": False, "zero": False}
    assert R.coded_sites({"usual": recs["usual"]}, 16) == {"usual": True}       # 0.7 >= 64/255
    assert R.coded_sites({"usual": recs["usual"]}, 64) == {"usual": False}      # 0.7 < 256/255


def test_the_targets_kept_between_epochs_are_bytes(monkeypatch):
    """The cache of the DNN's targets holds each coded site as uint8 (a quarter of float32's
    size, what lets 4096 images of VGG-16 fit), a site not coded as float32, and the targets
    read back are float32 either way."""
    import onnx_snn.runtimes.torch.reconstruct as R
    made = []

    class Spy(R._Targets):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
    monkeypatch.setattr(R, "_Targets", Spy)
    real = R.coded_sites
    monkeypatch.setattr(R, "coded_sites", lambda records, T: {     # the last site in float32
        s: c and s != list(records)[-1] for s, c in real(records, T).items()})
    x = B.rand_input(10, seed=12)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct=0)
    reconstruct(snn, onnx_snn.prepare(B.vgg()).model, x, ReconstructConfig(epochs=1),
                show_progress=False)
    t = made[0]
    assert t.cache is not None and len(t.coded) >= 2
    last = list(t.coded)[-1]
    for s, kept in t.cache[1].items():
        assert kept.dtype == (torch.float32 if s == last else torch.uint8) and len(kept) == 10
    outs, sites = t(np.arange(3), None, 3)
    assert all(v.dtype == torch.float32 and len(v) == 3 for v in sites.values())
    first = R._kept(t.run({k: v[:4] for k, v in R._inputs(onnx_snn.prepare(B.vgg()).model,
                                                           x).items()}), 4)
    per_row = sum(v.numel() * v.element_size() for part in first for v in part.values()) / 4
    monkeypatch.setattr(R, "TARGET_CACHE_BYTES", int(per_row * 10))
    assert R._Targets.cache_fits(first, 10) and not R._Targets.cache_fits(first, 11)


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic-batch", "batch-of-4"])
def test_the_kept_targets_train_as_the_targets_run_each_batch(monkeypatch, fixed):
    """The DNN's targets kept between epochs (runtimes.torch.reconstruct._Targets) give the
    training what running them for each shuffled batch gives (on a model of a fixed batch
    too, whose last batch is padded): the same losses, epoch by epoch."""
    import onnx_snn.runtimes.torch.reconstruct as R
    x = B.rand_input(10, seed=12)
    m = B.vgg()
    if fixed:
        for vi in list(m.graph.input) + list(m.graph.output):
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_value = 4
    losses = []
    for cache in (R.TARGET_CACHE_BYTES, 0):
        monkeypatch.setattr(R, "TARGET_CACHE_BYTES", cache)
        snn = onnx_snn.convert(m, x, timesteps=2, show_progress=False, reconstruct=0)
        rec = reconstruct(snn, onnx_snn.prepare(m).model, x,
                          ReconstructConfig(epochs=3, batch_size=3), show_progress=False)
        losses.append(rec["epoch_losses"] + [rec["after"]["loss"]])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_the_report_shows_the_values_written():
    x = B.rand_input(32, seed=12)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct=2)
    written = {r.name: r for r in snn.info.sites}
    for row in snn.report["sites"]:
        np.testing.assert_allclose(np.asarray(row["threshold"]),
                                   np.asarray(written[row["name"]].threshold), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(row["amplitude"]),
                                   np.asarray(written[row["name"]].amplitude), rtol=1e-12)


def test_a_reconstruction_that_raises_the_loss_far_says_so(caplog):
    import logging
    import onnx_snn.runtimes.torch.reconstruct as R
    x = B.rand_input(32, seed=13)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        rec = reconstruct(snn, onnx_snn.prepare(B.vgg()).model, x,
                          ReconstructConfig(epochs=3, lr=3e-2), show_progress=False)
    assert rec["kept"] and rec["after"]["loss"] > R.LOSS_WARNING * rec["before"]["loss"]
    assert "went from" in rec["warning"] and "went from" in caplog.text
    calm = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False, reconstruct=3)
    assert "warning" not in calm.report["reconstruction"]


def test_a_reconstruction_that_follows_the_dnn_worse_on_held_out_images_is_not_kept():
    """With ``guard`` (convert's default), a reconstruction whose held-out agreement with the
    DNN falls (lr 3e-2 on random weights: 60.3 -> 53 %) leaves every value as converted,
    and says why; without, it is kept with a warning; one that mends a poor conversion is
    kept."""
    x, held = B.rand_input(32, seed=13), B.rand_input(300, seed=21)
    dnn = onnx_snn.prepare(B.vgg()).model
    bad = ReconstructConfig(epochs=3, lr=3e-2)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    was = _without_history(snn.model)
    rec = reconstruct(snn, dnn, x, bad, show_progress=False, held_out=held, guard=True)
    h = rec["held_out"]
    assert h["images"] == 300 and not h["followed_better"] and not rec["kept"]
    assert h["after"]["dnn_agreement"] < h["before"]["dnn_agreement"]
    assert h["after"]["output_loss"] > h["before"]["output_loss"]
    assert "300 held-out images" in rec["why"] and "kept" in rec["why"]
    assert _without_history(snn.model) == was
    assert "agrees" not in h["before"]       # (the samples' own stay out of the record)
    json.dumps(rec)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    rec = reconstruct(snn, dnn, x, bad, show_progress=False, held_out=held)
    assert rec["kept"] and "held-out" in rec["warning"] and _without_history(snn.model) != was
    # a poor conversion (max at T=2: most neurons silent) that reconstruction mends
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, method="max", show_progress=False)
    rec = reconstruct(snn, dnn, x, ReconstructConfig(epochs=20, lr=3e-3, batch_size=16),
                      show_progress=False, held_out=held, guard=True)
    h = rec["held_out"]
    assert rec["kept"] and h["followed_better"] and "why" not in rec
    assert h["after"]["output_loss"] < h["before"]["output_loss"]


def test_followed_better_allows_a_standard_error_of_the_change():
    from onnx_snn.runtimes.torch.reconstruct import follows_better
    before = np.ones(100, bool)
    before[:50] = False             # 50 of 100 agree

    def m(agrees, loss=0.2):
        return {"agrees": agrees, "dnn_agreement": float(np.mean(agrees)), "output_loss": loss}
    after = before.copy()
    after[50:54] = False            # 4 changed, all for the worse: se = 2, a drop of 2 se
    assert follows_better(m(before), m(after, 0.19))        # within 2 se, its loss fell
    assert not follows_better(m(before), m(after, 0.21))    # its loss rose
    after[50:59] = False            # 9 changed, all for the worse: 9 > 2 sqrt(9) images
    assert not follows_better(m(before), m(after, 0.01))    # however low its loss
    after = before.copy()
    after[:20] = True
    after[50:72] = False            # 42 changed, 2 fewer agree: within the noise
    assert follows_better(m(before), m(after, 0.2))
    assert not follows_better(m(before), m(before, 0.24))   # all agree still, the loss rose
    up = np.ones(100, bool)
    assert not follows_better(m(before), m(up, 0.21))       # more agree, but its loss rose
    assert follows_better(m(before), m(up, 0.19))
    # not a classifier: its output's loss, not higher
    assert follows_better({"output_loss": 0.3}, {"output_loss": 0.3})
    assert not follows_better({"output_loss": 0.3}, {"output_loss": 0.31})


def test_a_dnn_without_the_sites_tensors_is_a_usage_error():
    x = B.rand_input(16, seed=14)
    snn = onnx_snn.convert(B.vgg(), x, timesteps=2, show_progress=False)
    with pytest.raises(UsageError, match="onnx_snn.prepare\\(model\\).model"):
        reconstruct(snn, B.resnet(), x, ReconstructConfig(epochs=1), show_progress=False)


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
    assert build_parser().parse_args(["convert", "m.onnx"]).reconstruct is None   # auto
    from onnx_snn.auto_reconstruct import BATCH, MAX_EPOCHS
    assert MAX_EPOCHS == DEFAULT_EPOCHS
    assert BATCH == ReconstructConfig().batch_size


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
    assert "reconstructed in" in said and "(2 epochs of 32 images)" in said
    info = fmt.read_info(onnx.load(str(out)))
    assert info.history[-1]["step"] == "reconstruct" and info.history[-1]["kept"]
    x = B.rand_input(16, seed=10)
    np.testing.assert_allclose(run(str(tmp_path / "step.onnx"), x).outputs[0],
                               run(str(out), x).outputs[0], rtol=0, atol=1e-5)


def test_cli_convert_says_how_the_reconstruction_did_on_held_out_samples(tmp_path, capsys):
    """300 samples, 32 calibrating: the last line gives the agreement on the other 268."""
    from onnx_snn.cli import main
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", B.rand_input(300, seed=9))
    assert main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
                 "--calib-samples", "32", "-o", str(tmp_path / "m.snn.onnx"), "-q",
                 "--reconstruct", "2"]) == 0
    said = capsys.readouterr().out
    held = fmt.read_info(onnx.load(str(tmp_path / "m.snn.onnx"))).history[-1]
    assert held["held_out"]["images"] == 268     # (the file's history has it too)
    assert "% of 268 held-out samples, the conversion on" in said


@pytest.mark.parametrize("value", ["-1", "abc", "2.5"])
def test_cli_refuses_a_bad_reconstruct_before_the_work(tmp_path, capsys, value):
    """A bad --reconstruct is a usage error (exit 2), no traceback, nothing written."""
    from onnx_snn.cli import main
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", B.rand_input(8, seed=15))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
              "-o", str(tmp_path / "out.onnx"), "--reconstruct", value])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _two_heads() -> onnx.ModelProto:
    """conv - clip - conv - clip - flatten, then two dense heads: outputs y and z."""
    b = B.GraphBuilder(13, 3)
    x = b.act(b.conv("input", 1, 4), "clip", 2.0)
    x = b.node("Flatten", [b.act(b.conv(x, 4, 8), "clip", 2.0)], axis=1)
    m = b.model("input", b.gemm(x, 8 * 12 * 12, 10), (1, 12, 12), 10, "two_heads")
    z = b.gemm(x, 8 * 12 * 12, 6)
    m.graph.node.extend(b.nodes[len(m.graph.node):])
    m.graph.initializer.extend(b.inits[len(m.graph.initializer):])
    m.graph.output.append(onnx.helper.make_tensor_value_info(z, onnx.TensorProto.FLOAT, ["N", 6]))
    onnx.checker.check_model(m)
    return m


def test_every_output_of_a_model_of_several_is_reconstructed():
    """A second head follows its DNN head after the reconstruction as the first does (it
    trained on the first output and the sites alone: the second head's mean error went from
    0.176 to 0.182 in 15 epochs, where the first's fell from 0.179 to 0.149; now 0.147 and
    0.156)."""
    dnn = _two_heads()
    x = B.rand_input(128, seed=2)
    import onnxruntime as ort
    sess = ort.InferenceSession(dnn.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})
    snn = onnx_snn.convert(dnn, x, timesteps=2, show_progress=False, reconstruct=0)
    before = run(snn.model, x).outputs
    rec = reconstruct(snn, onnx_snn.prepare(dnn).model, x, ReconstructConfig(epochs=15),
                      show_progress=False)
    after = run(snn.model, x).outputs
    assert rec["kept"]
    err = [[float(np.mean(np.abs(got[i] - want[i]))) for i in (0, 1)] for got in (before, after)]
    assert err[1][0] < 0.9 * err[0][0] and err[1][1] < 0.9 * err[0][1], err


@pytest.mark.parametrize("keep", [[1, 0], [1]], ids=["reordered", "second-alone"])
def test_outputs_follow_the_dnn_outputs_of_their_names(keep):
    """A spiking model that keeps the DNN's outputs in another order, or one of them, each
    learns the DNN output of its name (it learnt the DNN's first by position: a shape
    error, or the wrong head where the shapes agree), and its error to it falls."""
    import onnxruntime as ort
    dnn = _two_heads()
    names = [o.name for o in dnn.graph.output]
    x = B.rand_input(128, seed=2)
    want = dict(zip(names, ort.InferenceSession(dnn.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, {"input": x})))
    snn = onnx_snn.convert(dnn, x, timesteps=2, show_progress=False, reconstruct=0,
                           outputs=[names[i] for i in keep])
    kept = [o.name for o in snn.model.graph.output if o.name in names]
    assert kept == [names[i] for i in keep]
    before = dict(zip([o.name for o in snn.model.graph.output], run(snn.model, x).outputs))
    reconstruct(snn, onnx_snn.prepare(dnn).model, x, ReconstructConfig(epochs=15),
                show_progress=False)
    after = dict(zip([o.name for o in snn.model.graph.output], run(snn.model, x).outputs))
    for name in kept:
        e0, e1 = (float(np.mean(np.abs(d[name] - want[name]))) for d in (before, after))
        assert e1 < 0.9 * e0, (name, e0, e1)


def test_site_outputs_gives_every_output_as_the_forward_pass():
    dnn = _two_heads()
    x = B.rand_input(8, seed=4)
    snn = onnx_snn.convert(dnn, x, timesteps=3, show_progress=False, reconstruct=0)
    net = SpikingNetwork(snn.model).eval()
    with torch.no_grad():
        outs, _ = net.site_outputs(torch.from_numpy(x), every_output=True)
        first, _ = net.site_outputs(torch.from_numpy(x))
    r = run(snn.model, x)
    names = [o.name for o in snn.model.graph.output][:len(outs)]
    assert list(outs) == list(net.view.outputs) == names
    for name, y in zip(names, r.outputs):
        np.testing.assert_allclose(outs[name].numpy(), y, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(first.numpy(), outs[names[0]].numpy())
