"""Layer-wise weight calibration (onnx_snn/weight_calibration.py): the patches, the rows it
keeps, and the ridge fit."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import builders as B
from onnx_snn.weight_calibration import LayerFit, _design, _keys, _row_cap, im2col, layer_fit


def _conv(w, b, **attrs):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    inits = {"w": numpy_helper.from_array(w, "w"), "b": numpy_helper.from_array(b, "b")}
    return node, inits


def _reference_conv(x, w, b, **attrs):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


CASES = [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2], pads=[0, 1, 1, 0]),
         dict(dilations=[2, 2], pads=[2, 2, 2, 2]), dict(auto_pad="SAME_UPPER", strides=[2, 2]),
         dict(group=2, pads=[1, 1, 1, 1])]


@pytest.mark.parametrize("attrs", CASES)
def test_patches_times_weights_are_the_convolution(attrs):
    rng = np.random.default_rng(0)
    g = attrs.get("group", 1)
    x = rng.normal(size=(2, 4, 9, 8)).astype(np.float32)
    w = rng.normal(size=(6, 4 // g, 3, 3)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    y = _reference_conv(x, w, b, **attrs)
    node, inits = _conv(w, b, **attrs)
    fit = layer_fit(node, inits)
    parts = list(_design(fit, x, y))
    assert len(parts) == g
    per = 6 // g
    for i, (rows, target, image) in enumerate(parts):
        assert np.all(rows[:, -1] == 1)                             # the bias column
        assert np.array_equal(image, np.repeat([0, 1], len(rows) // 2))
        wi = w[i * per:(i + 1) * per].reshape(per, -1)
        np.testing.assert_allclose(rows[:, :-1] @ wi.T + b[i * per:(i + 1) * per], target,
                                   rtol=1e-4, atol=1e-4)
    if g == 1:
        cols = im2col(x, w.shape, fit.attrs)
        np.testing.assert_array_equal(cols.reshape(len(parts[0][0]), -1), parts[0][0][:, :-1])
    # drawn rows: _row_cap of each image's patches, built at the drawn positions only, the
    # same values as the full patches', and the same whatever batch the image came in
    rng = np.random.default_rng(7)
    many = rng.normal(size=(6, 4, 30, 28)).astype(np.float32)      # > _row_cap patches each
    ym = _reference_conv(many, w, b, **attrs)
    cap = _row_cap(fit.inputs)
    full = [(r.copy(), t.copy()) for r, t, _ in _design(fit, many, ym)]
    per = len(full[0][0]) // len(many)
    assert per > cap
    drawn = [(r.copy(), t.copy(), i) for r, t, i in _design(fit, many, ym, first=10)]
    later = [(r.copy(), t.copy()) for r, t, _ in _design(fit, many[2:], ym[2:], first=12)]
    for (rows, target, image), (fr, ft), (lr, lt) in zip(drawn, full, later):
        assert len(rows) == cap * len(many) and np.array_equal(image, np.repeat(np.arange(6), cap))
        pick = np.concatenate([k * per + np.sort(np.argsort(_keys((10 + k) * per + np.arange(per)))[:cap])
                               for k in range(len(many))])
        np.testing.assert_array_equal(rows, fr[pick])
        np.testing.assert_array_equal(target, ft[pick])
        np.testing.assert_array_equal(lr, rows[2 * cap:])
        np.testing.assert_array_equal(lt, target[2 * cap:])


def test_ridge_fit_recovers_a_layer_from_exact_data_and_caps_its_rows():
    """On inputs that determine the layer, the refit returns its weights; a batch with more
    patches than the cap enters the normal equations with the cap's rows only."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    node, inits = _conv(w, b, pads=[1, 1, 1, 1])
    fit = layer_fit(node, inits)
    for _ in range(3):
        x = rng.random((4, 3, 12, 12)).astype(np.float32)
        fit.add(x, _reference_conv(x, w, b, pads=[1, 1, 1, 1]))
    w2, b2 = fit.solve(1e-9)
    np.testing.assert_allclose(w2, w, atol=2e-3)
    np.testing.assert_allclose(b2, b, atol=2e-3)
    big = layer_fit(node, inits)
    x = rng.random((60, 3, 12, 12)).astype(np.float32)          # 144 patches per image
    big.add(x, _reference_conv(x, w, b, pads=[1, 1, 1, 1]))
    cap = _row_cap(big.inputs)
    assert 144 > cap and big.rows == 60 * cap
    # the bias column's count: the fitting images' rows and the held-out images' (every second)
    assert big.fit[0][0][-1, -1] == big.held[0][0][-1, -1] == 30 * cap


