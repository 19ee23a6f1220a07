"""Calibration with onnxruntime: exact statistics, bounded stratified samples, clear errors."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

import builders as B
from onnx_snn.calibrate import _Sampler, calibrate
from onnx_snn.errors import DataError
from onnx_snn.graph.normalize import normalize


@pytest.fixture(scope="module")
def nm():
    return normalize(B.vgg(13, "clip"))


def test_statistics_are_exact_when_everything_fits(nm):
    import onnx
    from onnx_snn.runtimes.ort import run
    x = B.rand_input(20)
    cal = calibrate(nm, x, batch_size=7, show_progress=False)
    m = onnx.ModelProto()
    m.CopyFrom(nm.model)
    m.graph.output.add().name = nm.sites[1].input
    h = run(m, x).outputs[1].reshape(-1)
    st = cal.sites["lif1"]
    assert st.count == h.size and st.sample.size == h.size
    np.testing.assert_allclose(st.sample, np.sort(h), rtol=1e-6)
    assert st.n_positive == int((h > 0).sum()) and st.max == pytest.approx(h.max())
    assert st.shape == (8, 12, 12) and st.neurons == 8 * 144


def test_sample_is_bounded_and_stratified(nm):
    x = B.rand_input(40)
    cal = calibrate(nm, x, batch_size=8, sample_size=1000, show_progress=False)
    for st in cal.sites.values():
        assert st.sample.size == min(1000, st.count)
        assert np.all(np.diff(st.sample) >= 0)


def test_sampler_is_uniform():
    rng = np.random.default_rng(0)
    s = _Sampler(10_000, 1_000_000, rng)
    for start in range(0, 1_000_000, 100_000):
        s.add(np.arange(start, start + 100_000, dtype=np.float32))
    out = s.result()
    assert out.size == 10_000 and np.unique(out).size == 10_000
    hist = np.histogram(out, bins=10, range=(0, 1_000_000))[0]
    assert np.all(hist == 1000)  # one stratum per batch


def test_sample_does_not_depend_on_the_batch_size(nm):
    """The sampled values go by their place in the calibration set, not by batch (each
    batch once drew its share with the generator's next numbers)."""
    x = B.rand_input(40)
    got = [calibrate(nm, x, batch_size=b, sample_size=1000, show_progress=False)
           for b in (40, 8, 13)]
    assert sum(st.count > 1000 for st in got[0].sites.values()) >= 2     # sampled sites
    for cal in got[1:]:
        for name, st in got[0].sites.items():
            np.testing.assert_array_equal(cal.sites[name].sample, st.sample)


@settings(max_examples=60, deadline=None)
@given(total=hs.integers(1, 5000), k=hs.integers(1, 6000),
       cuts=hs.lists(hs.integers(0, 700), max_size=12), seed=hs.integers(0, 5))
def test_stratified_stream_is_one_position_per_stratum_however_cut(total, k, cuts, seed):
    from onnx_snn.calibrate import StratifiedStream
    whole = StratifiedStream(np.random.default_rng(seed), total, k).take(total)
    stream, start, parts = StratifiedStream(np.random.default_rng(seed), total, k), 0, []
    for n in [c for c in cuts if c] + [total]:
        n = min(n, total - start)
        parts.append(stream.take(n) + start)
        start += n
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    m = min(k, total)
    assert len(whole) == m and np.all(np.diff(whole) > 0) and 0 <= whole[0] and whole[-1] < total
    stratum = np.arange(m) * total // m
    assert np.all(whole >= stratum) and np.all(whole < np.append(stratum[1:], total))


def test_wrong_shape(nm):
    with pytest.raises(DataError, match=r"shape \[4, 1, 28, 28\] does not fit .*'input'"):
        calibrate(nm, np.zeros((4, 1, 28, 28), np.float32), show_progress=False)
    with pytest.raises(DataError, match="does not fit"):
        calibrate(nm, np.zeros((4, 144), np.float32), show_progress=False)


def test_nan_and_inf(nm):
    x = B.rand_input(4)
    x[1, 0, 3, 3] = np.inf
    with pytest.raises(DataError, match="NaN/Inf"):
        calibrate(nm, x, show_progress=False)


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_constant_data_is_refused_and_identical_samples_warned_about(nm, caplog, value):
    """Data that holds one value throughout (all zeros, a constant fill) gives each neuron a
    single activation to choose its threshold from: refused, naming the input and value;
    samples that are all one image are warned about; a constant input beside a varied one
    (a mask) is taken."""
    with pytest.raises(DataError, match=rf"every value of every input is the same \('input' "
                                        rf"is {value:g} throughout its 8 samples\)"):
        calibrate(nm, np.full((8, 1, 12, 12), value, np.float32), show_progress=False)
    one = np.repeat(B.rand_input(1, seed=3), 8, axis=0)
    caplog.clear()
    calibrate(nm, one, show_progress=False)
    assert "all 8 samples are the same" in caplog.text
    caplog.clear()
    calibrate(nm, B.rand_input(1, seed=3), show_progress=False)     # one sample: no warning
    assert "samples are the same" not in caplog.text
    from onnx_snn.calibrate import check_varied
    check_varied({"x": B.rand_input(4), "mask": np.ones((4, 5), np.float32)}, say=True)
    assert "samples are the same" not in caplog.text


def test_empty_data(nm):
    with pytest.raises(DataError, match="no samples"):
        calibrate(nm, np.zeros((0, 1, 12, 12), np.float32), show_progress=False)


def test_calibration_batch_bounded_by_site_output_bytes(monkeypatch):
    """One batch's site outputs stay within CALIB_BATCH_BYTES (ImageNet-size activations are
    calibrated a few images at a time); the counts, minima and maxima do not change, and a
    model's fixed batch is kept."""
    import onnx_snn
    import importlib
    C = importlib.import_module("onnx_snn.calibrate")   # (the package exports a function of that name)
    x = B.rand_input(24)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    whole = onnx_snn.calibrate(nm, x, batch_size=24, show_progress=False)
    monkeypatch.setattr(C, "CALIB_BATCH_BYTES", 1)
    small = onnx_snn.calibrate(nm, x, batch_size=24, show_progress=False)
    assert whole.batch_size == 24 and small.batch_size == 1
    for k, st in whole.sites.items():
        other = small.sites[k]
        assert (st.count, st.n_positive, st.min, st.max) == \
            (other.count, other.n_positive, other.min, other.max)
    m = B.vgg(13, "clip")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    fixed = onnx_snn.calibrate(onnx_snn.prepare(m), x[:16], show_progress=False)
    assert fixed.batch_size == 8


@pytest.mark.parametrize("bound", [float(np.finfo(np.float32).max), 1e6])
def test_a_clip_bound_far_above_the_data_converts_as_a_plain_relu(bound):
    """Clip(0, FLT_MAX) / Clip(0, 1e6) is how some exporters write a ReLU: taken as a trained
    mu it left every neuron silent; it is converted as a plain ReLU, with a warning, and the
    spiking network then follows its DNN like the Relu twin does."""
    from onnx_snn.runtimes.ort import run
    m, twin = B.vgg(13, "clip", mu=bound, softmax=False), B.vgg(13, "relu", softmax=False)
    x = B.rand_input(64)
    _, _, snn = B.converted(m, x, T=64, method="max")
    _, _, ref = B.converted(twin, x, T=64, method="max")
    assert all(r.mu_source == "estimated" and r.mu < 1e3 for r in snn.records.values())
    assert [r.mu for r in snn.records.values()] == [r.mu for r in ref.records.values()]
    assert sum("clip bound" in n and "plain ReLU" in n for n in snn.report["notes"]) == 3
    got = run(snn.model, x)
    assert all(np.sum(v) > 0 for v in got.spikes.values())
    dnn = run(m, x).outputs[0]
    assert np.corrcoef(got.outputs[0].ravel(), dnn.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("act", ["clip", "relu"])
def test_a_layer_that_never_activates_is_said_to_be_silent(act):
    """A layer whose calibration pre-activations are all negative: said so (the clip-bound
    rule read its 'largest calibration value (-97.6)' as one its bound of 1 was 100x above,
    and replaced a trained clip by an estimate); a trained clip bound is kept."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    inits = [nh.from_array((rng.standard_normal((4, 1, 3, 3)) * .4).astype(np.float32), "w1"),
             nh.from_array(np.full(4, -100, np.float32), "b1"),
             nh.from_array((rng.standard_normal((10, 4 * 144)) * .06).astype(np.float32), "w2"),
             nh.from_array(np.zeros(10, np.float32), "b2"),
             nh.from_array(np.float32(0), "lo"), nh.from_array(np.float32(1.5), "hi")]
    a = h.make_node("Clip", ["c", "lo", "hi"], ["a"]) if act == "clip" else h.make_node("Relu", ["c"], ["a"])
    g = h.make_graph([h.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1] * 4), a,
                      h.make_node("Flatten", ["a"], ["f"]),
                      h.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    import onnx_snn
    for method in ("datta", "refined"):
        snn = onnx_snn.convert(m, B.rand_input(16), 2, method=method, show_progress=False)
        notes = [n for n in snn.report["notes"] if "lif0" in n]
        assert any("never activates on the calibration data" in n for n in notes), notes
        assert not any("100x" in n for n in notes), notes
        if act == "clip":
            assert snn.records["lif0"].mu == pytest.approx(1.5)
            assert snn.records["lif0"].mu_source != "estimated"


def test_many_silent_or_plain_sites_get_one_warning_with_a_few_names(caplog):
    """A deep net whose layers are all plain ReLUs, most never active on the data, gets one
    warning per kind that names a few sites and counts the rest, not one line or one name
    per layer (200 layers printed 195 warnings and a 200-name line)."""
    import logging
    from onnx_snn.errors import LISTED
    b = B.GraphBuilder(13, seed=0)
    x = b.act(b.conv("input", 1, 2), "relu")
    for _ in range(11):
        x = b.act(b.node("Add", [b.conv(x, 2, 2, bias=False), b.const(
            np.full((1, 2, 1, 1), -50, np.float32))]), "relu")      # never above 0
    x = b.gemm(b.node("Flatten", [x], axis=1), 2 * 144, 10)
    m = b.model("input", x, (1, 12, 12), 10)
    import onnx_snn
    with caplog.at_level(logging.WARNING):
        onnx_snn.convert(m, B.rand_input(16), 2, method="datta", show_progress=False)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    silent = [w for w in lines if "never activate" in w]
    assert len(silent) == 1 and silent[0].startswith("11 sites never activate"), silent
    assert f"and {11 - LISTED} more" in silent[0] and "lif11" not in silent[0]
    plain = [w for w in lines if "plain ReLU" in w]
    assert len(plain) == 1 and f"and {12 - LISTED} more" in plain[0], plain


def test_a_site_whose_batch_axis_was_merged_is_an_unsupported_model():
    """Flatten(axis=2) folds the batch into the rows of a dense layer: not a data problem
    (exit 5) but a model the rewrite cannot carry (exit 4), named."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    from onnx_snn.errors import UnsupportedModelError
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
             nh.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w3")]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
             h.make_node("Relu", ["c"], ["r"], name="relu0"),
             h.make_node("Flatten", ["r"], ["f"], axis=2, name="merge"),
             h.make_node("MatMul", ["f", "w2"], ["g"], name="dense"),
             h.make_node("Relu", ["g"], ["a"], name="relu1"),
             h.make_node("MatMul", ["a", "w3"], ["y"], name="head")]  # relu1 is not the output's
    g = h.make_graph(nodes, "merged", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 2, 4, 4])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["M", 3])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    with pytest.raises(UnsupportedModelError, match="relu1.*merges it"):
        calibrate(normalize(m), rng.random((8, 2, 4, 4)).astype(np.float32), show_progress=False)


