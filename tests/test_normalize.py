"""Normalization passes and activation-site detection on graphs of several producers."""
import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper

import builders as B
import onnx_snn
import onnxruntime as ort
from onnx_snn.errors import ModelLoadError, UnsupportedModelError
from onnx_snn.graph.normalize import normalize
from onnx_snn.runtimes.ort import run


def ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("opset", [7, 8, 9, 11, 13, 17, 21, 22, 23])
@pytest.mark.parametrize("idiom", B.IDIOMS)
def test_every_idiom_is_found_at_every_opset(opset, idiom):
    nm = normalize(B.vgg(opset, idiom))
    assert [s.name for s in nm.sites] == ["lif0", "lif1", "lif2"]
    expected_mu = {"relu6": 6.0, "relu": None}.get(idiom, 2.0)
    assert all(s.mu == expected_mu for s in nm.sites)
    assert all(s.mu_source == ("estimated" if idiom == "relu" else "model") for s in nm.sites)
    kept = set(ops(nm.model))
    assert not kept & {"BatchNormalization", "Dropout", "Softmax", "Identity", "Min", "Max", "Constant"}
    assert nm.opset == max(13, opset)


@pytest.mark.parametrize("idiom", ["clip", "relu_min", "max_min", "relu"])
def test_normalized_model_computes_the_same_function(idiom):
    m = B.vgg(13, idiom, softmax=False)
    x = B.rand_input(16)
    nm = normalize(m)
    a = run(m, x).outputs[0]
    b = run(nm.model, x).outputs[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batchnorm_is_folded_exactly():
    m = B.vgg(13, "clip", bn=True, softmax=False, dropout=False)
    nm = normalize(m)
    assert "BatchNormalization" not in ops(nm.model)
    assert any("BatchNormalization" in n for n in nm.notes)
    x = B.rand_input(8)
    np.testing.assert_allclose(run(m, x).outputs[0], run(nm.model, x).outputs[0], rtol=1e-4, atol=1e-5)


def test_dropout_is_removed_and_recorded():
    nm = normalize(B.vgg(13, "clip", dropout=True))
    assert "Dropout" not in ops(nm.model)
    assert len(nm.dropouts) == 1 and nm.dropouts[0]["ratio"] == pytest.approx(0.25)
    assert nm.dropouts[0]["tensor"] == nm.sites[2].output


def test_final_softmax_dropped_with_note_and_output_name_kept():
    m = B.vgg(13, "clip", softmax=True)
    nm = normalize(m)
    assert "Softmax" not in ops(nm.model)
    assert [o.name for o in nm.model.graph.output] == [o.name for o in m.graph.output]
    assert any("Softmax" in n for n in nm.notes)


def test_matmul_add_becomes_gemm():
    nm = normalize(B.vgg(13, "clip", matmul=True))
    assert "MatMul" not in ops(nm.model) and ops(nm.model).count("Gemm") == 2


def test_sum_becomes_add():
    nm = normalize(B.resnet(13, "clip", sum_op=True))
    assert "Sum" not in ops(nm.model) and ops(nm.model).count("Add") == 2


def test_residual_sites():
    nm = normalize(B.resnet(13, "clip"))
    assert len(nm.sites) == 5
    adds = [n for n in nm.model.graph.node if n.op_type == "Add"]
    site_inputs = {s.input for s in nm.sites}
    assert all(a.output[0] in site_inputs for a in adds)  # clip after the residual add


def test_plain_relu_warns():
    nm = normalize(B.vgg(13, "relu"))
    assert any("plain ReLU" in n for n in nm.notes)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Softmax", "LRN", "LeakyRelu"])
def test_hidden_nonlinearity_is_named(op):
    attrs = {"size": 3} if op == "LRN" else {}
    m = B.with_node(B.vgg(13, "clip"), op, **attrs)
    with pytest.raises(UnsupportedModelError) as e:
        normalize(m)
    assert f"the_{op.lower()}" in str(e.value) and op in str(e.value)
    assert "supported" in str(e.value)
    assert "replace it in the DNN" in str(e.value)       # what to do, not only what is wrong


@pytest.mark.parametrize("lo, hi, pool", [(-1.0, 1.0, "MaxPool"), (-1.0, 1.0, "AveragePool"),
                                          (0.2, 3.0, "MaxPool"), (0.5, None, "AveragePool")])
def test_shifted_clamps_are_sites_between_two_shifts(lo, hi, pool):
    """Hardtanh (Clip(-1, 1)), a clipped ReLU with a positive floor (Clip(0.2, 3)) and a
    shifted ReLU (Max(x, 0.5)) are lo + clip(h - lo, 0, hi - lo): a site between a Sub and an
    Add of lo. At large T the plain rate conversion approaches the DNN as closely as for a
    ReLU (argmax agreement and logit correlation), in onnxruntime and the torch runtime."""
    b = B.GraphBuilder(13)
    x = b.conv("input", 1, 6)
    if hi is None:
        x = b.node("Max", [x, b.const(np.array(lo, np.float32))])
    else:
        x = b.node("Clip", [x, b.const(np.array(lo, np.float32)), b.const(np.array(hi, np.float32))])
    x = b.node(pool, [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [x])
    x = b.gemm(x, 6 * 36, 10)
    m = b.model("input", x, (1, 12, 12), 10)
    nm = normalize(m)
    assert len(nm.sites) == 1 and "shifted" in nm.sites[0].idiom
    if hi is not None:
        assert nm.sites[0].mu == pytest.approx(hi - lo)
    data = B.rand_input(64, seed=4)
    dnn = ort.InferenceSession(m.SerializeToString()).run(None, {"input": data})[0]
    snn = onnx_snn.convert(m, data, timesteps=512, method="max", show_progress=False)
    out = run(snn.model, data).outputs[0]
    assert (out.argmax(1) == dnn.argmax(1)).mean() >= 0.95
    assert np.corrcoef(out.ravel(), dnn.ravel())[0, 1] > 0.999
    small = onnx_snn.convert(m, data, timesteps=2, show_progress=False).model
    B.assert_runtimes_agree(small, data)
    if pool == "MaxPool":   # the shift moved past the pool: it pools spikes, counted as such
        import json
        from onnx_snn.spiking import format as fmt
        pools = json.loads(fmt.metadata(small).get("onnx_snn.pools", "[]"))
        assert len(pools) == 1 and pools[0]["counted"] and pools[0]["op"] == "SpikeMaxPool"


def _upper_clip_of(kind: str, opset: int = 13):
    """A model with a one-sided upper clamp (``Min(., 1)``, or ``Clip`` with a max only) whose
    input is non-negative by what computes it (``kind``), or a convolution's output ('conv')."""
    b = B.GraphBuilder(opset)
    a = b.conv("input", 1, 4)
    r = b.node("Relu", [a])
    if kind == "shared_relu":        # the Relu also feeds a residual Add: no Relu+Min chain
        x, rest = r, r
    elif kind == "sum_of_activations":
        x = b.node("Add", [r, b.act(b.conv("input", 1, 4), "clip", 2.0)])
        rest = None
    elif kind == "pooled":
        x = b.node("Mul", [b.node("AveragePool", [r], kernel_shape=[3, 3], strides=[1, 1],
                                   pads=[1, 1, 1, 1]), b.const(np.array(0.5, np.float32))])
        rest = None
    else:
        x, rest = a, None
    if opset >= 11:
        y = b.node("Clip", [x, "", b.const(np.array(1.0, np.float32))])
    else:
        y = b.node("Min", [x, b.const(np.array(1.0, np.float32))])
    y = b.conv(y, 4, 4)
    if rest is not None:
        y = b.node("Add", [y, rest])
    y = b.gemm(b.node("Flatten", [b.act(y, "clip")]), 4 * 144, 10)
    return b.model("input", y, (1, 12, 12), 10)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("kind", ["shared_relu", "sum_of_activations", "pooled"])
def test_an_upper_clamp_of_a_non_negative_tensor_is_a_clipped_relu(kind, opset):
    """Min(x, mu) / Clip(x, max=mu) where x cannot be negative (a Relu whose output is read
    twice, a sum or pool of activations: what dynamo and Keras exports write) is clip(x, 0, mu):
    a site with mu = 1, and at large T the spiking network approaches the DNN."""
    model = _upper_clip_of(kind, opset)
    x = B.rand_input(64)
    nm, cal, snn = B.converted(model, x, T=256, method="max")
    assert any(s.mu == 1.0 and s.mu_source == "model" for s in nm.sites)
    dnn, spiking = run(model, x).outputs[0], run(snn.model, x).outputs[0]
    assert np.corrcoef(dnn.ravel(), spiking.ravel())[0, 1] > 0.99


def _with_head(head: str) -> onnx.ModelProto:
    """A small classifier exported with a serving head after its logits."""
    b = B.GraphBuilder(13)
    logits = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 10)
    ids = lambda t, **kw: h.make_tensor_value_info(t, onnx.TensorProto.INT64, kw.get("shape", ["N"]))
    outs = []
    if head == "argmax":
        outs.append(ids(b.node("ArgMax", [logits], axis=1, keepdims=0)))
    elif head == "argmax_cast":                  # class ids as int32, [N, 1]
        a = b.node("ArgMax", [logits], axis=1, keepdims=1)
        outs.append(h.make_tensor_value_info(b.node("Cast", [a], to=onnx.TensorProto.INT32),
                                             onnx.TensorProto.INT32, ["N", 1]))
    elif head == "logits_and_ids":
        outs += [h.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, ["N", 10]),
                 ids(b.node("ArgMax", [logits], axis=1, keepdims=0))]
    elif head == "softmax_and_argmax":
        p = b.node("Softmax", [logits], axis=1)
        outs += [h.make_tensor_value_info(p, onnx.TensorProto.FLOAT, ["N", 10]),
                 ids(b.node("ArgMax", [p], axis=1, keepdims=0))]
    elif head == "ids_and_softmax_identity":    # the probabilities reach their output
        p = b.node("Softmax", [logits], axis=1)     # through an Identity, the ids read them
        outs += [ids(b.node("ArgMax", [p], axis=1, keepdims=0)),
                 h.make_tensor_value_info(b.node("Identity", [p]), onnx.TensorProto.FLOAT, ["N", 10])]
    elif head == "ids_features_and_identity_logits":   # the scores' output is the last
        outs += [ids(b.node("ArgMax", [logits], axis=1, keepdims=0)),
                 h.make_tensor_value_info(b.node("Mul", [logits, b.const(np.float32(2.0))]),
                                          onnx.TensorProto.FLOAT, ["N", 10]),
                 h.make_tensor_value_info(b.node("Identity", [logits]), onnx.TensorProto.FLOAT, ["N", 10])]
    elif head == "ids_and_cast_ids":            # a head output also read by the head
        a = b.node("ArgMax", [logits], axis=1, keepdims=0)
        outs += [ids(a), h.make_tensor_value_info(b.node("Cast", [a], to=onnx.TensorProto.INT32),
                                                  onnx.TensorProto.INT32, ["N"])]
    elif head in ("topk", "topk_smallest", "topk_values_softmaxed"):
        v = b.node("TopK", [logits, b.const(np.array([3], np.int64))], n_out=2, axis=1,
                   largest=0 if head == "topk_smallest" else 1)
        i = b.nodes[-1].output[1]
        outs += [h.make_tensor_value_info(v, onnx.TensorProto.FLOAT, ["N", 3]), ids(i, shape=["N", 3])]
        if head == "topk_values_softmaxed":
            outs.append(h.make_tensor_value_info(b.node("Softmax", [v], axis=1),
                                                 onnx.TensorProto.FLOAT, ["N", 3]))
    elif head in ("skl2onnx", "skl2onnx_zipmap"):  # skl2onnx's classifier: ids looked up
        p = b.node("Softmax", [logits], axis=1)   # in the classes, probabilities (as maps)
        probs = b.node("Identity", [p])
        a = b.node("ArgMax", [probs], axis=1, keepdims=0)
        classes = b.const(np.arange(10, dtype=np.int64) * 10)
        looked = b.node("ArrayFeatureExtractor", [classes, a])
        b.nodes[-1].domain = "ai.onnx.ml"
        label = b.node("Cast", [b.node("Reshape", [looked, b.const(np.array([-1], np.int64))])],
                       to=onnx.TensorProto.INT64)
        outs.append(ids(label))
        if head == "skl2onnx":
            outs.append(h.make_tensor_value_info(probs, onnx.TensorProto.FLOAT, ["N", 10]))
        else:
            z = b.node("ZipMap", [probs], classlabels_int64s=list(range(0, 100, 10)))
            b.nodes[-1].domain = "ai.onnx.ml"
            outs.append(h.make_value_info(z, h.make_sequence_type_proto(h.make_map_type_proto(
                onnx.TensorProto.INT64, h.make_tensor_type_proto(onnx.TensorProto.FLOAT, [])))))
    if head.startswith("skl2onnx"):
        g = h.make_graph(b.nodes, "skl", [h.make_tensor_value_info(
            "input", onnx.TensorProto.FLOAT, ["N", 1, 12, 12])], outs, b.inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("ai.onnx.ml", 1)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m
    m = b.model("input", logits, (1, 12, 12), 10)
    del m.graph.output[:]
    m.graph.output.extend(outs)
    return m


@pytest.mark.parametrize("head", ["argmax", "argmax_cast", "logits_and_ids", "softmax_and_argmax",
                                  "ids_and_softmax_identity", "ids_features_and_identity_logits",
                                  "ids_and_cast_ids", "topk", "topk_values_softmaxed",
                                  "skl2onnx", "skl2onnx_zipmap"])
def test_an_output_head_is_dropped_and_its_scores_become_the_output(head):
    """A serving signature's head (class ids from an ArgMax or TopK, cast or not, beside the
    scores or instead of them) is dropped with a note: the spiking model's first output is
    the scores the head read, and at large T its argmax is the DNN's class ids."""
    from onnx_snn.convert import prepare
    from onnx_snn.scores import IDS, first_output_kind, predicted
    m = _with_head(head)
    nm = prepare(m)
    notes = " ".join(nm.notes)
    assert "dropped the output head" in notes and ("ArgMax" in notes or "TopK" in notes), notes
    x = B.rand_input(64)
    _, _, snn = B.converted(m, x, T=256, method="max")
    outs = run(m, x).outputs
    spiking = run(snn.model, x).outputs[0]
    assert spiking.ndim == 2 and spiking.shape[1] == 10
    want = next(o for o in outs if getattr(o, "dtype", None) is not None and o.dtype.kind == "i")
    want = want.reshape(len(want), -1)[:, 0]            # a TopK's indices: the best first
    if head.startswith("skl2onnx"):                      # class labels 0, 10, .., 90
        want = want // 10
    assert np.mean(spiking.argmax(1) == want) >= 0.95
    if head.startswith("skl2onnx"):                      # eval reads the looked-up labels as ids
        assert first_output_kind(m) == IDS
        return
    assert np.array_equal(predicted(next(o for o in outs if o.dtype.kind == "i"), IDS), want)
    if not head.startswith("topk"):     # eval scores the DNN's class ids
        assert np.array_equal(predicted(outs[0], IDS if outs[0].dtype.kind == "i" else "scores"), want)


@pytest.mark.parametrize("head", ["logsoftmax_twice", "argmax_feeds_the_network", "topk_smallest"])
def test_output_post_processing_that_cannot_be_dropped_is_refused_saying_what_to_do(head):
    """A final Softmax also read by another output, class ids the network goes on to use, or
    a top-k of the smallest scores (a distance classifier's) is not a head that can be
    dropped: the message names the node, and says to export without it where it is one."""
    from onnx_snn.convert import prepare
    if head == "topk_smallest":
        with pytest.raises(UnsupportedModelError, match=r"\(TopK\).*export the model without"):
            prepare(_with_head(head))
        return
    b = B.GraphBuilder(13)
    logits = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 10)
    extra = []
    if head == "logsoftmax_twice":
        out = b.node("LogSoftmax", [logits], axis=1)
        extra.append(h.make_tensor_value_info(b.node("Identity", [out]), onnx.TensorProto.FLOAT, ["N", 10]))
    else:
        ids = b.node("ArgMax", [logits], axis=1, keepdims=1)
        out = b.node("Add", [logits, b.node("Cast", [ids], to=onnx.TensorProto.FLOAT)])
    m = b.model("input", out, (1, 12, 12), 10)
    m.graph.output.extend(extra)
    want = r"\(ArgMax\)" if head == "argmax_feeds_the_network" else "export the model without its post-processing"
    with pytest.raises(UnsupportedModelError, match=want):
        prepare(m)


def test_an_upper_clamp_of_a_signed_tensor_is_refused_saying_why():
    with pytest.raises(UnsupportedModelError, match="not ReLU-like .its input '.*' can be negative"):
        normalize(_upper_clip_of("conv"))


@pytest.mark.parametrize("exposed", ["output", "reader"])
def test_a_clip_split_by_an_extra_output_says_so(exposed):
    """tf2onnx's from_function makes intermediate tensors graph outputs: the Min of a
    clip_by_value (Min, then Max(0)) is then read twice, the pair is no one activation, and
    the Min alone is refused. The refusal says why and what to export instead."""
    b = B.GraphBuilder(13)
    a = b.conv("input", 1, 4)
    lo = b.node("Min", [a, b.const(np.array(6, np.float32))])
    r = b.node("Max", [lo, b.const(np.array(0, np.float32))])
    logits = b.gemm(b.node("Flatten", [r]), 4 * 144, 10)
    side = b.node("Transpose", [lo], perm=[0, 2, 3, 1]) if exposed == "reader" else lo
    m = b.model("input", logits, (1, 12, 12), 10)
    dims = ["N", 12, 12, 4] if exposed == "reader" else ["N", 4, 12, 12]
    m.graph.output.append(h.make_tensor_value_info(side, onnx.TensorProto.FLOAT, dims))
    want = "also a graph output" if exposed == "output" else r"also read by .*\(Transpose\)"
    with pytest.raises(UnsupportedModelError, match=want + ".*only its real outputs"):
        normalize(m)
    kept = normalize(m, outputs=[logits])  # or kept alone by --outputs, the model unchanged
    assert len(kept.sites) == 1 and [o.name for o in kept.model.graph.output] == [logits]
    assert any(n.startswith("interface: --outputs: kept") for n in kept.notes)
    assert len(m.graph.output) == 2
    del m.graph.output[1:]               # its real output alone: the pair is one activation
    assert len(normalize(m).sites) == 1


def _two_heads(big: bool = False) -> tuple:
    """conv - clip - FC logits, and a second head (an FC, 8192 x 10 weights with ``big``,
    which the skeleton leaves out) that only the second output reads."""
    b = B.GraphBuilder(13)
    a = b.node("Clip", [b.conv("input", 1, 4), b.const(np.array(0, np.float32)),
                        b.const(np.array(1, np.float32))])
    flat = b.node("Flatten", [a])
    logits = b.gemm(flat, 4 * 144, 10)
    m = b.model("input", logits, (1, 12, 12), 10)
    w = np.random.default_rng(0).standard_normal((4 * 144, 3000 if big else 3)).astype(np.float32)
    m.graph.initializer.append(onnx.numpy_helper.from_array(w, "side.w"))
    m.graph.node.append(h.make_node("MatMul", [flat, "side.w"], ["side"], name="side"))
    m.graph.output.append(h.make_tensor_value_info("side", onnx.TensorProto.FLOAT, ["N", w.shape[1]]))
    return m, logits


@pytest.mark.parametrize("big", [False, True])
def test_outputs_keeps_the_named_ones_and_the_layers_they_need(big):
    m, logits = _two_heads(big)
    nm = normalize(m, outputs=[logits])
    assert [o.name for o in nm.model.graph.output] == [logits]
    assert "side" not in {n.name for n in nm.model.graph.node}
    assert "side.w" not in {i.name for i in nm.model.graph.initializer}
    both = normalize(m, outputs=["side", logits])          # in the order given
    assert [o.name for o in both.model.graph.output] == ["side", logits]
    assert [o.name for o in m.graph.output] == [logits, "side"]     # the model as it was


def test_outputs_drop_a_custom_head_and_the_inputs_only_it_reads():
    """A second head of a custom-domain op reading an input of its own (a detector's
    post-processing, a side input): the domain check refused the model although --outputs
    dropped that head, and the side input stayed one the data had to feed."""
    m, logits = _two_heads()
    m.graph.input.append(h.make_tensor_value_info("aux", onnx.TensorProto.FLOAT, ["N", 3]))
    m.graph.node.append(h.make_node("Add", ["side", "aux"], ["boxes"], name="decode",
                                    domain="com.vendor"))       # named like a standard op
    m.opset_import.append(h.make_opsetid("com.vendor", 1))
    del m.graph.output[1:]
    m.graph.output.append(h.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, ["N", 3]))
    with pytest.raises(UnsupportedModelError, match=r"decode.*com.vendor::Add.*not a standard ONNX op"):
        normalize(m)
    nm = normalize(m, outputs=[logits])
    assert nm.input_names == ["input"]
    assert any("dropped the input(s) aux: nothing reads them" in n for n in nm.notes)
    x = B.rand_input(4)
    np.testing.assert_allclose(run(nm.model, x).outputs[0],
                               run(normalize(m, outputs=[logits]).model, x).outputs[0])
    assert [i.name for i in m.graph.input] == ["input", "aux"]      # the model as it was


