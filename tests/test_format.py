"""The spiking format as an API: the parsed view of loop and step graphs, validation of damaged
files, and files of format version 1 (max pooling as an OR) still loading and running."""
import importlib.util
import json
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
import onnx_snn
from onnx_snn.errors import ModelLoadError, NotSpikingModelError
from onnx_snn.runtimes.ort import ModelRunner, run
from onnx_snn.spiking import format as fmt

DATA = os.path.join(os.path.dirname(__file__), "data")
V1_LOOP = os.path.join(DATA, "format_v1_vgg_maxpool.snn.onnx")
V1_STEP = os.path.join(DATA, "format_v1_vgg_maxpool.step.onnx")


@pytest.fixture(scope="module")
def x():
    return B.rand_input(24, seed=3)


@pytest.fixture(scope="module")
def snn(x):
    return onnx_snn.convert(B.resnet(13, "clip"), x, timesteps=2, show_progress=False)


@pytest.fixture(scope="module")
def pooled(x):
    return onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=3, show_progress=False)


def test_view_of_loop_and_step_graphs_agree(pooled):
    a = fmt.read_spiking(pooled.model)
    b = fmt.read_spiking(pooled.step_model())
    assert a.info.format_version == b.info.format_version == fmt.FORMAT_VERSION
    assert a.graph_kind == fmt.GRAPH_LOOP and b.graph_kind == fmt.GRAPH_STEP
    assert set(a.neurons) == set(b.neurons) == {s.name for s in a.info.sites}
    assert set(a.pools) == set(b.pools) == {"pool0"}
    assert [s.names.input for s in a.states] == [s.names.input for s in b.states]
    assert a.states[-2].shape == [8, 12, 12] and a.states[-1].shape == [8, 6, 6]
    # one step's DNN work is the same in both (counters and loop bookkeeping left out)
    assert [n.op_type for n in a.body] == [n.op_type for n in b.body]
    assert [n.op_type for n in a.hoisted] == [n.op_type for n in b.hoisted] == ["Conv"]
    # three counter nodes per site, and three per pool of spikes (abs, sign, sum)
    assert len(a.counters) == len(b.counters) == 3 * len(a.info.sites) + 3
    assert a.counted == b.counted == [s.name for s in a.info.sites] + ["pool0"]
    assert a.counted_pools == ["pool0"] and a.info.pools[0].counted
    assert a.timed_outputs == list(a.step_outputs) and b.data_inputs == ["input"]


def test_site_record_round_trip_and_derived_parameters(snn):
    for rec in snn.records.values():
        d = rec.to_dict()
        back = fmt.SiteRecord.from_dict(json.loads(json.dumps(d)))
        assert back == rec
        np.testing.assert_array_equal(d["threshold"], np.asarray(rec.alpha) * rec.mu)
        np.testing.assert_array_equal(d["amplitude"], np.asarray(rec.beta) * rec.mu)
    per_channel = fmt.SiteRecord("s", "h", "y", [3, 2, 2], mu=2.0, alpha=[0.5, 0.25, 1.0])
    vals = per_channel.param_values()
    assert vals["threshold"].shape == (3, 1, 1) and vals["amplitude"].shape == ()
    np.testing.assert_array_equal(vals["threshold"].reshape(-1), [1.0, 0.5, 2.0])


def _damaged(model, key=None, value=None, init=None, init_value=None):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if key is not None:
        fmt.set_metadata(m, {key: value})
    if init is not None:
        t = fmt.all_initializers(m)[init]
        t.CopyFrom(numpy_helper.from_array(init_value, init))
    return m


@pytest.mark.parametrize("key,value,what", [
    (fmt.META_SITES, "[{oops", "not valid JSON"),
    (fmt.META_SITES, '{"a": 1}', "JSON list"),
    (fmt.META_SITES, '[{"name": "lif0"}]', "lacks"),
    (fmt.META_SITES, '[{"name": "lif0", "input": "a", "output": "b", "shape": "x", "mu": 1}]', "damaged"),
    (fmt.META_HISTORY, "{{", "not valid JSON"),
    (fmt.META_FORMAT, "two", "not a whole number"),
    (fmt.META_FORMAT, "99", "not supported"),
    (fmt.META_TIMESTEPS, "-3", "at least 1"),
    (fmt.META_TIMESTEPS, "2.5", "not a whole number"),
    (fmt.META_GRAPH, "scan", "not one of 'loop', 'step', 'deploy'"),
    (fmt.META_POOLS, '[{"name": "pool0"}]', "damaged"),
    (fmt.META_METHOD, "bogus", "not one of the conversion methods"),
])
def test_damaged_metadata_is_refused_with_a_clear_error(pooled, key, value, what):
    with pytest.raises(ModelLoadError, match=what):
        fmt.read_spiking(_damaged(pooled.model, key, value), "m.snn.onnx")