def test_sessions_that_share_the_cores_do_not_spin():
    """make_session(spin=False): onnxruntime's threads sleep between runs (the refinement's
    and a distillation teacher's sessions, whose runs alternate with numpy or torch work)."""
    from onnx_snn.calibrate import make_session
    m = B.vgg(13, "clip")
    key = "session.intra_op.allow_spinning"
    assert make_session(m, 1, spin=False).get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):   # the default: spin
        make_session(m, 1).get_session_options().get_session_config_entry(key)


def test_a_session_beside_other_large_work_keeps_no_arena():
    """make_session(arena=False): onnxruntime frees each run's tensors (the reconstruction's
    DNN, whose runs alternate with PyTorch's training); the default keeps its arena; both
    compute the same."""
    from onnx_snn.calibrate import make_session
    m = B.vgg(13, "clip")
    off, on = make_session(m, 1, arena=False), make_session(m, 1)
    assert off.get_session_options().enable_cpu_mem_arena is False
    assert on.get_session_options().enable_cpu_mem_arena is True
    x = B.rand_input(4, seed=1)
    name = off.get_inputs()[0].name
    np.testing.assert_array_equal(off.run(None, {name: x})[0], on.run(None, {name: x})[0])


def test_calibration_data_may_be_any_array_like():
    """A list, or any object numpy converts (a CPU torch or JAX array has __array__), calibrates
    like the numpy array; a ragged list is a DataError naming the data."""
    import onnx_snn
    from onnx_snn.errors import DataError

    class Tensorish:          # the array protocol alone, as other frameworks' arrays have
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    x = B.rand_input(16)
    ref = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    for data in (x.tolist(), Tensorish(x), {"input": Tensorish(x)}):
        got = onnx_snn.convert(B.vgg(13, "clip"), data, timesteps=2, method="datta",
                               show_progress=False)
        assert [r.threshold for r in got.records.values()] == \
            [r.threshold for r in ref.records.values()]
    with pytest.raises(DataError, match="cannot turn list into an array"):
        onnx_snn.convert(B.vgg(13, "clip"), [[1.0, 2.0], [3.0]], timesteps=2, show_progress=False)