@pytest.mark.parametrize("damage", ["nan_weight", "unbatched_input"])
def test_outputs_do_not_check_a_head_they_drop(damage):
    """A NaN weight, or an input without a batch axis, read only by a head that --outputs
    drops: the model was refused for them although nothing kept reads them; without
    --outputs it still is."""
    from onnx_snn.errors import ModelLoadError
    m, logits = _two_heads()
    if damage == "nan_weight":
        w = next(t for t in m.graph.initializer if t.name == "side.w")
        v = onnx.numpy_helper.to_array(w).copy()
        v[0, 0] = np.nan
        w.CopyFrom(onnx.numpy_helper.from_array(v, "side.w"))
        err, why = ModelLoadError, r"weight 'side.w' \(read by MatMul 'side'\) holds 1 NaN"
    else:
        m.graph.input.append(h.make_tensor_value_info("aux", onnx.TensorProto.FLOAT, [3]))
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "ax0"))
        m.graph.node.append(h.make_node("Unsqueeze", ["aux", "ax0"], ["aux1"], name="unsq"))
        m.graph.node.append(h.make_node("Add", ["side", "aux1"], ["boxes"], name="decode"))
        del m.graph.output[1:]
        m.graph.output.append(h.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, ["N", 3]))
        err, why = UnsupportedModelError, "input 'aux' of shape \\[3\\] has no batch axis"
    with pytest.raises(err, match=why):
        normalize(m)
    nm = normalize(m, outputs=[logits])
    assert [o.name for o in nm.model.graph.output] == [logits] and nm.input_names == ["input"]


@pytest.mark.parametrize("names, why", [(["nope"], "'nope' is not an output of .*its outputs are: "),
                                        (["a", "b"], "are not outputs"),
                                        ([], "name at least one"),
                                        (["LOGITS", "LOGITS"], "each output once")])
def test_outputs_that_the_model_does_not_have_are_a_usage_error(names, why):
    from onnx_snn.errors import UsageError
    m, logits = _two_heads()
    names = [logits if n == "LOGITS" else n for n in names]
    with pytest.raises(UsageError, match=why):
        normalize(m, outputs=names)


def test_a_softmax_cut_into_one_output_per_class_says_to_export_one_scores_output():
    """skl2onnx's zipmap='columns' cuts the probabilities into one output per class (Slice,
    Reshape): the refusal names that head and what to export, where it said to replace the
    Softmax in the DNN and fine-tune."""
    b = B.GraphBuilder(13)
    logits = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 10)
    p = b.node("Softmax", [logits], axis=1)
    cols = []
    for k in range(3):
        col = b.node("Slice", [p, b.const(np.array([k], np.int64)), b.const(np.array([k + 1], np.int64)),
                               b.const(np.array([1], np.int64))])
        cols.append(b.node("Reshape", [col, b.const(np.array([-1], np.int64))]))
    m = b.model("input", cols[0], (1, 12, 12), 10)
    del m.graph.output[:]
    m.graph.output.extend(h.make_tensor_value_info(c, onnx.TensorProto.FLOAT, ["N"]) for c in cols)
    with pytest.raises(UnsupportedModelError, match=r"\(Softmax\) is the output head's Softmax, "
                                                    r"cut into several outputs.*zipmap"):
        normalize(m)


@pytest.mark.parametrize("op", ["Softmax", "Sigmoid"])
def test_a_head_whose_tail_can_reorder_the_classes_is_refused_as_a_head(op):
    """Softmax(x) * per-class weights on the outputs: not droppable (the weights reorder the
    classes), and refused as the output head it is, with what follows it named, where it
    was refused as a nonlinearity to replace by a ReLU and fine-tune."""
    b = B.GraphBuilder(13)
    logits = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 10)
    p = b.node(op, [logits], **({"axis": 1} if op == "Softmax" else {}))
    w = b.node("Mul", [p, b.const(np.linspace(1, 2, 10).astype(np.float32))])
    m = b.model("input", w, (1, 12, 12), 10)
    tail = [n.name for n in m.graph.node if n.op_type == "Mul"][0]
    with pytest.raises(UnsupportedModelError) as e:
        normalize(m)
    msg = str(e.value)
    assert f"({op}) is the output head's {op}" in msg and f"feeds Mul '{tail}'" in msg, msg
    assert "replace it in the DNN" not in msg


def test_a_gate_is_no_output_head():
    """x * sigmoid(x) (SiLU) on the outputs reads other data than the Sigmoid's: still refused
    as a nonlinearity to replace."""
    b = B.GraphBuilder(13)
    logits = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 10)
    m = b.model("input", b.node("Mul", [logits, b.node("Sigmoid", [logits])]), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Sigmoid\) is a nonlinearity"):
        normalize(m)


def test_a_float64_round_trip_inside_a_float32_model_is_removed():
    """Cast float32 -> float64 -> float32 between two float32 layers: exact, so removed (it
    was refused, naming the Cast to remove); see also
    test_a_float64_round_trip_of_casts_is_the_identity_and_a_float64_step_is_refused."""
    b = B.GraphBuilder(13)
    a = b.act(b.conv("input", 1, 4), "clip")
    wide = b.node("Cast", [a], to=onnx.TensorProto.DOUBLE)
    back = b.node("Cast", [wide], to=onnx.TensorProto.FLOAT)
    m = b.model("input", b.gemm(b.node("Flatten", [back]), 4 * 144, 10), (1, 12, 12), 10)
    assert not any(n.op_type == "Cast" for n in normalize(m).model.graph.node)


@pytest.mark.parametrize("opset", [11, 13])
def test_a_softmax_over_the_batch_axis_is_refused_for_what_it_is(opset):
    """A final Softmax over axis 0 normalizes across the batch: the refusal says so, where it
    listed no reader (opset 13) or an internal Reshape (opset 11, read as opset 13 reads it)."""
    b = B.GraphBuilder(opset)
    logits = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 10)
    m = b.model("input", b.node("Softmax", [logits], axis=0), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Softmax\) is a Softmax over the batch "
                                                    r"axis \(axis 0\): it normalizes across"):
        normalize(m)