@pytest.mark.parametrize("param,value,what", [
    ("threshold", -1.0, "threshold <= 0"), ("threshold", 0.0, "threshold <= 0"),
    ("threshold", np.nan, "not finite"), ("threshold", np.inf, "not finite"),
    ("amplitude", -0.5, "lif1 has a spike amplitude <= 0"),
    ("amplitude", 0.0, "lif1 has a spike amplitude <= 0"),
    ("leak", 2.0, "lif1 has a leak above 1 \\(2\\)")])
def test_damaged_parameters_are_refused(snn, param, value, what):
    m = _damaged(snn.model, init=f"lif1.{param}", init_value=np.array(value, np.float32))
    with pytest.raises(ModelLoadError, match=what):
        ModelRunner(m)


@pytest.mark.parametrize("value", [np.array(0, np.int64), np.array(7, np.int64),
                                   np.array(-1, np.int64), np.array([2, 2], np.int64),
                                   np.array(2.0, np.float32)])
def test_a_default_t_other_than_the_recorded_one_is_damage(pooled, value):
    """The loop graph's ``timesteps`` initializer (the T plain onnxruntime runs) edited to 0
    (no step run: outputs of 0 samples) or 7 (seven steps) while the metadata says 3: every
    command read the metadata's T and accepted the file (an outside tester). Refused, naming
    both; the file as written reads."""
    fmt.read_spiking(pooled.model, "m.snn.onnx")
    m = _damaged(pooled.model, init=fmt.TIMESTEPS_INPUT, init_value=value)
    with pytest.raises(ModelLoadError, match="default T .* records T=3"):
        fmt.read_spiking(m, "m.snn.onnx")
    with pytest.raises(ModelLoadError, match="m.snn.onnx|default T"):
        ModelRunner(m)


@pytest.mark.parametrize("key", [fmt.META_TIMESTEPS, fmt.META_FORMAT, None])
def test_a_spiking_file_without_its_metadata_is_damaged_not_a_dnn(snn, key):
    """Stripped metadata is refused (exit 3), not read as T = 1 or run as a DNN."""
    m = onnx.ModelProto()
    m.CopyFrom(snn.model)
    kept = [(p.key, p.value) for p in m.metadata_props if key is not None and p.key != key]
    del m.metadata_props[:]
    for k, v in kept:
        m.metadata_props.add(key=k, value=v)
    assert fmt.is_spiking(m)
    with pytest.raises(ModelLoadError, match="is missing; the file is damaged"):
        fmt.read_spiking(m, "m.snn.onnx")
    with pytest.raises(ModelLoadError, match="is missing"):
        ModelRunner(m)


def test_a_dnn_is_not_a_spiking_model():
    with pytest.raises(NotSpikingModelError):
        fmt.read_spiking(B.vgg(13, "clip"))


def test_an_inlined_neuron_is_refused(snn):
    m = onnx.ModelProto()
    m.CopyFrom(snn.model)
    loop = fmt.time_loop(m.graph)
    for n in loop.attribute[0].g.node:
        if n.op_type == fmt.NEURON_OP:
            n.op_type, n.domain = "Identity", ""
            del n.input[1:]
            del n.output[1:]
    with pytest.raises(ModelLoadError):
        fmt.read_spiking(m)


# ------------------------------------------------------------------ version 1 files