def test_a_layer_of_exactly_dual_min_inputs_takes_the_dual_form(monkeypatch):
    """The dual form starts at DUAL_MIN_INPUTS inputs, not above it: an ImageNet VGG's FC
    layers have 4096 inputs and one row per image, and as normal equations each step of their
    ridge walk was a 4097^2 solve for 4096 outputs (seconds, for a fit of 64 rows)."""
    import onnx_snn.weight_calibration as W
    node, inits = _conv(np.ones((2, 8, 3, 3), np.float32), np.zeros(2, np.float32))   # 72 inputs
    for limit, dual in ((72, True), (73, False)):
        monkeypatch.setattr(W, "DUAL_MIN_INPUTS", limit)
        assert (layer_fit(node, inits).kept is not None) is dual


def test_dual_form_gives_the_normal_equations_solution(monkeypatch):
    """A wide layer with fewer patches than inputs keeps its rows and solves the n x n dual
    system: the same weights (and the same held-out verdict) as the (d+1)^2 normal equations,
    which it switches to once it has seen as many rows as inputs."""
    import onnx_snn.weight_calibration as W
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 8, 3, 3)).astype(np.float32)          # 72 inputs per output
    b = rng.normal(size=6).astype(np.float32)
    node, inits = _conv(w, b, strides=[2, 2])                      # 2 x 2 outputs of 5 x 5
    batches = []
    for _ in range(6):
        x = rng.random((2, 8, 5, 5)).astype(np.float32)
        batches.append((x, _reference_conv(x, w, b, strides=[2, 2])
                        + rng.normal(scale=0.1, size=(2, 6, 2, 2)).astype(np.float32)))
    monkeypatch.setattr(W, "DUAL_MIN_INPUTS", 10)
    dual = layer_fit(node, inits)
    monkeypatch.setattr(W, "DUAL_MIN_INPUTS", 10 ** 9)
    primal = layer_fit(node, inits)
    assert dual.kept == [] and primal.kept is None
    for x, y in batches:                                           # 6 x 8 = 48 rows < 72
        dual.add(x, y)
        primal.add(x, y)
    assert dual.kept is not None and sum(len(k[1]) for k in dual.kept[0]) == 48
    from onnx_snn.weight_calibration import _design as design
    rows = [next(design(primal, x, y)) for x, y in batches]
    xs = np.concatenate([r[:, :-1] for r, _, _ in rows]).astype(np.float64)
    ys = np.concatenate([t for _, t, _ in rows]).astype(np.float64)
    for ridge in (1e-3, 0.1):
        vd, vp = dual.improves(ridge), primal.improves(ridge)
        assert vd[0] == vp[0] and np.allclose(vd[1:], vp[1:], rtol=1e-3)   # the SSE from sums
        # the exact float64 minimizer (bias unpenalized) on all rows
        lam = ridge * np.mean(np.sum(xs ** 2, axis=0))
        a = np.concatenate([xs, np.ones((len(xs), 1))], axis=1)
        reg = np.diag(np.r_[np.full(xs.shape[1], lam), 0.0])
        exact = np.linalg.solve(a.T @ a + reg, a.T @ ys)
        (wd, bd), (wp, bp) = dual.solve(ridge), primal.solve(ridge)
        got_d = np.concatenate([wd.reshape(6, -1).T, bd[None]])
        got_p = np.concatenate([wp.reshape(6, -1).T, bp[None]])
        np.testing.assert_allclose(got_d, exact, rtol=1e-5, atol=1e-5)      # float64 throughout
        assert np.abs(got_d - exact).max() <= np.abs(got_p - exact).max() + 1e-6
    for _ in range(4):                                             # past 72 rows: folded
        x = rng.random((2, 8, 5, 5)).astype(np.float32)
        y = _reference_conv(x, w, b, strides=[2, 2])
        dual.add(x, y)
        primal.add(x, y)
    assert dual.kept is None
    for a, c in zip(dual.solve(0.01), primal.solve(0.01)):
        np.testing.assert_array_equal(a, c)