@pytest.mark.parametrize("pool, says", [
    ("reducemax_h", "MaxPool whose kernel spans those axes"),
    ("reducemax_c", "a maximum over the channels"),
    ("lppool", "an LP pool .a p-norm of each window. is not linear"),
    ("lppool_written_out", "of an LP pool, Pow, AveragePool, Pow"),
])
def test_pools_that_are_not_converted_say_what_to_use(pool, says):
    """A max over one spatial axis, and an LP pool (as an op, or as nn.LPPool2d exports it:
    Pow, AveragePool, Pow), are refused naming the pooling that replaces them (the LP pool's
    Pow was called part of a LayerNorm)."""
    b = B.GraphBuilder(13)
    r = b.act(b.conv("input", 1, 4), "clip")
    if pool == "reducemax_h":
        p = b.node("ReduceMax", [r], axes=[2], keepdims=1)
        flat = 4 * 12
    elif pool == "reducemax_c":                  # CBAM's channel pooling
        p = b.node("ReduceMax", [r], axes=[1], keepdims=1)
        flat = 144
    elif pool == "lppool":
        p = b.node("LpPool", [r], kernel_shape=[2, 2], strides=[2, 2], p=2)
        flat = 4 * 36
    else:
        sq = b.node("Pow", [r, b.const(np.array(2, np.float32))])
        p = b.node("Pow", [b.node("AveragePool", [sq], kernel_shape=[2, 2], strides=[2, 2]),
                           b.const(np.array(0.5, np.float32))])
        flat = 4 * 36
    m = b.model("input", b.gemm(b.node("Flatten", [p]), flat, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=says):
        normalize(m)


@pytest.mark.parametrize("form", ["where", "mul"])
def test_a_thresholded_relu_is_refused_as_a_comparison(form):
    """Keras's ReLU(threshold=0.5) exports x * Cast(x > 0.5) (or a Where): not a ReLU (a
    step at 0.5), refused naming the comparison and what it is, not as an unknown op."""
    b = B.GraphBuilder(13)
    a = b.conv("input", 1, 4)
    test = b.node("Greater", [a, b.const(np.array(0.5, np.float32))])
    if form == "where":
        r = b.node("Where", [test, a, b.const(np.array(0, np.float32))])
    else:
        r = b.node("Mul", [a, b.node("Cast", [test], to=onnx.TensorProto.FLOAT)])
    m = b.model("input", b.gemm(b.node("Flatten", [r]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Greater\) compares the data .a thresholded ReLU"):
        normalize(m)


def test_non_negative_tensors():
    """What keeps a tensor non-negative, and what does not."""
    import onnx_graphsurgeon as gs
    from onnx_snn.graph.sites import nonnegative_tensors
    b = B.GraphBuilder(13)
    r = b.node("Relu", [b.conv("input", 1, 4)])
    keep = {
        "pool": b.node("MaxPool", [r], kernel_shape=[2, 2]),
        "div": b.node("Div", [r, b.const(np.array(2.0, np.float32))]),
        "pad0": b.node("Pad", [r, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]),
        "cat": b.node("Concat", [r, r], axis=1),
        "max_any": b.node("Max", [b.conv("input", 1, 4), b.const(np.array(0.0, np.float32))]),
    }
    lose = {
        "neg_div": b.node("Div", [r, b.const(np.array(-2.0, np.float32))]),
        "pad_neg": b.node("Pad", [r, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
                                  b.const(np.array(-1.0, np.float32))]),
        "sub": b.node("Sub", [r, b.const(np.array(1.0, np.float32))]),
        "cat_signed": b.node("Concat", [r, b.conv("input", 1, 4)], axis=1),
        "conv": b.conv(r, 4, 4),
    }
    g = b.model("input", b.gemm(b.node("Flatten", [keep["pool"]]), 4 * 121, 10), (1, 12, 12), 10)
    g.graph.output.extend(h.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                          for t in list(keep.values()) + list(lose.values()))
    graph = gs.import_onnx(g)
    graph.toposort()
    found = nonnegative_tensors(graph)
    assert all(t in found for t in keep.values()), [k for k, t in keep.items() if t not in found]
    assert not any(t in found for t in lose.values()), [k for k, t in lose.items() if t in found]


@pytest.mark.parametrize("shape, ok", [((1, 4, 1, 1), True), ((4, 1, 1), True),
                                       ((1, 1, 12, 12), True), ((2, 4, 1, 1), False)])
def test_a_repeated_bound_is_a_scalar_bound(shape, ok):
    """Max(x, zeros[1, C, 1, 1]) and Min(x, full([1, C, 1, 1], mu)), as some exporters write
    ReLU and ReLU6, are ReLU-like sites when the bound leaves the data's shape as it is; a
    bound that would broadcast the data up (or that varies) is still refused."""
    b = B.GraphBuilder(13)
    x = b.conv("input", 1, 4)
    x = b.node("Max", [x, b.const(np.zeros(shape, np.float32))])
    x = b.node("Min", [x, b.const(np.full(shape, 6.0, np.float32))])
    x = b.gemm(b.node("Flatten", [x]), 4 * 144, 10)
    model = b.model("input", x, (1, 12, 12), 10)
    if not ok:
        with pytest.raises(UnsupportedModelError, match="a floor per channel or per element"):
            normalize(model)
        return
    nm = normalize(model)
    assert [o for o in ops(nm.model) if o in ("Clip", "Max", "Min")] == ["Clip"]
    xin = np.random.default_rng(0).normal(size=(3, 1, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run(nm.model, xin).outputs[0], run(model, xin).outputs[0],
                               rtol=1e-5, atol=1e-5)
    varying = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    b2 = B.GraphBuilder(13)
    y = b2.node("Max", [b2.conv("input", 1, 4), b2.const(varying)])
    y = b2.gemm(b2.node("Flatten", [y]), 4 * 144, 10)
    with pytest.raises(UnsupportedModelError, match=r"Max with a floor per channel or per element .only a floor of 0 makes a ReLU. is not a clipped ReLU"):
        normalize(b2.model("input", y, (1, 12, 12), 10))


def test_product_of_two_tensors_is_rejected():
    b = B.GraphBuilder(13)
    x = b.act(b.conv("input", 1, 4), "clip")
    y = b.node("Mul", [x, x])
    y = b.gemm(b.node("Flatten", [y]), 4 * 144, 10)
    with pytest.raises(UnsupportedModelError, match="not linear"):
        normalize(b.model("input", y, (1, 12, 12), 10))


def test_no_activation_at_all():
    b = B.GraphBuilder(13)
    y = b.gemm(b.node("Flatten", [b.conv("input", 1, 2)]), 2 * 144, 10)
    with pytest.raises(UnsupportedModelError, match="no ReLU-type activation"):
        normalize(b.model("input", y, (1, 12, 12), 10))


def test_opset_out_of_range(tmp_path):
    m = B.vgg(9, "clip")
    m.opset_import[0].version = 6
    with pytest.raises(UnsupportedModelError, match="opset 6 is outside"):   # exit 4
        normalize(m)
    m.opset_import[0].version = 24
    with pytest.raises(UnsupportedModelError, match="opset 24 is outside the supported range 7-23"):
        normalize(m)


def test_weights_as_constant_nodes_and_identity_chains():
    """Weights arriving as Constant nodes behind Identity chains become initializers."""
    m = B.vgg(13, "clip_const_nodes", bn=False, dropout=False, softmax=False)
    g = m.graph
    w = g.initializer[0]
    g.node.insert(0, h.make_node("Constant", [], ["w_const"], value=w, name="wc"))
    g.node.insert(1, h.make_node("Identity", ["w_const"], ["w_id1"], name="id1"))
    g.node.insert(2, h.make_node("Identity", ["w_id1"], ["w_id2"], name="id2"))
    conv = next(n for n in g.node if n.op_type == "Conv")
    conv.input[1] = "w_id2"
    del g.initializer[0]
    onnx.checker.check_model(m)
    nm = normalize(m)
    assert set(ops(nm.model)) <= {"Conv", "Clip", "MaxPool", "Flatten", "Gemm"}


# ------------------------------------------------------------------ skeletons (issue 14)
# The checker, shape inference, the opset converter, the import and onnxruntime sessions run
# on a skeleton: the model with its large initializers left out. The builders' weights are
# below the production threshold, so these tests lower it (to 64 bytes: every weight and
# bias is left out, shape tensors stay) and compare with the whole-model path (a threshold
# no tensor reaches).

from pathlib import Path

from onnx import numpy_helper as nh
from onnx_snn.graph import skeleton

DATA = Path(__file__).parent / "data"
SKELETON_CASES = {
    "vgg_clipattr_bn_op9": lambda: B.vgg(9, "clip"),             # opset upgrade, BN folding
    "vgg_clipinput_op11": lambda: B.vgg(11, "clip_const_nodes"),
    "vgg_relumin_matmul_op13": lambda: B.vgg(13, "relu_min", matmul=True),
    "resnet_sum_op13": lambda: B.resnet(13, "clip", sum_op=True),
    "pooled_max_op13": lambda: B.pooled_twin("MaxPool"),
    "torch_legacy_vgg_op11": lambda: str(DATA / "torch_legacy_vgg_clip_op11.onnx"),
    "torch_dynamo_resnet_op18": lambda: str(DATA / "torch_dynamo_resnet_clip_op18.onnx"),
}


def _with_threshold(monkeypatch, nbytes, fn):
    monkeypatch.setattr(skeleton, "MIN_BYTES", nbytes)
    return fn()


@pytest.mark.parametrize("case", sorted(SKELETON_CASES))
def test_skeleton_normalization_is_byte_identical(case, monkeypatch):
    src = SKELETON_CASES[case]
    whole = _with_threshold(monkeypatch, 1 << 62, lambda: normalize(src()))
    split = _with_threshold(monkeypatch, 64, lambda: normalize(src()))
    assert skeleton.split(split.model, 64).stubs        # the path under test left weights out
    assert split.model.SerializeToString() == whole.model.SerializeToString()
    assert split.notes == whole.notes and split.sites == whole.sites
    assert split.dropouts == whole.dropouts


@pytest.mark.parametrize("case", ["vgg_clipattr_bn_op9", "resnet_sum_op13", "pooled_max_op13"])
def test_skeleton_conversion_is_byte_identical(case, monkeypatch):
    """prepare + calibrate + build (the refined default: many sessions) and the step graph."""
    src = SKELETON_CASES[case]
    x = B.rand_input(24, seed=5)

    def convert():
        snn = onnx_snn.convert(src(), x, timesteps=2, show_progress=False, batch_size=8)
        return snn, snn.to_bytes(), snn.to_bytes(step=True)

    a, a_bytes, a_step = _with_threshold(monkeypatch, 1 << 62, convert)
    b, b_bytes, b_step = _with_threshold(monkeypatch, 64, convert)

    def same(m):  # the history records the time of conversion
        meta = {p.key: p.value for p in m.metadata_props}
        return {k: v for k, v in meta.items() if k != "onnx_snn.history"}, \
            [n.SerializeToString() for n in m.graph.node], \
            [t.SerializeToString() for t in m.graph.initializer]
    assert same(onnx.load_from_string(a_bytes)) == same(onnx.load_from_string(b_bytes))
    assert same(onnx.load_from_string(a_step)) == same(onnx.load_from_string(b_step))
    assert [r.to_dict() for r in a.records.values()] == [r.to_dict() for r in b.records.values()]


def test_skeleton_shape_inference_equals_whole_model(monkeypatch):
    m = B.resnet(13, "clip")
    whole = onnx.shape_inference.infer_shapes(m)
    sk = skeleton.split(m, 64)
    assert sk.stubs and len(sk.model.graph.initializer) < len(m.graph.initializer)
    copy = onnx.ModelProto()
    copy.CopyFrom(m)
    skeleton.restore(skeleton.infer_shapes(copy, sk), copy, sk)
    assert copy.SerializeToString() == whole.SerializeToString()


def _broken(how):
    """A model whose first conv weight the checker rejects (or, for "long", accepts)."""
    m = B.vgg(13, "clip")
    w = next(t for t in m.graph.initializer if len(t.dims) == 4)
    if how == "short":
        w.raw_data = w.raw_data[:-4]
    elif how == "long":
        w.raw_data = w.raw_data + b"\0" * 8
    elif how == "typed_and_raw":
        w.float_data.append(1.0)
    elif how == "external_flag":
        w.data_location = onnx.TensorProto.EXTERNAL
    elif how == "undefined_type":
        w.data_type = onnx.TensorProto.UNDEFINED
    elif how == "duplicate_name":
        dup = onnx.TensorProto()
        dup.CopyFrom(w)
        m.graph.initializer.append(dup)
    elif how == "input_too":
        m.graph.input.append(h.make_tensor_value_info(w.name, onnx.TensorProto.FLOAT, list(w.dims)))
    return m


@pytest.mark.parametrize("how", ["short", "long", "typed_and_raw", "external_flag",
                                 "undefined_type", "duplicate_name", "input_too"])
def test_skeleton_checker_gives_the_whole_models_verdict(how, monkeypatch):
    from onnx_snn.model_io import check_model
    m = _broken(how)
    try:
        onnx.checker.check_model(m)
        expected = None
    except onnx.checker.ValidationError as e:
        expected = str(e).strip().splitlines()[0]
    monkeypatch.setattr(skeleton, "MIN_BYTES", 64)
    if expected is None:
        check_model(m, "m")
        skeleton.check_model(m)
    else:
        with pytest.raises(ModelLoadError) as info:
            check_model(m, "m")
        assert str(info.value) == f"m: the ONNX checker rejects this model: {expected}"


@pytest.mark.parametrize("dtype", [onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT])
def test_an_input_nothing_reads_is_dropped(dtype):
    """keras2onnx's ``keras_learning_phase``, a bool input nothing reads, was refused as an
    input type the converter does not take (a float one needed data of its own); it is
    dropped, with a note, and the model converts on its one real input."""
    m = B.vgg(13, "clip", softmax=False)
    m.graph.input.append(h.make_tensor_value_info("keras_learning_phase", dtype, []))
    nm = normalize(m)
    assert nm.input_names == ["input"]
    assert any("keras_learning_phase: nothing reads them" in n for n in nm.notes)
    x = B.rand_input(8)
    B.assert_runtimes_agree(B.converted(m, x)[2].model, x)
    np.testing.assert_allclose(run(m, x).outputs[0], run(nm.model, x).outputs[0],   # the DNN runs
                               rtol=1e-4, atol=1e-4)


def test_a_session_of_a_model_with_an_unused_large_initializer_runs():
    """An initializer nothing reads (an exporter's leftover, 16 KB here): handed to
    onnxruntime as external data, it was dropped by its graph cleanup and then not found
    ('Failed to find existing initializer'): `onnx-snn eval` of such a DNN failed."""
    from onnx_snn.calibrate import make_session
    m = B.vgg(13, "clip", softmax=False)
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "unused_w"))
    x = B.rand_input(4)
    out = make_session(m).run(None, {"input": x})[0]
    np.testing.assert_array_equal(out, run(m, x).outputs[0])


def test_skeleton_session_equals_whole_model_session(monkeypatch):
    import onnxruntime as ort
    from onnx_snn.calibrate import make_session
    monkeypatch.setattr(skeleton, "MIN_BYTES", 64)
    nm = normalize(B.resnet(13, "clip"))
    names = [s.input for s in nm.sites]
    data, stubbed, arrays = skeleton.session_parts(nm.model, names)
    assert stubbed and len(data) < nm.model.ByteSize()
    x = B.rand_input(8)
    whole = onnx.ModelProto()   # the whole model, serialized with the sites as outputs
    whole.CopyFrom(nm.model)
    for name in names:
        if name not in {o.name for o in whole.graph.output}:
            whole.graph.output.add().name = name
    full = ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = make_session(nm.model, outputs=names)
    assert [o.name for o in sess.get_outputs()] == [o.name for o in full.get_outputs()]
    for a, b in zip(sess.run(None, {"input": x}), full.run(None, {"input": x})):
        np.testing.assert_array_equal(a, b)


def test_spiking_self_check_still_catches_bugs(monkeypatch):
    """The spiking model's full check on its skeleton (the Loop body's weights as outer
    values) still refuses a broken graph."""
    from onnx_snn.convert import _self_check, prepare
    monkeypatch.setattr(skeleton, "MIN_BYTES", 64)
    snn = onnx_snn.convert(B.vgg(13, "clip"), B.rand_input(16), timesteps=2, method="max",
                           show_progress=False)
    sk = skeleton.split(snn.model, subgraphs=True)
    assert any(n not in {t.name for t in snn.model.graph.initializer} for n in sk.stubs)
    _self_check(snn.model)
    bad = onnx.ModelProto()
    bad.CopyFrom(snn.model)
    body = next(n for n in bad.graph.node if n.op_type == "Loop").attribute[0].g
    conv = next(n for n in body.node if n.op_type == "Conv")
    conv.input[1] = "no_such_weight"
    with pytest.raises(RuntimeError, match="invalid spiking model"):
        _self_check(bad)


def test_skeleton_check_still_sees_a_nested_weight_used_out_of_scope():
    """A branch's large initializer used by the other branch (or the main graph) is out of
    scope: the skeleton leaves such a tensor in place, so the checker rejects the model as it
    does the whole one; a spiking model's Loop-body weights (used only there) still go."""
    import onnx_snn
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    from onnx_snn.graph import skeleton, walk
    w = nh.from_array(np.ones((64, 64), np.float32), "W")
    out = lambda n: h.make_tensor_value_info(n, TP.FLOAT, [64, 64])  # noqa: E731
    then_g = h.make_graph([h.make_node("Add", ["x", "W"], ["t"])], "then", [], [out("t")], [w])
    else_g = h.make_graph([h.make_node("Mul", ["x", "W"], ["e"])], "else", [], [out("e")])
    g = h.make_graph([h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                     "m", [h.make_tensor_value_info("c", TP.BOOL, []), out("x")], [out("y")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(m)
    with pytest.raises(onnx.checker.ValidationError):
        skeleton.check_model(m)
    assert "W" not in skeleton.split(m, subgraphs=True).stubs
    snn = onnx_snn.convert(B.vgg(13, "clip"), B.rand_input(16), timesteps=2, method="datta",
                           show_progress=False)
    body = {t.name for sub in walk.subgraphs(snn.model.graph)[1:] for t in sub.initializer
            if (skeleton.declared_nbytes(t) or 0) >= 64}
    sk = skeleton.split(snn.model, min_bytes=64, subgraphs=True)
    assert body and body <= set(sk.stubs)


@pytest.mark.parametrize("opset", [9, 15])
def test_batchnorm_in_training_mode_is_refused_naming_it(opset):
    """A BN that normalizes with the batch's own statistics (training_mode=1 from opset 14,
    its statistics as outputs before) is not folded: the DNN's output depends on the batch."""
    from onnx import helper
    from onnx_snn.errors import UnsupportedModelError
    m = B.vgg(opset, "clip", bn=True, softmax=False, dropout=False)
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    if opset >= 14:
        bn.attribute.append(helper.make_attribute("training_mode", 1))
        bn.output.extend([bn.output[0] + "_rm", bn.output[0] + "_rv"])
    else:
        bn.output.extend([bn.output[0] + s for s in ("_m", "_v", "_sm", "_sv")])
    with pytest.raises(UnsupportedModelError, match=f"{bn.name}.*training mode.*inference mode"):
        normalize(m)
    # training_mode=0 written out (one output) is inference mode: folded
    if opset >= 14:
        del bn.output[1:]
        bn.attribute[-1].CopyFrom(helper.make_attribute("training_mode", 0))
        assert "BatchNormalization" not in ops(normalize(m).model)


@pytest.mark.parametrize("layout", ["keep_io_types", "keep_io_types_int8", "half", "float64"])
def test_a_float16_or_float64_model_is_converted_in_float32(layout):
    """onnxconverter-common's keep_io_types layout (Cast to float16, float16 layers, Cast
    back), a half-precision export (float16 inputs, weights and outputs) and a float64 graph
    (they were refused) are converted in float32, with a note: the spiking model takes float32,
    and at large T it approaches the original model's outputs. With int8 weights through a
    DequantizeLinear of float16 scale (a QDQ model converted to float16, keep_io_types), the
    Cast to float16 was refused as a float16 step inside a float32 model."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    int8 = layout == "keep_io_types_int8"
    layout = "keep_io_types" if int8 else layout
    ft = {"keep_io_types": np.float16, "half": np.float16, "float64": np.float64}[layout]
    et = TP.FLOAT16 if ft is np.float16 else TP.DOUBLE
    io = TP.FLOAT if layout == "keep_io_types" else et
    inits = [nh.from_array(np.array(0, ft), "lo"), nh.from_array(np.array(1, ft), "hi")]
    dq = []
    if int8:       # every weight int8 (no float16 weight says what the model computes in)
        inits += [nh.from_array(rng.integers(-100, 100, (4, 1, 3, 3)).astype(np.int8), "w8"),
                  nh.from_array(rng.integers(-100, 100, (10, 4)).astype(np.int8), "w2_8"),
                  nh.from_array(np.array(0.005, np.float16), "w_scale"),
                  nh.from_array(np.array(0.01, np.float16), "w2_scale")]
        dq = [h.make_node("DequantizeLinear", ["w8", "w_scale"], ["w"], name="dq"),
              h.make_node("DequantizeLinear", ["w2_8", "w2_scale"], ["w2"], name="dq2")]
    else:
        inits.append(nh.from_array(rng.standard_normal((10, 4)).astype(ft), "w2"))
    if ft is np.float16 and not int8:
        inits.append(nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(ft), "w"))
    if ft is np.float16:
        layer = dq + [h.make_node("Conv", ["x16", "w"], ["c"], pads=[1] * 4, name="conv"),
                 h.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip"),
                 h.make_node("GlobalAveragePool", ["r"], ["p"]), h.make_node("Flatten", ["p"], ["f"])]
    else:     # onnxruntime has no float64 Conv on the CPU: a dense layer
        inits.append(nh.from_array((rng.standard_normal((4, 64)) * 0.3).astype(ft), "w"))
        layer = [h.make_node("Flatten", ["x16"], ["x64"]),
                 h.make_node("Gemm", ["x64", "w"], ["c"], transB=1, name="dense"),
                 h.make_node("Clip", ["c", "lo", "hi"], ["f"], name="clip")]
    body = layer + [h.make_node("Gemm", ["f", "w2"], ["g"], transB=1, name="fc")]
    if layout == "keep_io_types":
        nodes = [h.make_node("Cast", ["x"], ["x16"], to=TP.FLOAT16, name="to16")] + body + \
            [h.make_node("Cast", ["g"], ["y"], to=TP.FLOAT, name="to32")]
    else:
        nodes = [h.make_node("Identity", ["x"], ["x16"])] + body + [h.make_node("Identity", ["g"], ["y"])]
    g = h.make_graph(nodes, "fp16", [h.make_tensor_value_info("x", io, ["N", 1, 8, 8])],
                     [h.make_tensor_value_info("y", io, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 19 if int8 else 13)])   # (float16 scales)
    nm = normalize(m)
    assert any("converted in float32" in n for n in nm.notes), nm.notes
    assert nm.model.graph.input[0].type.tensor_type.elem_type == TP.FLOAT
    x = B.rand_input(64, (1, 8, 8))
    _, _, snn = B.converted(m, x, T=256, method="max")
    dnn = run(m, x.astype(ft) if io != TP.FLOAT else x).outputs[0].astype(np.float32)
    spiking = run(snn.model, x).outputs[0]
    assert np.corrcoef(dnn.ravel(), spiking.ravel())[0, 1] > 0.99


def test_float32_conversion_reaches_nested_graphs_and_type_attributes_only_when_layers_need_it():
    """A float16 model's If body (its constant and outputs) and an EyeLike's dtype are made
    float32 too, so onnxruntime runs the result; a float32 model whose shape arithmetic steps
    through float64 is left as it is (no note; the same output sizes); a float64 weight past
    float32's range is refused, named."""
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float16), "w")
    then = h.make_graph([h.make_node("Add", ["conv", "c"], ["t_out"])], "then", [],
                        [h.make_tensor_value_info("t_out", TP.FLOAT16, ["N", 4, 4, 4])],
                        [nh.from_array(np.array(0.5, np.float16), "c")])
    other = h.make_graph([h.make_node("Identity", ["conv"], ["e_out"])], "else", [],
                         [h.make_tensor_value_info("e_out", TP.FLOAT16, ["N", 4, 4, 4])])
    eye = nh.from_array(rng.standard_normal((64, 64)).astype(np.float16), "sq")
    nodes = [h.make_node("Conv", ["x", "w"], ["conv"], pads=[1] * 4),
             h.make_node("Constant", [], ["cond"], value=nh.from_array(np.array(True))),
             h.make_node("If", ["cond"], ["ifo"], then_branch=then, else_branch=other),
             h.make_node("Relu", ["ifo"], ["r"]), h.make_node("Flatten", ["r"], ["f"]),
             h.make_node("EyeLike", ["sq"], ["e"], dtype=TP.FLOAT16),
             h.make_node("Gemm", ["f", "e"], ["y"])]
    m = h.make_model(h.make_graph(nodes, "nested", [h.make_tensor_value_info("x", TP.FLOAT16, ["N", 1, 4, 4])],
                                  [h.make_tensor_value_info("y", TP.FLOAT16, ["N", 64])], [w, eye]),
                     opset_imports=[h.make_opsetid("", 13)])
    nm = normalize(m)
    assert any("converted in float32" in n for n in nm.notes)
    x = np.ones((1, 1, 4, 4), np.float32)
    out = ort.InferenceSession(nm.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.astype(np.float16)})[0]
    np.testing.assert_allclose(out, ref.astype(np.float32), rtol=1e-2, atol=1e-2)
    # float32 layers, float64 shape arithmetic: ceil(50 * 0.3) is 15 in float64, 16 in float32
    inits = [nh.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             nh.from_array(np.array([2], np.int64), "s0"), nh.from_array(np.array([4], np.int64), "s1"),
             nh.from_array(np.array([0.3], np.float64), "k"), nh.from_array(np.array([1, 4], np.int64), "nc")]
    nodes = [h.make_node("Conv", ["x", "w"], ["conv"], pads=[1] * 4), h.make_node("Relu", ["conv"], ["r"]),
             h.make_node("Shape", ["r"], ["sh"]), h.make_node("Slice", ["sh", "s0", "s1"], ["hw"]),
             h.make_node("Cast", ["hw"], ["hwd"], to=TP.DOUBLE), h.make_node("Mul", ["hwd", "k"], ["hwk"]),
             h.make_node("Ceil", ["hwk"], ["hwf"]), h.make_node("Cast", ["hwf"], ["hwi"], to=TP.INT64),
             h.make_node("Concat", ["nc", "hwi"], ["sizes"], axis=0),
             h.make_node("Resize", ["r", "", "", "sizes"], ["y"], mode="nearest")]
    m = h.make_model(h.make_graph(nodes, "sizes", [h.make_tensor_value_info("x", TP.FLOAT, [1, 1, 50, 50])],
                                  [h.make_tensor_value_info("y", TP.FLOAT, [1, 4, 15, 15])], inits),
                     opset_imports=[h.make_opsetid("", 13)])
    nm = normalize(m)
    assert not any("float32" in n for n in nm.notes)
    x = np.random.default_rng(1).random((1, 1, 50, 50)).astype(np.float32)
    assert run(nm.model, x).outputs[0].shape == (1, 4, 15, 15)
    big = h.make_model(h.make_graph(
        [h.make_node("Gemm", ["x", "wb"], ["g"], transB=1, name="fc"), h.make_node("Relu", ["g"], ["y"])], "big",
        [h.make_tensor_value_info("x", TP.DOUBLE, ["N", 2])], [h.make_tensor_value_info("y", TP.DOUBLE, ["N", 2])],
        [nh.from_array(np.array([[1e300, 0], [0, 1]], np.float64), "wb")]), opset_imports=[h.make_opsetid("", 13)])
    with pytest.raises(UnsupportedModelError, match="'wb'.*beyond float32's range"):
        normalize(big)


@pytest.mark.parametrize("per_axis", [False, True])
def test_weight_only_dequantize_is_folded_to_float_weights(per_axis):
    """DequantizeLinear of a constant int8 weight (weight-only quantization; onnx-graphsurgeon
    does not fold Q/DQ): folded to its float value, per tensor or per output channel; the
    normalized model computes what onnxruntime computes on the original."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, (4, 1, 3, 3)).astype(np.int8)
    scale = (rng.random(4) * 0.02 + 0.001).astype(np.float32) if per_axis else np.array(0.01, np.float32)
    zp = rng.integers(-3, 4, 4).astype(np.int8) if per_axis else np.array(2, np.int8)
    inits = [nh.from_array(wq, "wq"), nh.from_array(scale, "s"), nh.from_array(zp, "zp"),
             nh.from_array(rng.standard_normal((10, 4 * 144)).astype(np.float32), "w2")]
    nodes = [h.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"], axis=0),
             h.make_node("Conv", ["input", "w"], ["c"], pads=[1] * 4), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Flatten", ["r"], ["f"]), h.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    g = h.make_graph(nodes, "dq", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    nm = normalize(m)
    assert "DequantizeLinear" not in ops(nm.model)
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)


def test_model_local_functions_are_inlined():
    """A layer written as a model-local function (a custom domain made of standard ops, as
    onnxscript or the dynamo exporter's modules write it), called twice: inlined, converted
    like the flat model, and the note names it."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    fn = h.make_function("my.layers", "ConvClip", ["x", "w"], ["y"], [
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        h.make_node("Constant", [], ["lo"], value=nh.from_array(np.array(0, np.float32))),
        h.make_node("Constant", [], ["hi"], value=nh.from_array(np.array(2, np.float32))),
        h.make_node("Clip", ["c", "lo", "hi"], ["y"])],
        opset_imports=[h.make_opsetid("", 13)])
    inits = [nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w1"),
             nh.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "w2"),
             nh.from_array(rng.standard_normal((10, 4 * 144)).astype(np.float32), "w3")]
    nodes = [h.make_node("ConvClip", ["input", "w1"], ["a"], domain="my.layers"),
             h.make_node("ConvClip", ["a", "w2"], ["b"], domain="my.layers"),
             h.make_node("Flatten", ["b"], ["f"]), h.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    g = h.make_graph(nodes, "fn", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("my.layers", 1)],
                     functions=[fn])
    nm = normalize(m)
    assert len(nm.sites) == 2 and all(s.mu == 2.0 for s in nm.sites)
    assert any("inlined 1 model-local function" in n and "my.layers.ConvClip" in n for n in nm.notes)
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)