def test_a_fixed_batch_calibrates_on_its_whole_batches(caplog):
    """A model exported with a batch of 8 and 20 calibration samples: the first 16 are used,
    with a warning that says so (it was refused, while eval pads such a model's last batch);
    fewer samples than one batch are refused, naming the batch."""
    import logging
    import onnx_snn
    m = B.vgg(13, "clip")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    nm = onnx_snn.prepare(m)
    x = B.rand_input(20)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        cal = onnx_snn.calibrate(nm, x, show_progress=False)
    first16 = onnx_snn.calibrate(nm, x[:16], show_progress=False)
    assert cal.n_samples == 16 and cal.batch_size == 8
    assert {k: (s.count, s.max) for k, s in cal.sites.items()} == \
        {k: (s.count, s.max) for k, s in first16.sites.items()}
    assert sum("first 16 of the 20" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        snn = onnx_snn.convert(m, x, timesteps=2, show_progress=False)   # refined: the same 16
    assert snn.model is not None
    assert not any("--batch-size" in r.getMessage() for r in caplog.records)   # not asked
    for asked, said in ((8, False), (32, True)):       # a batch the model cannot take is said
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_snn"):
            onnx_snn.convert(m, x, timesteps=2, method="datta", batch_size=asked,
                             show_progress=False)
        assert any("fixed batch of 8: calibrating in batches of 8, not the 32 asked"
                   in r.getMessage() for r in caplog.records) is said
    with pytest.raises(DataError, match="fixed batch of 8; give at least 8"):
        onnx_snn.calibrate(nm, x[:5], show_progress=False)


def test_calibrate_takes_what_convert_takes_and_checks_its_arguments():
    import onnx_snn
    from onnx_snn.errors import UsageError
    rng = np.random.default_rng(0)
    x = rng.random((16, 1, 12, 12)).astype(np.float32)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = calibrate(nm, {"input": x}, show_progress=False)     # a dict per input
    assert cal.n_samples == 16
    big = rng.random((600, 1, 12, 12)).astype(np.float32)
    assert calibrate(nm, (big, np.arange(600) % 10), show_progress=False).n_samples == 600
    assert calibrate(nm, tuple(x[:3]), show_progress=False).n_samples == 3   # samples, stacked
    for kw, match in ((dict(sample_size=0), "sample_size"), (dict(sites=[]), "none given"),
                      (dict(sites=["nope"]), "sites: nope"), (dict(sites="lif0"), "list of site")):
        with pytest.raises(UsageError, match=match):
            calibrate(nm, x, show_progress=False, **kw)
    with pytest.raises(UsageError, match="prepare"):
        calibrate(B.vgg(13, "clip"), x)
    for threads in ("2", -1, 1.5):       # onnxruntime's raw TypeError, or -1 taken
        with pytest.raises(UsageError, match="threads must be"):
            calibrate(nm, x, show_progress=False, threads=threads)


def test_a_calibration_is_refused_for_another_model(tmp_path):
    """build(nmB, calibrate(nmA)) converted B with A's thresholds when the site names matched."""
    import onnx_snn
    from onnx_snn.errors import UsageError
    x = np.random.default_rng(0).random((16, 1, 12, 12)).astype(np.float32)
    nm_a = onnx_snn.prepare(B.vgg(13, "clip", seed=0))
    cal = calibrate(nm_a, x, show_progress=False)
    onnx_snn.build(onnx_snn.prepare(B.vgg(13, "clip", seed=0)), cal, 2, "datta")  # the same model
    with pytest.raises(UsageError, match="recorded on another model"):
        onnx_snn.build(onnx_snn.prepare(B.vgg(13, "clip", seed=1)), cal, 2, "datta")
    with pytest.raises(UsageError, match="takes prepare"):
        onnx_snn.build("model.onnx", cal, 2)


def test_the_step_by_step_api_remembers_the_data_as_convert_does(tmp_path, fmnist_train):
    """prepare -> calibrate(nm, name or file) -> build wrote neither the dataset nor the
    calibration data in the file (convert wrote both): eval then asked for --data again."""
    import onnx
    import onnx_snn
    from onnx_snn.spiking import format as F
    from pathlib import Path
    dnn = onnx.load(str(Path(__file__).resolve().parents[1] / "onnx_snn/models/fmnist_vgg.onnx"))
    del dnn.metadata_props[:]                  # a user's own DNN records no dataset
    nm = onnx_snn.prepare(dnn)
    snn = onnx_snn.build(nm, onnx_snn.calibrate(nm, "fashion-mnist", show_progress=False), 2,
                         "datta")
    meta = F.metadata(snn.model)
    assert meta[F.META_DATASET] == "fashion-mnist"
    assert json.loads(meta[F.META_HISTORY])[0]["calibration_data"] == "fashion-mnist:train"
    np.save(tmp_path / "calib.npy", fmnist_train.x[:16])
    nm = onnx_snn.prepare(dnn)
    snn = onnx_snn.build(nm, onnx_snn.calibrate(nm, tmp_path / "calib.npy", show_progress=False),
                         2, "datta")
    hist = json.loads(F.metadata(snn.model)[F.META_HISTORY])[0]
    assert hist["calibration_data"].endswith("calib.npy")
    assert F.META_DATASET not in F.metadata(snn.model)


def test_a_model_fine_tuned_on_another_named_dataset_remembers_that_one():
    """remember_dataset: a conversion keeps the dataset its DNN records (the calibration data
    may be any); fine-tuning (trained=True) on another named dataset replaces it, so that
    eval without --data reads what the model was last trained on (it read the DNN's)."""
    from onnx_snn.convert import remember_dataset
    from onnx_snn.spiking import format as F
    fm = {F.META_DATASET: "fashion-mnist"}
    assert remember_dataset({}, "mnist") == {F.META_DATASET: "mnist"}
    assert remember_dataset(fm, "mnist") == {}                          # a conversion
    assert remember_dataset(fm, "mnist:train", trained=True) == {F.META_DATASET: "mnist"}
    assert remember_dataset(fm, "fashion_mnist:train", trained=True) == {}   # the same one
    assert remember_dataset(fm, "/data/train.npz", trained=True) == {}  # a file: not known


def test_integer_arrays_are_warned_about_as_convert_does(nm, caplog):
    """calibrate(nm, uint8 pixels) ran on activations of hundreds without a word (convert and
    evaluate warned); now the arrays get convert's checks."""
    import logging
    x = (np.random.default_rng(0).random((8, 1, 12, 12)) * 255).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        calibrate(nm, x, show_progress=False)
    assert any("integer data (uint8)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        calibrate(nm, B.rand_input(8), show_progress=False)
    assert not caplog.records


def test_convert_says_each_data_warning_once(caplog):
    """convert checks its data, then calibrates it: the checks ran again inside calibrate and
    every warning came twice, the second time naming "array" (the review of 2026-12-05)."""
    import logging
    import onnx_snn
    x = (np.random.default_rng(0).random((8, 1, 12, 12)) * 255).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        onnx_snn.convert(B.vgg(13, "clip"), x, 1, "datta", show_progress=False)
    said = [r.getMessage() for r in caplog.records if "preprocessed" in r.getMessage()]
    assert len(said) == 1 and "integer data (uint8)" in said[0], said


def test_constant_data_is_checked_on_the_samples_calibrated_on(nm):
    """A fixed batch calibrates on whole batches only: the samples it keeps are the ones
    checked (here all zeros, the dropped last one varied), and one sample reads so."""
    from onnx_snn.calibrate import check_varied
    m = B.vgg()
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    x = np.zeros((9, 1, 12, 12), np.float32)
    x[8] = B.rand_input(1)[0]
    with pytest.raises(DataError, match="is 0 throughout its 8 samples"):
        calibrate(normalize(m), x, show_progress=False)
    with pytest.raises(DataError, match="is 0.1 throughout its 1 sample\\)"):
        check_varied({"input": np.full((1, 3), 0.1, np.float32)})