def test_a_small_calibration_set_still_holds_an_image_out():
    """Every second image is held out to check a refit, in a set of two images too (small
    sets once held out none, and every layer was refitted unchecked: the shipped model lost
    1.6 points with 128 images), and a single image refits nothing."""
    import onnx
    from onnx_snn.weight_calibration import LayerFit
    node = onnx.helper.make_node("Gemm", ["x", "w", "b"], ["y"])
    fit = LayerFit(node, np.ones((3, 2), np.float32), np.zeros(2, np.float32), {})
    assert list(fit.held_out(np.arange(10))) == [i % 2 == 1 for i in range(10)]
    for n, held in [(1, []), (2, [1]), (3, [1]), (4, [1, 3]), (8, [1, 3, 5, 7])]:
        fit.n_images = n
        assert list(np.flatnonzero(fit.held_out(np.arange(n)))) == held, n
    fit.holdout = 5
    for n, held in [(3, [2]), (12, [4, 9])]:
        fit.n_images = n
        assert list(np.flatnonzero(fit.held_out(np.arange(n)))) == held, n


@pytest.mark.parametrize("batch", [40, 20, 7])
def test_refits_are_checked_on_held_out_images(batch):
    """Half the images check the refits whatever the batch size: one batch of the whole set
    too (it once held out none and refitted no layer)."""
    import onnx_snn
    x = B.rand_input(40)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = onnx_snn.calibrate(nm, x, batch_size=batch, show_progress=False)
    rows = onnx_snn.build(nm, cal, 2, "refined").report["sequential"]["layers"]
    assert rows and all(np.isfinite(r["heldout_sse_original"]) for r in rows)
    assert any(r["refitted"] for r in rows)


def test_a_single_calibration_image_refits_nothing():
    import onnx_snn
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = onnx_snn.calibrate(nm, B.rand_input(1), show_progress=False)
    rows = onnx_snn.build(nm, cal, 2, "refined").report["sequential"]["layers"]
    assert rows and all(not r["refitted"] and "one calibration image" in r["why"] for r in rows)


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13)],
                         ids=["vgg", "resnet"])