def _old_resize(opset: int, mode: str, scale):
    """conv - relu - Upsample (opset 7-9) or Resize-10 by ``scale`` - conv."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    r = np.random.default_rng(3)
    inits = [nh.from_array(r.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(r.standard_normal((2, 4, 3, 3)).astype(np.float32), "w2"),
             nh.from_array(np.array([1, 1, *scale], np.float32), "sc")]
    op = "Upsample" if opset < 10 else "Resize"
    nodes = [h.make_node("Conv", ["x", "w1"], ["c"], pads=[1] * 4), h.make_node("Relu", ["c"], ["a"]),
             h.make_node(op, ["a", "sc"], ["u"], mode=mode, name="up"),
             h.make_node("Conv", ["u", "w2"], ["y"], pads=[1] * 4)]
    out = [int(np.float32(s) * np.float32(9)) for s in scale]
    g = h.make_graph(nodes, "old", [h.make_tensor_value_info("x", TP.FLOAT, [2, 1, 9, 9])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [2, 2, *out])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 5
    return m


@pytest.mark.parametrize("opset,mode,scale", [
    (9, "linear", (2, 2)), (10, "linear", (2, 3)), (10, "linear", (0.5, 0.7)),
    (9, "nearest", (1.5, 3)), (10, "nearest", (2.5, 2)), (10, "nearest", (0.5, 0.7))])
def test_old_resize_keeps_its_coordinates(opset, mode, scale):
    """Upsample and Resize-10 map x to x / scale (and truncate, or round up when downsampling,
    in nearest mode): the opset upgrade spells that out, so the normalized model computes
    what the original did (it defaulted to half_pixel before)."""
    m = _old_resize(opset, mode, scale)
    x = np.random.default_rng(0).random((2, 1, 9, 9)).astype(np.float32)
    nm = normalize(m)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)


def test_old_nearest_resize_mixing_up_and_down_is_refused():
    with pytest.raises(UnsupportedModelError, match="'up'.*opset 11"):
        normalize(_old_resize(10, "nearest", (2, 0.5)))


def test_old_nearest_resize_with_computed_scales_is_refused():
    """Scales computed in the graph (a Concat of constants here) are folded only after the
    opset upgrade, too late to spell out the old rounding: refused, named."""
    m = _old_resize(10, "nearest", (0.5, 0.7))
    sc = next(t for t in m.graph.initializer if t.name == "sc")
    m.graph.initializer.remove(sc)
    m.graph.node.insert(0, h.make_node("Constant", [], ["lead"], value=onnx.numpy_helper.from_array(
        np.array([1, 1], np.float32))))
    m.graph.node.insert(1, h.make_node("Constant", [], ["tail"], value=onnx.numpy_helper.from_array(
        np.array([0.5, 0.7], np.float32))))
    m.graph.node.insert(2, h.make_node("Concat", ["lead", "tail"], ["sc"], axis=0))
    with pytest.raises(UnsupportedModelError, match="'up'.*computed scales"):
        normalize(m)


# ------------------------------------------------------------------ --pool-first

@pytest.mark.parametrize("opset", [9, 13, 21])
@pytest.mark.parametrize("idiom", ["clip", "relu", "relu_min", "max_min", "clip-global-pool"])
def test_pool_first_moves_max_pools_ahead_of_activations_exactly(opset, idiom):
    m = B.pooled_twin("MaxPool", opset=opset, global_pool=True) if idiom == "clip-global-pool" \
        else B.vgg(opset, idiom, softmax=False)
    x = B.rand_input(16)
    plain, moved = normalize(m), normalize(m, pool_first=True)
    assert plain.pools_moved == 0 and moved.pools_moved == 1
    # the same DNN, bit for bit (max and a monotone clamp commute)
    np.testing.assert_array_equal(run(plain.model, x).outputs[0], run(moved.model, x).outputs[0])
    pool = next(n for n in moved.model.graph.node if n.op_type.endswith("MaxPool"))
    site = next(s for s in moved.sites if s.input == pool.output[0])   # the pool feeds a site
    act = next(n for n in moved.model.graph.node if n.name == site.name)
    assert act.output[0] == site.output and act.input[0] == pool.output[0]
    before = next(s for s in plain.sites if s.name == site.name)
    assert site.mu == before.mu and site.output != before.output


def test_pool_first_leaves_pools_whose_input_is_read_elsewhere():
    m = B.vgg(13, "clip", softmax=False)
    g = m.graph
    pool = next(n for n in g.node if n.op_type == "MaxPool")
    g.output.append(h.make_tensor_value_info(pool.input[0], onnx.TensorProto.FLOAT, ["N", 8, 12, 12]))
    nm = normalize(m, pool_first=True)
    assert nm.pools_moved == 0
    assert any("also a graph output" in n for n in nm.notes)


def test_pool_first_keeps_a_dropout_after_the_moved_activation():
    m = B.vgg(13, "clip", softmax=False, dropout=False)
    g = m.graph
    pool = next(n for n in g.node if n.op_type == "MaxPool")
    g.node.insert(list(g.node).index(pool), h.make_node("Dropout", [pool.input[0]], ["dropped"],
                                                        name="drop"))
    pool.input[0] = "dropped"
    nm = normalize(m, pool_first=True)
    assert nm.pools_moved == 1
    moved = next(s for s in nm.sites if s.output == nm.dropouts[0]["tensor"])
    assert any(n.name == moved.name for n in nm.model.graph.node)


@pytest.mark.parametrize("how", ["read", "graph_output", "second_reader"])
def test_pool_first_leaves_pools_whose_input_is_used_and_refuses_read_indices(how):
    """A pool whose activation another node reads stays where it is. One whose Indices are
    read or output is refused (since 2026-12-07; it stayed, a per-step max of spikes, and the
    PyTorch runtime failed on it): a max of spike counts has no index that holds over the
    steps."""
    from onnx import TensorProto as TP
    m = B.vgg(13, "clip", softmax=False)
    g = m.graph
    pool = next(n for n in g.node if n.op_type == "MaxPool")
    if how == "second_reader":
        g.node.append(h.make_node("Shape", [pool.input[0]], ["act_shape"], name="shape_reader"))
        g.output.append(h.make_tensor_value_info("act_shape", TP.INT64, [4]))
    else:
        pool.output.append("idx")
        if how == "read":
            g.node.append(h.make_node("Cast", ["idx"], ["idx_f"], to=TP.FLOAT, name="idx_cast"))
            g.output.append(h.make_tensor_value_info("idx_f", TP.FLOAT, ["N", 8, 6, 6]))
        else:
            g.output.append(h.make_tensor_value_info("idx", TP.INT64, ["N", 8, 6, 6]))
    if how != "second_reader":
        for first in (True, False):
            with pytest.raises(UnsupportedModelError, match=r"gives the indices of its maxima "
                                                            r"\('idx'\)"):
                normalize(m, pool_first=first)
        return
    nm = normalize(m, pool_first=True)
    assert nm.pools_moved == 0
    assert any("also read by 1 other node" in n for n in nm.notes), nm.notes


def test_a_reshape_to_a_batch_of_one_keeps_the_batch():
    """x.view(1, -1) (a model written for one sample at a time) merged a batch into one row,
    and onnxruntime failed on batches; the converter keeps the batch axis (0), the same at
    batch 1, with a note; eval of such a DNN says what to do."""
    from onnx_snn.convert import prepare
    from onnx_snn.errors import UnsupportedModelError
    from onnx_snn.evaluate import evaluate
    b = B.GraphBuilder(13)
    t = b.act(b.conv("input", 1, 4), "clip")
    t = b.node("Reshape", [t, b.const(np.array([1, -1], np.int64))])
    m = b.model("input", b.gemm(t, 4 * 144, 10), (1, 12, 12), 10)
    nm = prepare(m)
    assert any("keeps the batch axis" in n for n in nm.notes)
    x = B.rand_input(6)
    one_by_one = np.concatenate([run(m, x[i:i + 1]).outputs[0] for i in range(6)])
    np.testing.assert_allclose(run(nm.model, x).outputs[0], one_by_one, atol=1e-6)
    _, _, snn = B.converted(m, x, T=4)                  # and the spiking model runs batches
    assert run(snn.model, x).outputs[0].shape == (6, 10)
    y = one_by_one.argmax(1)
    with pytest.raises(UnsupportedModelError, match=r"batch of 6.*--batch-size 1"):
        evaluate(m, (x, y), show_progress=False)
    assert evaluate(m, (x, y), batch_size=1, show_progress=False).top1 == 100.0


def _with_activation(op: str, opset: int, slope=None, **attrs):
    """conv -> ``op`` (with ``slope`` as PRelu's second input) -> flatten -> dense."""
    b = B.GraphBuilder(opset)
    x = b.conv("input", 1, 4)
    ins = [x] + ([b.const(np.asarray(slope, np.float32))] if slope is not None else [])
    x = b.node(op, ins, **attrs)
    x = b.gemm(b.node("Flatten", [x]), 4 * 144, 10)
    return b.model("input", x, (1, 12, 12), 10)


@pytest.mark.parametrize("opset", [9, 13, 17])
@pytest.mark.parametrize("op,slope,attrs", [
    ("LeakyRelu", None, {"alpha": 0.0}), ("ThresholdedRelu", None, {"alpha": 0.0}),
    ("PRelu", np.zeros((4, 1, 1)), {}), ("PRelu", np.zeros(1), {})])
def test_a_relu_written_with_a_zero_slope_is_a_site(op, slope, attrs, opset):
    """LeakyRelu(alpha=0), PRelu with zero slopes and ThresholdedRelu(alpha=0) are max(x, 0):
    each becomes a Relu site (said in a note) and the converted network is the Relu one's."""
    if op == "ThresholdedRelu" and opset < 10:
        pytest.skip("ThresholdedRelu is an ONNX op from opset 10")
    nm = normalize(_with_activation(op, opset, slope, **attrs))
    assert [s.idiom for s in nm.sites] == ["Relu"]
    assert any(op in n and "is read as a Relu" in n for n in nm.notes)
    x = B.rand_input(16)
    ref = normalize(_with_activation("Relu", opset))
    a = B.converted(nm.model, x, 2, "datta")[2]
    b = B.converted(ref.model, x, 2, "datta")[2]
    from onnx_snn.runtimes.ort import run
    np.testing.assert_array_equal(run(a.model, x).outputs[0], run(b.model, x).outputs[0])


@pytest.mark.parametrize("op,slope,attrs", [
    ("LeakyRelu", None, {"alpha": 0.1}), ("LeakyRelu", None, {}),
    ("ThresholdedRelu", None, {"alpha": 0.5}), ("PRelu", np.array([0.0, 0.0, 0.25, 0.0]).reshape(4, 1, 1), {})])
def test_a_nonzero_slope_stays_a_refused_nonlinearity(op, slope, attrs):
    with pytest.raises(UnsupportedModelError, match=op):
        normalize(_with_activation(op, 13, slope, **attrs))


@pytest.mark.parametrize("opset", [13, 17])
def test_matmul_after_a_computed_flatten_is_a_dense_layer(opset):
    """Keras/tf2onnx flatten: Reshape to [Shape(x)[0], -1], computed. ONNX's Reshape-13
    shape inference gives it no rank, its shape input's length does (2): MatMul + Add is a
    Gemm at every opset (it was left MatMul + Add at opset 13, the bias out of the energy)."""
    b = B.GraphBuilder(opset)
    a = b.node("Relu", [b.conv("input", 1, 4)])
    n = b.node("Gather", [b.node("Shape", [a]), b.const(np.array(0, np.int64))], axis=0)
    shape = b.node("Concat", [b.node("Unsqueeze", [n, b.const(np.array([0], np.int64))]),
                              b.const(np.array([-1], np.int64))], axis=0)
    y = b.gemm(b.node("Reshape", [a, shape]), 4 * 144, 16, matmul=True)
    y = b.gemm(b.act(y, "clip"), 16, 10, matmul=True)      # reads the clip: rank 2 as well
    nm = normalize(b.model("input", y, (1, 12, 12), 10))
    ops = [n.op_type for n in nm.model.graph.node]
    assert ops.count("Gemm") == 2 and "MatMul" not in ops


def test_a_lone_batchnorm_behind_a_computed_flatten_is_folded_at_opset_13():
    """BatchNorm1d after a Keras-style computed flatten: its input's rank (2) comes from the
    Reshape's shape input, so it becomes Mul + Add (it was refused: 'input rank is unknown')."""
    b = B.GraphBuilder(13)
    a = b.node("Relu", [b.conv("input", 1, 4)])
    n = b.node("Gather", [b.node("Shape", [a]), b.const(np.array(0, np.int64))], axis=0)
    shape = b.node("Concat", [b.node("Unsqueeze", [n, b.const(np.array([0], np.int64))]),
                              b.const(np.array([-1], np.int64))], axis=0)
    y = b.bn(b.node("Reshape", [a, shape]), 4 * 144)
    y = b.gemm(b.node("Relu", [y]), 4 * 144, 10)
    model = b.model("input", y, (1, 12, 12), 10)
    nm = normalize(model)
    assert "BatchNormalization" not in [n.op_type for n in nm.model.graph.node]
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(model, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


def test_a_two_class_sigmoid_head_becomes_logits_of_the_same_order():
    """skl2onnx's binary MLPClassifier: p = Sigmoid(z), probabilities = Concat(1 - p, p),
    label = ArgMax of them looked up in the classes. The label head is dropped and [1 - p, p]
    becomes [-z, z] (the Sigmoid was refused as a hidden nonlinearity): at large T the spiking
    model's argmax is the DNN's label."""
    from onnx_snn.convert import prepare
    b = B.GraphBuilder(13)
    z = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 1)
    p = b.node("Sigmoid", [z])
    probs = b.node("Concat", [b.node("Sub", [b.const(np.array([1.0], np.float32)), p]), p], axis=1)
    a = b.node("ArgMax", [probs], axis=1, keepdims=0)
    looked = b.node("ArrayFeatureExtractor", [b.const(np.array([3, 7], np.int64)), a])
    b.nodes[-1].domain = "ai.onnx.ml"
    label = b.node("Cast", [b.node("Reshape", [looked, b.const(np.array([-1], np.int64))])],
                   to=onnx.TensorProto.INT64)
    g = h.make_graph(b.nodes, "skl", [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info(label, onnx.TensorProto.INT64, ["N"]),
                      h.make_tensor_value_info(probs, onnx.TensorProto.FLOAT, ["N", 2])], b.inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("ai.onnx.ml", 1)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    nm = prepare(m)
    assert any("two-class probabilities" in n for n in nm.notes)
    assert "Sigmoid" not in {n.op_type for n in nm.model.graph.node}
    x = B.rand_input(128)
    _, _, snn = B.converted(m, x, T=256, method="max")
    want = run(m, x).outputs
    spiking = run(snn.model, x).outputs[0]
    assert spiking.shape == (128, 2) and np.all(spiking[:, 0] == 0)     # [0, z]: softmax is [1-p, p]
    labels = want[0] if want[0].dtype.kind == "i" else want[1]
    assert set(labels.tolist()) == {3, 7}                  # both classes occur
    assert np.mean(np.array([3, 7])[spiking.argmax(1)] == labels) >= 0.95


def _masked(branches: str, opset: int = 13) -> onnx.ModelProto:
    """conv-relu, a Where of its output by a constant mask (``branches``: 'fill0' =
    masked_fill with 0, 'fill' = with 1.5, 'two' = two data branches, 'computed' = a mask
    compared from the data), conv-relu, pool, dense."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(3)
    mask = rng.random((1, 4, 6, 6)) < 0.3
    inits = [nh.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * .3, "w2"),
             nh.from_array(rng.standard_normal((10, 4)).astype(np.float32), "w3"),
             nh.from_array(mask, "m"), nh.from_array(np.array(0, np.float32), "zero"),
             nh.from_array(np.array(1.5, np.float32), "fill"),
             nh.from_array(np.array(0.5, np.float32), "half")]
    nodes = [h.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4),
             h.make_node("Relu", ["c1"], ["a"])]
    if branches == "fill0":
        nodes.append(h.make_node("Where", ["m", "zero", "a"], ["b"], name="sel"))
    elif branches == "fill":
        nodes.append(h.make_node("Where", ["m", "a", "fill"], ["b"], name="sel"))
    elif branches == "two":
        nodes += [h.make_node("AveragePool", ["a"], ["p"], kernel_shape=[3, 3], pads=[1] * 4),
                  h.make_node("Where", ["m", "a", "p"], ["b"], name="sel")]
    else:
        nodes += [h.make_node("Greater", ["a", "half"], ["gt"], name="cmp"),
                  h.make_node("Where", ["gt", "a", "zero"], ["b"], name="sel")]
    nodes += [h.make_node("Conv", ["b", "w2"], ["c2"], pads=[1] * 4),
              h.make_node("Relu", ["c2"], ["r"]), h.make_node("GlobalAveragePool", ["r"], ["g"]),
              h.make_node("Flatten", ["g"], ["f"]), h.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    g = h.make_graph(nodes, "masked", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("branches", ["fill0", "fill", "two"])
def test_a_where_of_a_constant_mask_becomes_a_masked_multiplication(branches):
    """Where(constant mask, a, b) is linear in a and b: the normalized model has no Where,
    computes the source's outputs, and its spiking network runs alike in both runtimes."""
    from onnx_snn.runtimes.ort import run
    m = _masked(branches)
    nm = normalize(m)
    assert "Where" not in {n.op_type for n in nm.model.graph.node}
    assert "Mul" in {n.op_type for n in nm.model.graph.node}
    x = B.rand_input(5, (1, 6, 6))
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0],
                               rtol=1e-6, atol=1e-6)
    _, _, snn = B.converted(m, x, T=3)
    B.assert_runtimes_agree(snn.model, x)


def test_a_where_of_a_computed_mask_is_refused_naming_it():
    """A mask compared from the data makes the Where nonlinear: refused, the first node of
    it named."""
    with pytest.raises(UnsupportedModelError, match="node '(cmp|sel)'"):
        normalize(_masked("computed"))


def _split_net(form: str, opset: int) -> onnx.ModelProto:
    """conv-clip (12 channels), a Split along the channels of which only some parts are
    read, global pool, dense. ``form``: 'equal' (no sizes, 2 parts, the last unused),
    'sizes' (3 parts, the middle one unused), 'num_outputs' (opset 18, 2 parts, the last
    unused)."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(4)
    inits = [nh.from_array(rng.standard_normal((12, 1, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(np.array(0, np.float32), "lo"), nh.from_array(np.array(2, np.float32), "hi")]
    attrs = {"axis": 1}
    if form == "sizes":
        outs, read = ["p", "q", "r"], ["p", "r"]
        if opset >= 13:
            inits.append(nh.from_array(np.array([4, 2, 6], np.int64), "parts"))
            ins = ["a", "parts"]
        else:
            ins, attrs["split"] = ["a"], [4, 2, 6]
    else:
        outs, read, ins = ["p", "q"], ["p"], ["a"]
        if form == "num_outputs":
            attrs["num_outputs"] = 2
    width = 10 if form == "sizes" else 6
    inits.append(nh.from_array(rng.standard_normal((10, width)).astype(np.float32), "w2"))
    nodes = [h.make_node("Conv", ["input", "w1"], ["c"], pads=[1] * 4),
             h.make_node("Clip", ["c", "lo", "hi"], ["a"]),
             h.make_node("Split", ins, outs, name="cut", **attrs)]
    if len(read) > 1:
        nodes.append(h.make_node("Concat", read, ["kept"], axis=1))
    nodes += [h.make_node("GlobalAveragePool", ["kept" if len(read) > 1 else read[0]], ["g"]),
              h.make_node("Flatten", ["g"], ["f"]), h.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    g = h.make_graph(nodes, "split", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("form,opset", [("equal", 13), ("sizes", 11), ("sizes", 13),
                                        ("num_outputs", 18)])
def test_a_split_keeps_its_unread_parts(form, opset):
    """A Split's outputs are its parts by position: one nobody reads stays (dropping it cut
    the tensor in fewer parts, or moved the next part into its place), so the normalized DNN
    computes the source's outputs, and the spiking network runs alike in both runtimes."""
    from onnx_snn.runtimes.ort import run
    m = _split_net(form, opset)
    nm = normalize(m)
    cut = next(n for n in nm.model.graph.node if n.op_type == "Split")
    assert len(cut.output) == (3 if form == "sizes" else 2)
    x = B.rand_input(4, (1, 6, 6))
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-6, atol=1e-6)
    _, _, snn = B.converted(m, x, T=2)
    B.assert_runtimes_agree(snn.model, x)