def test_version_1_files_still_load_and_run(x):
    loop, step = onnx.load(V1_LOOP), onnx.load(V1_STEP)
    for m in (loop, step):
        view = fmt.read_spiking(m)
        assert view.info.format_version == 1 and not view.pools
        assert "MaxPool" in [n.op_type for n in view.body]    # the OR of each step's spikes
    a, b = run(loop, x), run(step, x)
    np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    for k in a.spikes:
        np.testing.assert_array_equal(a.spikes[k], b.spikes[k])
    from onnx_snn.analyze import analyze
    info = fmt.read_info(loop)
    rates = {s.name: float(a.spikes[s.name].mean()) / s.neurons for s in info.sites}
    result = analyze(loop, rates)
    assert result.layers and result.totals.snn_energy_pj < result.totals.dnn_energy_pj


def test_version_1_files_in_the_torch_runtime(x):
    pytest.importorskip("torch")
    for path in (V1_LOOP, V1_STEP):
        net = B.assert_runtimes_agree(onnx.load(path), x)
        back = net.to_model()
        assert fmt.read_spiking(back).info.format_version == 1


# ------------------------------------------------------------------ version 2 without pool counters

V2_LOOP = os.path.join(DATA, "format_v2_uncounted_pools.snn.onnx")
V2_STEP = os.path.join(DATA, "format_v2_uncounted_pools.step.onnx")


def test_files_from_before_the_pools_were_counted_still_load_and_run(x):
    """Version 2 files written before 2026-12-03 have rate-exact pools but no counter of
    their output spikes: they run in both runtimes and make deploy graphs as before, the
    evaluation reports no pool rates, and the analyzer charges the layers after the pools
    at their sites' rates with a note."""
    from onnx_snn.analyze import analyze
    from onnx_snn.evaluate import evaluate
    from onnx_snn.spiking.deploy import deploy_model
    loop, step = onnx.load(V2_LOOP), onnx.load(V2_STEP)
    for m in (loop, step):
        view = fmt.read_spiking(m)
        assert view.info.format_version == 2 and view.pools and not view.counted_pools
        assert not view.info.pools[0].counted and view.counted == [s.name for s in view.info.sites]
    a, b = run(loop, x), run(step, x)
    np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    assert set(a.spikes) == set(b.spikes) == {s.name for s in fmt.read_info(loop).sites}
    dep = run(deploy_model(fmt.read_spiking(loop), spike_counts=True), x)
    assert set(dep.spikes) == set(a.spikes)
    r = evaluate(loop, (x, np.zeros(len(x), np.int64)), show_progress=False)
    assert r.sites and not r.pools and set(r.rates) == set(r.sites)
    result = analyze(loop, r.rates)
    assert any("undercounts" in n for n in result.notes)
    if importlib.util.find_spec("torch"):      # the torch runtime counts the same spikes
        for m in (loop, step):
            B.assert_runtimes_agree(m, x)


def test_site_record_spells_no_offset_one_way():
    """An all-zero per-channel offset is 0.0, given to the constructor or set later (the
    refinement sets it), so the record round-trips."""
    rec = fmt.SiteRecord(name="s", input="i", output="o", shape=[2, 3], mu=1.0, offset=[0.0, -0.0])
    assert rec.offset == 0.0
    rec.offset = [0.0, 0.0]
    assert rec.offset == 0.0 and not rec.has_offset
    rec.offset = [0.0, 0.25]
    assert rec.offset == [0.0, 0.25]
    assert fmt.SiteRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


# ------------------------------------------------------------------ signed neurons (version 3)

@pytest.fixture(scope="module")
def signed(x):
    return onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, signed_spikes=True,
                            show_progress=False)


def test_signed_neurons_are_version_3_with_a_count_state(signed, pooled):
    for m in (signed.model, signed.step_model()):
        v = fmt.read_spiking(m)
        assert v.info.format_version == fmt.SIGNED_FORMAT_VERSION == 3
        assert all(s.signed and s.neuron == "signed" for s in v.info.sites)
        assert {n.op_type for n in v.neurons.values()} == {fmt.SIGNED_NEURON_OP}
        names = [st.names.input for st in v.states]
        for s in v.info.sites:   # membrane, then the net count (zero at the start)
            i = names.index(f"{s.name}.v")
            assert names[i + 1] == f"{s.name}.c" and v.states[i + 1].init is None
        assert len(v.counters) == 4 * len(v.info.sites) + 3 * len(v.counted_pools)  # |y| counted
        assert {f.name for f in m.functions} >= {fmt.SIGNED_NEURON_OP}
        assert fmt.NEURON_OP not in {f.name for f in m.functions}
    # a model without signed neurons is still written as version 2, its JSON unchanged
    assert fmt.read_info(pooled.model).format_version == 2
    assert "neuron" not in json.loads(fmt.metadata(pooled.model)[fmt.META_SITES])[0]
    rec = signed.records["lif0"]
    assert fmt.SiteRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert fmt.read_info(signed.model).history[0]["signed_spikes"] is True