def test_the_refined_conversion_does_not_depend_on_the_batch_size(make):
    """The refinement's held-out images, the patches its refits read and the neurons its
    search samples go by each image's place in the calibration set, not by batch: 40 images
    in batches of 40, 16 or 7 give the same conversion (at batch 64 and 512 the shipped
    model's top-1 at T = 2 was 90.72 and 90.07 %, and one batch refitted no layer)."""
    import onnx_snn
    x = B.rand_input(40)
    nm = onnx_snn.prepare(make())
    got = []
    from onnx_snn.scales import SearchConfig
    # samples smaller than the sites (a few thousand neurons here), so that calibration's
    # sample and the search's neurons are drawn, not all taken
    for batch in (40, 16, 7):
        cal = onnx_snn.calibrate(nm, x, batch_size=batch, sample_size=500, show_progress=False)
        assert sum(st.count > 500 for st in cal.sites.values()) >= 2
        conv = onnx_snn.build(nm, cal, 2, "refined", SearchConfig(sequential_sample=777))
        assert sum(r["pairs"] == 777 < cal.sites[r["site"]].count
                   for r in conv.report["sequential"]["sites"]) >= 2
        got.append(conv)
    first = got[0]
    for other in got[1:]:
        for name, rec in first.records.items():
            for key in ("threshold", "amplitude", "v_init", "offset"):
                np.testing.assert_allclose(np.asarray(getattr(other.records[name], key), float),
                                           np.asarray(getattr(rec, key), float),
                                           rtol=1e-5, atol=1e-7, err_msg=f"{name}.{key}")
        a = {t.name: numpy_helper.to_array(t) for t in first.model.graph.initializer}
        b = {t.name: numpy_helper.to_array(t) for t in other.model.graph.initializer}
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_normal_equations_are_float64_products():
    """R^T R and R^T Y are summed from float64 products: float32 ones are added up in an
    order that depends on the BLAS thread count, and their last bits changed later sites'
    choices (the same conversion on 1 and 2 cores gave different files)."""
    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    node, inits = _conv(w, b, pads=[1, 1, 1, 1])
    fit = layer_fit(node, inits)
    x = rng.random((8, 3, 10, 10)).astype(np.float32)
    y = _reference_conv(x, w, b, pads=[1, 1, 1, 1])
    fit.add(x, y)
    rows, target, image = next(iter(_design(fit, x, y, 0)))
    fitting = image % 2 == 0                      # every second image is held out
    r64, t64 = rows[fitting].astype(np.float64), target[fitting].astype(np.float64)
    np.testing.assert_allclose(fit.fit[0][0], r64.T @ r64, rtol=1e-13, atol=0)
    np.testing.assert_allclose(fit.fit[0][1], r64.T @ t64, rtol=1e-12, atol=1e-12)


def _spike_steps(rng, shape, timesteps, amps, signed=False):
    """Per-step spikes times a per-channel amplitude (axis 1), as the step graph feeds a layer."""
    lo = -1 if signed else 0
    amp = np.asarray(amps, np.float32).reshape(1, -1, *([1] * (len(shape) - 2)))
    return [(rng.integers(lo, 2, size=shape) * amp).astype(np.float32) for _ in range(timesteps)]


def test_spike_inputs_are_read_as_counts_times_a_quantum():
    """integer_form: spikes of one amplitude per channel (signed too, a silent channel too)
    are whole counts K times amplitude / T, and mean(steps) == K * q; values that are not
    (an average pool's fractions, a sum of two sites, a flat vector) are not."""
    from onnx_snn.weight_calibration import integer_form
    rng = np.random.default_rng(0)
    for signed in (False, True):
        steps = _spike_steps(rng, (3, 4, 5, 5), 3, [0.7, 1.3, 0.0, 2.5], signed)
        k, q = integer_form(steps)
        assert k.dtype == np.float32 and np.all(k == np.rint(k)) and np.abs(k).max() <= 3
        np.testing.assert_allclose(k * q.reshape(1, -1, 1, 1), np.mean(steps, axis=0), rtol=1e-6)
        np.testing.assert_allclose(q, [0.7 / 3, 1.3 / 3, 0.0, 2.5 / 3], rtol=1e-6)
    steps = _spike_steps(rng, (3, 4, 6, 6), 2, [1.0] * 4)
    pooled = [s.reshape(3, 4, 3, 2, 3, 2).mean(axis=(3, 5)) for s in steps]     # 2 x 2 average
    assert integer_form(pooled) is None
    assert integer_form([a + 2 * b for a, b in zip(steps, steps[::-1])]) is None
    assert integer_form([np.ones(4, np.float32)]) is None