def test_mean_of_activations_is_a_scaled_sum():
    """Mean(a, b) is (a + b) / 2: written as a Sum (then Adds) and a Mul by 1/2."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    from onnx_snn.runtimes.ort import run
    rng = np.random.default_rng(6)
    inits = [nh.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * .3, "w2"),
             nh.from_array(rng.standard_normal((10, 4)).astype(np.float32), "w3")]
    nodes = [h.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4), h.make_node("Relu", ["c1"], ["a"]),
             h.make_node("Conv", ["a", "w2"], ["c2"], pads=[1] * 4), h.make_node("Relu", ["c2"], ["b"]),
             h.make_node("Mean", ["a", "b"], ["m"], name="avg"),
             h.make_node("GlobalAveragePool", ["m"], ["g"]), h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    g = h.make_graph(nodes, "mean", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    nm = normalize(m)
    assert "Mean" not in ops(nm.model)
    x = B.rand_input(4, (1, 6, 6))
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-6)
    _, _, snn = B.converted(m, x, T=2)
    B.assert_runtimes_agree(snn.model, x)


@pytest.mark.parametrize("case", ["neg-inf-fill", "wider-zero-fill"])
def test_where_fills_that_are_no_mask_product(case):
    """A fill of -inf (masked_fill before a max) is no product with a mask: refused, named.
    A zero constant branch wider than the mask and the data widens the output: kept."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    from onnx_snn.runtimes.ort import run
    rng = np.random.default_rng(8)
    mask = rng.random((1, 1, 6, 6)) < 0.3
    fill = np.array(-np.inf, np.float32) if case == "neg-inf-fill" else np.zeros((1, 3, 6, 6), np.float32)
    inits = [nh.from_array(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(mask, "m"), nh.from_array(fill, "fill"),
             nh.from_array(rng.standard_normal((10, 3)).astype(np.float32), "w3")]
    nodes = [h.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4), h.make_node("Relu", ["c1"], ["a"]),
             h.make_node("Where", ["m", "fill", "a"], ["b"], name="sel"),
             h.make_node("MaxPool", ["b"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("GlobalAveragePool", ["p"], ["g"]), h.make_node("Flatten", ["g"], ["f"])]
    if case == "wider-zero-fill":
        nodes.append(h.make_node("Gemm", ["f", "w3"], ["y"], transB=1))
    else:
        inits[-1] = nh.from_array(rng.standard_normal((10, 1)).astype(np.float32), "w3")
        nodes.append(h.make_node("Gemm", ["f", "w3"], ["y"], transB=1))
    g = h.make_graph(nodes, "fills", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    if case == "neg-inf-fill":
        with pytest.raises(UnsupportedModelError, match="'sel'"):
            normalize(m)
        return
    nm = normalize(m)
    x = B.rand_input(4, (1, 6, 6))
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-6, atol=1e-6)


def test_nodes_listed_out_of_order_are_sorted_and_convert_alike(tmp_path):
    """onnxruntime runs a graph whose nodes are listed out of order (a hand-built or edited
    file); the converter sorts them (a note says so) and converts it as the sorted file,
    without changing the caller's model."""
    import onnx_snn
    m = B.vgg(13, "clip")
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(m)
    nodes = list(shuffled.graph.node)
    rev = [onnx.NodeProto() for _ in nodes]
    for r, n in zip(rev, reversed(nodes)):
        r.CopyFrom(n)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(rev)
    before = shuffled.SerializeToString()
    x = B.rand_input(8)
    a = onnx_snn.convert(m, x, timesteps=2, method="datta", show_progress=False)
    b = onnx_snn.convert(shuffled, x, timesteps=2, method="datta", show_progress=False)
    assert shuffled.SerializeToString() == before
    assert any("sorted the graph's nodes topologically" in n for n in b.report["notes"])
    assert not any("topologically" in n for n in a.report["notes"])
    np.testing.assert_array_equal(run(a.model, x).outputs[0], run(b.model, x).outputs[0])
    # from a file (sorted in place, no copy): the same, and the file is not changed
    path = tmp_path / "shuffled.onnx"
    onnx.save(shuffled, str(path))
    data = path.read_bytes()
    c = onnx_snn.convert(str(path), x, timesteps=2, method="datta", show_progress=False)
    assert path.read_bytes() == data
    np.testing.assert_array_equal(run(a.model, x).outputs[0], run(c.model, x).outputs[0])


def _masked_relu(form: str, opset: int, zero=0.0):
    """conv -> a ReLU written with a mask (``form``) -> flatten -> dense."""
    b = B.GraphBuilder(opset)
    x = b.conv("input", 1, 4)
    z = b.const(np.array(zero, np.float32))
    if form == "where_gt":                 # torch.where(x > 0, x, 0)
        y = b.node("Where", [b.node("Greater", [x, z]), x, z])
    elif form == "where_ge_zero_first":    # where(0 <= x, x, 0)
        y = b.node("Where", [b.node("LessOrEqual", [z, x]), x, z])
    elif form == "where_lt":               # where(x < 0, 0, x)
        y = b.node("Where", [b.node("Less", [x, z]), z, x])
    elif form == "mul_cast":               # x * (x > 0).float()
        y = b.node("Mul", [b.node("Cast", [b.node("Greater", [x, z])], to=1), x])
    elif form == "where_swapped":          # where(x > 0, 0, x): min(x, 0), not a ReLU
        y = b.node("Where", [b.node("Greater", [x, z]), z, x])
    elif form == "where_zero_slope":       # torch.where(x > 0, x, 0 * x): a ReLU
        y = b.node("Where", [b.node("Greater", [x, z]), x,
                             b.node("Mul", [x, b.const(np.array(0.0, np.float32))])])
    elif form == "where_leaky":            # torch.where(x > 0, x, 0.1 * x): a leaky ReLU
        y = b.node("Where", [b.node("Greater", [x, z]), x,
                             b.node("Mul", [x, b.const(np.array(0.1, np.float32))])])
    elif form == "where_lt_leaky":         # where(x < 0, x * 0.25, x)
        y = b.node("Where", [b.node("Less", [x, z]),
                             b.node("Mul", [b.const(np.array([0.25], np.float32)), x]), x])
    y = b.gemm(b.node("Flatten", [y]), 4 * 144, 10)
    return b.model("input", y, (1, 12, 12), 10)


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("form", ["where_gt", "where_ge_zero_first", "where_lt", "mul_cast",
                                  "where_zero_slope"])
def test_a_relu_written_with_a_mask_is_a_site(form, opset):
    """Where(x > 0, x, 0), Where(0 <= x, x, 0), Where(x < 0, 0, x) and x * Cast(x > 0) are
    max(x, 0): each becomes a Relu site (said in a note), the normalized model computes what
    the source does, and the converted network is the Relu one's."""
    m = _masked_relu(form, opset)
    nm = normalize(m)
    assert [s.idiom for s in nm.sites] == ["Relu"]
    assert any("a ReLU written with a mask" in n for n in nm.notes)
    assert not {"Where", "Greater", "Less", "LessOrEqual", "Cast", "Mul"} & set(ops(nm.model))
    x = B.rand_input(16)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)
    ref = normalize(_with_activation("Relu", opset))
    a = B.converted(nm.model, x, 2, "datta")[2]
    b = B.converted(ref.model, x, 2, "datta")[2]
    np.testing.assert_array_equal(run(a.model, x).outputs[0], run(b.model, x).outputs[0])


@pytest.mark.parametrize("form,zero", [("where_swapped", 0.0), ("where_gt", 0.5)])
def test_a_mask_that_is_not_a_relu_stays_refused(form, zero):
    """Where(x > 0, 0, x) is min(x, 0), and a test against 0.5 is no ReLU: neither becomes a
    site (the model has no other activation, so it is refused as having none)."""
    with pytest.raises(UnsupportedModelError, match="no ReLU-type activation"):
        normalize(_masked_relu(form, 13, zero))


@pytest.mark.parametrize("form,slope", [("where_leaky", 0.1), ("where_lt_leaky", 0.25)])
def test_a_leaky_relu_written_with_a_mask_is_refused_as_one(form, slope):
    """Where(x > 0, x, a * x) is a LeakyRelu of slope a: refused by that name (it was refused
    at its Greater, 'compares the data (a thresholded ReLU ...)', saying nothing of what the
    layer is), and the normalized graph computes what the source does."""
    m = _masked_relu(form, 13)
    with pytest.raises(UnsupportedModelError) as e:
        normalize(m)
    msg = str(e.value)
    assert "(LeakyRelu) is a nonlinearity" in msg, msg
    assert f"a leaky ReLU of slope {slope:g} written as Where(x " + \
        (">" if form == "where_leaky" else "<") in msg, msg
    import onnx_graphsurgeon as gs
    from onnx_snn.graph import canonical
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(m))
    canonical.masked_relu_to_relu(graph)
    out = gs.export_onnx(graph)
    assert ops(out).count("LeakyRelu") == 1 and "Where" not in ops(out)
    x = B.rand_input(8)
    np.testing.assert_allclose(run(out, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-6)


def _with_stale_shapes(intermediate: bool, output: bool) -> onnx.ModelProto:
    """The VGG builder's model with shape annotations the graph does not compute (onnxruntime
    runs it: it does not enforce them)."""
    m = B.vgg(13, "clip", softmax=False)
    acts = [n.output[0] for n in m.graph.node if n.op_type == "Clip"]
    if intermediate:          # the first activation is [N, 4, 12, 12]
        m.graph.value_info.append(h.make_tensor_value_info(acts[0], onnx.TensorProto.FLOAT, ["N", 4, 13, 11]))
    if output:                # the output is [N, 10]
        m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 11
    return m


@pytest.mark.parametrize("intermediate,output", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("method", ["datta", "refined"])
def test_stale_shape_annotations_are_recomputed(intermediate, output, method):
    m = _with_stale_shapes(intermediate, output)
    x = B.rand_input(32)
    ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    nm = onnx_snn.prepare(m)
    assert any("declared [N, 11] but the graph computes [N, 10]" in n for n in nm.notes) == output
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    snn = onnx_snn.build(nm, cal, 2, method)
    out = snn.model.graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in out.dim][1] == 10
    r = run(snn.model, x)
    assert r.outputs[0].shape == (32, 10)
    B.assert_runtimes_agree(snn.model, x)


def test_a_fitting_output_declaration_keeps_its_named_dimensions():
    m = B.vgg(13, "clip", softmax=False)
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    nm = normalize(m)
    dims = nm.model.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 10
    assert not any("declared" in n for n in nm.notes)


def test_fitting_shape_annotations_are_kept_for_folding():
    """A producer's value_info that fits the graph stays: a second dynamic reshape whose shape
    is computed from the first one's output folds with it (plain inference gives no dims
    there), as tf2onnx exports flatten layers."""
    rng = np.random.default_rng(0)
    ints = {"i0": 0, "i1": 1}
    inits = [nh.from_array(rng.normal(0, .3, (4, 1, 3, 3)).astype(np.float32), "W"),
             nh.from_array(rng.normal(0, .1, (10, 576)).astype(np.float32), "F1"),
             nh.from_array(rng.normal(0, .1, (10, 10)).astype(np.float32), "F2"),
             nh.from_array(np.array([-1], np.int64), "m1"), nh.from_array(np.array([0], np.int64), "ax0")] + \
        [nh.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Shape", ["r"], ["s"]), h.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             h.make_node("Unsqueeze", ["n", "ax0"], ["nu"]), h.make_node("Concat", ["nu", "m1"], ["shp"], axis=0),
             h.make_node("Reshape", ["r", "shp"], ["flat"]),
             h.make_node("Shape", ["flat"], ["s2"]), h.make_node("Gather", ["s2", "i1"], ["k"], axis=0),
             h.make_node("Unsqueeze", ["k", "ax0"], ["ku"]), h.make_node("Concat", ["m1", "ku"], ["shp2"], axis=0),
             h.make_node("Reshape", ["flat", "shp2"], ["flat2"]),
             h.make_node("Gemm", ["flat2", "F1"], ["g"], transB=1), h.make_node("Relu", ["g"], ["gr"]),
             h.make_node("Gemm", ["gr", "F2"], ["y"], transB=1)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.graph.value_info.extend([h.make_tensor_value_info("flat", onnx.TensorProto.FLOAT, ["N", 576]),
                               h.make_tensor_value_info("flat2", onnx.TensorProto.FLOAT, ["N", 576])])
    nm = normalize(m)
    assert ops(nm.model).count("Shape") == 1       # the second chain folded
    x = rng.random((8, 1, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run(m, x).outputs[0], run(nm.model, x).outputs[0], rtol=1e-5, atol=1e-5)


def test_convert_takes_outputs_as_a_name_or_a_list_and_checks_them():
    from onnx_snn.errors import UsageError
    m, logits = _two_heads()
    x = B.rand_input(16)
    snn = onnx_snn.convert(m, x, 2, "datta", outputs=logits, show_progress=False)
    assert snn.model.graph.output[0].name == logits
    assert "side" not in {o.name for o in snn.model.graph.output}
    for bad, why in ((3, "not int"), ([logits, 3], "not 3")):
        with pytest.raises(UsageError, match=why):
            onnx_snn.convert(m, x, 2, "datta", outputs=bad, show_progress=False)


def test_a_recurrent_layer_and_a_gate_are_refused_saying_what_to_do():
    """An LSTM (or GRU, RNN) is named a recurrent layer with a way out; a squeeze-and-
    excitation gate whose activation is already a ReLU6 (x * relu6(fc(pool(x)))) is named
    as the gate it is, to be removed from the DNN (both said only "not supported" or
    "multiplies two data tensors")."""
    b = B.GraphBuilder(13)
    a = b.act(b.conv("input", 1, 4), "clip", 6.0)
    seq = b.node("Reshape", [a, b.const(np.array([0, 4, 144], np.int64))])
    x = b.node("Transpose", [seq], perm=[2, 0, 1])                       # [144, N, 4]
    rng = np.random.default_rng(0)
    y = b.node("LSTM", [x, b.const(rng.standard_normal((1, 32, 4)).astype(np.float32)),
                        b.const(rng.standard_normal((1, 32, 8)).astype(np.float32))],
               hidden_size=8)
    m = b.model("input", b.gemm(b.node("Flatten", [b.node("ReduceMean", [y], axes=[0], keepdims=0)]),
                                8, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(LSTM\).*recurrent layer.*Conv1d"):
        normalize(m)
    b = B.GraphBuilder(13)
    a = b.act(b.conv("input", 1, 4), "clip", 6.0)
    gate = b.act(b.conv(b.node("GlobalAveragePool", [a]), 4, 4, k=1, pad=0), "clip", 6.0)
    y = b.node("Mul", [a, gate])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Mul\).*squeeze-and-excitation.*retrain"):
        normalize(m)
    # with a sigmoid gate (timm's SE), the sigmoid is named first: the advice is to remove
    # the gate, not to replace the sigmoid by a ReLU (which would leave the product refused)
    b = B.GraphBuilder(13)
    a = b.act(b.conv("input", 1, 4), "clip", 6.0)
    g = b.node("Sigmoid", [b.conv(b.node("GlobalAveragePool", [a]), 4, 4, k=1, pad=0)])
    y = b.node("Mul", [a, b.node("Expand", [g, b.const(np.array([1, 4, 12, 12], np.int64))])])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Sigmoid\).*it gates node .*\(Mul\).*"
                                                    r"without the gate"):
        onnx_snn.convert(m, B.rand_input(4, (1, 12, 12)), 2, "datta", show_progress=False)
    # a sigmoid that gates nothing, or only its own input (SiLU, x * sigmoid(x); a GELU
    # written out, x * (1 + erf(x / c)) / 2), keeps the advice to replace it
    for gelu in (False, True):
        for gated in (False, True):
            b = B.GraphBuilder(13)
            c = b.conv("input", 1, 4)
            if gelu:
                e = b.node("Erf", [b.node("Div", [c, b.const(np.float32(1.41))])])
                a = b.node("Mul", [b.node("Mul", [c, b.const(np.float32(0.5))]),
                                   b.node("Add", [e, b.const(np.float32(1.0))])])
            else:
                a = b.node("Sigmoid", [c])
                a = b.node("Mul", [c, a]) if gated else a
            m = b.model("input", b.gemm(b.node("Flatten", [a]), 4 * 144, 10), (1, 12, 12), 10)
            with pytest.raises(UnsupportedModelError, match=r"replace it in the DNN") as e:
                onnx_snn.convert(m, B.rand_input(4, (1, 12, 12)), 2, "datta", show_progress=False)
            assert "gates" not in str(e.value), (gelu, gated, str(e.value)[:300])


def test_an_activation_before_a_gated_block_is_named_as_an_activation_not_a_gate():
    """MobileNetV3 at opset 14+: the stem's HardSwish feeds a convolution whose output a
    squeeze-and-excitation block gates later. It is the gated data, not the gate: the advice
    is to replace the activation, not to retrain without a gate it is not."""
    b = B.GraphBuilder(17)
    a = b.node("HardSwish", [b.conv("input", 1, 4)])
    x = b.act(b.conv(a, 4, 4), "relu")
    g = b.node("HardSigmoid", [b.conv(b.node("GlobalAveragePool", [x]), 4, 4, k=1, pad=0)])
    y = b.node("Mul", [x, g])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(HardSwish\).*replace it in the DNN") as e:
        normalize(m)
    assert "gates" not in str(e.value), str(e.value)[:300]


@pytest.mark.parametrize("between", ["Resize", "Slice", "Expand"])
def test_a_gate_is_found_through_resizes_and_slices(between):
    """Attention U-Net upsamples its sigmoid gate before the product; a gate may be sliced to
    the data's channels: the walk from the sigmoid passes them (it stops only at a layer with
    weights), so the advice is to remove the gate, not to replace the sigmoid."""
    b = B.GraphBuilder(17)
    x = b.act(b.conv("input", 1, 4), "relu")
    if between == "Resize":
        g = b.node("Sigmoid", [b.conv(b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2]),
                                      4, 4, k=1, pad=0)])
        g = b.node("Resize", [g, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    elif between == "Slice":
        g = b.node("Sigmoid", [b.conv(x, 4, 8, k=1, pad=0)])
        g = b.node("Slice", [g, b.const(np.array([0], np.int64)), b.const(np.array([4], np.int64)),
                             b.const(np.array([1], np.int64))])
    else:
        g = b.node("Sigmoid", [b.conv(b.node("GlobalAveragePool", [x]), 4, 4, k=1, pad=0)])
        g = b.node("Expand", [g, b.const(np.array([1, 4, 12, 12], np.int64))])
    y = b.node("Mul", [x, g])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Sigmoid\).*it gates node .*\(Mul\).*"
                                                    r"without the gate"):
        normalize(m)


@pytest.mark.parametrize("op", ["RandomNormal", "RandomUniformLike", "Bernoulli"])
def test_a_node_that_draws_random_numbers_is_refused_not_frozen(op):
    """Noise injection in the exported graph: constant folding would freeze one draw of it
    into the converted model, silently another function. It is refused, named."""
    b = B.GraphBuilder(17)
    x = b.act(b.conv("input", 1, 4), "relu")
    if op == "RandomNormal":
        noise = b.node(op, [], shape=[1, 4, 12, 12], scale=0.1)
    elif op == "RandomUniformLike":
        noise = b.node(op, [b.const(np.zeros((1, 4, 12, 12), np.float32))], low=0.0, high=0.1)
    else:
        noise = b.node(op, [b.const(np.full((1, 4, 12, 12), 0.5, np.float32))])
    y = b.node("Add", [x, noise])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=rf"\({op}\) draws new random numbers.*eval mode"):
        normalize(m)


def test_a_layer_is_named_before_shape_arithmetic_that_a_free_batch_keeps():
    """PyTorch's legacy export of ``t.expand(x.size(0), -1, -1)`` computes the size with
    Equal and Where on Shape(x) (a vision transformer's class token): with a free batch it
    does not fold. A refused layer after it (here a LayerNormalization) is what the user has
    to change, so it is named; where none is, the shape arithmetic is named with what to do."""
    for layer in (True, False):
        b = B.GraphBuilder(17)
        c = b.act(b.conv("input", 1, 4), "relu")
        shape = b.node("Shape", ["input"])
        want = b.node("Concat", [b.node("Gather", [shape, b.const(np.array([0], np.int64))], axis=0),
                                 b.const(np.array([-1, -1, -1], np.int64))], axis=0)
        size = b.node("Where", [b.node("Equal", [want, b.const(np.array(-1, np.int64))]),
                                b.const(np.array([1, 1, 1, 1], np.int64)), want])
        bias = b.node("Expand", [b.const(np.zeros((1, 4, 12, 12), np.float32)), size])
        y = b.node("Add", [c, bias])
        if layer:
            y = b.node("LayerNormalization", [y, b.const(np.ones(12, np.float32)),
                                              b.const(np.zeros(12, np.float32))], axis=-1)
        m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
        with pytest.raises(UnsupportedModelError) as e:
            normalize(m)
        msg = str(e.value)
        if layer:
            assert "(LayerNormalization)" in msg and "(Equal)" not in msg, msg[:300]
        else:
            assert "(Equal)" in msg and "shape arithmetic" in msg and "fixed input sizes" in msg, msg[:300]


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_a_scalar_from_a_computed_shape_is_folded_into_the_data_path(opset):
    """``y = x.view(x.size(0), -1); y / sqrt(y.size(1))``: plain shape inference leaves the
    view's width symbolic, so the scale stayed a Shape -> Gather -> Cast -> Sqrt chain and
    the Sqrt was refused as a nonlinearity. With data propagation it is a constant: the
    model converts, and computes what the DNN does."""
    b = B.GraphBuilder(opset)
    a = b.node("Relu", [b.conv("input", 1, 4)])
    n = b.node("Gather", [b.node("Shape", [a]), b.const(np.array(0, np.int64))], axis=0)
    unsq = (b.node("Unsqueeze", [n], axes=[0]) if opset < 13
            else b.node("Unsqueeze", [n, b.const(np.array([0], np.int64))]))
    shape = b.node("Concat", [unsq, b.const(np.array([-1], np.int64))], axis=0)
    y = b.node("Reshape", [a, shape])
    width = b.node("Gather", [b.node("Shape", [y]), b.const(np.array(1, np.int64))], axis=0)
    scale = b.node("Sqrt", [b.node("Cast", [width], to=onnx.TensorProto.FLOAT)])
    out = b.gemm(b.node("Div", [y, scale]), 4 * 144, 10)
    model = b.model("input", out, (1, 12, 12), 10)
    nm = normalize(model)
    assert "Sqrt" not in ops(nm.model)
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(model, x).outputs[0],
                               rtol=1e-5, atol=1e-5)
    B.assert_runtimes_agree(B.converted(model, x)[2].model, x)


def test_attention_behind_a_computed_reshape_is_named_as_a_product_of_data():
    """A head's ``q @ k^T / sqrt(d)`` with d read from a computed reshape: the refusal names
    the product of two data tensors (attention), not the Sqrt of the shape as a
    normalization's nonlinearity."""
    b = B.GraphBuilder(13)
    a = b.node("Relu", [b.conv("input", 1, 4)])
    n = b.node("Gather", [b.node("Shape", [a]), b.const(np.array(0, np.int64))], axis=0)
    shape = b.node("Concat", [b.node("Unsqueeze", [n, b.const(np.array([0], np.int64))]),
                              b.const(np.array([4, -1], np.int64))], axis=0)
    q = b.node("Reshape", [a, shape])                                # [N, 4, 144]
    d = b.node("Gather", [b.node("Shape", [q]), b.const(np.array(2, np.int64))], axis=0)
    scaled = b.node("Div", [q, b.node("Sqrt", [b.node("Cast", [d], to=onnx.TensorProto.FLOAT)])])
    scores = b.node("MatMul", [scaled, b.node("Transpose", [q], perm=[0, 2, 1])])
    out = b.gemm(b.node("Flatten", [scores]), 16, 10)
    with pytest.raises(UnsupportedModelError, match="MatMul.*two data tensors"):
        normalize(b.model("input", out, (1, 12, 12), 10))


def test_a_refused_node_is_named_with_the_module_the_exporter_recorded():
    """torch.onnx's dynamo exporter names nodes ``node_MatMul_80``; the module it came from
    is in the node's ``namespace`` metadata, and the refusal names it."""
    b = B.GraphBuilder(13)
    a = b.node("Relu", [b.conv("input", 1, 4)])
    y = b.node("Mul", [a, a])
    b.nodes[-1].metadata_props.add(
        key="namespace", value=": __main__.Net/head: __main__.Gate/head.se: torch.nn.modules."
                               "container.Sequential/mul: aten.mul.Tensor")
    out = b.gemm(b.node("Flatten", [y]), 4 * 144, 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Mul, in 'head.se' \(Sequential\)\)"):
        normalize(b.model("input", out, (1, 12, 12), 10))