def test_damaged_signed_files_are_refused(signed, pooled):
    sites = json.loads(fmt.metadata(signed.model)[fmt.META_SITES])
    with pytest.raises(ModelLoadError, match="format version 2 does not have"):
        fmt.read_spiking(_damaged(signed.model, fmt.META_FORMAT, "2"))
    odd = json.dumps([{**s, "neuron": "bursting"} for s in sites])
    with pytest.raises(ModelLoadError, match="neuron 'bursting'"):
        fmt.read_spiking(_damaged(signed.model, fmt.META_SITES, odd))
    # the metadata says signed, the graph calls the plain neuron
    plain_sites = json.loads(fmt.metadata(pooled.model)[fmt.META_SITES])
    lying = json.dumps([{**s, "neuron": "signed"} for s in plain_sites])
    m = _damaged(_damaged(pooled.model, fmt.META_SITES, lying), fmt.META_FORMAT, "3")
    with pytest.raises(ModelLoadError, match="calls LIFNeuron, not SignedIFNeuron"):
        fmt.read_spiking(m)


def test_a_neuron_or_pool_call_with_the_wrong_arity_is_refused(signed, pooled):
    """A call with an input or output dropped is a damaged file (exit 3), not a crash later
    in deploy or the torch runtime."""
    for model, op in ((signed.model, fmt.SIGNED_NEURON_OP), (pooled.model, fmt.NEURON_OP),
                      (pooled.model, "SpikeMaxPool")):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        node = next(n for n in fmt.time_loop(m.graph).attribute[0].g.node if n.op_type == op)
        del node.input[-1]
        with pytest.raises(ModelLoadError, match="inputs and"):
            fmt.read_spiking(m)


def test_a_missing_or_emptied_format_function_is_refused(signed, pooled):
    """A graph that calls a neuron or pool function the model no longer defines (or defines
    with no body) is a damaged file for every reader (exit 3), in the loop and the step graph,
    not an onnxruntime failure at session creation in one command and a pass in another."""
    for snn, op in ((signed, fmt.SIGNED_NEURON_OP), (pooled, fmt.NEURON_OP),
                    (pooled, "SpikeMaxPool")):
        for model in (snn.model, snn.step_model()):
            for damage, what in (("delete", "is not defined"), ("empty", "has no body"),
                                 ("arity", "has .* inputs and .* outputs")):
                m = onnx.ModelProto()
                m.CopyFrom(model)
                fn = next(f for f in m.functions if f.name == op)
                if damage == "delete":
                    m.functions.remove(fn)
                elif damage == "empty":
                    del fn.node[:]
                else:
                    del fn.output[-1]
                fmt.read_spiking(model)     # the undamaged file reads
                with pytest.raises(ModelLoadError, match=f"{op}, which the graph calls, {what}"):
                    fmt.read_spiking(m)


def test_states_are_not_outputs_when_the_output_list_is_missing(signed):
    """Without onnx_snn.outputs the DNN outputs are what the step graph outputs besides spike
    counts and next states: a signed site's count state too."""
    m = signed.step_model()
    del_key = [p for p in m.metadata_props if p.key == fmt.META_OUTPUTS]
    for p in del_key:
        m.metadata_props.remove(p)
    v = fmt.read_spiking(m)
    assert v.outputs == fmt.read_spiking(signed.step_model()).outputs
    assert not any(o.endswith(("_next", ".spikes")) for o in v.outputs)


@pytest.mark.parametrize("field, value", [
    ("alpha", float("nan")), ("beta", float("inf")), ("v_init", float("nan")),
    ("leak", float("nan")), ("threshold", float("nan")), ("amplitude", -float("inf")),
    ("offset", [0.0, float("nan")])])