@pytest.mark.parametrize("op", ["Conv", "Gemm", "dual"])
def test_spike_counts_give_the_same_fit_as_their_mean(op, monkeypatch):
    """A layer fed its input's per-step spikes (add_steps: exact sums of counts, scaled per
    column) gets the same normal equations, verdict and refit as one fed their float mean;
    so does a wide layer that keeps its rows (the dual form, ``dual``: 40 rows, 64 inputs)."""
    import onnx_snn.weight_calibration as W
    rng = np.random.default_rng(1)
    if op == "Conv":
        w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
        node, inits = _conv(w, rng.normal(size=5).astype(np.float32), pads=[1, 1, 1, 1])
        shape, amps = (4, 3, 8, 8), [0.5, 1.7, 0.9]
    else:
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
        w = rng.normal(size=(5, 12)).astype(np.float32)
        inits = {"w": numpy_helper.from_array(w, "w"),
                 "b": numpy_helper.from_array(np.zeros(5, np.float32), "b")}
        shape, amps = (40, 12), rng.uniform(0.2, 2.0, 12)
        if op == "dual":
            w = rng.normal(size=(5, 64)).astype(np.float32)
            inits["w"] = numpy_helper.from_array(w, "w")
            shape, amps = (10, 64), rng.uniform(0.2, 2.0, 64)
            monkeypatch.setattr(W, "DUAL_MIN_INPUTS", 10)
    counted, averaged = layer_fit(node, inits), layer_fit(node, inits)
    for _ in range(4):
        steps = _spike_steps(rng, shape, 2, amps)
        r = np.mean(steps, axis=0)
        y = (_reference_conv(r, w, numpy_helper.to_array(inits["b"]), pads=[1, 1, 1, 1])
             if op == "Conv" else r @ w.T) + rng.normal(0, 0.1, (shape[0], 5, *shape[2:])
                                                         if op == "Conv" else (shape[0], 5))
        counted.add_steps(steps, y.astype(np.float32))
        averaged.add(r, y.astype(np.float32))
    assert (counted.kept is not None) == (op == "dual") == (averaged.kept is not None)
    for a, b in zip(counted.fit + counted.held, averaged.fit + averaged.held):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-12)
    assert counted.improves(0.01)[0] == averaged.improves(0.01)[0]
    np.testing.assert_allclose(counted.improves(0.01)[1:], averaged.improves(0.01)[1:], rtol=1e-9)
    for a, b in zip(counted.solve(0.01), averaged.solve(0.01)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    if op == "dual":               # folded once it has as many rows as inputs: the same sums
        for _ in range(3):
            steps = _spike_steps(rng, shape, 2, amps)
            y = (np.mean(steps, axis=0) @ w.T).astype(np.float32)
            counted.add_steps(steps, y)
            averaged.add(np.mean(steps, axis=0), y)
        assert counted.kept is None and averaged.kept is None
        for a, b in zip(counted.fit + counted.held, averaged.fit + averaged.held):
            np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-12)


def test_spike_count_sums_are_exact_past_float32s_whole_numbers():
    """Counts up to T = 64 on 8191 rows: the sums of products (up to 8191 x 64^2) are past
    float32's whole numbers (2^24), so only chunks of at most 2^24 / 64^2 rows keep every
    float32 sum exact; with amplitude T the quantum is 1 and R^T R must equal the int64
    product exactly, whatever the BLAS thread count."""
    from onnx_snn.weight_calibration import LayerFit
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    fit = LayerFit(node, np.ones((6, 2), np.float32), np.zeros(2, np.float32), {})
    rng = np.random.default_rng(2)
    k = rng.choice([59, 61, 63], size=(8191, 6))   # odd products: sums past 2^24 round
    k[:, 0] = 64                                    # a column of the largest count
    spikes = [(np.arange(64)[None, None, :] < k[..., None])[..., t].astype(np.float32) * 64
              for t in range(64)]                   # k spikes of amplitude 64 in 64 steps
    fit.add_steps(spikes, np.zeros((8191, 2), np.float32))
    x = np.concatenate([k, np.ones((8191, 1), np.int64)], axis=1)
    # every second row (image) is held out; both halves' sums are exact
    for sums, rows in ((fit.fit, x[0::2]), (fit.held, x[1::2])):
        assert np.array_equal(sums[0][0], (rows.T @ rows).astype(np.float64))