def test_source_scope_reads_the_innermost_module():
    from onnx_snn.graph.ir import source_scope
    assert source_scope({"namespace": ": a.Net/enc: x.Encoder/enc.attn: torch.nn.MultiheadAttention/"
                                      "f: aten.mm.default"}) == "'enc.attn' (MultiheadAttention)"
    assert source_scope({"namespace": ": a.Net"}) is None      # the root has no name
    assert source_scope({}) is None


@pytest.mark.parametrize("alpha, beta", [(1 / 6, 0.0), (0.2, 0.5), (1.0, 0.25)])
def test_a_hard_sigmoid_is_a_clipped_relu(alpha, beta):
    """clip(a x + b, 0, 1) = a clip(x + b/a, 0, 1/a): Keras's hard_sigmoid and relu6(x)/6
    written as a HardSigmoid become sites of mu 1/a (they were refused as a nonlinearity to
    replace and retrain), computing the same function; a HardSigmoid that multiplies its
    own input (HardSwish) is still refused."""
    def net(swish=False):
        b = B.GraphBuilder(13)
        x = b.conv("input", 1, 4)
        y = b.node("HardSigmoid", [x], alpha=alpha, beta=beta)
        if swish:
            y = b.node("Mul", [x, y])
        y = b.node("HardSigmoid", [b.conv(y, 4, 4)], alpha=alpha, beta=beta)
        return b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    m = net()
    nm = normalize(m)
    assert [s.mu for s in nm.sites] == [pytest.approx(1 / alpha)] * 2
    assert "HardSigmoid" not in ops(nm.model)
    x = B.rand_input(16)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0],
                               rtol=1e-4, atol=1e-4)
    B.assert_runtimes_agree(B.converted(m, x, T=4)[2].model, x)
    with pytest.raises(UnsupportedModelError, match=r"HardSigmoid.*cannot express \(it multiplies "
                                                    r"its own input: .* is a HardSwish"):
        normalize(net(swish=True))


@pytest.mark.parametrize("form", ["tcl", "hardtanh", "hardtanh_sub", "other_top", "negative"])
def test_a_clamp_written_with_two_relus_is_one_site(form):
    """TCL's trainable clipping layer (up - relu(up - relu(x)), its threshold a [1] tensor)
    and a hard-tanh from ReLUs (relu(x) - relu(x - c)) were two spiking layers, the second
    fed by the first's spikes: each is one clipped ReLU of mu c now, the same function. With
    two different constants, or c <= 0, they are not a clamp and stay as they were."""
    b = B.GraphBuilder(13)
    x0 = b.conv("input", 1, 4)
    c = -2.0 if form == "negative" else 2.0
    if form in ("tcl", "other_top", "negative"):
        up = b.const(np.array([c], np.float32))
        inner = b.const(np.array([3.0], np.float32)) if form == "other_top" else up
        x = b.node("Sub", [up, b.node("Relu", [b.node("Sub", [inner, b.node("Relu", [x0])])])])
    else:
        shifted = (b.node("Sub", [x0, b.const(np.array(c, np.float32))]) if form == "hardtanh_sub"
                   else b.node("Add", [x0, b.const(np.array(-c, np.float32))]))
        x = b.node("Sub", [b.node("Relu", [x0]), b.node("Relu", [shifted])])
    x = b.node("Clip", [b.conv(x, 4, 4), b.const(np.array(0, np.float32)), b.const(np.array(1, np.float32))])
    m = b.model("input", b.gemm(b.node("Flatten", [x]), 4 * 144, 10), (1, 12, 12), 10)
    nm = normalize(m)
    if form in ("other_top", "negative"):
        assert len(nm.sites) == 3 and not any("two ReLUs" in n for n in nm.notes)
        return
    assert [s.mu for s in nm.sites] == [pytest.approx(2.0), pytest.approx(1.0)]
    assert any(n.startswith("clamps written with two ReLUs read as one clipped ReLU") for n in nm.notes)
    x = B.rand_input(16)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)


def test_a_clamp_of_two_relus_keeps_a_constants_broadcast_rank():
    """relu(g) - relu(g - c) with c of shape [1, 1, 1] on a 2-D tensor broadcasts to 3-D: no
    clamp of g's shape, so it is left (a rewrite to a 0-d clip changed the output's shape)."""
    b = B.GraphBuilder(13)
    g = b.gemm(b.node("Flatten", [b.node("Relu", [b.conv("input", 1, 2)])]), 2 * 144, 10)
    c = b.const(np.full((1, 1, 1), 2.0, np.float32))
    x = b.node("Sub", [b.node("Relu", [g]), b.node("Relu", [b.node("Sub", [g, c])])])
    m = b.model("input", b.node("Flatten", [x]), (1, 12, 12), 10)
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 10
    x0 = B.rand_input(3)
    want = run(m, x0).outputs[0]
    assert want.shape == (1, 30)
    nm = normalize(m)
    assert not any("two ReLUs" in n for n in nm.notes)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_a_max_of_two_branches_is_refused_naming_both(op):
    b = B.GraphBuilder(13)
    x = b.node("Relu", [b.conv("input", 1, 4)])
    y1, y2 = (b.node("Relu", [b.conv(x, 4, 4)]) for _ in range(2))
    y = b.node(op, [y1, y2])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=rf"\({op}\) takes the elementwise "
                                                    rf"{op.lower()}imum of '{y1}', '{y2}'.*Add or a Concat"):
        normalize(m)


@pytest.mark.parametrize("alpha", [0.0, -0.2])
def test_a_falling_hard_sigmoid_is_refused_saying_why(alpha):
    b = B.GraphBuilder(13)
    y = b.node("HardSigmoid", [b.conv("input", 1, 4)], alpha=alpha, beta=0.5)
    y = b.node("Relu", [b.conv(y, 4, 4)])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=rf"\(HardSigmoid\) is a nonlinearity the spiking "
                                                    rf"rewrite cannot express \(alpha {alpha:g}: it "
                                                    "falls as its input rises"):
        normalize(m)


def test_a_shapeless_input_or_output_is_named_by_the_checker_refusal():
    m = B.vgg(13, "clip")
    m.graph.input[0].type.tensor_type.ClearField("shape")
    m.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ModelLoadError, match=r"input 'input', output '[^']+' declares a type "
                                             r"without a shape"):
        normalize(m)


@pytest.mark.parametrize("alpha, beta, bias_shape", [(0.5, 1.0, None), (1.0, 2.0, None),
                                                 (3.0, 0.0, None), (1.0, 0.5, ()),
                                                 (2.0, 0.5, (1,)), (1.0, 0.5, (1, 8))])
def test_gemm_scales_go_into_its_constants(alpha, beta, bias_shape):
    """tf2onnx / hand-written Gemms with alpha or beta: the same layer with them multiplied
    into its weight and bias, so the weight calibration can refit it (it skipped it). A bias
    of any shape that broadcasts (a scalar, [1], [1, N]) too: a scalar times beta was a numpy
    scalar, which onnx-graphsurgeon refused (an internal error, exit 70)."""
    from onnx_snn.weight_calibration import layer_fit
    b = B.GraphBuilder(13)
    flat = b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")])
    y = b.gemm(flat, 4 * 144, 8)
    b.nodes[-1].attribute.extend([h.make_attribute("alpha", alpha), h.make_attribute("beta", beta)])
    if bias_shape is not None:
        bias = b.nodes[-1].input[2]
        init = next(t for t in b.inits if t.name == bias)
        v = numpy_helper.to_array(init)
        v = np.full(bias_shape, v[0], np.float32) if len(bias_shape) < 2 else v.reshape(bias_shape)
        init.CopyFrom(numpy_helper.from_array(v, bias))
    y = b.gemm(b.act(y, "clip"), 8, 10)
    m = b.model("input", y, (1, 12, 12), 10)
    nm = normalize(m)
    g = next(n for n in nm.model.graph.node if n.op_type == "Gemm")
    attrs = {a.name: h.get_attribute_value(a) for a in g.attribute}
    assert attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    assert layer_fit(g, {t.name: t for t in nm.model.graph.initializer}) is not None
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fill", [None, 0.0])
def test_max_with_zeros_like_is_a_relu(fill):
    """``torch.maximum(x, torch.zeros_like(x))``: Max(x, ConstantOfShape(Shape(x))), whose
    zeros take the batch's shape and were never folded; the Min after it was refused
    ('its input can be negative'). The filled constant is the scalar it is filled with."""
    b = B.GraphBuilder(13)

    def act(x):
        attrs = {} if fill is None else {"value": h.make_tensor("v", onnx.TensorProto.FLOAT, [1], [fill])}
        z = b.node("ConstantOfShape", [b.node("Shape", [x])], **attrs)
        return b.node("Min", [b.node("Max", [x, z]), b.const(np.array(6.0, np.float32))])
    y = act(b.conv(act(b.conv("input", 1, 4)), 4, 4))
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    nm = normalize(m)
    assert [s.mu for s in nm.sites] == [6.0, 6.0]
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", ["expand", "expand_slice", "constantofshape_slice",
                                  "where_constantofshape", "where_expand"])
def test_zeros_like_of_every_exporter_is_the_scalar_it_holds(form):
    """The dynamo exporter writes ``torch.zeros_like(x)`` as Expand(0, Shape(x)), the legacy
    one as ConstantOfShape(Shape(x)); ``zeros_like(x[:, :1])`` takes the shape of a slice;
    ``torch.where(x > 0, x, zeros_like(x))`` reads it in a Where. Each is the scalar 0 (an
    outside sweep found Max(x, Expand(...)) and every Where form refused as no ReLU)."""
    b = B.GraphBuilder(13)

    def zeros(x):
        ref = x
        if form.endswith("slice"):
            ref = b.node("Slice", [x, b.const(np.array([0], np.int64)), b.const(np.array([1], np.int64)),
                                   b.const(np.array([1], np.int64))])
        shape = b.node("Shape", [ref])
        if "expand" in form:
            return b.node("Expand", [b.const(np.array(0.0, np.float32)), shape])
        return b.node("ConstantOfShape", [shape])

    def act(x):
        if form.startswith("where"):
            pos = b.node("Greater", [x, b.const(np.array(0.0, np.float32))])
            return b.node("Where", [pos, x, zeros(x)])
        return b.node("Max", [x, zeros(x)])
    y = act(b.conv(act(b.conv("input", 1, 4)), 4, 4))
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    m = onnx.shape_inference.infer_shapes(m)       # the slice's shape, as exporters write it
    nm = normalize(m)
    assert len(nm.sites) == 2
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grows", ["shape", "rank"])
def test_a_filled_constant_that_grows_the_other_operand_stays(grows):
    """Max(x[:, :1], zeros_like(x)) has x's shape, not the slice's, and Expand of a
    [1, 1, 1, 1, 1] zero to x's 4-D shape is 5-D (a review): neither fill is a scalar
    (the model computes what it did, or is refused)."""
    b = B.GraphBuilder(13)
    c = b.conv("input", 1, 4)
    if grows == "shape":
        one = b.node("Slice", [c, b.const(np.array([0], np.int64)), b.const(np.array([1], np.int64)),
                               b.const(np.array([1], np.int64))])
        y = b.node("Max", [one, b.node("ConstantOfShape", [b.node("Shape", [c])])])
        flat = b.node("Flatten", [y])
        m = b.model("input", b.gemm(flat, 4 * 144, 10), (1, 12, 12), 10)
    else:
        zero = b.const(np.zeros((1, 1, 1, 1, 1), np.float32))
        y = b.node("Max", [c, b.node("Expand", [zero, b.node("Shape", [c])])])
        m = b.model("input", y, (1, 12, 12), 10)
        del m.graph.output[0].type.tensor_type.shape.dim[:]     # [1, N, 4, 12, 12]
    m = onnx.shape_inference.infer_shapes(m)
    try:
        nm = normalize(m)
    except UnsupportedModelError:
        return
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("floor", [-3.4028234663852886e38, -1e30])
def test_a_clip_floor_at_float32s_end_is_no_floor(opset, floor):
    """torch.clamp(x, max=1) at opset 9 is a Clip whose min is -FLT_MAX: a top alone. After a
    ReLU it is ReLU+Min (one site, mu 1); on a signed input it is refused as no ReLU, not
    turned into a site shifted by 3.4e38 (an outside sweep: 'the activations reach 3.4e38,
    are these weights synthetic?')."""
    def model(relu_first):
        b = B.GraphBuilder(opset)
        x = b.conv("input", 1, 4)
        if relu_first:
            x = b.node("Relu", [x])
        if opset < 11:
            x = b.node("Clip", [x], min=floor, max=1.0)
        else:
            x = b.node("Clip", [x, b.const(np.array(floor, np.float32)), b.const(np.array(1.0, np.float32))])
        return b.model("input", b.gemm(b.node("Flatten", [x]), 4 * 144, 10), (1, 12, 12), 10)
    nm = normalize(model(True))
    assert [s.mu for s in nm.sites] == [1.0]
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(model(True), x).outputs[0],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(UnsupportedModelError, match=r"clamped to \[-inf, 1\] is not ReLU-like"):
        normalize(model(False))


def test_a_value_from_a_data_sized_shape_is_not_folded():
    """Size(NonZero(x)) is a shape-derived value of a tensor whose size depends on the
    input's values: probing it on zeros gave 0, which was frozen into the graph (a review
    found the DNN silently changed). It is data and stays (and is refused, named)."""
    b = B.GraphBuilder(13)
    a = b.node("Relu", [b.conv("input", 1, 4)])
    count = b.node("Cast", [b.node("Size", [b.node("NonZero", ["input"])])],
                   to=onnx.TensorProto.FLOAT)
    out = b.gemm(b.node("Flatten", [b.node("Mul", [a, count])]), 4 * 144, 10)
    with pytest.raises(UnsupportedModelError):
        normalize(b.model("input", out, (1, 12, 12), 10))


def test_rank_is_unknown_where_a_leading_constant_adds_axes():
    import onnx_graphsurgeon as gs
    from onnx_snn.graph.ir import rank
    x = gs.Variable("x", dtype=np.float32)
    flat = gs.Variable("flat", dtype=np.float32)
    gs.Node("Flatten", inputs=[x], outputs=[flat])
    for ins in ([gs.Constant("c", np.zeros((1, 1, 4), np.float32)), flat],
                [flat, gs.Constant("c2", np.zeros((1, 1, 4), np.float32))]):
        y = gs.Variable("y", dtype=np.float32)
        gs.Node("Add", inputs=ins, outputs=[y])
        assert rank(y) is None
    y = gs.Variable("y2", dtype=np.float32)
    gs.Node("Add", inputs=[gs.Constant("c3", np.zeros((4,), np.float32)), flat], outputs=[y])
    assert rank(y) == 2


def test_a_final_hard_sigmoid_is_read_as_its_scores():
    """A Dense(1, hard_sigmoid) head: no spiking site on the outputs (its spikes would round
    them to T + 1 levels); the scores x + (b - 0.5)/a, positive where it is above 0.5."""
    b = B.GraphBuilder(13)
    z = b.gemm(b.node("Flatten", [b.act(b.conv("input", 1, 4), "clip")]), 4 * 144, 1)
    p = b.node("HardSigmoid", [z], alpha=0.2, beta=0.3)
    m = b.model("input", p, (1, 12, 12), 1)
    nm = normalize(m)
    assert [s.name for s in nm.sites] == ["lif0"]
    x = B.rand_input(16)
    prob, score = run(m, x).outputs[0], run(nm.model, x).outputs[0]
    np.testing.assert_allclose(np.clip(0.2 * (score + 1.0) + 0.3, 0, 1), prob, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["min_of_relu", "relu_of_min", "clip_top", "min_of_max0",
                                  "negative", "per_channel_floor"])
def test_a_clipped_relu_with_one_top_per_channel_is_a_site_of_top_1(form):
    """PACT or ReLU-N trained per channel (a top c of shape [C, 1, 1] or [1, C, 1, 1]) was
    refused, and raised from the fake-quantization pass's sign analysis even before the
    sites were read: for c > 0 it is c * clip(x / c, 0, 1), one site of mu 1 between a Div
    and a Mul, the same function; it converts and, at large T, agrees with its DNN as a
    rate code does. A top <= 0 in some channel, or a floor per channel, is no clipped ReLU
    and stays refused."""
    C = 4
    rng = np.random.default_rng(3)
    cap = (0.5 + rng.random((C, 1, 1))).astype(np.float32)
    if form == "negative":
        cap[1] = -0.5
    b = B.GraphBuilder(13)
    h = b.conv("input", 1, C)
    c = b.const(cap[None] if form == "min_of_max0" else cap)
    zero = b.const(np.array(0, np.float32))
    if form in ("min_of_relu", "negative"):
        y = b.node("Min", [b.node("Relu", [h]), c])
    elif form == "min_of_max0":
        y = b.node("Min", [c, b.node("Max", [zero, h])])
    elif form == "relu_of_min":
        y = b.node("Relu", [b.node("Min", [h, c])])
    elif form == "clip_top":       # a scalar top of 1.2 too: the smaller of the two per channel
        y = b.node("Min", [b.node("Clip", [h, zero, b.const(np.array(1.2, np.float32))]), c])
    else:
        y = b.node("Max", [b.node("Min", [h, c]), b.const(-cap)])
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Clip", [b.conv(y, C, 4), zero, b.const(np.array(1.5, np.float32))])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 36, 10), (1, 12, 12), 10)
    if form in ("negative", "per_channel_floor"):
        with pytest.raises(UnsupportedModelError, match="per channel or per element"):
            normalize(m)
        return
    nm = normalize(m)
    assert [s.mu for s in nm.sites] == [pytest.approx(1.0), pytest.approx(1.5)]
    assert any(n.startswith("clipped ReLUs with one top per channel") for n in nm.notes)
    x = B.rand_input(64)
    want = run(m, x).outputs[0]
    np.testing.assert_allclose(run(nm.model, x).outputs[0], want, rtol=1e-5, atol=1e-5)
    snn = B.converted(m, x, T=256, method="max")[2].model
    got = run(snn, x).outputs[0]
    corr = np.corrcoef((got - got.mean(0)).ravel(), (want - want.mean(0)).ravel())[0, 1]
    assert corr > 0.99, corr
    B.assert_runtimes_agree(B.converted(m, x, T=2, method="refined")[2].model, x[:8])


@pytest.mark.parametrize("op, cip", [("MaxPool", 0), ("AveragePool", 0), ("AveragePool", 1)])
@pytest.mark.parametrize("size, pads", [((12, 12), [0, 0, 1, 1]), ((6, 5), [0, 0, 1, 0]),
                                        ((7, 7), [1, 1, 0, 0])])
