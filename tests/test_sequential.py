"""The spiking-aware refinement of the datta parameters: the ``refined`` method (the
default), also ``datta`` with ``SearchConfig(sequential=True)``."""
import json
import os

import numpy as np
import onnx
import pytest

import builders as B
import onnx_snn
from onnx_snn.cli import main
from onnx_snn.convert import resolve_data
from onnx_snn.evaluate import evaluate
from onnx_snn.runtimes.ort import run
from onnx_snn.scales import SearchConfig, simulate_counts
from onnx_snn.spiking import format as F

SHIPPED = os.path.join(os.path.dirname(onnx_snn.__file__), "models", "fmnist_vgg.onnx")


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip")])
@pytest.mark.parametrize("per_channel", [False, True])
def test_refined_model_is_valid_and_records_what_it_chose(make, per_channel):
    x = B.rand_input(48)
    nm = onnx_snn.prepare(make())
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    plain = onnx_snn.build(nm, cal, 2, "datta")
    seq = onnx_snn.build(nm, cal, 2, "refined", SearchConfig(per_channel=per_channel))
    onnx.checker.check_model(seq.model, full_check=True)
    info = F.read_info(seq.model)
    assert info.method == "refined"
    rows = seq.report["sequential"]["sites"]
    assert [r["site"] for r in rows] == [s.name for s in info.sites]
    for rec, row in zip(info.sites, rows):
        alpha, beta, frac = (np.asarray(row[k]) for k in ("alpha", "beta", "v_init_fraction"))
        assert alpha.size == (rec.shape[0] if per_channel else 1)
        np.testing.assert_allclose(rec.threshold, alpha * rec.mu)
        np.testing.assert_allclose(rec.amplitude, beta * rec.mu)
        np.testing.assert_allclose(rec.v_init, frac * np.asarray(rec.threshold))
        assert set(frac.reshape(-1)) <= set(SearchConfig().v_init_fractions)
        assert row["alpha_datta"] == plain.records[rec.name].alpha
    assert json.loads(F.metadata(seq.model)[F.META_HISTORY])[0]["sequential"] is True
    r = run(seq.model, x)
    assert np.all(np.isfinite(r.outputs[0]))


def test_first_site_refinement_is_the_exact_search():
    """The first site sees the analog input: constant over time, so with v0 = 0 as the only
    choice the refinement must keep Algorithm 1's parameters there."""
    x = B.rand_input(40)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = onnx_snn.calibrate(nm, x, batch_size=16, show_progress=False)  # 16 + 16 + 8
    cfg = SearchConfig(sequential=True, v_init_fractions=(0.0,), sequential_sample=10**6,
                       per_channel=False, bias_correction=False)
    seq = onnx_snn.build(nm, cal, 3, "datta", cfg, calib_data=x)
    first = seq.report["sequential"]["sites"][0]
    assert first["pairs"] == cal.sites[first["site"]].count   # every value, like the calibration
    assert first["alpha"] == pytest.approx(first["alpha_datta"], rel=1e-6)
    assert first["beta"] == pytest.approx(first["beta_datta"], rel=1e-6)


def test_refined_site_is_never_worse_than_datta_on_its_currents():
    """Each site's refined objective (mse on the spiking currents) is at most what the datta
    parameters it starts from give on the same currents (they are a candidate)."""
    from onnx_snn import sequential
    x = B.rand_input(48)
    nm = onnx_snn.prepare(B.resnet(13, "clip"))
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    plain = onnx_snn.build(nm, cal, 2, "datta")
    seen = []
    real = sequential.search_dynamic

    def spy(cur, target, mu, T, cfg, start=None, signed=False):
        out = real(cur, target, mu, T, cfg, start=start, signed=signed)
        k = simulate_counts(cur, np.array([start[0] * mu]), np.array([0.0]))[0]
        seen.append((out[3], float(np.mean((start[1] * mu / T * k - target) ** 2))))
        return out

    sequential.search_dynamic = spy
    try:
        onnx_snn.build(nm, cal, 2, "datta", SearchConfig(sequential=True, per_channel=False,
                                                          bias_correction=False), calib_data=x)
    finally:
        sequential.search_dynamic = real
    assert len(seen) == len(plain.records)
    for refined, start in seen:
        assert refined <= start + 1e-9


def test_refinement_checks_its_data():
    from onnx_snn.errors import DataError
    x = B.rand_input(16)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    with pytest.raises(DataError, match="calibration data"):
        onnx_snn.build(nm, cal, 2, "datta", SearchConfig(sequential=True),
                       calib_data=B.rand_input(16, shape=(1, 10, 10)))


def test_refinement_needs_data_and_datta():
    import dataclasses
    x = B.rand_input(16)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    assert cal.inputs is not None     # the refinement reuses what calibration ran on
    with pytest.raises(ValueError, match="calib_data"):
        onnx_snn.build(nm, dataclasses.replace(cal, inputs=None), 2, "refined")
    with pytest.raises(ValueError, match="datta"):
        onnx_snn.build(nm, cal, 2, "deng", SearchConfig(sequential=True), calib_data=x)