def test_non_finite_site_parameters_in_the_metadata_are_damage(pooled, field, value):
    """A site whose metadata holds NaN or an infinity (alpha, beta, the initial membrane,
    the leak, the written threshold or amplitude, an offset) was read, and eval and
    analyze exited 0 on it; it is refused as damage, naming the site and the field."""
    sites = json.loads(fmt.metadata(pooled.model)[fmt.META_SITES])
    sites[0][field] = value
    m = _damaged(pooled.model, fmt.META_SITES, json.dumps(sites))
    with pytest.raises(ModelLoadError, match=f"site 'lif0' has {field} .* finite number"):
        fmt.read_spiking(m, "m.snn.onnx")


@pytest.mark.parametrize("value", [float("inf"), 28.7, "28", -28, 0, 1e20, True, None])
@pytest.mark.parametrize("where", ["site", "pool in", "pool out"])
def test_a_recorded_shape_of_no_whole_numbers_is_damage(pooled, where, value):
    """A site's or pool's per-sample shape in the metadata holding Infinity (exit 70 at
    int()), a fraction or a string (read as 28 without a word), a bool, 0, a negative or a
    huge number is refused as damage, naming the entry and the value; 28.0 reads as 28."""
    key = fmt.META_SITES if where == "site" else fmt.META_POOLS
    field = {"site": "shape", "pool in": "in_shape", "pool out": "out_shape"}[where]
    entries = json.loads(fmt.metadata(pooled.model)[key])
    entries[0][field][-1] = value
    with pytest.raises(ModelLoadError, match=f"{field} .* holds .*not a whole number"):
        fmt.read_spiking(_damaged(pooled.model, key, json.dumps(entries)), "m.snn.onnx")
    entries[0][field][-1] = float(json.loads(fmt.metadata(pooled.model)[key])[0][field][-1])
    got = fmt.read_spiking(_damaged(pooled.model, key, json.dumps(entries)), "m.snn.onnx")
    rec = got.info.sites[0] if where == "site" else got.info.pools[0]
    assert all(type(d) is int for d in getattr(rec, field))


def test_a_spiking_pool_call_no_pool_record_names_is_damage(pooled):
    """onnx_snn.pools emptied while the step still calls the spiking pool: every command
    read it (analyze left the pool out of its energy) and deploy and finetune failed with
    exit 70 on its states; it is damage, naming the node."""
    assert fmt.read_spiking(pooled.model).pools
    with pytest.raises(ModelLoadError, match="calls SpikeMaxPool .* no entry of onnx_snn.pools"):
        fmt.read_spiking(_damaged(pooled.model, fmt.META_POOLS, "[]"), "m.snn.onnx")


def test_a_parameter_of_another_float_type_is_damage(snn):
    """The format's parameters are float32: a float64 threshold made onnxruntime refuse the
    graph (exit 4, "unsupported model"); it is damage, naming the parameter."""
    m = _damaged(snn.model, init="lif1.threshold", init_value=np.array(0.5, np.float64))
    with pytest.raises(ModelLoadError, match="'lif1.threshold' is float64, not float32"):
        ModelRunner(m)


def test_more_listed_sites_than_graph_nodes_is_damage_found_before_reading_them(pooled):
    """Every site and pool is at least one node: a metadata list longer than the graph is
    refused up front (200 000 damaged entries took 10 s to read one by one, a million
    minutes), naming both counts."""
    sites = json.loads(fmt.metadata(pooled.model)[fmt.META_SITES])
    nodes = sum(len(g.node) for g in fmt.walk.subgraphs(pooled.model.graph))
    many = sites + [dict(sites[0], name=f"lif{k + 10}") for k in range(nodes)]
    m = _damaged(pooled.model, fmt.META_SITES, json.dumps(many))
    with pytest.raises(ModelLoadError, match=f"lists {len(many)} sites .* graph's {nodes} nodes"):
        fmt.read_spiking(m, "m.snn.onnx")