def test_large_spike_counts_take_the_float_path():
    """Counts above 64 (T > 64) would need chunks of fewer than MIN_EXACT_ROWS rows to stay
    exact in float32: they are summed as float64 products of count x quantum instead."""
    from onnx_snn.weight_calibration import LayerFit
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    fit = LayerFit(node, np.ones((3, 2), np.float32), np.zeros(2, np.float32), {})
    rng = np.random.default_rng(4)
    k = rng.integers(0, 129, size=(500, 3))
    steps = [(np.arange(128)[None, None, :] < k[..., None])[..., t].astype(np.float32) * 0.5
             for t in range(128)]                   # k spikes of amplitude 0.5 in 128 steps
    fit.add_steps(steps, np.zeros((500, 2), np.float32))
    assert not fit.pending
    x = np.concatenate([k * (0.5 / 128), np.ones((500, 1))], axis=1)[0::2]   # the fitting rows
    np.testing.assert_allclose(fit.fit[0][0], x.T @ x, rtol=1e-12)


@pytest.mark.slow
def test_conversion_is_the_same_on_one_and_two_blas_threads(tmp_path):
    """The shipped model converted in processes with 1 and 2 BLAS threads: the same
    parameters bit for bit (with float32 products, lif1's threshold moved by 2e-6 and the
    later sites' choices changed). The conversion without the default's reconstruction
    (--reconstruct 0, the default of the core install): PyTorch's training is not the same to
    the bit on another thread count (README)."""
    import subprocess
    import sys
    from pathlib import Path
    src = Path(__file__).resolve().parents[1] / "onnx_snn" / "models" / "fmnist_vgg.onnx"
    files = []
    for t in ("1", "2"):
        out = tmp_path / f"t{t}.snn.onnx"
        env = {**__import__("os").environ, "OMP_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t}
        subprocess.run([sys.executable, "-m", "onnx_snn", "-q", "convert", str(src), "--calib",
                        "fashion-mnist", "-T", "2", "-o", str(out), "--reconstruct", "0"],
                       check=True, env=env,
                       capture_output=True)
        files.append({i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer})
    assert files[0].keys() == files[1].keys()
    for k in files[0]:
        np.testing.assert_array_equal(files[0][k], files[1][k], err_msg=k)


def _chosen_ridge(rows, noise):
    """choose_ridge walks the grid from the start value toward a lower held-out SSE: it lands
    where the exhaustive scan of the grid does (the SSE is unimodal in the ridge here), its
    verdict is improves() at that ridge, and a layer with few noisy rows per input gets a
    larger ridge than one with many clean ones."""
    from onnx_snn.weight_calibration import LayerFit
    grid = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    rng = np.random.default_rng(rows)
    d, m = 40, 5
    w_true = rng.normal(size=(d, m)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    fit = LayerFit(node, (w_true + rng.normal(0, 0.5, w_true.shape)).astype(np.float32),
                   np.zeros(m, np.float32), {})
    for _ in range(4):
        x = (rng.random((rows, d)) < 0.4).astype(np.float32)
        fit.add(x, x @ w_true + rng.normal(0, noise, (rows, m)).astype(np.float32))
    scan = [fit.improves(r)[1] for r in grid]
    ridge, better, new, old = fit.choose_ridge(grid, 0.01)
    assert ridge == grid[int(np.argmin(scan))]
    assert (better, new, old) == fit.improves(ridge)
    return ridge


@pytest.mark.parametrize("rows,noise", [(60, 1.0), (400, 0.3), (4000, 0.05)])
def test_each_layers_ridge_is_the_grids_best_on_held_out_images(rows, noise):
    _chosen_ridge(rows, noise)


def test_fewer_noisier_rows_get_a_larger_ridge():
    assert _chosen_ridge(60, 1.0) > _chosen_ridge(4000, 0.05)


def test_a_wide_layer_keeps_the_start_ridge_in_one_solve(monkeypatch):
    """Above RIDGE_WALK_MAX_INPUTS inputs a step of the walk is a solve of seconds: the layer
    is checked at the start ridge alone, once."""
    import onnx_snn.weight_calibration as W
    monkeypatch.setattr(W, "RIDGE_WALK_MAX_INPUTS", 10)
    calls = []
    real = W.LayerFit.improves
    monkeypatch.setattr(W.LayerFit, "improves", lambda self, r: calls.append(r) or real(self, r))
    from onnx_snn.weight_calibration import LayerFit
    rng = np.random.default_rng(0)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    fit = LayerFit(node, rng.normal(size=(40, 5)).astype(np.float32), np.zeros(5, np.float32), {})
    for _ in range(2):
        x = rng.random((30, 40)).astype(np.float32)
        fit.add(x, x @ rng.normal(size=(40, 5)).astype(np.float32))
    ridge, *_ = fit.choose_ridge((0.001, 0.01, 0.1, 1.0), 0.01)
    assert ridge == 0.01 and calls == [0.01]


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_the_ridge_can_pull_toward_the_layers_own_weights(form, monkeypatch):
    """With ``to_original`` the refit minimizes ||X W - Y||^2 + lam ||W - W0||^2 (W0 the
    layer's own weights, the bias free), in the normal equations and in the dual form alike:
    a large ridge gives back the layer's weights, where the plain ridge shrinks them to zero."""
    import onnx_snn.weight_calibration as W
    rng = np.random.default_rng(5)
    w0 = rng.normal(size=(6, 8, 3, 3)).astype(np.float32)          # 72 inputs per output
    b0 = rng.normal(size=6).astype(np.float32)
    node, inits = _conv(w0, b0, strides=[2, 2])
    truth = w0 + rng.normal(scale=0.5, size=w0.shape).astype(np.float32)
    monkeypatch.setattr(W, "DUAL_MIN_INPUTS", 10 if form == "dual" else 10 ** 9)
    fits = {to: layer_fit(node, inits) for to in (False, True)}
    for to, f in fits.items():
        f.to_original = to
    batches = []
    for _ in range(4):                                              # 4 x 8 = 32 rows < 72
        x = rng.random((2, 8, 5, 5)).astype(np.float32)
        batches.append((x, _reference_conv(x, truth, b0, strides=[2, 2])))
        for f in fits.values():
            f.add(*batches[-1])
    assert (fits[True].kept is not None) == (form == "dual")
    rows = [next(_design(fits[True], x, y)) for x, y in batches]
    xs = np.concatenate([r[:, :-1] for r, _, _ in rows]).astype(np.float64)
    ys = np.concatenate([t for _, t, _ in rows]).astype(np.float64)
    prior = np.concatenate([w0.reshape(6, -1).T, b0[None]]).astype(np.float64)
    a = np.concatenate([xs, np.ones((len(xs), 1))], axis=1)
    for ridge in (0.01, 1.0):
        lam = ridge * np.mean(np.sum(xs ** 2, axis=0))
        reg = np.diag(np.r_[np.full(xs.shape[1], lam), 0.0])
        exact = np.linalg.solve(a.T @ a + reg, a.T @ ys + reg @ prior)
        wt, bt = fits[True].solve(ridge)
        got = np.concatenate([wt.reshape(6, -1).T, bt[None]])
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)
    far = {to: f.solve(1e6)[0] for to, f in fits.items()}
    np.testing.assert_allclose(far[True], w0, atol=1e-3)          # the layer's own weights
    assert np.abs(far[False]).max() < 1e-3                          # shrunk to zero


def test_the_ridge_walks_shared_terms_follow_the_prior():
    """The walk keeps each group's residual and the original's held-out SSE between ridges;
    toggling ``to_original`` afterwards gives what a fresh fit gives (it was kept stale)."""
    rng = np.random.default_rng(2)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    w = rng.normal(size=(30, 4)).astype(np.float32)

    def fit(to_original):
        f = LayerFit(node, w, np.zeros(4, np.float32), {})
        f.to_original = to_original
        r = np.random.default_rng(9)
        for _ in range(4):
            x = r.random((50, 30)).astype(np.float32)
            f.add(x, x @ r.normal(size=(30, 4)).astype(np.float32))
        return f
    f = fit(False)
    first = f.improves(0.1)
    f.to_original = True
    assert f.improves(0.1) == fit(True).improves(0.1)
    f.to_original = False
    assert f.improves(0.1) == first


def test_a_large_batch_is_added_64_images_at_a_time_with_the_same_sums(monkeypatch):
    """A batch's rows (and their split into fitting and held-out images) are built for at
    most ROW_IMAGES images at a time, cut at the set's multiples of it: memory does not grow
    with the batch, and the sums are those of any other cut of the same images."""
    import onnx_snn.weight_calibration as W
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    node, inits = _conv(w, b, pads=[1, 1, 1, 1])
    x = rng.random((150, 3, 12, 12)).astype(np.float32)            # 144 patches per image
    y = _reference_conv(x, w, b, pads=[1, 1, 1, 1])
    seen = []
    real = W.LayerFit._add_images
    monkeypatch.setattr(W.LayerFit, "_add_images",
                        lambda self, v, t, q, first, *rest: seen.append((first, len(v))) or
                        real(self, v, t, q, first, *rest))
    whole, parts = layer_fit(node, inits), layer_fit(node, inits)
    whole.add(x, y)
    assert seen == [(0, 64), (64, 64), (128, 22)]
    for s in range(0, 150, 7):
        parts.add(x[s:s + 7], y[s:s + 7])
    assert whole.images == parts.images == 150 and whole.rows == parts.rows == 150 * _row_cap(27)
    for a, c in ((whole.fit[0], parts.fit[0]), (whole.held[0], parts.held[0])):
        np.testing.assert_allclose(a[0], c[0], rtol=1e-12)
        np.testing.assert_allclose(a[1], c[1], rtol=1e-12)


@pytest.mark.parametrize("attrs", CASES)
@pytest.mark.parametrize("size", [(9, 8), (30, 28)])      # all patches / _row_cap of them
def test_gathered_targets_give_the_rows_of_the_whole_output(attrs, size):
    """LayerFit.targets keeps only the outputs a layer's rows are drawn at (what the
    refinement gathers in its one pass of the DNN); added with gathered=True they give the
    same rows, targets and sums as the layer's whole output, for batches cut anywhere."""
    rng = np.random.default_rng(11)
    g = attrs.get("group", 1)
    w = rng.normal(size=(6, 4 // g, 3, 3)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    node, inits = _conv(w, b, **attrs)
    x = rng.random((70, 4, *size)).astype(np.float32)
    y = _reference_conv(x, w, b, **attrs)
    whole, gathered = layer_fit(node, inits), layer_fit(node, inits)
    kept = whole.targets(y, first=0)
    per = y.shape[2] * y.shape[3]
    assert kept.shape == (70, min(per, _row_cap(whole.inputs)), 6)
    assert (per > _row_cap(whole.inputs)) == (size == (30, 28))
    for (r1, t1, i1), (r2, t2, i2) in zip(_design(whole, x[3:9], y[3:9], first=3),
                                          _design(whole, x[3:9], kept[3:9], first=3,
                                                  gathered=True)):
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(i1, i2)
    for s in range(0, 70, 9):            # the batches' own gathering, at their places
        whole.add(x[s:s + 9], y[s:s + 9], first=s)
        gathered.add(x[s:s + 9], gathered.targets(y[s:s + 9], first=s), first=s, gathered=True)
    for a, c in ((whole.fit, gathered.fit), (whole.held, gathered.held)):
        for ga, gc in zip(a, c):
            np.testing.assert_array_equal(ga[0], gc[0])
            np.testing.assert_array_equal(ga[1], gc[1])
    with pytest.raises(ValueError, match="gathered targets"):    # another layer's
        list(_design(whole, x[:2], kept[:2, :1], first=0, gathered=True))


def test_a_gemms_gathered_targets_are_its_output():
    rng = np.random.default_rng(12)
    w = rng.normal(size=(5, 8)).astype(np.float32)      # 8 inputs, 5 outputs (transB)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)
    inits = {"w": numpy_helper.from_array(w, "w"),
             "b": numpy_helper.from_array(np.zeros(5, np.float32), "b")}
    fit = layer_fit(node, inits)
    y = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(fit.targets(y, first=7), y)