def test_a_ceil_mode_pool_has_the_windows_onnxruntime_computes(op, cip, size, pads):
    """Kernel 2, stride 2, ceil mode, end padding 1 on 12 x 12: onnxruntime drops the last
    window, which would start in the padding (6 x 6), and ONNX's shape inference counts it
    (7 x 7): the spiking graph's states, sized from the inference, made a crash or, where
    no neuron read the pool, a file that could not run. The pool is written in floor mode
    with the padding that gives onnxruntime's windows: the same outputs (an AveragePool that
    counts the padding divides a partial window by its cells inside the padding, as
    onnxruntime does), shapes that inference and onnxruntime agree on, and a spiking model
    that runs in both runtimes. A pool whose windows the two agree on is left alone."""
    b = B.GraphBuilder(13)
    x = b.node("Relu", [b.conv("input", 1, 4)])
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], pads=pads, ceil_mode=1)
    if op == "AveragePool":
        attrs["count_include_pad"] = cip
    y = b.node(op, [x], **attrs)
    y = b.node("Clip", [b.conv(y, 4, 4), b.const(np.array(0, np.float32)), b.const(np.array(1, np.float32))])
    m = b.model("input", b.gemm(b.node("GlobalAveragePool", [y]), 4, 10), (1,) + size, 10)
    m.graph.node[-1].input[0] = m.graph.node[-2].output[0]
    flat = onnx.helper.make_node("Flatten", [m.graph.node[-2].output[0]], ["flat"], axis=1)
    m.graph.node.insert(len(m.graph.node) - 1, flat)
    m.graph.node[-1].input[0] = "flat"
    x0 = B.rand_input(8, shape=(1,) + size)
    want = run(m, x0).outputs[0]
    nm = normalize(m)
    pool = next(n for n in nm.model.graph.node if n.op_type == op)
    dropped = size != (7, 7)      # 7 x 7, start padding 1: both count 4 windows
    assert onnx.helper.get_node_attr_value(pool, "ceil_mode") == (0 if dropped else 1)
    np.testing.assert_allclose(run(nm.model, x0).outputs[0], want, rtol=1e-5, atol=1e-6)
    inferred = onnx.shape_inference.infer_shapes(nm.model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in inferred.graph.value_info}
    h, w = (-(-(s + p0 + p1 - 2) // 2) + 1 for s, p0, p1 in zip(size, pads[:2], pads[2:]))
    h, w = (h - 1 if (h - 1) * 2 >= size[0] + pads[0] else h,
            w - 1 if (w - 1) * 2 >= size[1] + pads[1] else w)
    assert shapes[pool.output[0]][2:] == [h, w]
    snn = B.converted(m, x0, T=2)[2].model
    B.assert_runtimes_agree(snn, x0)


@pytest.mark.parametrize("keep, perm, axes", [(0, [0, 2, 3, 1], [1, 2]), (1, [0, 2, 3, 1], [1, 2]),
                                              (0, [0, 2, 3, 1], [-3, -2]), (1, [0, 3, 2, 1], [1, 2]),
                                              (0, [0, 2, 3, 1], [1, 3])])
def test_a_channels_last_global_max_is_a_global_max_pool(keep, perm, axes):
    """Keras's GlobalMaxPooling2D in NHWC (tf2onnx: Transpose(0, 2, 3, 1), ReduceMax over
    axes 1 and 2) was refused as a maximum over the channels: the reduced axes are the
    spatial axes of the Transpose's input, so it is a GlobalMaxPool of that input (then the
    layout the Transpose gave, or a Flatten), the same outputs, with a rate-exact spiking
    form. A reduction that takes the channels too stays refused."""
    b = B.GraphBuilder(13)
    r = b.act(b.conv("input", 1, 4), "clip")
    p = b.node("ReduceMax", [b.node("Transpose", [r], perm=perm)], axes=axes, keepdims=keep)
    flat = 4 if 3 not in axes else 12
    m = b.model("input", b.gemm(b.node("Flatten", [p]), flat, 10), (1, 12, 12), 10)
    if 3 in axes:
        with pytest.raises(UnsupportedModelError, match="ReduceMax"):
            normalize(m)
        return
    nm = normalize(m)
    assert "ReduceMax" not in ops(nm.model) and "GlobalMaxPool" in ops(nm.model)
    x = B.rand_input(16)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-6)
    B.assert_runtimes_agree(B.converted(m, x, T=2)[2].model, x)


def test_a_per_element_batchnorm_of_an_old_opset_is_refused_by_name():
    """BatchNormalization with spatial=0 (opset 7-8) cannot be upgraded to opset 13: the
    version converter's message named no node; the refusal names it and what to do."""
    b = B.GraphBuilder(7)
    x = b.conv("input", 1, 4)
    stats = [b.const(np.ones((4, 12, 12), np.float32)), b.const(np.zeros((4, 12, 12), np.float32)),
             b.const(np.zeros((4, 12, 12), np.float32)), b.const(np.ones((4, 12, 12), np.float32))]
    y = b.node("BatchNormalization", [x] + stats, spatial=0)
    m = b.model("input", b.gemm(b.node("Flatten", [b.node("Relu", [y])]), 4 * 144, 10), (1, 12, 12), 10)
    bn = next(n.name for n in m.graph.node if n.op_type == "BatchNormalization")
    with pytest.raises(UnsupportedModelError, match=rf"node '{bn}' \(BatchNormalization\) has spatial=0 "
                                                    r"\(statistics per element, opset 7\)"):
        normalize(m)


@pytest.mark.parametrize("case", ["two_pools", "kernel1", "dilated"])
def test_ceil_mode_pools_in_a_row_and_kernels_shorter_than_the_stride(case):
    """Each ceil-mode pool is rewritten with the shapes after the one before it inferred
    again (only the first was, and the second kept ceil mode); a 1 x 1 pool of stride 2 on
    an even size (Caffe's subsampling: onnxruntime 6 x 6, inference 7 x 7) needs no end
    padding at all; a dilated pool that floor mode cannot give is refused by name."""
    b = B.GraphBuilder(13)
    y = b.node("Relu", [b.conv("input", 1, 4)])
    if case == "two_pools":
        for _ in range(2):
            y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
                       ceil_mode=1)
            y = b.node("Relu", [b.conv(y, 4, 4)])
        size = (24, 24)
    elif case == "kernel1":
        y = b.node("MaxPool", [y], kernel_shape=[1, 1], strides=[2, 2], ceil_mode=1)
        y = b.node("Relu", [b.conv(y, 4, 4)])
        size = (12, 12)
    else:
        y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[3, 2], dilations=[2, 1],
                   pads=[0, 0, 0, 1], ceil_mode=1)   # H: a partial window 2 past the end
        size = (4, 6)
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    m = b.model("input", b.gemm(y, 4, 10), (1,) + size, 10)
    x = B.rand_input(8, shape=(1,) + size)
    if case == "dilated":
        with pytest.raises(UnsupportedModelError, match=r"MaxPool.*floor mode cannot give "
                                                        r"onnxruntime's windows"):
            normalize(m)
        return
    nm = normalize(m)
    assert all(onnx.helper.get_node_attr_value(n, "ceil_mode") == 0
               for n in nm.model.graph.node if n.op_type == "MaxPool")
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-6)
    B.assert_runtimes_agree(B.converted(m, x, T=2)[2].model, x)


@pytest.mark.parametrize("case", ["relu_read_elsewhere", "negative_top"])
def test_a_per_channel_top_over_a_relu_read_elsewhere_and_over_a_negative_clip(case):
    """The ReLU under a per-channel top may be read by another layer too (it stays, for
    that reader); a Clip of top <= 0 under it is no ReLU (its output is that constant top),
    and stays refused rather than rewritten into another function."""
    cap = np.array([0.8, 1.2, 1.5, 0.6], np.float32).reshape(4, 1, 1)
    b = B.GraphBuilder(13)
    h = b.conv("input", 1, 4)
    if case == "relu_read_elsewhere":
        r = b.node("Relu", [h])
        y = b.node("Add", [b.node("Min", [r, b.const(cap)]), b.conv(r, 4, 4)])
    else:
        r = b.node("Clip", [h, b.const(np.array(0, np.float32)), b.const(np.array(-1, np.float32))])
        y = b.node("Min", [r, b.const(cap)])
    m = b.model("input", b.gemm(b.node("Flatten", [y]), 4 * 144, 10), (1, 12, 12), 10)
    if case == "negative_top":
        with pytest.raises(UnsupportedModelError, match="not a clipped ReLU"):
            normalize(m)
        return
    nm = normalize(m)
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)
    B.assert_runtimes_agree(B.converted(m, x, T=2)[2].model, x)


def test_a_ceil_pool_before_an_output_keeps_its_right_declaration():
    """An output declared with onnxruntime's shape behind a ceil-mode pool: the first
    inference computed the window onnxruntime drops and said the declaration was wrong;
    once the pool is rewritten the declared shape is the computed one, and no note says
    otherwise."""
    b = B.GraphBuilder(13)
    y = b.node("MaxPool", [b.node("Relu", [b.conv("input", 1, 4)])], kernel_shape=[2, 2],
               strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1)
    y = b.conv(y, 4, 3)
    m = b.model("input", y, (1, 12, 12), 10)
    del m.graph.output[:]
    m.graph.output.append(h.make_tensor_value_info(y, onnx.TensorProto.FLOAT, ["N", 3, 6, 6]))
    nm = normalize(m)
    assert not any("is declared" in n for n in nm.notes), nm.notes
    dims = [d.dim_value or d.dim_param for d in nm.model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 6, 6]
    x = B.rand_input(4)
    assert run(nm.model, x).outputs[0].shape == (4, 3, 6, 6)


def test_a_ceil_pool_on_a_free_input_size_is_converted_at_the_calibration_size():
    """With free H and W, whether a ceil-mode pool's last window starts in the end padding
    depends on the size: prepare refuses it saying so, and convert pins the free dimensions
    to the calibration data's (as for other size-dependent graphs), rewrites the pool, and
    writes a spiking model that runs (it raised 'produced an invalid spiking model')."""
    import onnx_snn
    b = B.GraphBuilder(13)
    y = b.node("MaxPool", [b.node("Relu", [b.conv("input", 1, 4)])], kernel_shape=[2, 2],
               strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1)
    y = b.node("Flatten", [b.node("GlobalAveragePool", [b.node("Relu", [b.conv(y, 4, 4)])])])
    m = b.model("input", b.gemm(y, 4, 10), (1, 12, 12), 10)
    for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "S"
    with pytest.raises(UnsupportedModelError, match="in ceil mode on a free input size"):
        normalize(m)
    x = B.rand_input(8)
    snn = onnx_snn.convert(m, x, timesteps=2, show_progress=False)
    assert any("was pinned to the calibration data's" in n for n in snn.report["notes"])
    B.assert_runtimes_agree(snn.model, x)
    np.testing.assert_allclose(run(onnx_snn.prepare(m, input_shapes={"input": (1, 12, 12)}).model,
                                   x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [10, 13])
@pytest.mark.parametrize("coordinates", [False, True])
def test_a_sparse_initializer_is_read_as_the_dense_weight_it_stands_for(opset, coordinates):
    """A Gemm weight stored as a sparse_initializer (valid ONNX; onnxruntime runs it) was
    imported as float64 (opset 13: 'onnxruntime cannot run this model') or not at all
    (opset 10: 'Input wf is undefined'): it converts as its dense twin does, and the
    analyzer counts the DNN's multiply-adds of it."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    from onnx_snn.analyze.flops import count_layers, total_macs
    rng = np.random.default_rng(0)
    wf = (rng.standard_normal((10, 4 * 14 * 14)) * 0.05).astype(np.float32)
    wf[np.abs(wf) < 0.05] = 0
    nz = np.nonzero(wf)
    idx = (np.stack(nz, 1) if coordinates else np.ravel_multi_index(nz, wf.shape)).astype(np.int64)
    sp = h.make_sparse_tensor(nh.from_array(wf[nz], "wf"), nh.from_array(idx, "wf_idx"),
                              list(wf.shape))
    inits = [nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w0"),
             nh.from_array(np.full(4, 0.05, np.float32), "b0"),
             nh.from_array(np.zeros(10, np.float32), "bf")]
    if opset >= 11:
        inits += [nh.from_array(np.array(0, np.float32), "lo"), nh.from_array(np.array(1, np.float32), "hi")]
        clip = h.make_node("Clip", ["c0", "lo", "hi"], ["s0"], name="clip0")
    else:
        clip = h.make_node("Clip", ["c0"], ["s0"], name="clip0", min=0.0, max=1.0)
    nodes = [h.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1] * 4),
             clip, h.make_node("Flatten", ["s0"], ["f"], name="flat"),
             h.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    io = ([h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 28, 28])],
          [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])])
    g = h.make_graph(nodes, "g", *io, inits)
    g.sparse_initializer.extend([sp])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    twin = h.make_model(h.make_graph(nodes, "g", *io, inits + [nh.from_array(wf, "wf")]),
                        opset_imports=[h.make_opsetid("", opset)])
    twin.ir_version = 8
    x = np.random.default_rng(1).random((16, 1, 28, 28)).astype(np.float32)
    a = onnx_snn.convert(m, x, timesteps=2, method="max", show_progress=False)
    b = onnx_snn.convert(twin, x, timesteps=2, method="max", show_progress=False)
    np.testing.assert_array_equal(run(a.model, x).outputs[0], run(b.model, x).outputs[0])
    assert total_macs(count_layers(m)) == total_macs(count_layers(twin)) > 0



@pytest.mark.parametrize("in_function", [False, True])
def test_a_sparse_constant_is_read_as_the_dense_weight_it_stands_for(in_function):
    """A Conv weight given by a Constant node's ``sparse_value`` (valid ONNX; onnxruntime
    runs it), in the graph or in a model-local function, was refused as "the model's shapes
    do not fit together" (graph-surgeon wrote it back with a second value): it converts as
    its dense twin does."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32)
    w[np.abs(w) < 0.3] = 0
    idx = np.flatnonzero(w).astype(np.int64)
    sp = h.make_sparse_tensor(nh.from_array(w.reshape(-1)[idx], "wv"), nh.from_array(idx, "wi"),
                              list(w.shape))
    fc = nh.from_array((rng.standard_normal((4 * 26 * 26, 10)) * 0.02).astype(np.float32), "fc")

    def model(weight_node):
        tail = [h.make_node("Conv", ["x", "w"], ["c"]), h.make_node("Relu", ["c"], ["r"]),
                h.make_node("Flatten", ["r"], ["f"]), h.make_node("MatMul", ["f", "fc"], ["y"])]
        io = ([h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 28, 28])],
              [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])])
        functions = []
        if in_function:
            functions = [h.make_function("local", "W", [], ["w"], [weight_node],
                                         [h.make_opsetid("", 13)])]
            weight_node = h.make_node("W", [], ["w"], domain="local")
        m = h.make_model(h.make_graph([weight_node] + tail, "g", *io, [fc]), functions=functions,
                         opset_imports=[h.make_opsetid("", 13), h.make_opsetid("local", 1)])
        onnx.checker.check_model(m)
        return m
    m = model(h.make_node("Constant", [], ["w"], sparse_value=sp))
    twin = model(h.make_node("Constant", [], ["w"], value=nh.from_array(w, "wd")))
    x = np.random.default_rng(1).random((16, 1, 28, 28)).astype(np.float32)
    # (onnxruntime itself is not given the sparse model: a sparse Constant in a function
    # crashed its session creation, a segmentation fault, in one CI run; the DNN prepared
    # from it is compared instead)
    np.testing.assert_allclose(run(onnx_snn.prepare(m).model, x).outputs[0],
                               run(twin, x).outputs[0], rtol=1e-6)
    a = onnx_snn.convert(m, x, timesteps=2, method="max", show_progress=False)
    b = onnx_snn.convert(twin, x, timesteps=2, method="max", show_progress=False)
    np.testing.assert_array_equal(run(a.model, x).outputs[0], run(b.model, x).outputs[0])


def test_an_output_of_text_is_refused_by_name_and_unread_text_is_dropped():
    """A string Constant that nothing reads converts (dropped); one that is a graph output
    (a class-name table) was an internal error in graph-surgeon's export: refused by name,
    exit 4, naming the --outputs that keep the numeric ones, which then convert."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    from onnx_snn.errors import UnsupportedModelError
    rng = np.random.default_rng(0)
    inits = [nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             nh.from_array((rng.standard_normal((4 * 26 * 26, 10)) * 0.02).astype(np.float32),
                           "fc")]
    nodes = [h.make_node("Constant", [], ["names"], value_strings=["cat", "dog"]),
             h.make_node("Constant", [], ["tag"], value_string="v1"),
             h.make_node("Conv", ["x", "w"], ["c"]), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Flatten", ["r"], ["f"]), h.make_node("MatMul", ["f", "fc"], ["y"])]
    ins = [h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 28, 28])]
    y = h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])
    x = np.random.default_rng(1).random((8, 1, 28, 28)).astype(np.float32)
    unread = h.make_model(h.make_graph(nodes, "g", ins, [y], inits),
                          opset_imports=[h.make_opsetid("", 13)])
    onnx_snn.convert(unread, x, timesteps=2, method="max", show_progress=False)
    for out in (h.make_tensor_value_info("names", TP.STRING, [2]),
                h.make_tensor_value_info("names", TP.UNDEFINED, None)):
        m = h.make_model(h.make_graph(nodes, "g", ins, [y, out], inits),
                         opset_imports=[h.make_opsetid("", 13)])
        with pytest.raises(UnsupportedModelError, match=r"output\(s\) 'names' hold text .* "
                                                        r"--outputs y"):
            onnx_snn.prepare(m)
        kept = onnx_snn.convert(m, x, timesteps=2, method="max", show_progress=False,
                                outputs=["y"])
        np.testing.assert_allclose(run(kept.model, x[:2]).outputs[0].shape, (2, 10))


def test_bypassing_a_node_rewires_readers_inside_if_branches():
    """Bypassing an Identity whose output If branches read from the outer graph makes those
    nested nodes read its source: the graph computes what it did (the rewiring follows the
    tensor's consumers, which include nested readers, with no walk of every subgraph per
    bypassed node: that walk made a chain of 4000 Identity nodes take 20 s)."""
    import onnx_graphsurgeon as gs
    from onnx import TensorProto as TP
    from onnx_snn.graph.ir import bypass
    then = h.make_graph([h.make_node("Relu", ["idc"], ["t_out"])], "then", [],
                        [h.make_tensor_value_info("t_out", TP.FLOAT, [2, 3])])
    other = h.make_graph([h.make_node("Neg", ["idc"], ["e_out"])], "else", [],
                         [h.make_tensor_value_info("e_out", TP.FLOAT, [2, 3])])
    nodes = [h.make_node("Identity", ["x"], ["idc"], name="id"),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [2, 3]),
                                               h.make_tensor_value_info("c", TP.BOOL, [])],
                                  [h.make_tensor_value_info("y", TP.FLOAT, [2, 3])]),
                     opset_imports=[h.make_opsetid("", 13)])
    g = gs.import_onnx(m)
    bypass(g, next(n for n in g.nodes if n.op == "Identity"))
    g.cleanup()
    out = gs.export_onnx(g)
    assert [n.op_type for n in out.graph.node] == ["If"]
    branches = [a.g for a in out.graph.node[0].attribute]
    assert all(b.node[0].input[0] == "x" for b in branches)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for c in (True, False):
        feed = {"x": x, "c": np.array(c)}
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
        got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
        np.testing.assert_array_equal(got[0], ref[0])


def test_an_output_listed_twice_is_kept_once_and_converts():
    """An exporter may list a tensor twice among the graph outputs (the logits, or an
    activation): the spiking graph made one step output per name, twice, and failed its own
    check with a traceback."""
    for which in ("logits", "activation"):
        m = B.vgg(13, "clip")
        if which == "logits":
            m.graph.output.add().CopyFrom(m.graph.output[0])
        else:
            name = next(n.output[0] for n in m.graph.node if n.op_type == "Clip")
            vi = h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["n", "c", "h", "w"])
            m.graph.output.extend([vi, vi])
        nm = normalize(m)
        assert any("listed more than once: kept once" in n for n in nm.notes)
        snn = onnx_snn.convert(m, B.rand_input(16), timesteps=2, show_progress=False)
        outs = [o.name for o in m.graph.output]
        assert [o.name for o in snn.model.graph.output][:len(set(outs))] == list(dict.fromkeys(outs))


@pytest.mark.parametrize("kind", ["weight", "constant node weight", "initializer",
                                  "constant node", "input"])
@pytest.mark.parametrize("method", ["datta", "refined"])
def test_an_output_no_node_computes_is_kept_as_it_is(kind, method):
    """A graph output that no node computes from the input: a weight a layer also reads (a
    Gemm's bias: the spiking graph's output was left without a producer, exit 1 with a
    traceback), another initializer, a Constant node's output, the input itself. The spiking
    model outputs each as the DNN does, while the layer reading the weight is refitted."""
    m = B.vgg(13, "clip")
    g = m.graph
    if kind == "input":
        g.output.add().CopyFrom(g.input[0])
        name = g.input[0].name
    else:
        name = "const_out"
        value = onnx.numpy_helper.from_array(np.arange(3, dtype=np.float32), name)
        if kind in ("weight", "constant node weight"):
            gemm = [n for n in g.node if n.op_type == "Gemm"][-1]
            name = gemm.input[2]
            value = next(t for t in g.initializer if t.name == name)
            if kind == "constant node weight":     # a Constant node's: folded only later
                g.initializer.remove(value)
                g.node.insert(0, h.make_node("Constant", [], [name], name="cb", value=value))
        elif kind == "initializer":
            g.initializer.append(value)
        else:
            g.node.insert(0, h.make_node("Constant", [], [name], name="c0", value=value))
        g.output.add().CopyFrom(h.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                         list(value.dims)))
    x = B.rand_input(24)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {g.input[0].name: x})
    snn = onnx_snn.convert(m, x, timesteps=2, method=method, show_progress=False)
    assert [o.name for o in snn.model.graph.output][:2] == [g.output[0].name, name]
    got = run(snn.model, x).outputs
    np.testing.assert_array_equal(got[1], want[1])
    alone = onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=2, method=method, show_progress=False)
    np.testing.assert_array_equal(got[0], run(alone.model, x).outputs[0])   # the same network


def test_a_graph_without_outputs_is_refused():
    m = B.vgg(13, "clip")
    del m.graph.output[:]
    with pytest.raises(ModelLoadError, match="has no outputs"):
        normalize(m)


def test_a_model_whose_every_input_has_a_default_is_refused_naming_it(tmp_path):
    """An input with an initializer of its name (a default value: legal ONNX) is read as a
    weight; a model whose every input has one has nothing to feed: refused naming the input
    (the whole network folded into a constant, "no ReLU-type activation found"), by the
    converter and by onnxruntime's runner (eval said "the model has 0 inputs []")."""
    from onnx import numpy_helper
    from onnx_snn.errors import UnsupportedModelError
    from onnx_snn.runtimes.ort import ModelRunner
    m = B.vgg(13, "clip")
    m.graph.initializer.append(numpy_helper.from_array(B.rand_input(1), m.graph.input[0].name))
    with pytest.raises(UnsupportedModelError, match="every graph input \\('input'\\) has an "
                                                    "initializer.*remove its initializer"):
        normalize(m)
    with pytest.raises(UnsupportedModelError, match="'input' is the data input"):
        ModelRunner(m)
    del m.graph.input[:]          # the image a constant: nothing to feed at all
    with pytest.raises(UnsupportedModelError, match="has no inputs"):
        normalize(m)