@pytest.mark.parametrize("param", ["threshold", "amplitude"])
def test_a_subnormal_threshold_or_amplitude_is_damage(snn, param):
    """A threshold or amplitude below float32's smallest normal number (1e-40, say) is
    flushed to 0 by onnxruntime and not by PyTorch: the runtimes would run two networks (an
    amplitude of 1e-40 gave 8 % top-1 in eval, its layer's spikes all 0). Refused, naming
    the site."""
    m = _damaged(snn.model, init=f"lif1.{param}", init_value=np.array(1e-40, np.float32))
    with pytest.raises(ModelLoadError, match=f"lif1 has a {param} of .*smallest normal"):
        ModelRunner(m)


@pytest.mark.parametrize("field, value, what", [
    ("alpha", -1.0, "alpha -1 .*<= 0"), ("beta", 0.0, "beta 0 .*<= 0"),
    ("alpha", [1.0, -2.0], "alpha -2 "), ("leak", -0.5, "leak -0.5 .*negative"),
    ("leak", 1.5, "leak 1.5 .*above 1"), ("folded_amplitude", -1.0, "folded_amplitude -1")])
def test_site_parameters_outside_their_domain_in_the_metadata_are_damage(pooled, field, value,
                                                                          what):
    """A negative alpha, a zero beta or a leak outside [0, 1] in a site's record was read
    (and shown by `info`) while the graph ran other values; refused, the site and field
    named, for deploy graphs too (whose parameters are inlined)."""
    sites = json.loads(fmt.metadata(pooled.model)[fmt.META_SITES])
    sites[0][field] = value
    m = _damaged(pooled.model, fmt.META_SITES, json.dumps(sites))
    with pytest.raises(ModelLoadError, match=f"site 'lif0' has {what}"):
        fmt.read_info(m, "m.snn.onnx")


@pytest.mark.parametrize("param", ["threshold", "amplitude", "leak", "v_init"])
def test_a_parameter_the_metadata_records_otherwise_is_damage(snn, param):
    """The graph's parameters and the sites' records in the metadata are one contract: a
    file whose initial membrane (say) was edited in the graph alone ran the graph's and
    showed the record's. Refused, both values named; every writer keeps the two equal
    (conversion, fine-tuning, reconstruction, the unit-threshold form: other tests read
    their files)."""
    rec = snn.records["lif1"]
    held = rec.param_values()[param].astype(np.float64)
    edited = np.array(held * 0.5 if param != "v_init" else held + 0.25, np.float32)
    m = _damaged(snn.model, init=f"lif1.{param}", init_value=edited)
    with pytest.raises(ModelLoadError, match=f"'lif1.{param}' holds .* where onnx_snn.sites "
                                             "records .* for site lif1"):
        ModelRunner(m)
    # within float32's rounding of the recorded value: the same file
    same = np.nextafter(held.astype(np.float32), np.float32(0))
    ModelRunner(_damaged(snn.model, init=f"lif1.{param}", init_value=same))


def test_a_loop_graph_labelled_deploy_is_damage(pooled):
    """A loop graph whose metadata says 'deploy' ran in eval and was refused by analyze
    as a deploy graph; it is damage (a deploy graph calls none of the format's functions)."""
    m = _damaged(pooled.model, fmt.META_GRAPH, fmt.GRAPH_DEPLOY)
    with pytest.raises(ModelLoadError, match="says 'deploy', but the graph calls"):
        fmt.read_info(m, "m.snn.onnx")
    with pytest.raises(ModelLoadError, match="says 'deploy'"):
        ModelRunner(m)


def _body(m):
    return next(a.g for n in m.graph.node if n.op_type == "Loop" for a in n.attribute
                if a.name == "body")


def _node(nodes, name):
    return next(n for n in nodes if n.name == name)


def _rewire_input(m, node, slot, value):
    n = _node(_body(m).node, node)
    n.input[slot] = value


def _swap_body_outputs(m, a, b):
    outs = _body(m).output
    for o in outs:
        o.name = {a: b, b: a}.get(o.name, o.name)


def _outer(m, name):
    return _node(m.graph.node, name)


def _const(m, name, value):
    m.graph.initializer.append(numpy_helper.from_array(np.array(value), name))


def _trip_const(m):
    _const(m, "one", np.int64(1))
    next(n for n in m.graph.node if n.op_type == "Loop").input[0] = "one"


def _mean_const(m):
    _const(m, "one_f", np.float32(1.0))
    out = m.graph.output[0].name
    _outer(m, f"{out}.mean").input[1] = "one_f"