def test_cli_sequential(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(B.vgg(13, "clip").SerializeToString())
    np.save(tmp_path / "c.npy", B.rand_input(32))
    out = tmp_path / "m.snn.onnx"
    assert main(["convert", str(model), "--calib", str(tmp_path / "c.npy"), "-o", str(out),
                 "--sequential", "--report", str(tmp_path / "r.json")]) == 0
    assert "v_init" in capsys.readouterr().out      # the per-layer table (not with -q)
    assert "sequential" in json.loads((tmp_path / "r.json").read_text())
    # datta refined is the refined method, and the file and the result line say so
    dr = tmp_path / "dr.snn.onnx"
    assert main(["-q", "convert", str(model), "--calib", str(tmp_path / "c.npy"), "-o", str(dr),
                 "--method", "datta", "--sequential"]) == 0
    assert "(refined, T=2" in capsys.readouterr().out
    assert F.read_info(onnx.load(str(dr))).method == "refined"
    assert main(["convert", str(model), "--calib", str(tmp_path / "c.npy"), "-o",
                 str(tmp_path / "x.onnx"), "--sequential", "--method", "deng"]) == 2
    assert "--sequential refines the datta method" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def _refined_vs_datta(path, fmnist_train, fmnist_test, calib, test, T=2):
    nm = onnx_snn.prepare(path)
    x = resolve_data(fmnist_train, nm.preprocess).take(calib, seed=0).x
    test = resolve_data(fmnist_test, nm.preprocess).take(test, seed=0)
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    plain = evaluate(onnx_snn.build(nm, cal, T, "datta").model, test, show_progress=False).top1
    refined = evaluate(onnx_snn.build(nm, cal, T, "refined").model, test, show_progress=False).top1
    return plain, refined


def test_refined_beats_plain_datta_on_the_shipped_model(fmnist_train, fmnist_test):
    """Real data: on the shipped network at T=2 the refinement must gain clearly (10 000 test
    images, `python tools/bench_deep.py`: 88.30 -> 90.09); here 5000 test images."""
    plain, refined = _refined_vs_datta(SHIPPED, fmnist_train, fmnist_test, 512, 5000)
    assert refined >= plain + 0.75, (plain, refined)


DEEP_VGG16 = os.path.join(os.path.dirname(__file__), "..", "tools", "models", "fmnist_vgg16.onnx")


def test_refined_keeps_a_deep_vgg16_from_collapsing(fmnist_train, fmnist_test):
    """The paper's 13-conv VGG-16 (quarter width, trained on Fashion-MNIST, 92.15 %): Algorithm
    1 alone collapses at T=2 (10 % on the full test set), the refined default stays far above."""
    plain, refined = _refined_vs_datta(DEEP_VGG16, fmnist_train, fmnist_test, 256, 1000)
    assert plain <= 30 and refined >= 80, (plain, refined)


def test_weight_calibration_leaves_layers_with_too_many_inputs(monkeypatch):
    """A layer whose normal equations would be too large (MAX_INPUTS inputs per output) keeps
    its weights and is reported as left alone; the others are still fitted."""
    import onnx_snn.sequential as S
    from onnx.numpy_helper import to_array
    x = B.rand_input(40)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = onnx_snn.calibrate(nm, x, batch_size=20, show_progress=False)   # one batch held out
    full = onnx_snn.build(nm, cal, 2, "refined").report["sequential"]["layers"]
    assert full and all("why" not in r for r in full)
    monkeypatch.setattr(S, "MAX_INPUTS", 0)
    snn = onnx_snn.build(nm, cal, 2, "refined")
    rows = snn.report["sequential"]["layers"]
    assert [r["layer"] for r in rows] == [r["layer"] for r in full]
    assert all(r["refitted"] is False and "MAX_INPUTS" in r["why"] for r in rows)
    monkeypatch.setattr(S, "MAX_INPUTS", 100)   # some layers left alone, the others fitted
    rows = onnx_snn.build(nm, cal, 2, "refined").report["sequential"]["layers"]
    assert [r["layer"] for r in rows] == [r["layer"] for r in full]   # still in graph order
    assert {"why" in r for r in rows} == {True, False}
    inits = {t.name: to_array(t) for t in nm.model.graph.initializer}
    from onnx_snn.graph import walk
    out = {t.name: to_array(t) for g in walk.subgraphs(snn.model.graph) for t in g.initializer}
    for n in nm.model.graph.node:   # every weight as in the DNN
        if n.op_type in ("Conv", "Gemm"):
            np.testing.assert_array_equal(out[n.input[1]], inits[n.input[1]])


def test_refinement_batch_shrinks_for_big_layers():
    """One batch's T steps of the largest site stay within REFINE_BATCH_BYTES: a 224x224
    ImageNet layer (64 x 224 x 224 neurons) runs a few images at a time; small nets keep the
    calibration batch."""
    from onnx_snn.sequential import REFINE_BATCH_BYTES, refine_batch_size
    assert refine_batch_size(256, 2, 32 * 28 * 28) == 256
    big = refine_batch_size(64, 2, 64 * 224 * 224)
    assert 1 <= big < 64 and big * 4 * 2 * 64 * 224 * 224 <= REFINE_BATCH_BYTES
    assert refine_batch_size(64, 4096, 10 ** 9) == 1


def test_refinement_keeps_a_models_fixed_batch(monkeypatch):
    """A model with a fixed batch axis is refined in batches of exactly that size, even when
    the memory bound would make them smaller (onnxruntime refuses any other size)."""
    import onnx_snn.sequential as S
    monkeypatch.setattr(S, "REFINE_BATCH_BYTES", 1)   # would shrink any batch to one image
    m = B.vgg(13, "clip")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    x = B.rand_input(16)
    nm = onnx_snn.prepare(m)
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    assert cal.fixed_batch and cal.batch_size == 8
    snn = onnx_snn.build(nm, cal, 2, "refined")
    assert np.all(np.isfinite(run(snn.model, x[:8]).outputs[0]))


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip")])
def test_refinement_runs_the_dnn_once(make, monkeypatch):
    """The DNN runs once, from the input: the search's targets and every refitted layer's
    are gathered in that pass, and no layer is run as the DNN again (they were run one by
    one from the recorded activations of the sites before them until 2026-12-06)."""
    import onnx_snn.sequential as S
    seen = []
    real = S.make_session

    def spy(model, *args, **kwargs):
        if kwargs.get("where") == "the DNN":
            seen.append((len(model.graph.node), list(kwargs.get("outputs", ()))))
        return real(model, *args, **kwargs)
    monkeypatch.setattr(S, "make_session", spy)
    nm = onnx_snn.prepare(make())
    x = B.rand_input(24)
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    snn = onnx_snn.build(nm, cal, 2, "refined")
    refitted = [r["layer"] for r in snn.report["sequential"]["layers"] if r.get("refitted")]
    assert refitted                   # the check below is not empty
    assert len(seen) == 1 and seen[0][0] == len(nm.model.graph.node)
    made = {o for n in nm.model.graph.node if n.name in refitted for o in n.output[:1]}
    assert made <= set(seen[0][1]) | {o.name for o in nm.model.graph.output}


def test_live_sites_keep_a_residual_branch_and_drop_the_rest():
    """The refinement keeps a site's recorded values only while a later site reads them: one
    site at a time on a chain, the skip connection's site too across a residual block; the
    memory estimate follows (never above the estimate that keeps every site)."""
    from onnx_snn.sequential import live_sites, refine_bytes
    for make, most in ((lambda: B.vgg(13, "clip"), 1), (lambda: B.resnet(13, "clip"), 2)):
        nm = onnx_snn.prepare(make())
        names = [s.name for s in nm.sites]
        live = live_sites(nm, names)
        assert max(len(v) for v in live) == most and all(v == [] or v[-1] == k or len(v) < 3
                                                       for v, k in zip(live, names))
        cal = onnx_snn.calibrate(nm, B.rand_input(16), show_progress=False)
        # (the spikes kept: the weight calibration's targets are counted apart, target_bytes)
        plain = SearchConfig(weight_calibration=False)
        assert refine_bytes(cal, 2, plain, nm) <= refine_bytes(cal, 2, plain)


def _live_sites_by_pruning(nm, names):
    """live_sites as it was first written: for each site, the graph pruned back from every
    later site (quadratic in the depth; the reference for the sweep)."""
    from onnx_snn.graph import walk
    recs = {s.name: s for s in nm.sites}
    out = []
    for i, s in enumerate(names):
        done = [recs[k].output for k in names[:i + 1]]
        targets = [t for k in names[i + 1:] for t in (recs[k].input, recs[k].output)]
        targets += [o.name for o in nm.model.graph.output]
        live = walk.needed_tensors(list(nm.model.graph.node), targets, stop=done)
        out.append([k for k in names[:i + 1] if recs[k].output in live])
    return out


@pytest.mark.parametrize("make", [
    lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip"),
    lambda: B.resnet(13, "clip", stem_pool="MaxPool", sum_op=True),
    lambda: B.pooled_twin("MaxPool", global_pool=True)])
def test_live_sites_match_pruning_back_from_every_later_site(make):
    """The one-sweep live_sites gives what pruning the graph back from every later site
    gives, on chains, residual blocks (Add and Sum), pools, and a subset of the sites."""
    from onnx_snn.sequential import live_sites
    nm = onnx_snn.prepare(make())
    names = [s.name for s in nm.sites]
    assert live_sites(nm, names) == _live_sites_by_pruning(nm, names)
    some = names[::2]
    assert live_sites(nm, some) == _live_sites_by_pruning(nm, some)


def test_the_dnn_cut_at_recorded_activations_computes_the_same_values():
    """A layer's DNN output computed from the recorded activation of the site before it
    equals the full DNN's (float32 rounding)."""
    from onnx_snn.calibrate import make_session
    from onnx_snn.sequential import _cut
    nm = onnx_snn.prepare(B.resnet(13, "clip"))
    x = B.rand_input(8)
    from onnx_snn.sequential import live_sites
    recs = nm.sites
    live = live_sites(nm, [r.name for r in recs])
    k = next(i for i in range(1, len(recs) - 1) if live[i] == [recs[i].name])
    a, later = recs[k].output, recs[k + 1].input
    full = make_session(nm.model, outputs=[a, later])
    names = [o.name for o in full.get_outputs()]
    got = dict(zip(names, full.run(None, {nm.model.graph.input[0].name: x})))
    cut = _cut(nm.model, [later], given=[a])
    assert {i.name for i in cut.graph.input} == {a}
    part = make_session(cut).run(None, {a: got[a]})[0]
    np.testing.assert_allclose(part, got[later], rtol=1e-5, atol=1e-5)


def test_step_graph_is_rebuilt_only_after_a_change(monkeypatch):
    """The refinement builds the step graph again only after a layer is refitted or a site
    gets its parameters (each build copies every weight), with the same result as building
    it for every run."""
    import onnx_snn.sequential as S
    monkeypatch.setattr(S, "PARTIAL_STEP_GRAPH", False)     # the whole network's graph
    builds, runs = [], []
    real_model, real_session = S.rewrite.step_model, S.make_session

    def count_builds(*a, **k):
        builds.append(1)
        return real_model(*a, **k)

    def count_runs(model, *a, **k):
        if k.get("where") == "the step graph":
            runs.append(1)
        return real_session(model, *a, **k)
    monkeypatch.setattr(S.rewrite, "step_model", count_builds)
    monkeypatch.setattr(S, "make_session", count_runs)
    nm = onnx_snn.prepare(B.resnet(13, "clip"))
    cal = onnx_snn.calibrate(nm, B.rand_input(24), batch_size=12, show_progress=False)
    models = {}
    for reuse in (True, False):
        monkeypatch.setattr(S, "REUSE_STEP_GRAPH", reuse)
        builds.clear(), runs.clear()
        snn = onnx_snn.build(nm, cal, 2, "refined")
        models[reuse] = (len(builds), len(runs), snn)
    (cached, n_runs, a), (fresh, n_runs2, b) = models[True], models[False]
    assert n_runs == n_runs2 and fresh == n_runs     # without reuse: one build per run
    # built once, then again only after a change: a site's new parameters or a refitted layer
    # (a layer that reads a site's recorded spikes is refitted without a run)
    refits = sum(r["refitted"] for r in a.report["sequential"]["layers"])
    assert refits and cached <= 1 + len(nm.sites) + refits and cached <= n_runs
    # per site one run for its currents and one for its spikes; of the refits only the
    # classifier (after the global pool) needs a run of its own, the convolutions read spikes
    assert n_runs == 2 * len(nm.sites) + 1
    for k in a.records:
        assert a.records[k].to_dict() == b.records[k].to_dict()
    for m in (a.model, b.model):
        del m.metadata_props[:]        # the history's time stamps
    assert a.model.SerializeToString() == b.model.SerializeToString()


def _deep_chain(depth: int, bias: bool = True) -> onnx.ModelProto:
    """``depth`` blocks of conv-clip at 4 channels, then a dense classifier."""
    b = B.GraphBuilder(13, seed=3)
    x = b.act(b.conv("input", 1, 4, bias=bias), "clip")
    for _ in range(depth - 1):
        x = b.act(b.conv(x, 4, 4, bias=bias), "clip")
    x = b.gemm(b.node("Flatten", [x], axis=1), 4 * 8 * 8, 10)
    return b.model("input", x, (1, 8, 8), 10, name=f"chain{depth}")


@pytest.mark.parametrize("name", ["vgg", "resnet", "pooled", "vgg-signed", "no-bias"])
def test_partial_step_graphs_give_the_whole_graphs_result(monkeypatch, name):
    """Each run builds the step graph of the part it computes only; the conversion is the
    same, byte for byte, as with the whole network's step graph cut before each run
    (offsets folded into a bias or added by the same rule, spiking pools kept as such)."""
    import onnx_snn.sequential as S
    model = {"vgg": lambda: B.vgg(), "resnet": lambda: B.resnet(13, "clip"),
             "pooled": lambda: B.resnet(13, "clip", stem_pool="MaxPool"),
             "vgg-signed": lambda: B.vgg(), "no-bias": lambda: _deep_chain(5, bias=False)}[name]()
    nm = onnx_snn.prepare(model)
    x = B.rand_input(24, (1, 8, 8)) if name == "no-bias" else B.rand_input(24)
    cal = onnx_snn.calibrate(nm, x, batch_size=12, show_progress=False)
    from onnx_snn.scales import SearchConfig
    cfg = SearchConfig(signed_spikes=name == "vgg-signed")
    out = {}
    for partial in (True, False):
        monkeypatch.setattr(S, "PARTIAL_STEP_GRAPH", partial)
        snn = onnx_snn.build(nm, cal, 2, "refined", config=cfg)
        del snn.model.metadata_props[:]        # the history's time stamps
        out[partial] = snn
    a, b = out[True], out[False]
    assert any(r.has_offset for r in a.records.values())      # offsets were applied
    if name == "no-bias":     # refits gave bias-less layers a bias (the index learns of it)
        assert any(r["refitted"] for r in a.report["sequential"]["layers"])
    assert {k: r.to_dict() for k, r in a.records.items()} == \
        {k: r.to_dict() for k, r in b.records.items()}
    assert a.model.SerializeToString() == b.model.SerializeToString()


def test_refinement_work_grows_linearly_with_depth(monkeypatch):
    """The step graphs the refinement builds hold, all together, a number of nodes linear
    in the depth (each is the part one run computes; the whole graph rebuilt after every
    site made it quadratic: 400 conv-clip layers took 66 s, now 10 s)."""
    import onnx_snn.sequential as S
    real_model = S.rewrite.step_model
    sizes = []

    def count(*a, **k):
        m = real_model(*a, **k)
        sizes.append(len(m.graph.node))
        return m
    monkeypatch.setattr(S.rewrite, "step_model", count)
    total = {}
    for depth in (6, 12, 24):
        nm = onnx_snn.prepare(_deep_chain(depth))
        cal = onnx_snn.calibrate(nm, B.rand_input(8, (1, 8, 8)), show_progress=False)
        sizes.clear()
        onnx_snn.build(nm, cal, 2, "refined")
        total[depth] = sum(sizes)
        # one run's graph: a layer and at most one neuron with its counter
        assert max(sizes) <= 8, sizes
    assert total[24] <= 2.2 * total[12] and total[12] <= 2.2 * total[6], total
    monkeypatch.setattr(S, "PARTIAL_STEP_GRAPH", False)
    sizes.clear()
    nm = onnx_snn.prepare(_deep_chain(24))
    onnx_snn.build(nm, onnx_snn.calibrate(nm, B.rand_input(8, (1, 8, 8)), show_progress=False),
                   2, "refined")
    assert sum(sizes) > 4 * total[24]        # the whole graph, rebuilt per site


@pytest.mark.parametrize("model", ["vgg", "resnet", "vgg-signed"])
def test_spikes_from_kept_currents_are_the_layers_own(monkeypatch, model):
    """A site's spikes recorded by its neuron alone from the currents kept from its search
    run (KEEP_CURRENTS; the bias correction's offset, folded into the layer's bias in the
    step graph, added to them) equal those of running the layer again on these networks: the
    same records and the same model, bit for bit (a spike may differ only where a membrane
    lies within float32 rounding of its threshold); over KEEP_CURRENTS_BYTES the layer runs
    again."""
    import onnx_snn.sequential as S
    from onnx_snn.scales import SearchConfig
    net = B.resnet(13, "clip") if model == "resnet" else B.vgg(13, "clip")
    nm = onnx_snn.prepare(net)
    cal = onnx_snn.calibrate(nm, B.rand_input(24), batch_size=12, show_progress=False)
    cfg = SearchConfig(signed_spikes=model == "vgg-signed")
    kept = []
    real = S.kept_currents_bytes
    monkeypatch.setattr(S, "kept_currents_bytes", lambda *a: kept.append(real(*a)) or kept[-1])
    out = {}
    for keep, limit in ((True, 2 ** 29), (False, 2 ** 29), (True, 1)):
        monkeypatch.setattr(S, "KEEP_CURRENTS", keep)
        monkeypatch.setattr(S, "KEEP_CURRENTS_BYTES", limit)
        kept.clear()
        out[keep, limit] = onnx_snn.build(nm, cal, 2, "refined", cfg)
        assert all(kept) == (keep and limit > 1) and any(kept) == all(kept)
    a = out[True, 2 ** 29]
    assert any(r.has_offset for r in a.records.values())
    for b in (out[False, 2 ** 29], out[True, 1]):
        for k in a.records:
            assert a.records[k].to_dict() == b.records[k].to_dict()
        for m in (a.model, b.model):
            del m.metadata_props[:]
        assert a.model.SerializeToString() == b.model.SerializeToString()


@pytest.mark.parametrize("toward_own", [True, False])
def test_refits_pull_toward_the_trained_weights_unless_told_otherwise(monkeypatch, toward_own):
    """Every layer the refinement refits uses the configured prior (the layer's own weights by
    default, zero with ``weight_ridge_to_original=False``), and the file's history says which."""
    import onnx_snn.weight_calibration as W
    seen = []
    real = W.LayerFit.choose_ridge
    monkeypatch.setattr(W.LayerFit, "choose_ridge",
                        lambda self, *a: seen.append(self.to_original) or real(self, *a))
    nm = onnx_snn.prepare(B.resnet(13, "clip"))
    cal = onnx_snn.calibrate(nm, B.rand_input(24), batch_size=12, show_progress=False)
    cfg = SearchConfig() if toward_own else SearchConfig(weight_ridge_to_original=False)
    snn = onnx_snn.build(nm, cal, 2, "refined", cfg)
    assert seen and set(seen) == {toward_own}
    assert len(seen) == len(snn.report["sequential"]["layers"])
    history = json.loads(F.metadata(snn.model)[F.META_HISTORY])[0]
    assert history["weight_ridge_toward"] == ("own weights" if toward_own else "zero")


def _record_fit_targets(monkeypatch) -> dict:
    """{layer output: the largest target the weight calibration was given for it}."""
    import onnx_snn.weight_calibration as W
    tops = {}
    real = W.LayerFit.add      # (every batch comes through it: spike counts or per-step values)

    def record(self, r, y, *args, **kw):
        tops[self.node.output[0]] = max(tops.get(self.node.output[0], -np.inf), float(y.max()))
        return real(self, r, y, *args, **kw)
    monkeypatch.setattr(W.LayerFit, "add", record)
    return tops


@pytest.mark.parametrize("timesteps,ceiling", [(1, True), (1, False), (2, True)])
def test_one_step_fits_are_capped_at_mu(monkeypatch, timesteps, ceiling):
    """At T = 1 (one spike at most, fired by every h >= mu) a layer that feeds a site alone
    is fitted to min(h, mu), unless ``one_step_ceiling=False``; at T = 2 to h itself."""
    tops = _record_fit_targets(monkeypatch)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    x = B.rand_input(24) * 4          # pre-activations past the clip's mu = 2
    cal = onnx_snn.calibrate(nm, x, batch_size=12, show_progress=False)
    snn = onnx_snn.build(nm, cal, timesteps, "refined", SearchConfig(one_step_ceiling=ceiling))
    mus = {rec.input: rec.mu for rec in snn.records.values()}
    fed = {t: top for t, top in tops.items() if t in mus}
    assert fed                                    # some refitted layer feeds a site
    capped = timesteps == 1 and ceiling
    if capped:
        assert all(top <= mus[t] for t, top in fed.items())
    else:
        assert any(top > mus[t] for t, top in fed.items())
    history = json.loads(F.metadata(snn.model)[F.META_HISTORY])[0]
    assert ("weight_target" in history) == capped


def test_the_one_step_ceiling_spares_an_output_that_others_read(monkeypatch):
    """A layer whose output also feeds something besides its site (here a residual Add) keeps
    h as its target at T = 1: the other reader sees h above mu; one that feeds its site alone
    is capped."""
    b = B.GraphBuilder(13, seed=3)
    a1 = b.act(b.conv("input", 1, 4), "clip")
    c2 = b.conv(a1, 4, 4)
    a2 = b.act(c2, "clip")
    a3 = b.act(b.node("Add", [c2, a1]), "clip")
    c4 = b.conv(a2, 4, 4)
    a4 = b.act(c4, "clip")
    y = b.node("Flatten", [b.node("GlobalAveragePool", [b.node("Add", [a4, a3])])], axis=1)
    model = b.model("input", b.gemm(y, 4, 10), (1, 12, 12), 10)
    tops = _record_fit_targets(monkeypatch)
    nm = onnx_snn.prepare(model)
    cal = onnx_snn.calibrate(nm, B.rand_input(24) * 4, batch_size=12, show_progress=False)
    onnx_snn.build(nm, cal, 1, "refined")
    assert tops[c2] > 2.0 and tops[c4] <= 2.0          # mu = 2: c2 is read by the Add too


@pytest.mark.parametrize("idiom", ["relu", "clip"])
@pytest.mark.parametrize("opset", [9, 13])
def test_a_site_that_reads_the_graph_input_is_refined(idiom, opset):
    """An activation straight on the model's input (its first node) makes the input a site's
    input: the step graph started at its kept currents declares that input once (it was
    declared twice, and onnxruntime refused the step graph: "Duplicate definition-site")."""
    b = B.GraphBuilder(opset)
    x = b.act("input", idiom, 1.0)
    x = b.act(b.conv(x, 1, 4), idiom, 2.0)
    x = b.gemm(b.node("Flatten", [x], axis=1), 4 * 12 * 12, 10)
    model = b.model("input", x, (1, 12, 12), 10, name="act_on_input")
    data = B.rand_input(48)
    for method in ("refined", "datta"):
        snn = onnx_snn.convert(model, data, timesteps=2, method=method, show_progress=False)
        assert len(F.read_info(snn.model).sites) == 2
        assert np.all(np.isfinite(run(snn.model, data).outputs[0]))


def test_refined_at_many_steps_warns_that_it_is_slow_and_what_is_fast(caplog):
    """refined's search grows with T (an outside sweep: 2 min at T=16, over 10 at T=64, with
    no word): above SLOW_REFINE_TIMESTEPS it says so and names the fast methods; not below."""
    import logging
    from onnx_snn.convert import SLOW_REFINE_TIMESTEPS
    x = B.rand_input(16)
    for T, warned in ((SLOW_REFINE_TIMESTEPS, False), (SLOW_REFINE_TIMESTEPS + 1, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            onnx_snn.convert(B.vgg(13, "clip"), x, T, "refined", show_progress=False)
        said = any("--method max or datta" in r.getMessage() for r in caplog.records)
        assert said == warned, T


def _channels_last_net() -> onnx.ModelProto:
    """tf2onnx without its transpose optimizer: each Conv between Transposes, the clipped
    ReLUs on NHWC activations (the site's first per-sample axis is H, not C)."""
    b = B.GraphBuilder(13)
    x = b.node("Transpose", ["input"], perm=[0, 2, 3, 1])             # the NHWC input
    for cin, cout in ((1, 4), (4, 6)):
        c = b.conv(b.node("Transpose", [x], perm=[0, 3, 1, 2]), cin, cout)
        x = b.act(b.node("Transpose", [c], perm=[0, 2, 3, 1]), "clip")
    y = b.gemm(b.node("Flatten", [x]), 6 * 144, 10)
    return b.model("input", y, (1, 12, 12), 10)


def test_channel_axis_follows_transposes():
    from onnx_snn.sequential import channel_axis
    nm = onnx_snn.prepare(_channels_last_net())
    assert [channel_axis(nm.model, s.input, 4) for s in nm.sites] == [3, 3]
    vgg = onnx_snn.prepare(B.vgg(13, "clip"))
    assert all(channel_axis(vgg.model, s.input, 4 if i < 2 else 2) == 1
               for i, s in enumerate(vgg.sites))


def test_channels_last_sites_get_one_group_not_one_per_row():
    """Per-channel parameters group a site's neurons by its first per-sample axis; on an
    NHWC activation that is the rows of the image, an arbitrary grouping (an outside sweep
    measured a tf2onnx inception 71.5 % at T = 2 per "channel" against 73.45 % with one
    threshold per layer and 74.4 % for its NCHW twin). Such a site gets one group, and the
    conversion says why; the NCHW sites of the same run keep theirs."""
    x = B.rand_input(48)
    snn = onnx_snn.convert(_channels_last_net(), x, timesteps=2, show_progress=False)
    rows = snn.report["sequential"]["sites"]
    assert all("channels-last" in r["one_group"] for r in rows)
    assert all(np.asarray(rec.threshold).size == 1 and np.asarray(rec.offset).size == 1
               for rec in snn.records.values())
    assert sum("not one per channel" in n for n in snn.report["notes"]) == len(rows)
    B.assert_runtimes_agree(snn.model, x)
    nchw = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, show_progress=False)
    assert not any(r.get("one_group") for r in nchw.report["sequential"]["sites"])
    assert np.asarray(nchw.records["lif0"].threshold).size == 4


def test_channel_axis_of_a_matmul_is_its_weights_outputs():
    """x W (tokens of features): the last axis; W x (a constant on the left): the rows."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    from onnx_snn.sequential import channel_axis
    w = nh.from_array(np.ones((6, 5), np.float32), "W")
    v = nh.from_array(np.ones((5, 6), np.float32), "V")
    g = h.make_graph([h.make_node("MatMul", ["x", "V"], ["right"]),
                      h.make_node("MatMul", ["W", "x"], ["left"])], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N", 5, 5])],
                     [h.make_tensor_value_info("right", TP.FLOAT, None),
                      h.make_tensor_value_info("left", TP.FLOAT, None)], [w, v])
    m = h.make_model(g)
    assert channel_axis(m, "right", 3) == 2 and channel_axis(m, "left", 3) == 1


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip")])
def test_the_memory_estimate_counts_the_gathered_targets(make, monkeypatch):
    """target_bytes, in the memory check before the work, is what the refinement's first
    pass gathers for the weight calibration (every layer to refit, every sample)."""
    import onnx_snn.weight_calibration as W
    from onnx_snn.sequential import target_bytes
    got = []
    real = W.LayerFit.targets
    def spy(self, y, first, out=None):
        if out is not None:               # a batch's part of the layer's array
            got.append(out.nbytes)
        return real(self, y, first, out)
    monkeypatch.setattr(W.LayerFit, "targets", spy)
    nm = onnx_snn.prepare(make())
    cal = onnx_snn.calibrate(nm, B.rand_input(24), show_progress=False)
    onnx_snn.build(nm, cal, 2, "refined")
    assert got and sum(got) == target_bytes(nm, cal)


@pytest.mark.parametrize("make", [lambda: B.vgg(13, "clip"), lambda: B.resnet(13, "clip")])
def test_the_dnn_pass_runs_a_batch_in_parts_when_its_outputs_are_large(make, monkeypatch):
    """The refinement's DNN pass exposes every site's input and every refitted layer's output
    (a residual network's convolutions before each Add too): a batch whose outputs would
    exceed CALIB_BATCH_BYTES runs in parts of fewer images, with the same conversion."""
    import onnx_snn.sequential as S
    nm = onnx_snn.prepare(make())
    cal = onnx_snn.calibrate(nm, B.rand_input(24), show_progress=False)
    whole = onnx_snn.build(nm, cal, 2, "refined")
    runs = []
    real = S.make_session

    def spy(model, *args, **kwargs):
        sess = real(model, *args, **kwargs)
        if kwargs.get("where") != "the DNN":
            return sess

        class Counted:
            def __getattr__(self, name):
                return getattr(sess, name)

            def run(self, names, feed):
                runs.append(len(next(iter(feed.values()))))
                return sess.run(names, feed)
        return Counted()
    monkeypatch.setattr(S, "make_session", spy)
    monkeypatch.setattr(S, "CALIB_BATCH_BYTES", 1)          # one image at a time
    parts = onnx_snn.build(nm, cal, 2, "refined")
    assert runs == [1] * 24
    for a, c in zip(whole.model.graph.initializer, parts.model.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(c))
    assert whole.report["sequential"]["layers"] == parts.report["sequential"]["layers"]


@pytest.mark.parametrize("spill", [False, True])
def test_gathered_targets_keep_their_places_through_parts_and_odd_rows(spill):
    """_Targets: each part of a batch goes to its images' places (in memory, or in a
    temporary file); a layer whose output stops being a whole number of rows per image (a
    Reshape that moves the batch axis) is kept per batch from then on, its earlier batches
    unchanged; the bound is applied to what is kept."""
    from onnx import helper as h

    from onnx_snn.sequential import _Targets
    from onnx_snn.weight_calibration import layer_fit
    node = h.make_node("Gemm", ["x", "w"], ["y"], name="fc")
    fit = layer_fit(node, {"w": onnx.numpy_helper.from_array(np.ones((3, 2), np.float32), "w")})
    rng = np.random.default_rng(0)
    starts, sizes = [0, 4, 8], [4, 4, 3]
    t = _Targets(11, starts, sizes, spill=spill)
    given = {}
    for b, parts in enumerate([[(0, 4)], [(0, 2), (2, 2)], [(0, 2), (2, 1)]]):
        for a, m in parts:
            rows = 2 * m if (b, a) != (2, 2) else 5          # the last part: 5 rows for 1 image
            y = rng.normal(size=(rows, 2)).astype(np.float32)
            t.add(fit, y, b, a, m, bound=lambda v: np.maximum(v, np.float32(0), out=v))
            given.setdefault(b, []).append(np.maximum(y, 0))
    assert "fc" in t.pieces and "fc" not in t.arrays
    for b in range(3):
        np.testing.assert_array_equal(t.batch("fc", b), np.concatenate(given[b]))
    assert t.nbytes() == sum(y.nbytes for v in given.values() for y in v)
    t.drop("fc")
    assert t.nbytes() == 0
    t.close()


def test_targets_past_the_memory_bound_go_to_files_with_the_same_conversion(monkeypatch):
    """Past TARGETS_IN_MEMORY_BYTES the gathered targets are anonymous temporary files, read
    back a batch at a time: the same conversion, the memory estimate without them, nothing
    left behind; a disk that fills up is a UsageError that says where and what to do."""
    import glob
    import tempfile

    import onnx_snn.sequential as S
    monkeypatch.setattr(S, "temp_in_memory", lambda: False)     # whatever this host's /tmp is
    nm = onnx_snn.prepare(B.resnet(13, "clip"))
    cal = onnx_snn.calibrate(nm, B.rand_input(24), show_progress=False)
    kept = onnx_snn.build(nm, cal, 2, "refined")
    cfg = SearchConfig()
    before = S.refine_bytes(cal, 2, cfg, nm)
    monkeypatch.setattr(S, "TARGETS_IN_MEMORY_BYTES", 0)
    leftover = set(glob.glob(os.path.join(tempfile.gettempdir(), "onnx-snn-targets-*")))
    spilled = onnx_snn.build(nm, cal, 2, "refined")
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "onnx-snn-targets-*"))) == leftover
    assert S.refine_bytes(cal, 2, cfg, nm) == before - S.target_bytes(nm, cal)
    for a, c in zip(kept.model.graph.initializer, spilled.model.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(c))
    assert kept.report["sequential"]["layers"] == spilled.report["sequential"]["layers"]

    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(S.os, "pwrite", full)
    from onnx_snn.errors import UsageError
    with pytest.raises(UsageError, match="temporary files in .*No space left.*TMPDIR"):
        onnx_snn.build(nm, cal, 2, "refined")


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("amp_shape", [(), (1,), (1, 1, 1), (3, 1, 1), (3, 4, 5)])
def test_spike_counts_of_recorded_spikes_are_integer_forms_of_their_values(signed, amp_shape):
    """The weight calibration reads a recorded site's spikes as counts and per-channel quanta:
    the same sums as integer_form of the per-step values spikes * amplitude."""
    from onnx_snn.sequential import spike_counts
    from onnx_snn.weight_calibration import integer_form
    rng = np.random.default_rng(1)
    s = rng.integers(-1 if signed else 0, 2, (2, 6, 3, 4, 5)).astype(np.int8 if signed else np.uint8)
    s[:, :, 1] = 0                              # a channel that never fires
    base = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    amp = (np.float32(0.75) if amp_shape == () else
           np.broadcast_to(base.reshape((-1,) + (1,) * (len(amp_shape) - 1))
                           if amp_shape[0] == 3 else base[:1], amp_shape).copy())
    k, q = spike_counts(s, amp)
    k2, q2 = integer_form([s[t] * np.asarray(amp, np.float32) for t in range(2)])
    np.testing.assert_array_equal(k, k2)
    fired = q2 != 0
    assert not fired[1] and fired[[0, 2]].all()
    np.testing.assert_array_equal(q[fired], q2[fired])
    if amp_shape == (3, 4, 5):     # not one value per channel: the per-step values are read
        amp[0, 0, 0] += 1
        assert spike_counts(s, amp) is None
    assert spike_counts(s, -np.abs(np.asarray(amp))) is None
    assert spike_counts(s[:, :, 0, 0, 0], 1.0) is None


MOUNTS = """/dev/vda / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid 0 0
/dev/vdb /tmp/disk\\040two ext4 rw 0 0
tmpfs /tmpx tmpfs rw 0 0
/dev/vdc /tmp ext4 rw 0 0
"""


@pytest.mark.parametrize("path,kind", [
    ("/", "ext4"), ("/home/u", "ext4"), ("/tmpx/a", "tmpfs"), ("/tmpy", "ext4"),
    ("/tmp", "ext4"),                # mounted over the tmpfs: the last mount counts
    ("/tmp/a/b", "ext4"), ("/tmp/disk two/x", "ext4"), ("/tmp/disk", "ext4")])
def test_mount_type_is_the_longest_last_mount_point_above_the_path(path, kind):
    from onnx_snn.sequential import mount_type
    assert mount_type(path, MOUNTS) == kind
    assert mount_type("/x", "") is None
    assert mount_type("/tmpx/a", MOUNTS.replace("/tmp/disk\\040two ext4", "/tmp/disk\\040two tmpfs")) == "tmpfs"


def test_targets_stay_in_memory_and_are_counted_when_the_temporary_folder_is_a_tmpfs(monkeypatch):
    """On a tmpfs a temporary file is memory too: past TARGETS_IN_MEMORY_BYTES the targets
    then stay in memory (no copies through a file), the memory estimate counts them, and a
    refusal says to set TMPDIR to a folder on disk."""
    import onnx_snn.sequential as S
    from onnx_snn.errors import UsageError
    monkeypatch.setattr(S, "temp_in_memory", lambda: False)     # on disk first, whatever /tmp is
    nm = onnx_snn.prepare(B.resnet(13, "clip"))
    cal = onnx_snn.calibrate(nm, B.rand_input(24), show_progress=False)
    cfg = SearchConfig(sequential=True)
    kept = onnx_snn.build(nm, cal, 2, "refined")
    full = S.refine_bytes(cal, 2, cfg, nm)
    monkeypatch.setattr(S, "TARGETS_IN_MEMORY_BYTES", 0)
    on_disk = S.refine_bytes(cal, 2, cfg, nm)
    assert on_disk == full - S.target_bytes(nm, cal) < full
    monkeypatch.setattr(S, "temp_in_memory", lambda: True)
    assert S.refine_bytes(cal, 2, cfg, nm) == full
    wrote = []
    monkeypatch.setattr(S.os, "pwrite", lambda *a: wrote.append(a))
    same = onnx_snn.build(nm, cal, 2, "refined")
    assert not wrote
    for a, c in zip(kept.model.graph.initializer, same.model.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(c))
    monkeypatch.setattr(S, "MAX_REFINE_BYTES", on_disk)
    with pytest.raises(UsageError, match="held in memory .a tmpfs.: set TMPDIR to a folder on disk"):
        S.check_refine_memory(cal, 2, cfg, nm)
    monkeypatch.setattr(S, "temp_in_memory", lambda: False)
    S.check_refine_memory(cal, 2, cfg, nm)          # on disk it fits


def test_refining_no_site_returns_an_empty_report():
    from onnx_snn.sequential import refine
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    recs, report, _ = refine(nm, {}, B.rand_input(4), 2, show_progress=False)
    assert recs == {} and report["sites"] == []


@pytest.mark.parametrize("calib_bytes", [None, 5000], ids=["whole-batch", "bounded-batch"])
def test_a_refinement_over_the_memory_limit_is_refused_before_the_calibration_pass(
        monkeypatch, calib_bytes):
    """Where the sites' shapes are known without running the model, the memory check runs
    before the calibration pass, with the estimate the check after it makes (--calib-samples
    0 of 60 000 images calibrated for 45 s before its refusal), also where the pass bounds
    its batch by its sites' bytes (the estimate's work grows with the batch: an unbounded one
    refused what the later check accepted)."""
    import importlib
    import onnx_snn.sequential as S
    from onnx_snn.errors import UsageError
    C = importlib.import_module("onnx_snn.convert")
    if calib_bytes:
        monkeypatch.setattr(importlib.import_module("onnx_snn.calibrate"), "CALIB_BATCH_BYTES",
                            calib_bytes)
    x = B.rand_input(24)
    nm = onnx_snn.prepare(B.vgg(13, "clip"))
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    need = S.refine_bytes(cal, 2, SearchConfig(sequential=True), nm)
    monkeypatch.setattr(S, "MAX_REFINE_BYTES", need - 1)
    passes = []
    real = C.record_sites
    monkeypatch.setattr(C, "record_sites", lambda *a, **k: passes.append(1) or real(*a, **k))
    with pytest.raises(UsageError, match=f"about {need / 2 ** 30:.1f} GiB"):
        onnx_snn.convert(B.vgg(13, "clip"), x, 2, show_progress=False, reconstruct=0)
    assert not passes                     # refused before the calibration pass
    monkeypatch.setattr(S, "MAX_REFINE_BYTES", need)
    onnx_snn.convert(B.vgg(13, "clip"), x, 2, show_progress=False, reconstruct=0)
    assert passes