@pytest.mark.parametrize("opset", [7, 10])
@pytest.mark.parametrize("mode", ["reflect", "edge", "constant"])
def test_an_attribute_form_pad_with_a_fill_value_upgrades_in_every_mode(opset, mode):
    """Pad-2 takes ``value`` as an attribute, ignored by reflect and edge; the version
    converter kept it for those modes, and Pad-11 has no such attribute: the normalized
    model failed the checker (a traceback). The conversion runs the same DNN."""
    rng = np.random.default_rng(0)
    w = lambda n, s: onnx.numpy_helper.from_array(rng.normal(0, .3, s).astype(np.float32), n)
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"]),
             h.make_node("Clip", ["c1"], ["a1"], min=0.0, max=1.0),
             h.make_node("Pad", ["a1"], ["p"], mode=mode, pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5),
             h.make_node("Conv", ["p", "w2"], ["c2"]),
             h.make_node("Clip", ["c2"], ["a2"], min=0.0, max=1.0),
             h.make_node("GlobalAveragePool", ["a2"], ["g"]), h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1)]
    g = h.make_graph(nodes, "pad2", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 10, 10])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
                     [w("w1", (8, 3, 3, 3)), w("w2", (8, 8, 3, 3)), w("w3", (10, 8)), w("b3", (10,))])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    x = rng.standard_normal((24, 3, 10, 10)).astype(np.float32)
    nm = normalize(m)
    assert not any(a.name == "value" for n in nm.model.graph.node if n.op_type == "Pad"
                   for a in n.attribute)
    dnn = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dnn.run(None, {"x": x})[0]
    got = ort.InferenceSession(nm.model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    snn = onnx_snn.convert(m, x, timesteps=64, method="max", show_progress=False)
    out = run(snn.model, x).outputs[0]
    assert np.corrcoef(out.ravel(), want.ravel())[0, 1] > 0.98


def test_an_input_with_an_axis_of_size_zero_is_refused_by_name():
    """A fixed batch of 0 (or any axis of 0) holds no values: onnxruntime's INVALID_ARGUMENT
    from the first calibration run was the message (exit 4)."""
    m = B.vgg(13, "clip")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    with pytest.raises(ModelLoadError, match=f"input '{m.graph.input[0].name}' has shape \\[0, "):
        normalize(m)


def _cast_round_trip(model: onnx.ModelProto, between: bool) -> onnx.ModelProto:
    """``model`` with its first Conv's output cast to float64 and back (``between``: an Add
    of a float64 constant in between, a step that computes in double)."""
    m = B.with_node(model, "Cast", to=onnx.TensorProto.DOUBLE)
    cast = next(n for n in m.graph.node if n.op_type == "Cast")
    out = cast.output[0]
    cast.output[0] = out + "_f64"
    at = list(m.graph.node).index(cast) + 1
    src = out + "_f64"
    if between:
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.25), "quarter"))
        m.graph.node.insert(at, h.make_node("Add", [src, "quarter"], [out + "_sum"], name="add64"))
        src, at = out + "_sum", at + 1
    m.graph.node.insert(at, h.make_node("Cast", [src], [out], name="back", to=onnx.TensorProto.FLOAT))
    onnx.checker.check_model(m)
    return m


def test_a_float64_round_trip_of_casts_is_the_identity_and_a_float64_step_is_refused():
    """Cast(float32 -> float64) read only by Casts back to float32 is exact: removed, and the
    model converts as its float32 twin; a float64 Add between the two stays refused, named."""
    x = B.rand_input(24)
    plain = B.vgg(13, "clip")
    m = _cast_round_trip(plain, between=False)
    nm = normalize(m)
    assert not any(n.op_type == "Cast" for n in nm.model.graph.node)
    assert any("cast back to float32" in n for n in nm.notes)
    want = run(onnx_snn.convert(plain, x, timesteps=2, show_progress=False).model, x).outputs[0]
    got = run(onnx_snn.convert(m, x, timesteps=2, show_progress=False).model, x).outputs[0]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(UnsupportedModelError, match="the_cast.*casts data to float64"):
        normalize(_cast_round_trip(plain, between=True))


def _scaled_conv(opset: int, const_kind: str) -> onnx.ModelProto:
    """Conv (its bias a Constant) - Relu - Mul by a Constant scale - Reshape by a Constant
    shape - Gemm, the Constants given in ``const_kind``: 'tensor' (``value``) or 'numbers'
    (``value_float(s)`` / ``value_ints``, as some hand-written and converted graphs give them)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.4, (4, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, 4).astype(np.float32)
    fc = rng.normal(0, 0.2, (10, 4 * 10 * 10)).astype(np.float32)

    def const(name, value, kind):
        if const_kind == "tensor":
            return h.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(
                np.asarray(value, np.float32 if kind.startswith("value_float") else np.int64),
                name + "_t"))
        return h.make_node("Constant", [], [name], **{kind: value})
    nodes = [const("b", bias.tolist(), "value_floats"),
             const("scale", 0.5, "value_float"),
             const("shape", [0, -1], "value_ints"),
             h.make_node("Conv", ["x", "w", "b"], ["c"]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Mul", ["r", "scale"], ["s"]),
             h.make_node("Reshape", ["s", "shape"], ["f"]),
             h.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    g = h.make_graph(nodes, "constants", [h.make_tensor_value_info("x", 1, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", 1, ["N", 10])],
                     [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(fc, "fc")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [13, 21])
def test_constants_given_as_numbers_keep_the_types_the_spec_gives_them(opset):
    """value_float(s) are float32 and value_int(s) int64 (onnx-graphsurgeon folded them as
    float64, which onnxruntime then refused beside the float32 tensors they feed): the model
    converts as its twin of tensor Constants does, to the same function."""
    x = B.rand_input(64, seed=3)
    m, twin = _scaled_conv(opset, "numbers"), _scaled_conv(opset, "tensor")
    onnx.checker.check_model(m, full_check=True)
    nm = normalize(m)
    assert "Constant" not in ops(nm.model)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5,
                               atol=1e-5)
    a = onnx_snn.convert(m, x, timesteps=2, show_progress=False)
    b = onnx_snn.convert(twin, x, timesteps=2, show_progress=False)
    np.testing.assert_array_equal(run(a.model, x).outputs[0], run(b.model, x).outputs[0])


def _conv_fc_model(nodes, name: str, rng, fc_in: int, opset: int = 13) -> onnx.ModelProto:
    """``nodes`` from input x [N, 1, 12, 12] to output y [N, 10], with random weights for
    their 4-channel 3x3 conv ``w`` and their dense layer ``fc`` of ``fc_in`` inputs."""
    inits = [onnx.numpy_helper.from_array(rng.normal(0, .4, (4, 1, 3, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.normal(0, .2, (10, fc_in)).astype(np.float32), "fc")]
    g = h.make_graph(nodes, name, [h.make_tensor_value_info("x", 1, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", 1, ["N", 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def _cast_like(opset: int, like_data: bool) -> onnx.ModelProto:
    """(x - 0.5) / 0.25 - Conv - Relu - Gemm, each number a CastLike of a float64 constant to
    x's type (onnxscript's idiom for a Python number); ``like_data``: the conv's output CastLike
    itself to x's type too (a CastLike of data, no constant)."""
    rng = np.random.default_rng(1)
    nodes = [h.make_node("Constant", [], ["half64"], value=onnx.numpy_helper.from_array(
                 np.array(0.5), "h")),
             h.make_node("Constant", [], ["quarter64"], value=onnx.numpy_helper.from_array(
                 np.array(0.25), "q")),
             h.make_node("CastLike", ["half64", "x"], ["half"]),
             h.make_node("CastLike", ["quarter64", "x"], ["quarter"]),
             h.make_node("Sub", ["x", "half"], ["xs"]),
             h.make_node("Div", ["xs", "quarter"], ["xn"]),
             h.make_node("Conv", ["xn", "w"], ["c0"]),
             h.make_node("CastLike", ["c0", "x"], ["c"]) if like_data else
             h.make_node("Identity", ["c0"], ["c"]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("Flatten", ["r"], ["f"]),
             h.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    return _conv_fc_model(nodes, "castlike", rng, 400, opset)


@pytest.mark.parametrize("opset", [15, 21])
@pytest.mark.parametrize("like_data", [False, True])
def test_castlike_is_a_cast_to_the_type_of_its_second_input(opset, like_data):
    x = B.rand_input(64, seed=4)
    m = _cast_like(opset, like_data)
    nm = normalize(m)
    assert "CastLike" not in ops(nm.model)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5,
                               atol=1e-5)
    snn = onnx_snn.convert(m, x, timesteps=64, method="max", show_progress=False)
    a, b = run(snn.model, x).outputs[0], run(m, x).outputs[0]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_a_max_pool_whose_indices_are_read_is_refused_naming_it():
    rng = np.random.default_rng(2)
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p", "idx"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
             h.make_node("Cast", ["idx"], ["fidx"], to=1),
             h.make_node("Add", ["p", "fidx"], ["s"]),
             h.make_node("Flatten", ["s"], ["f"]),
             h.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    m = _conv_fc_model(nodes, "indices", rng, 100)
    with pytest.raises(UnsupportedModelError, match=r"'pool' \(MaxPool\) gives the indices .*'idx'"):
        normalize(m)
    # its indices unread: a max pool like any other
    nodes[3:5] = [h.make_node("Identity", ["p"], ["s"])]
    assert [s.name for s in normalize(_conv_fc_model(nodes, "indices", rng, 100)).sites] == \
        ["lif0"]


def _keras_dense_bn_head(opset: int, use_slice: bool) -> onnx.ModelProto:
    """tf2onnx's Keras Flatten -> Dense -> BatchNormalization: Reshape(x, Concat(Shape(x)[0],
    [-1])) (Gather or Slice of the shape), MatMul + Add, BN over the dense output."""
    from onnx import TensorProto as TP
    r = np.random.default_rng(0)
    inits = []

    def c(a, n):
        inits.append(numpy_helper.from_array(np.asarray(a), n))
        return n
    nodes = [h.make_node("Conv", ["x", c((r.standard_normal((4, 1, 3, 3)) * .5).astype(np.float32), "w1"),
                                  c(np.zeros(4, np.float32), "b1")], ["c1"], pads=[1] * 4, strides=[2, 2]),
             h.make_node("Relu", ["c1"], ["r1"]), h.make_node("Shape", ["r1"], ["s"])]
    if use_slice:
        nodes.append(h.make_node("Slice", ["s", c(np.array([0], np.int64), "st"),
                                           c(np.array([1], np.int64), "en")], ["b"]))
    else:
        nodes.append(h.make_node("Gather", ["s", c(np.array([0], np.int64), "i0")], ["b"], axis=0))
    nodes += [h.make_node("Concat", ["b", c(np.array([-1], np.int64), "m1")], ["shp"], axis=0),
              h.make_node("Reshape", ["r1", "shp"], ["f"]),
              h.make_node("MatMul", ["f", c((r.standard_normal((144, 16)) * .1).astype(np.float32), "w2")], ["mm"]),
              h.make_node("Add", ["mm", c(r.standard_normal(16).astype(np.float32), "b2")], ["a"]),
              h.make_node("BatchNormalization", ["a", c(r.random(16).astype(np.float32) + .5, "g"),
                                                 c(r.standard_normal(16).astype(np.float32), "be"),
                                                 c(r.standard_normal(16).astype(np.float32), "mu"),
                                                 c(r.random(16).astype(np.float32) + .5, "var")], ["bn"]),
              h.make_node("Relu", ["bn"], ["r2"]),
              h.make_node("Gemm", ["r2", c((r.standard_normal((16, 10)) * .1).astype(np.float32), "w3")],
                          ["logits"])]
    g = h.make_graph(nodes, "keras", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("logits", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 7
    return m


@pytest.mark.parametrize("opset", [11, 13, 15])
@pytest.mark.parametrize("use_slice", [False, True], ids=["gather", "slice"])
def test_batchnorm_after_a_dense_layer_behind_a_computed_flatten_converts_at_every_opset(
        opset, use_slice):
    """Before opset 15 ONNX's inference leaves a Reshape whose shape is computed shapeless,
    and the BatchNormalization after the MatMul + Add was refused ("input rank is unknown");
    the MatMul's rank follows from its inputs' (the Reshape's from its shape's length): the
    BN becomes affine at every opset, computing what the DNN computes."""
    m = _keras_dense_bn_head(opset, use_slice)
    nm = normalize(m)
    assert not any(n.op_type == "BatchNormalization" for n in nm.model.graph.node)
    x = B.rand_input(6, shape=(1, 12, 12), seed=4)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0],
                               rtol=1e-4, atol=1e-5)


def _auto_pad_net(op: str, mode: str, stride: int, dilation: int, size: int, opset: int = 13):
    """x [N, 2, size, size+1] -> op with auto_pad ``mode`` -> Relu."""
    from onnx import TensorProto as TP
    r = np.random.default_rng(3)
    inits, attrs = [], {"auto_pad": mode, "strides": [stride, stride]}
    if op == "Conv":
        inits.append(numpy_helper.from_array(r.standard_normal((3, 2, 3, 2)).astype(np.float32), "w"))
        ins, attrs["dilations"] = ["x", "w"], [dilation, dilation]
    else:
        ins, attrs["kernel_shape"] = ["x"], [3, 2]
        if op == "MaxPool":
            attrs["dilations"] = [dilation, dilation]
    nodes = [h.make_node(op, ins, ["y"], name="p", **attrs), h.make_node("Relu", ["y"], ["z"])]
    g = h.make_graph(nodes, "ap", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 2, size, size + 1])],
                     [h.make_tensor_value_info("z", TP.FLOAT, ["N", 3, "h", "w"])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride,size", [(1, 7), (2, 7), (3, 8)])
def test_auto_pads_are_written_out_as_the_same_padding(op, mode, stride, size):
    """auto_pad SAME_UPPER / SAME_LOWER / VALID (Keras's "same" and "valid" as tf2onnx writes
    them) becomes explicit pads on an input of static size: the values onnxruntime computes
    from the auto_pad form, for odd and even sizes and strides."""
    m = _auto_pad_net(op, mode, stride, 1, size)
    nm = normalize(m)
    node = next(n for n in nm.model.graph.node if n.op_type == op)
    assert all(a.name != "auto_pad" or a.s == b"NOTSET" for a in node.attribute)
    x = np.random.default_rng(0).standard_normal((3, 2, size, size + 1)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        want = sess.run(None, {"x": x})[0]
    except Exception as e:   # onnxruntime's own SAME formula goes negative on some pools
        assert "padding values must be non-negative" in str(e) and (op, stride, size) in (
            ("MaxPool", 3, 8), ("AveragePool", 3, 8))
        # ONNX's rule by hand: 8 rows in windows of 3 by 3 need one more row (at the end for
        # SAME_UPPER, at the start for SAME_LOWER); 9 columns in windows of 2 by 3 need none
        # (onnxruntime's formula gives -1 there)
        pads = [0, 0, 1, 0] if mode == "SAME_UPPER" else [1, 0, 0, 0]
        flat = h.make_model(h.make_graph(
            [h.make_node(op, ["x"], ["y"], kernel_shape=[3, 2], strides=[stride] * 2, pads=pads),
             h.make_node("Relu", ["y"], ["z"])], "flat", list(m.graph.input), list(m.graph.output)),
            opset_imports=[h.make_opsetid("", 13)])
        want = ort.InferenceSession(flat.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(nm.model, x).outputs[0], want, rtol=1e-5, atol=1e-5)
    from onnx_snn.calibrate import make_session        # the DNN itself runs too
    np.testing.assert_allclose(make_session(m).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_a_dilated_same_conv_converts_and_its_dnn_evaluates(mode, tmp_path):
    """onnxruntime refuses a dilated Conv with auto_pad SAME_* at run time ("Dilation not
    supported for AutoPadType"): such a DNN was exit 4 to convert and to evaluate. Its pads
    are written out, for the conversion and for any session of the DNN itself, and give
    PyTorch's "same" convolution (the odd pad at the end for SAME_UPPER, at the start for
    SAME_LOWER)."""
    torch = pytest.importorskip("torch")
    from onnx_snn.calibrate import make_session
    F = torch.nn.functional
    m = _auto_pad_net("Conv", mode, 1, 3, 7)
    x = np.random.default_rng(0).standard_normal((3, 2, 7, 8)).astype(np.float32)
    w = torch.from_numpy(np.array(numpy_helper.to_array(m.graph.initializer[0])))
    # kernel 3 x 2 dilated by 3: pads of 6 and 3 in all; the odd one's extra at the end
    # (SAME_UPPER, as PyTorch's "same") or at the start (SAME_LOWER)
    xt = torch.from_numpy(x)
    xt = F.pad(xt, (1, 2, 3, 3)) if mode == "SAME_UPPER" else F.pad(xt, (2, 1, 3, 3))
    want = torch.relu(F.conv2d(xt, w, dilation=3)).numpy()
    if mode == "SAME_UPPER":
        np.testing.assert_allclose(want, torch.relu(F.conv2d(torch.from_numpy(x), w, padding="same",
                                                             dilation=3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(make_session(m).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(normalize(m).model, x).outputs[0], want, rtol=1e-5, atol=1e-5)
    snn = onnx_snn.convert(m, x, timesteps=2, method="max", show_progress=False, reconstruct=0)
    assert snn.model is not None


#: auto_pad SAME_* forms onnxruntime refuses at run time on a free size (op, stride, dilation,
#: what the message names): a dilated Conv; a pool of a 3 x 2 window with stride 4 (on 8
#: columns ONNX's padding is -2: "padding values must be non-negative")
REFUSED_AUTO_PADS = [("Conv", 1, 3, "dilated convolution"),
                     ("MaxPool", 4, 1, "stride is longer than its window"),
                     ("AveragePool", 4, 1, "stride is longer than its window")]


@pytest.mark.parametrize("op,stride,dilation,named", REFUSED_AUTO_PADS)
def test_a_refused_same_form_of_free_size_is_pinned_to_the_data_and_converts(op, stride, dilation,
                                                                             named):
    """On an input whose spatial size the model leaves free the padding cannot be written
    out: normalizing it alone says so, naming the node (onnxruntime ran nothing: exit 4 at a
    run), and convert pins the input to the calibration data's size, writes the pads out and
    converts, to the same spiking model as the same net with its pads written."""
    from onnx_snn.errors import UnsupportedModelError
    m = _auto_pad_net(op, "SAME_UPPER", stride, dilation, 7)
    for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "side"
    with pytest.raises(UnsupportedModelError, match=f"node 'p'.*{named}.*fixed input size"):
        normalize(m)
    x = np.random.default_rng(0).standard_normal((16, 2, 7, 8)).astype(np.float32)
    free = onnx_snn.convert(m, x, timesteps=2, method="datta", show_progress=False, reconstruct=0)
    assert any("was pinned to the calibration data's" in n for n in free.report["notes"])
    fixed = _auto_pad_net(op, "SAME_UPPER", stride, dilation, 7)
    want = onnx_snn.convert(fixed, x, timesteps=2, method="datta", show_progress=False, reconstruct=0)
    np.testing.assert_array_equal(run(free.model, x).outputs[0], run(want.model, x).outputs[0])


@pytest.mark.parametrize("op,stride,dilation,named", REFUSED_AUTO_PADS)
def test_a_refused_same_dnn_of_free_size_evaluates_at_its_datas_size(caplog, op, stride,
                                                                     dilation, named):
    """onnxruntime refuses the DNN itself at its first run; eval runs it at the data's size
    (pinned as convert pins it, with a warning) and gives the same outputs as the net with
    the size fixed."""
    from onnx_snn.runtimes.ort import ModelRunner
    m = _auto_pad_net(op, "SAME_UPPER", stride, dilation, 7)
    fixed = ModelRunner(m).run({"x": np.ones((2, 2, 7, 8), np.float32)}).outputs[0]
    for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "side"
    runner = ModelRunner(m)
    with caplog.at_level("WARNING"):
        got = runner.run({"x": np.ones((2, 2, 7, 8), np.float32)}).outputs[0]
    assert runner.pinned and "run at the data's size (x [2, 7, 8])" in caplog.text
    np.testing.assert_array_equal(got, fixed)