def _counter_mul(m):
    _node(_body(m).node, "lif1.per_amplitude").op_type = "Mul"


def _pool_dims(m):
    t = fmt.all_initializers(m)["pool0.m_dims"]
    a = numpy_helper.to_array(t).copy()
    a[-1] *= 2
    t.CopyFrom(numpy_helper.from_array(a, t.name))


WIRING = {
    "another site's threshold": (lambda m: _rewire_input(m, "lif1.neuron", 2, "lif0.threshold"),
                                 "node 'lif1.neuron' \\(LIFNeuron\\) has input 2 'lif0.threshold', "
                                 "not 'lif1.threshold'"),
    "threshold and amplitude swapped": (
        lambda m: (_rewire_input(m, "lif1.neuron", 2, "lif1.amplitude"),
                   _rewire_input(m, "lif1.neuron", 3, "lif1.threshold")), "has input 2"),
    "another site's membrane": (lambda m: _rewire_input(m, "lif1.neuron", 1, "lif0.v"),
                                "has input 1 'lif0.v', not 'lif1.v'"),
    "its own membrane as the current": (lambda m: _rewire_input(m, "lif1.neuron", 0, "lif1.v"),
                                        "takes 'lif1.v', a state or parameter, as its input"),
    "next membranes swapped": (lambda m: _swap_body_outputs(m, "lif0.v_next", "lif1.v_next"),
                               "does not carry the state lif0.v from lif0.v0 to lif0.v_next"),
    "a pool's state of another": (lambda m: _rewire_input(m, "pool0.pool", 2, "pool0.c"),
                                  "node 'pool0.pool' .* has input 2 'pool0.c', not 'pool0.m'"),
    "a trip count of 1": (_trip_const, "runs 'one' steps, not the 'timesteps' input"),
    "a membrane started from another tensor": (
        lambda m: _outer(m, "lif1.v0").input.__setitem__(0, "lif0.threshold"),
        "state lif1.v starts from 'lif0.threshold', not from 'lif1.v_init'"),
    "the scores averaged over 1 step": (_mean_const, "is not its steps' sum over the 'timesteps'"),
    "a counter that multiplies": (_counter_mul, "spike counter of lif1 is not the format's: its "
                                                "node 'lif1.per_amplitude' is a Mul, not a Div"),
    "a pool state of another shape": (_pool_dims, "state pool0.m's shape .* is not its record's"),
}


@pytest.mark.parametrize("case", sorted(WIRING))
def test_a_graph_wired_otherwise_than_the_format_is_damage(pooled, case):
    """onnxruntime runs the graph as it is wired; the PyTorch runtime, the deploy graph and
    the analyzer take each site's states, parameters and counts by the format's names. An
    outside tester's edits of this kind (a call reading another site's parameters or
    state, next membranes swapped, a Loop of a constant trip count, a membrane started from
    another tensor, the scores averaged over 1, a counter that multiplies, a pool state of
    another shape) ran in eval, deploy and finetune with three answers and exit 0 (45.5 % /
    89 % / 89 % for the trip count); each is refused, naming the node or state."""
    edit, what = WIRING[case]
    m = onnx.ModelProto()
    m.CopyFrom(pooled.model)
    fmt.read_spiking(m)                 # (the file as written reads)
    edit(m)
    with pytest.raises(ModelLoadError, match=what):
        fmt.read_spiking(m, "m.snn.onnx")


def test_a_step_graph_wired_otherwise_is_damage(pooled):
    m = pooled.step_model()
    fmt.read_spiking(m)
    _node(m.graph.node, "lif1.neuron").input[4] = "lif0.leak"
    with pytest.raises(ModelLoadError, match="has input 4 'lif0.leak', not 'lif1.leak'"):
        fmt.read_spiking(m, "m.step.onnx")


def test_a_counter_of_the_form_before_still_reads_and_counts_alike(pooled, x):
    """Files written before 2026-12-08 sum a site of one amplitude's spikes and then divide
    by its amplitude: they read, and count as before (on these images, where the float sum is
    exact to the rounding)."""
    snn = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=3, method="datta",
                           show_progress=False)
    m = onnx.ModelProto()
    m.CopyFrom(snn.model)
    nodes = _body(m).node
    c = fmt.CounterNames("lif1")
    div, count, rnd = (_node(nodes, k) for k in (c.per_amplitude_node, c.count_node, c.round_node))
    y = div.input[0]
    count.input[0], count.output[0] = y, c.y_sum
    div.input[0], div.output[0] = c.y_sum, c.y_count
    rnd.input[0] = c.y_count
    order = [onnx.NodeProto() for _ in nodes]      # the sum before the divide
    for new, old in zip(order, nodes):
        new.CopyFrom(count if old is div else div if old is count else old)
    del nodes[:]
    nodes.extend(order)
    fmt.read_spiking(m)
    np.testing.assert_array_equal(run(m, x).spikes["lif1"], run(snn.model, x).spikes["lif1"])


def test_outputs_naming_a_spike_count_are_damage(pooled):
    """`onnx_snn.outputs` naming a spike count was read as the scores: analyze said the SNN
    does no work (exit 0), eval blamed the labels."""
    m = _damaged(pooled.model, fmt.META_OUTPUTS, json.dumps(["lif0.spikes"]))
    with pytest.raises(ModelLoadError, match="names 'lif0.spikes', a spike count or state"):
        fmt.read_info(m, "m.snn.onnx")


def test_a_deploy_graphs_t_edited_in_its_metadata_is_damage(pooled):
    """A deploy graph runs the T it was unrolled for: its metadata's T edited to 4 made
    eval say T=4 while the graph ran 3 steps."""
    from onnx_snn.spiking.deploy import deploy
    d = deploy(pooled.model)
    assert fmt.read_info(d).timesteps == 3
    with pytest.raises(ModelLoadError, match="was unrolled for T=3"):
        fmt.read_info(_damaged(d, fmt.META_TIMESTEPS, "4"), "m.deploy.onnx")
    loop_label = _damaged(d, fmt.META_GRAPH, fmt.GRAPH_LOOP)
    with pytest.raises(ModelLoadError, match="says 'loop', but the graph calls none"):
        fmt.read_spiking(loop_label, "m.deploy.onnx")


def test_a_record_listed_twice_is_damage(pooled):
    """A site's record listed twice was read (deploy then counted 6 spiking layers of 5)."""
    sites = json.loads(fmt.metadata(pooled.model)[fmt.META_SITES])
    with pytest.raises(ModelLoadError, match="lists 'lif0' twice"):
        fmt.read_info(_damaged(pooled.model, fmt.META_SITES, json.dumps(sites + sites[:1])))
    pools = json.loads(fmt.metadata(pooled.model)[fmt.META_POOLS])
    pools[0]["name"] = sites[0]["name"]
    with pytest.raises(ModelLoadError, match="lists 'lif0' twice"):
        fmt.read_info(_damaged(pooled.model, fmt.META_POOLS, json.dumps(pools)))


def test_a_folded_amplitude_that_fine_tuning_trained_still_reads(pooled):
    """Fine-tuning before 2026-12-03 trained a binary-spike file's folded amplitude (the
    graph's 1 became 1.002) and wrote it beside the record, whose amplitude reads 1: such
    files, and `to_model` of a network whose folded amplitude was changed, still read (the
    reviewer of 2026-12-08 found both refused by the first form of the parameter check)."""
    binary = pooled.binary_model()
    folded = [s.name for s in fmt.read_info(binary).sites if s.folded_amplitude is not None]
    assert folded
    name = fmt.param_name(folded[0], "amplitude")
    m = _damaged(binary, init=name, init_value=np.array(1.002, np.float32))
    fmt.read_spiking(m)


def test_a_per_channel_record_of_another_length_is_damage(pooled):
    """A per-channel alpha one value short crashed the parameter check (exit 70)."""
    sites = json.loads(fmt.metadata(pooled.model)[fmt.META_SITES])
    channels = sites[0]["shape"][0]
    sites[0]["alpha"] = [1.0] * (channels - 1)
    with pytest.raises(ModelLoadError, match=f"has {channels - 1} values of alpha .* not one "
                                             "per channel"):
        fmt.read_info(_damaged(pooled.model, fmt.META_SITES, json.dumps(sites)))
