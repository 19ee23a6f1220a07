"""The command line: convert and eval end to end, and bad input handled cleanly."""
import importlib.util
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr

import numpy as np
import onnx
import pytest
from onnx import helper as h

import builders as B
from onnx_snn.cli import main
from onnx_snn.spiking import format as F


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(B.vgg(13, "clip").SerializeToString())
    x = B.rand_input(64)
    np.save(tmp_path / "calib.npy", x)
    y = np.random.default_rng(0).integers(0, 10, 64)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    return tmp_path


def test_the_batch_size_does_not_change_the_conversion(files, capsys):
    """--batch-size is a memory setting: the refinement holds out every second image, not
    every second batch, so one batch of the whole set refits layers too (it refitted none,
    with a warning), and the file is the one a smaller batch writes."""
    from onnx import numpy_helper
    got = []
    for batch in ("64", "32", "24"):                             # 64 samples: one batch at 64
        out = files / f"b{batch}.snn.onnx"
        assert main(["convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                     str(files / "calib.npy"), "-T", "2", "--batch-size", batch]) == 0
        assert "no layer was refitted" not in capsys.readouterr().err
        model = onnx.load(str(out))
        assert json.loads(F.metadata(model)[F.META_HISTORY])[0]["weight_calibration"] is True
        got.append({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    for other in got[1:]:
        assert other.keys() == got[0].keys()
        for k, v in got[0].items():
            np.testing.assert_allclose(other[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_convert_eval_info(files, capsys):
    out = files / "model.snn.onnx"
    rc = main(["convert", str(files / "model.onnx"), "-o", str(out), "--calib",
               str(files / "calib.npy"), "-T", "3", "--method", "datta",
               "--report", str(files / "r.json"), "--step-graph", str(files / "step.onnx")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "lif0" in text and "wrote" in text
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    report = json.loads((files / "r.json").read_text())
    assert report["timesteps"] == 3 and len(report["sites"]) == 3
    for s in report["sites"]:
        assert {"mu", "alpha", "beta", "threshold", "amplitude", "objective_value", "sample_size"} <= set(s)
    assert main(["eval", str(out), "--data", str(files / "test.npz"), "--json", str(files / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "SNN (datta, T=3) top-1" in text and "spikes/neuron" in text
    ev = json.loads((files / "e.json").read_text())
    assert ev["kind"] == "snn" and set(ev["sites"]) == {"lif0", "lif1", "lif2"}
    assert main(["eval", str(files / "model.onnx"), "--data", str(files / "test.npz")]) == 0
    assert "DNN top-1" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "T=3" in text and "preprocessing: none recorded" in text    # (arrays: as given)
    pre = files / "pre.snn.onnx"               # what eval and finetune will read, shown
    m = onnx.load(str(out))
    m.metadata_props.add(key="onnx_snn.preprocess", value='{"mean": [0.5], "std": [0.25]}')
    m.metadata_props.add(key="onnx_snn.dataset", value="fashion-mnist")
    onnx.save(m, str(pre))
    assert main(["info", str(pre)]) == 0
    text = capsys.readouterr().out
    assert "preprocessing: mean 0.5, std 0.25" in text and "dataset: fashion-mnist" in text
    for bad in ('["0.5"]', "[true]"):     # numbers as strings or bools: damage to every command
        F.set_metadata(m, {"onnx_snn.preprocess": '{"mean": %s, "std": [0.25]}' % bad})
        onnx.save(m, str(pre))              # (info failed with exit 70, eval took "0.5" as 0.5)
        for argv in (["info", str(pre)], ["eval", str(pre), "--data", str(files / "test.npz")]):
            assert main(argv) == 3, argv
            assert "preprocess has mean" in capsys.readouterr().err
    assert main(["eval", str(files / "step.onnx"), "--data", str(files / "test.npz")]) == 0


def test_eval_notes_a_batch_lowered_to_fit_memory(files, capsys, monkeypatch):
    """Without --batch-size, a spiking model whose batch would hold more than EVAL_BATCH_BYTES
    runs in smaller batches, with a note naming the option; -q drops the note."""
    import importlib
    ev = importlib.import_module("onnx_snn.evaluate")
    out = files / "m.snn.onnx"
    assert main(["-q", "convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                 str(files / "calib.npy"), "--method", "datta"]) == 0
    info = F.read_info(onnx.load(str(out)), "m")
    monkeypatch.setattr(ev, "EVAL_BATCH_BYTES", 10 * ev.sample_bytes(info))
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(files / "test.npz")]) == 0
    err = capsys.readouterr().err
    assert "note: evaluated in batches of 10 samples" in err and "--batch-size" in err
    assert main(["eval", str(out), "--data", str(files / "test.npz"), "--batch-size", "10"]) == 0
    assert "note: evaluated" not in capsys.readouterr().err
    assert main(["-q", "eval", str(out), "--data", str(files / "test.npz")]) == 0
    assert "note" not in capsys.readouterr().err


def test_default_output_name(files):
    assert main(["-q", "convert", str(files / "model.onnx"), "--calib", str(files / "calib.npy")]) == 0
    assert (files / "model.snn.onnx").exists()


def test_default_output_names_ignore_the_extensions_case():
    from onnx_snn.cli import _default_output
    assert _default_output("d/Net.ONNX") == "d/Net.snn.onnx"
    assert _default_output("d/net") == "d/net.snn.onnx"
    assert _default_output("d/net.SNN.onnx", ".deploy.onnx", (".snn.onnx", ".onnx")) == "d/net.deploy.onnx"


def test_quiet_convert_and_eval_print_the_result_line_only(files, capsys):
    out = files / "quiet.snn.onnx"
    assert main(["-q", "convert", str(files / "model.onnx"), "-o", str(out),
                 "--calib", str(files / "calib.npy"), "-T", "2"]) == 0
    got = capsys.readouterr()
    lines = got.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out}"), lines
    # the one note kept: the outputs are no longer the DNN's probabilities (a Softmax dropped)
    notes = [n for n in got.err.splitlines() if n.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: dropped the final Softmax"), got.err
    assert main(["eval", str(out), "--data", str(files / "test.npz"), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "top-1" in lines[0], lines
    assert main(["eval", str(out), "--data", str(files / "test.npz")]) == 0   # not quiet: the table
    assert "spikes/neuron" in capsys.readouterr().out


def run_cli(*args):
    env = {**os.environ, "ONNX_SNN_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "onnx_snn", *args], capture_output=True,
                          text=True, env=env)


def assert_clean_error(proc, code, *needles):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("onnx-snn: error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def no_leftovers(folder, allowed):
    assert sorted(p.name for p in folder.iterdir()) == sorted(allowed)


def test_truncated_model(files):
    data = (files / "model.onnx").read_bytes()
    (files / "trunc.onnx").write_bytes(data[: len(data) // 3])
    p = run_cli("convert", str(files / "trunc.onnx"), "--calib", str(files / "calib.npy"),
                "-o", str(files / "out.onnx"))
    assert_clean_error(p, 3, "trunc.onnx")
    assert not (files / "out.onnx").exists()


def test_not_onnx(files):
    (files / "text.onnx").write_text("hello, I am not a model")
    assert_clean_error(run_cli("eval", str(files / "text.onnx"), "--data", str(files / "test.npz")),
                       3, "text.onnx")
    assert_clean_error(run_cli("eval", str(files / "missing.onnx"), "--data", "x.npz"), 3, "no such file")


def test_checker_failure(files):
    m = B.vgg(13, "clip")
    m.graph.node[0].input[1] = "does_not_exist"
    (files / "broken.onnx").write_bytes(m.SerializeToString())
    assert_clean_error(run_cli("convert", str(files / "broken.onnx"), "--calib",
                               str(files / "calib.npy")), 3, "checker")


def test_unsupported_op_names_the_node(files):
    (files / "sig.onnx").write_bytes(B.with_node(B.vgg(13, "clip"), "Sigmoid").SerializeToString())
    p = run_cli("convert", str(files / "sig.onnx"), "--calib", str(files / "calib.npy"))
    assert_clean_error(p, 4, "the_sigmoid", "Sigmoid")
    assert not (files / "sig.snn.onnx").exists()


def test_bad_calibration_data(files):
    np.save(files / "wrong.npy", np.zeros((4, 3, 32, 32), np.float32))
    assert_clean_error(run_cli("convert", str(files / "model.onnx"), "--calib",
                               str(files / "wrong.npy")), 5, "does not fit")
    bad = B.rand_input(8)
    bad[2, 0, 0, 0] = np.nan
    np.save(files / "nan.npy", bad)
    assert_clean_error(run_cli("convert", str(files / "model.onnx"), "--calib",
                               str(files / "nan.npy")), 5, "NaN")
    no_leftovers(files, ["model.onnx", "calib.npy", "test.npz", "wrong.npy", "nan.npy"])


def test_missing_dataset(files, tmp_path):
    env_dir = tmp_path / "empty"
    env_dir.mkdir()
    p = run_cli("convert", str(files / "model.onnx"), "--calib", "cifar10", "--data-dir", str(env_dir))
    assert_clean_error(p, 5, "cifar10 not found")


def test_output_paths(files):
    m = str(files / "model.onnx")
    before = (files / "model.onnx").read_bytes()
    assert_clean_error(run_cli("convert", m, "-o", m, "--calib", str(files / "calib.npy")), 6, "input")
    assert (files / "model.onnx").read_bytes() == before
    assert_clean_error(run_cli("convert", m, "-o", str(files / "nope" / "x.onnx"), "--calib",
                               str(files / "calib.npy")), 6, "does not exist")
    no_leftovers(files, ["model.onnx", "calib.npy", "test.npz"])


def test_eval_dnn_labels_mismatch(files):
    np.savez(files / "odd.npz", x=B.rand_input(4), y=np.arange(3))
    assert_clean_error(run_cli("eval", str(files / "model.onnx"), "--data", str(files / "odd.npz")),
                       5, "labels")


def test_eval_reads_one_hot_labels_and_refuses_soft_ones(files):
    """Labels as one-hot rows (Keras's to_categorical) score as their class indices do;
    soft or multi-label rows are refused (exit 5), saying what labels are taken."""
    x, y = B.rand_input(64), np.random.default_rng(0).integers(0, 10, 64)
    np.savez(files / "hot.npz", x=x, y=np.eye(10, dtype=np.float32)[y])
    a, b = files / "a.json", files / "b.json"
    assert main(["-q", "eval", str(files / "model.onnx"), "--data", str(files / "test.npz"),
                 "--json", str(a)]) == 0
    assert main(["-q", "eval", str(files / "model.onnx"), "--data", str(files / "hot.npz"),
                 "--json", str(b)]) == 0
    assert json.loads(a.read_text())["top1"] == json.loads(b.read_text())["top1"]
    soft = np.full((64, 10), 0.1, np.float32)
    np.savez(files / "soft.npz", x=x, y=soft)
    assert_clean_error(run_cli("eval", str(files / "model.onnx"), "--data", str(files / "soft.npz")),
                       5, "one-hot")
    # rows wider than the model's classes, though every 1 sits in its first ten columns
    np.savez(files / "wide.npz", x=x, y=np.eye(12, dtype=np.float32)[y])
    assert_clean_error(run_cli("eval", str(files / "model.onnx"), "--data", str(files / "wide.npz")),
                       5, "one-hot labels of 12 columns, but the model outputs 10 classes")


def test_info_on_a_dnn(files):
    assert_clean_error(run_cli("info", str(files / "model.onnx")), 8, "not a spiking model")


def test_usage_errors():
    p = run_cli("convert")
    assert p.returncode == 2 and "usage" in p.stderr
    p = run_cli("convert", "m.onnx", "--method", "magic")
    assert p.returncode == 2 and "invalid choice" in p.stderr


@pytest.mark.parametrize("argv, what", [
    (["convert", "m.onnx", "--calib", "a.npy", "-T", "2", "--timesteps", "4"],
     "-T/--timesteps given twice (2 and 4); give it once"),
    (["convert", "m.onnx", "--outputs", "x", "--outputs", "y"],
     "--outputs given twice (x and y); give it once, with every value after it"),
    (["eval", "m.onnx", "--data", "a.npz", "--data", "b.npz"], "--data given twice"),
    (["finetune", "m.onnx", "--lr", "1e-3", "--lr", "1e-4"], "--lr given twice"),
    (["analyze", "m.onnx", "-T", "1", "-T", "1"], "-T/--timesteps given twice")])
def test_an_option_given_twice_is_a_usage_error(argv, what, capsys):
    """argparse keeps the last of an option given twice without a word (`-T 2 ... -T 4`
    converted at T = 4): every option that takes a value, in every command, is refused
    when repeated (exit 2), naming both values; flags may repeat."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and what in capsys.readouterr().err
    from onnx_snn.cli import build_parser
    ns = build_parser().parse_args(["-q", "convert", "m.onnx", "-q", "--pool-first",
                                    "--pool-first", "-T", "3"])
    assert ns.timesteps == 3 and ns.pool_first and ns.quiet
    assert not any(k.startswith("_") for k in vars(ns))     # no bookkeeping left behind


def test_help_teaches():
    p = run_cli("convert", "--help")
    assert p.returncode == 0
    for word in ("datta", "deng", "examples", "--calib", "-T"):
        assert word in p.stdout


def test_analyze_dnn_and_snn(files, capsys):
    m, out = str(files / "model.onnx"), str(files / "m.snn.onnx")
    assert main(["-q", "convert", m, "-o", out, "--calib", str(files / "calib.npy")]) == 0
    assert main(["-q", "analyze", m]) == 0
    assert "DNN FLOPs" in capsys.readouterr().out
    assert main(["-q", "eval", out, "--data", str(files / "test.npz"), "--json", str(files / "ev.json")]) == 0
    capsys.readouterr()
    assert main(["-q", "analyze", out, "--rates", str(files / "ev.json"), "--dnn", m,
                 "--json", str(files / "a.json"), "--preset", "45nm-int32"]) == 0
    text = capsys.readouterr().out
    assert "SNN FLOPs" in text and "lif0" in text
    assert "plain {site: rate}" not in text          # eval's JSON says its model and T
    a = json.loads((files / "a.json").read_text())
    assert a["totals"]["dnn_energy_pj"] > a["totals"]["snn_energy_pj"] > 0
    p = run_cli("analyze", m, "--rates", str(files / "ev.json"))
    assert_clean_error(p, 8, "plain DNN")
    # rates it records itself are this model's: no note that nothing checked them
    assert main(["analyze", out, "--data", str(files / "test.npz"), "--limit", "8"]) == 0
    text = capsys.readouterr().out
    assert "SNN FLOPs" in text and "plain {site: rate}" not in text


def test_missing_model_and_folder(files):
    assert_clean_error(run_cli("convert", str(files / "nope.onnx"), "--calib", str(files / "calib.npy")),
                       3, "no such file")
    assert_clean_error(run_cli("convert", str(files), "--calib", str(files / "calib.npy")), 3, "folder")


def test_all_outputs_checked_before_work(files):
    m = str(files / "model.onnx")
    out = str(files / "o.snn.onnx")
    assert_clean_error(run_cli("convert", m, "-o", out, "--calib", str(files / "calib.npy"),
                               "--step-graph", str(files / "no" / "s.onnx")), 6, "does not exist")
    assert_clean_error(run_cli("convert", m, "-o", out, "--calib", str(files / "calib.npy"),
                               "--step-graph", m), 6, "input")
    assert_clean_error(run_cli("convert", m, "-o", out, "--calib", str(files / "calib.npy"),
                               "--report", out), 6, "twice")
    no_leftovers(files, ["model.onnx", "calib.npy", "test.npz"])


@pytest.mark.parametrize("args", [["--calib-samples", "-5"], ["--percentile", "150"],
                                  ["--beta-step", "5"], ["-T", "0"], ["--relu-percentile", "101"]])
def test_bad_numbers_are_usage_errors(files, args):
    p = run_cli("convert", str(files / "model.onnx"), "--calib", str(files / "calib.npy"), *args)
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_outputs_are_readable_by_others(files):
    os.umask(0o022)
    out = files / "o.snn.onnx"
    assert main(["-q", "convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                 str(files / "calib.npy")]) == 0
    assert out.stat().st_mode & 0o777 == 0o644


def onnx_snn_convert(path, x):
    import onnx_snn
    return onnx_snn.convert(str(path), x, timesteps=2, method="datta", show_progress=False).model


def test_convert_keeps_external_data_external(tmp_path, monkeypatch):
    """A source whose weights are in an external-data file gives outputs that are so too
    (each its own <name>.data), the source's data file untouched, and a model that runs from
    another folder."""
    import hashlib
    from onnx_snn.runtimes.ort import run
    src = tmp_path / "src.onnx"
    onnx.save_model(B.vgg(13, "clip"), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="src.onnx.data", size_threshold=1024)
    before = hashlib.sha256((tmp_path / "src.onnx.data").read_bytes()).hexdigest()
    x = B.rand_input(24)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "out").mkdir()
    out, step = tmp_path / "out" / "snn.onnx", tmp_path / "out" / "step.onnx"
    assert main(["convert", str(src), "--calib", str(tmp_path / "x.npy"), "-T", "2", "--method",
                 "datta", "-q", "-o", str(out), "--step-graph", str(step)]) == 0
    assert (tmp_path / "out" / "snn.onnx.data").stat().st_size > 0
    assert (tmp_path / "out" / "step.onnx.data").stat().st_size > 0
    assert hashlib.sha256((tmp_path / "src.onnx.data").read_bytes()).hexdigest() == before
    from onnx_snn.graph import walk
    head = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for g in walk.subgraphs(head.graph) for t in g.initializer)
    ref = run(onnx_snn_convert(src, x), x).outputs[0]
    monkeypatch.chdir("/")
    np.testing.assert_array_equal(run(str(out), x).outputs[0], ref)
    # an output whose data file would be the source's is refused before the work
    assert main(["convert", str(src), "--calib", str(tmp_path / "x.npy"), "-q", "-o",
                 str(tmp_path / "src.onnx.data")]) != 0


def test_convert_and_eval_a_two_input_model_from_a_npz(tmp_path):
    """A model with inputs x and z: a .npz with arrays x, z (and y) feeds both, on the
    command line too; a one-input model still takes the 'x' of a .npz with other arrays."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    import onnx_snn
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w2")]
    nodes = [h.make_node("Concat", ["x", "z"], ["c0"], axis=1),
             h.make_node("Conv", ["c0", "w"], ["c"], pads=[1] * 4), h.make_node("Relu", ["c"], ["r"]),
             h.make_node("GlobalAveragePool", ["r"], ["p"]), h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    vi = [h.make_tensor_value_info(n, TP.FLOAT, ["N", 1, 6, 6]) for n in ("x", "z")]
    g = h.make_graph(nodes, "two", vi, [h.make_tensor_value_info("y", TP.FLOAT, ["N", 3])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), str(tmp_path / "two.onnx"))
    x, z = (rng.random((32, 1, 6, 6)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "d.npz", x=x, z=z, y=rng.integers(0, 3, 32))
    out = tmp_path / "two.snn.onnx"
    assert main(["-q", "convert", str(tmp_path / "two.onnx"), "--calib", str(tmp_path / "d.npz"),
                 "-T", "2", "-o", str(out)]) == 0
    assert main(["-q", "eval", str(out), "--data", str(tmp_path / "d.npz")]) == 0
    one = tmp_path / "one.onnx"
    one.write_bytes(B.vgg(13, "clip").SerializeToString())
    np.savez(tmp_path / "extra.npz", x=B.rand_input(16), mask=np.ones(16), y=np.zeros(16, int))
    assert main(["-q", "convert", str(one), "--calib", str(tmp_path / "extra.npz"), "-T", "2",
                 "--method", "datta", "-o", str(tmp_path / "one.snn.onnx")]) == 0
    with pytest.raises(Exception, match=r"inputs \['x', 'z'\].*np.savez"):
        onnx_snn.convert(str(tmp_path / "two.onnx"), x, show_progress=False)


def test_convert_pool_first(files, capsys):
    out = files / "pf.snn.onnx"
    assert main(["convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                 str(files / "calib.npy"), "--pool-first"]) == 0
    cap = capsys.readouterr()
    assert "--pool-first: moved 1 max pool(s) ahead of their activation" in cap.err
    assert "8x6x6" in cap.out      # the second site sits on the pooled map (8 x 12/2 x 12/2)
    assert main(["eval", str(out), "--data", str(files / "test.npz")]) == 0


def test_convert_signed_spikes(files, capsys):
    """--signed-spikes: version 3, recorded in the history; eval, analyze and deploy read it."""
    out, dep = files / "signed.snn.onnx", files / "signed.deploy.onnx"
    assert main(["convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                 str(files / "calib.npy"), "-T", "3", "--signed-spikes", "--deploy", str(dep)]) == 0
    info = F.read_info(onnx.load(str(out)))
    assert info.format_version == 3 and all(s.signed for s in info.sites)
    assert info.history[0]["signed_spikes"] is True
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(files / "test.npz")]) == 0
    loop = capsys.readouterr().out
    assert main(["eval", str(dep), "--data", str(files / "test.npz")]) == 0
    top1 = [line.split("top-1:")[1].split("%")[0] for line in (loop, capsys.readouterr().out)
            if "top-1:" in line]
    assert len(top1) == 2 and top1[0] == top1[1]
    assert main(["analyze", str(out), "--data", str(files / "test.npz")]) == 0


def test_convert_search_stride(files):
    out = files / "stride.snn.onnx"
    assert main(["-q", "convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                 str(files / "calib.npy"), "--search-stride", "4"]) == 0
    assert F.read_info(onnx.load(str(out))).history[0]["search_stride"] == 4
    with pytest.raises(SystemExit):
        main(["convert", str(files / "model.onnx"), "-o", str(out), "--calib",
              str(files / "calib.npy"), "--search-stride", "-1"])
    # 0, the default: automatic, recorded as what it was at that T (every 4th above T = 4)
    assert main(["-q", "convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                 str(files / "calib.npy"), "-T", "8"]) == 0
    assert F.read_info(onnx.load(str(out))).history[0]["search_stride"] == 4


@pytest.mark.parametrize("flags", [["--no-per-channel"], ["--search-stride", "4"],
                                   ["--no-weight-calibration", "--no-bias-correction"]])
def test_refinement_options_with_another_method_are_refused(files, flags):
    """Options of the refinement alone do nothing under datta/deng/max: refused (exit 2),
    not silently dropped; with --method refined they apply."""
    out = files / "opt.snn.onnx"
    p = run_cli("convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                str(files / "calib.npy"), "--method", "max", *flags)
    assert_clean_error(p, 2, "which --method max does not run")
    assert not out.exists()


@pytest.mark.parametrize("method,flags,said", [
    ("max", ["--beta-step", "0.2"], "--beta-step 0.2 sets the search of --method datta or refined"),
    ("deng", ["--beta-max", "5", "--beta-step", "0.1"], "--beta-step 0.1, --beta-max 5 set"),
    ("percentile", ["--percentile-step", "2"], "--percentile-step 2 sets"),
    ("datta", ["--percentile", "50"], "--percentile 50 sets the search of --method percentile"),
    ("refined", ["--percentile", "99"], "which --method refined does not run")])
def test_search_options_of_another_method_are_refused(files, method, flags, said):
    """A search option given to a method that does not run that search changed nothing,
    silently (an outside sweep: byte-identical thresholds); refused (exit 2) before the work."""
    out = files / "opt.snn.onnx"
    p = run_cli("convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                str(files / "calib.npy"), "--method", method, *flags)
    assert_clean_error(p, 2, said)
    assert not out.exists()


def test_the_search_strides_that_change_nothing_are_taken_with_another_method(files):
    """--search-stride 0 (automatic, the default) and 1 (every percentile: the default up to
    T = 4, and what it was before) change nothing under --method max: accepted, as before."""
    out = files / "stride1.snn.onnx"
    for k in ("0", "1"):
        assert main(["-q", "convert", str(files / "model.onnx"), "-o", str(out), "--calib",
                     str(files / "calib.npy"), "--method", "max", "--search-stride", k]) == 0


@pytest.mark.parametrize("elem", [onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                                  onnx.TensorProto.INT64])
def test_eval_feeds_a_dnn_input_in_its_declared_type(tmp_path, elem):
    """A DNN whose input is float16 or float64 (cast to float inside) is evaluated with its
    data in that type; an integer input is refused cleanly (exit 4), not an onnxruntime
    traceback."""
    from onnx import helper as oh
    rng = np.random.default_rng(0)
    w = oh.make_tensor("w", onnx.TensorProto.FLOAT, [3, 16], rng.normal(size=48).tolist())
    g = oh.make_graph([oh.make_node("Cast", ["x"], ["xf"], to=onnx.TensorProto.FLOAT),
                       oh.make_node("Flatten", ["xf"], ["f"]),
                       oh.make_node("Transpose", ["w"], ["wt"]),
                       oh.make_node("MatMul", ["f", "wt"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", elem, ["N", 1, 4, 4])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])], [w])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)])
    onnx.save(m, tmp_path / "m.onnx")
    x = rng.random((8, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 3)
    p = run_cli("eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"))
    if elem == onnx.TensorProto.INT64:
        assert_clean_error(p, 4, "input 'x' takes tensor(int64)")
    else:
        assert p.returncode == 0, p.stderr
        assert "DNN top-1" in p.stdout


def test_analyze_refuses_rates_of_another_model_or_another_T(files, tmp_path):
    """Rates measured on a model whose site has another neuron count, or at a T other than
    the -T asked for, would give a wrong table under the right header: refused."""
    snn = tmp_path / "a.snn.onnx"
    assert main(["-q", "convert", str(files / "model.onnx"), "-o", str(snn), "--calib",
                 str(files / "calib.npy"), "-T", "2"]) == 0
    rates = tmp_path / "r.json"
    assert main(["-q", "eval", str(snn), "--data", str(files / "test.npz"), "--json", str(rates)]) == 0
    assert main(["-q", "analyze", str(snn), "--rates", str(rates)]) == 0
    assert main(["-q", "analyze", str(snn), "--rates", str(rates), "-T", "2"]) == 0
    p = run_cli("analyze", str(snn), "--rates", str(rates), "-T", "4")
    assert_clean_error(p, 2, "measured at T=2, not the T=4 asked for (-T)")
    other = json.loads(rates.read_text())
    other["sites"]["lif0"]["neurons"] += 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    p = run_cli("analyze", str(snn), "--rates", str(tmp_path / "other.json"))
    assert_clean_error(p, 5, "site lif0 has", "measured on another model")



def test_evaluate_takes_the_object_convert_returns_and_analyze_refuses_a_spiking_dnn(files, tmp_path):
    """The Python API: evaluate(convert(...)) before saving; analyze --dnn given a spiking
    model is a usage error (exit 2), not a silent comparison with the wrong graph."""
    import onnx_snn
    snn = onnx_snn.convert(str(files / "model.onnx"), str(files / "calib.npy"), timesteps=2,
                           show_progress=False)
    direct = onnx_snn.evaluate(snn, str(files / "test.npz"), show_progress=False)
    snn.save(tmp_path / "s.snn.onnx")
    saved = onnx_snn.evaluate(str(tmp_path / "s.snn.onnx"), str(files / "test.npz"),
                              show_progress=False)
    assert direct.kind == "snn" and direct.top1 == saved.top1
    p = run_cli("analyze", str(tmp_path / "s.snn.onnx"), "--dnn", str(tmp_path / "s.snn.onnx"))
    assert_clean_error(p, 4, "a spiking model, not the DNN")   # as convert refuses one


def test_analyze_of_a_dnn_with_free_sizes_takes_them_from_its_data(tmp_path):
    from onnx import helper as oh
    rng = np.random.default_rng(0)
    inits = [oh.make_tensor("w", onnx.TensorProto.FLOAT, [4, 1, 3, 3], rng.normal(size=36).tolist()),
             oh.make_tensor("wh", onnx.TensorProto.FLOAT, [10, 4], rng.normal(size=40).tolist())]
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                       oh.make_node("Relu", ["c"], ["a"]),
                       oh.make_node("GlobalAveragePool", ["a"], ["p"]),
                       oh.make_node("Flatten", ["p"], ["f"]),
                       oh.make_node("Gemm", ["f", "wh"], ["y"], transB=1)], "g",
                      [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, "H", "W"])],
                      [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.random((4, 1, 8, 8)).astype(np.float32), y=np.arange(4))
    p = run_cli("analyze", str(tmp_path / "m.onnx"))
    assert_clean_error(p, 4, "--data")
    p = run_cli("analyze", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                "--json", str(tmp_path / "a.json"))
    assert p.returncode == 0, p.stderr
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["totals"]["dnn_flops"] == 4 * 9 * 64 + 40      # the 8 x 8 samples' MACs
    assert "is not used" not in p.stderr
    # a DNN of fixed sizes does not use --data: said (it ran without a word)
    (tmp_path / "fixed.onnx").write_bytes(B.vgg(13, "clip").SerializeToString())
    np.savez(tmp_path / "f.npz", x=B.rand_input(4), y=np.arange(4))
    p = run_cli("analyze", str(tmp_path / "fixed.onnx"), "--data", str(tmp_path / "f.npz"))
    assert p.returncode == 0 and "--data " + str(tmp_path / "f.npz") + " is not used" in p.stderr


def test_eval_says_which_output_it_scores(tmp_path):
    from onnx import helper as oh
    rng = np.random.default_rng(0)
    w = oh.make_tensor("w", onnx.TensorProto.FLOAT, [16, 3], rng.normal(size=48).tolist())
    g = oh.make_graph([oh.make_node("Flatten", ["x"], ["f"]),
                       oh.make_node("MatMul", ["f", "w"], ["logits"]),
                       oh.make_node("Relu", ["logits"], ["aux"])], "g",
                      [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 4])],
                      [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 3]),
                       oh.make_tensor_value_info("aux", onnx.TensorProto.FLOAT, ["N", 3])], [w])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=rng.random((6, 1, 4, 4)).astype(np.float32), y=np.arange(6) % 3)
    p = run_cli("eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                "--json", str(tmp_path / "e.json"))
    assert p.returncode == 0, p.stderr
    assert "top-1 of the first output 'logits' (the model has 2 outputs" in p.stderr
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["scored_output"] == "logits" and e["outputs"] == 2
    p = run_cli("eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                "--output", "aux", "--json", str(tmp_path / "a.json"))
    assert p.returncode == 0 and "top-1 of the first output" not in p.stderr, p.stderr
    assert json.loads((tmp_path / "a.json").read_text())["scored_output"] == "aux"
    p = run_cli("eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                "--output", "nope")
    assert p.returncode == 2 and "'nope' is not an output of" in p.stderr
    assert "its outputs are: logits, aux" in p.stderr and "Traceback" not in p.stderr


def _named_eval_matches(tmp_path, models, npz, mean: str, std: str) -> None:
    """eval of the first 200 Fashion-MNIST test images by name (with ``mean``/``std``) gives
    each model the top-1 of the same images laid out by hand in ``npz``."""
    for model in models:
        a, b = tmp_path / "a.json", tmp_path / "b.json"
        assert main(["-q", "eval", str(model), "--data", "fashion-mnist", "--limit", "200",
                     "--mean", mean, "--std", std, "--json", str(a)]) == 0
        assert main(["-q", "eval", str(model), "--data", str(npz), "--json", str(b)]) == 0
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
        assert ra["top1"] == rb["top1"], (model, ra["top1"], rb["top1"])


def _nhwc_model(seed=0) -> onnx.ModelProto:
    """A channels-last image model as tf2onnx, Keras and JAX export them: [N, 28, 28, 1] in,
    a Transpose to NCHW before the first convolution."""
    g = B.GraphBuilder(13, seed)
    x = g.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    x = g.act(g.conv(x, 1, 8, stride=2), "clip")
    x = g.act(g.conv(x, 8, 8, stride=2), "clip")
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    return g.model("image", g.gemm(x, 8, 10), [28, 28, 1], 10)


def test_named_datasets_feed_a_channels_last_model(tmp_path):
    """A named dataset's images are fed to a channels-last model in its layout (they were
    refused as [N, 1, 28, 28]): convert, eval and analyze give what the same images
    transposed by hand give."""
    from onnx_snn.datasets import load_fashion_mnist, to_input_layout
    dnn = tmp_path / "nhwc.onnx"
    onnx.save(_nhwc_model(), str(dnn))
    snn = tmp_path / "nhwc.snn.onnx"
    assert main(["-q", "convert", str(dnn), "--calib", "fashion-mnist", "--calib-samples", "64",
                 "-o", str(snn)]) == 0
    test = load_fashion_mnist("test")
    npz = tmp_path / "test_nhwc.npz"
    np.savez(npz, x=test.x[:200].transpose(0, 2, 3, 1), y=test.y[:200])
    _named_eval_matches(tmp_path, (dnn, snn), npz, "0", "1")
    assert main(["-q", "analyze", str(snn), "--data", "fashion-mnist", "--limit", "64"]) == 0
    # the layout is changed only where the input's dims say channels-last
    x = np.zeros((2, 3, 32, 32), np.float32)
    for dims, want in [([None, 32, 32, 3], (2, 32, 32, 3)), ([None, 3, 32, 32], (2, 3, 32, 32)),
                       ([None, None, None, None], (2, 3, 32, 32)), ([None, 32, 32, 1], (2, 3, 32, 32)),
                       ([None, 3072], (2, 3, 32, 32))]:
        assert to_input_layout(x, [("x", dims)], "t").shape == want, dims
    assert to_input_layout(x, [("a", [None, 32, 32, 3]), ("b", [None, 1])], "t").shape == x.shape


def _mlp_model(in_shape, seed=0) -> onnx.ModelProto:
    """An MLP for one-channel 28 x 28 images that takes them without a channel axis:
    [N, 28, 28] (a Keras model whose first layer is Flatten) or already flat, [N, 784]."""
    g = B.GraphBuilder(13, seed)
    x = g.node("Flatten", ["image"]) if len(in_shape) > 1 else "image"
    x = g.act(g.gemm(x, 784, 32, matmul=True), "relu")
    return g.model("image", g.gemm(x, 32, 10, matmul=True), list(in_shape), 10)


@pytest.mark.parametrize("in_shape", [(28, 28), (784,)], ids=["no-channel-axis", "flat"])
def test_named_datasets_feed_a_model_without_a_channel_axis(in_shape, tmp_path):
    """A one-channel dataset's [N, 1, 28, 28] images are fed to a model that takes [N, 28, 28]
    or [N, 784] (they were refused as a shape mismatch): convert, eval and finetune's loader
    give what the same images reshaped by hand give. A flat input of several channels stays
    refused (NCHW or NHWC order is ambiguous)."""
    from onnx_snn.datasets import load_fashion_mnist, to_input_layout
    dnn = tmp_path / "mlp.onnx"
    onnx.save(_mlp_model(in_shape), str(dnn))
    snn = tmp_path / "mlp.snn.onnx"
    assert main(["-q", "convert", str(dnn), "--calib", "fashion-mnist", "--calib-samples", "64",
                 "--mean", "0.286", "--std", "0.353", "-o", str(snn)]) == 0
    test = load_fashion_mnist("test")
    npz = tmp_path / "test_mlp.npz"
    np.savez(npz, x=((test.x[:200] - 0.286) / 0.353).reshape(200, *in_shape), y=test.y[:200])
    _named_eval_matches(tmp_path, (dnn, snn), npz, "0.286", "0.353")
    pytest.importorskip("torch")
    from onnx_snn.runtimes.torch.finetune import load_split
    from onnx_snn.spiking import format as fmt
    view = fmt.read_spiking(onnx.load(str(snn)), str(snn))
    train = load_split(view.model, "fashion-mnist", "train", 8, None, view)
    assert train.x.shape == (8, *in_shape)
    x1, x3 = np.zeros((2, 1, 28, 28), np.float32), np.zeros((2, 3, 32, 32), np.float32)
    assert to_input_layout(x1, [("x", [None, *in_shape])], "t").shape == (2, *in_shape)
    for free in ([None, None], [None, None, None], [None, 28, None]):          # unknown: kept
        assert to_input_layout(x1, [("x", free)], "t").shape == x1.shape, free
    assert to_input_layout(x3, [("x", [None, 32, 96])], "t").shape == x3.shape
    assert to_input_layout(x3, [("x", [None, 3072])], "t").shape == x3.shape


def test_named_datasets_feed_a_flat_input_with_unit_axes():
    """[N, 1, 784] (a 1-D convolution over the flattened image) and [N, 784, 1] take a
    one-channel dataset's images in the same memory order (an outside sweep found them
    refused, with advice to reshape a named dataset); several channels stay refused."""
    from onnx_snn.datasets import to_input_layout
    x1 = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 1, 28, 28)
    for dims in ([1, 784], [784, 1], [1, 1, 28, 28]):
        got = to_input_layout(x1, [("x", [None, *dims])], "t")
        assert got.shape == (2, *dims) and np.array_equal(got.ravel(), x1.ravel()), dims
    x3 = np.zeros((2, 3, 32, 32), np.float32)
    assert to_input_layout(x3, [("x", [None, 1, 3072])], "t").shape == x3.shape


def test_a_fully_convolutional_classifier_is_scored(tmp_path):
    """A classifier whose scores come out as [N, classes, 1, 1] (a 1x1 convolution and a global
    pool, as the ONNX model zoo's SqueezeNet and DenseNet end; eval and finetune refused it):
    eval gives the top-1 of the argmax over the classes for the DNN and the spiking model, and
    fine-tuning trains it."""
    from onnx_snn.runtimes.ort import ModelRunner
    g = B.GraphBuilder(13, 0)
    x = g.act(g.conv("image", 1, 8, stride=2), "clip")
    x = g.node("GlobalAveragePool", [g.conv(x, 8, 10, k=1, pad=0)])
    m = g.model("image", x, [1, 28, 28], 10)
    m.graph.output[0].type.tensor_type.shape.dim.extend([onnx.TensorShapeProto.Dimension(dim_value=1)] * 2)
    dnn, snn = tmp_path / "fc.onnx", tmp_path / "fc.snn.onnx"
    onnx.save(m, str(dnn))
    pre = ["--mean", "0.286", "--std", "0.353"]
    assert main(["-q", "convert", str(dnn), "--calib", "fashion-mnist", "--calib-samples", "64",
                 *pre, "-o", str(snn)]) == 0
    from onnx_snn.datasets import load_fashion_mnist
    test = load_fashion_mnist("test")
    xs, ys = (test.x[:200] - 0.286) / 0.353, test.y[:200]
    for model, T in ((dnn, None), (snn, 2)):
        e = tmp_path / "e.json"
        assert main(["-q", "eval", str(model), "--data", "fashion-mnist", "--limit", "200", *pre,
                     "--json", str(e)]) == 0
        r = ModelRunner(str(model))
        out = r.run_padded(r.validate(xs.astype(np.float32)), T).outputs[0]
        assert out.shape == (200, 10, 1, 1)
        assert json.loads(e.read_text())["top1"] == pytest.approx(100.0 * np.mean(out[:, :, 0, 0].argmax(1) == ys))
    pytest.importorskip("torch")
    assert main(["-q", "finetune", str(snn), "--data", "fashion-mnist", "--epochs", "1",
                 "--limit-train", "128", "--limit-test", "64", "-o", str(tmp_path / "ft.onnx"),
                 "--json", str(tmp_path / "ft.json")]) == 0
    # fine-tuning's result carries the fingerprint of the model it wrote, so that analyze
    # refuses its rates for the model it started from (they were accepted)
    from onnx_snn.spiking import format as F
    ft = json.loads((tmp_path / "ft.json").read_text())
    assert ft["written"]
    assert ft["model_fingerprint"] == F.spiking_fingerprint(F.read_info(onnx.load(str(tmp_path / "ft.onnx"))))
    if ft["best_epoch"] > 0:       # an epoch beat the start: rates of the tuned model
        assert main(["-q", "analyze", str(tmp_path / "ft.onnx"), "--rates", str(tmp_path / "ft.json")]) == 0
        p = run_cli("analyze", str(snn), "--rates", str(tmp_path / "ft.json"))
        assert_clean_error(p, 5, "another spiking model")


def test_eval_scores_a_dnns_class_ids_and_refuses_topk_values(tmp_path):
    """A DNN exported with its head: eval scores its first output's class ids (an ArgMax's, a
    TopK's best first) as the argmax of the scores would be, and refuses a TopK's sorted values
    first (their argmax is always column 0), exit 5, naming the node; the spiking model
    converted from it scores the same images."""
    g = B.GraphBuilder(13, 0)
    logits = g.gemm(g.node("Flatten", [g.act(g.conv("image", 1, 4, stride=2), "clip")]), 4 * 196, 10)
    ids = g.node("ArgMax", [logits], axis=1, keepdims=0)
    vals = g.node("TopK", [logits, g.const(np.array([3], np.int64))], n_out=2, axis=1)
    top = g.nodes[-1].output[1]
    x = B.rand_input(64, (1, 28, 28))
    npz = tmp_path / "d.npz"
    ref = tmp_path / "ref.onnx"
    onnx.save(g.model("image", logits, [1, 28, 28], 10), str(ref))
    from onnx_snn.runtimes.ort import ModelRunner
    r = ModelRunner(str(ref))
    y = r.run_padded(r.validate(x)).outputs[0].argmax(1)
    y[::3] = (y[::3] + 1) % 10                  # two thirds right: top-1 66.67 %
    np.savez(npz, x=x, y=y)
    want = 100.0 * np.mean(r.run_padded(r.validate(x)).outputs[0].argmax(1) == y)
    for name, outputs, code in (("ids", [(ids, onnx.TensorProto.INT64, ["N"])], 0),
                                ("topi", [(top, onnx.TensorProto.INT64, ["N", 3])], 0),
                                ("topv", [(vals, onnx.TensorProto.FLOAT, ["N", 3]),
                                          (top, onnx.TensorProto.INT64, ["N", 3])], 5)):
        m = g.model("image", logits, [1, 28, 28], 10)
        del m.graph.output[:]
        m.graph.output.extend([h.make_tensor_value_info(t, e, d) for t, e, d in outputs])
        path, e = tmp_path / f"{name}.onnx", tmp_path / f"{name}.json"
        onnx.save(m, str(path))
        err = io.StringIO()
        with redirect_stderr(err):
            got = main(["-q", "eval", str(path), "--data", str(npz), "--json", str(e)])
        assert got == code, err.getvalue()
        if code:
            assert "TopK" in err.getvalue() and "Traceback" not in err.getvalue()
            continue
        assert json.loads(e.read_text())["top1"] == pytest.approx(want)
    snn = tmp_path / "ids.snn.onnx"
    assert main(["-q", "convert", str(tmp_path / "ids.onnx"), "--calib", str(npz), "--method",
                 "max", "-T", "64", "-o", str(snn)]) == 0
    assert main(["-q", "eval", str(snn), "--data", str(npz), "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["top1"] == pytest.approx(want, abs=6)


def test_json_outputs_are_strict_json(tmp_path):
    """A NaN in a report (a weight calibration with no held-out batch has no held-out error)
    is written as null: every parser reads the file (bare NaN tokens are not JSON)."""
    from onnx_snn.json_text import dumps
    assert json.loads(dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(2)}),
                      parse_constant=lambda c: pytest.fail(f"non-JSON token {c}")) == \
        {"a": None, "b": [1.0, None], "c": 2.0}
    dnn = tmp_path / "m.onnx"
    onnx.save(B.vgg(), str(dnn))
    np.save(tmp_path / "x.npy", B.rand_input(64))
    report = tmp_path / "r.json"
    assert main(["-q", "convert", str(dnn), "--calib", str(tmp_path / "x.npy"),
                 "--report", str(report), "-o", str(tmp_path / "m.snn.onnx")]) == 0
    json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))


def test_analyze_of_a_dnn_uses_its_recorded_preprocessing():
    """The shipped DNN records its preprocessing: analyze feeds its sample with it, without
    the 'records no preprocessing' warning (it warned, under -q too)."""
    from onnx_snn.demo import shipped_model_path
    p = run_cli("analyze", str(shipped_model_path()), "-q")
    assert p.returncode == 0, p.stderr
    assert "records no preprocessing" not in p.stderr, p.stderr


def test_analyze_refuses_a_dnn_it_was_not_converted_from(tmp_path):
    """--dnn with another network (another sha256 than the recorded source and another MAC
    count) gave meaningless ratios: refused; the source DNN itself is accepted."""
    dnn, other = tmp_path / "m.onnx", tmp_path / "other.onnx"
    onnx.save(B.vgg(), str(dnn))
    onnx.save(B.vgg(13, "clip", in_shape=(1, 8, 8)), str(other))
    np.save(tmp_path / "x.npy", B.rand_input(64))
    snn = tmp_path / "m.snn.onnx"
    assert main(["-q", "convert", str(dnn), "--calib", str(tmp_path / "x.npy"), "-o", str(snn)]) == 0
    p = run_cli("analyze", str(snn), "--dnn", str(other))
    assert_clean_error(p, 2, "not the DNN", "sha256")
    # with data to record the rates on: refused before that run (it ran, then was refused)
    np.savez(tmp_path / "t.npz", x=B.rand_input(8), y=np.zeros(8, np.int64))
    p = run_cli("analyze", str(snn), "--dnn", str(other), "--data", str(tmp_path / "t.npz"))
    assert_clean_error(p, 2, "not the DNN", "sha256")
    assert "recorded spike rates" not in p.stdout, p.stdout
    p = run_cli("analyze", str(snn), "--dnn", str(dnn))
    assert p.returncode == 0 and "UserWarning" not in p.stderr, p.stderr


def test_analyze_rates_of_another_conversion_or_with_data_are_refused(tmp_path):
    """Rates carry the evaluated model's fingerprint (thresholds, initial membranes): those of
    another conversion of the same network (the same neuron counts) are refused; the deploy
    graph's and the binary model's are the same model's. --data beside --rates is refused
    (it was ignored)."""
    dnn = tmp_path / "m.onnx"
    onnx.save(B.vgg(), str(dnn))
    np.save(tmp_path / "x.npy", B.rand_input(128))
    conv = ["-q", "convert", str(dnn), "--calib", str(tmp_path / "x.npy")]
    a, b, dep = tmp_path / "a.snn.onnx", tmp_path / "b.snn.onnx", tmp_path / "a.deploy.onnx"
    assert main(conv + ["-o", str(a)]) == 0
    assert main(conv + ["-o", str(b), "--method", "deng"]) == 0
    assert main(["-q", "deploy", str(a), "-o", str(dep), "--spike-counts"]) == 0
    for model, name in ((a, "ra.json"), (b, "rb.json"), (dep, "rd.json")):
        assert main(["-q", "eval", str(model), "--data", str(tmp_path / "x.npy"),
                     "--json", str(tmp_path / name)]) == 0
    for name in ("ra.json", "rd.json"):      # the model's own rates, from either graph
        assert main(["-q", "analyze", str(a), "--rates", str(tmp_path / name)]) == 0
    p = run_cli("analyze", str(a), "--rates", str(tmp_path / "rb.json"))
    assert_clean_error(p, 5, "another spiking model")
    p = run_cli("analyze", str(a), "--rates", str(tmp_path / "ra.json"), "--data", str(tmp_path / "x.npy"))
    assert_clean_error(p, 2, "pass one or the other")


def test_a_named_data_dir_is_the_only_place_looked(files, tmp_path):
    """--data-dir that does not exist, or holds no Fashion-MNIST, is an error: it silently fell
    back to the system copy."""
    p = run_cli("eval", str(files / "model.onnx"), "--data", "fashion-mnist", "--data-dir",
                str(tmp_path / "nowhere"))
    assert_clean_error(p, 5, "no such folder")
    (tmp_path / "empty").mkdir()
    p = run_cli("eval", str(files / "model.onnx"), "--data", "fashion-mnist", "--data-dir",
                str(tmp_path / "empty"))
    assert_clean_error(p, 5, "Fashion-MNIST not found")


def test_an_onnxruntime_failure_inside_a_run_is_one_line(monkeypatch, capsys):
    """Whatever onnxruntime raises while a command runs (a failure no check foresaw) is one
    error line naming the model, exit 4, not a traceback."""
    import onnxruntime.capi.onnxruntime_pybind11_state as state
    import onnx_snn.cli as cli

    def boom(args):
        raise state.InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid "
                                    "dimensions for input: x")
    monkeypatch.setitem(cli.COMMANDS, "info", boom)
    assert cli.main(["info", "m.onnx"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("onnx-snn: error: m.onnx: onnxruntime failed") and "Traceback" not in err


def test_a_bug_is_one_line_with_its_traceback_in_a_file_and_exit_70(monkeypatch, capsys,
                                                                    tmp_path):
    """An exception no check foresaw (a TypeError inside the PyTorch runtime, say) says it is
    a bug, where its traceback went, and exits 70 (1 is out of memory); with
    $ONNX_SNN_TRACEBACK=1 the traceback is on stderr."""
    import onnx_snn.cli as cli

    def boom(args):
        raise TypeError("cast() missing 1 required positional argument: 'x'")
    monkeypatch.setitem(cli.COMMANDS, "info", boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)      # (TMPDIR read again)
    assert cli.main(["info", "m.onnx"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("onnx-snn: error: internal error (a bug in onnx-snn, not in your input): "
                          "TypeError: cast() missing")
    saved = list(tmp_path.glob("onnx-snn-error-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in err
    assert "Traceback" in saved[0].read_text() and "in boom" in saved[0].read_text()
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    assert cli.main(["info", "m.onnx"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "in boom" in err and len(list(tmp_path.glob("onnx-snn-*"))) == 1


@pytest.mark.parametrize("error,code,said", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 1, "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 1 bytes"), 1, "out of memory"),
    (OSError(28, "No space left on device", "out.onnx"), 6, "out.onnx: No space left"),
    (OSError(5, "Input/output error", "m.onnx"), 70, "m.onnx: Input/output error")])
def test_out_of_memory_and_the_systems_refusals_are_not_called_bugs(monkeypatch, capsys,
                                                                    error, code, said):
    import onnx_snn.cli as cli

    def boom(args):
        raise error
    monkeypatch.setitem(cli.COMMANDS, "info", boom)
    assert cli.main(["info", "m.onnx"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "bug" not in err


def test_quiet_convert_prints_its_result_line_alone(tmp_path):
    """A classifier with an ai.onnx.ml ZipMap head (skl2onnx): onnx-graphsurgeon's warnings
    ('colored module is not installed', 'Could not convert: UNDEFINED') went to stdout."""
    import test_normalize
    m = test_normalize._with_head("skl2onnx_zipmap")
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", x=B.rand_input(64))
    p = run_cli("-q", "convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"),
                "--method", "datta", "-o", str(tmp_path / "s.onnx"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [l for l in p.stdout.splitlines() if l.startswith("wrote ")]
    assert len(p.stdout.splitlines()) == 1 and "[W]" not in p.stdout + p.stderr


def test_conversion_warnings_are_logged_even_with_quiet(tmp_path, capsys, caplog):
    """A note that is a warning (plain ReLU layers whose mu is estimated) reached the API only
    in the report, and `convert -q` hid it: it is logged as a warning now, once."""
    import logging
    model = tmp_path / "relu.onnx"
    model.write_bytes(B.vgg(13, "relu").SerializeToString())
    np.save(tmp_path / "calib.npy", B.rand_input(16))
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        assert main(["convert", str(model), "-o", str(tmp_path / "r.snn.onnx"), "--calib",
                     str(tmp_path / "calib.npy"), "-T", "2", "--method", "datta", "-q"]) == 0
    said = [r.getMessage() for r in caplog.records if "plain ReLU" in r.getMessage()]
    assert len(said) == 1 and "mu is estimated" in said[0]
    assert "note: warning" not in capsys.readouterr().err


def test_a_tilde_in_an_option_is_the_home_folder(files, monkeypatch, capsys):
    """--calib=~/calib.npy reaches the program with its ~ (the shell expands it only at the
    start of a word): it is the home folder, as in the shell."""
    monkeypatch.setenv("HOME", str(files))
    out = files / "t.snn.onnx"
    assert main(["convert", str(files / "model.onnx"), "-o", str(out), "--calib=~/calib.npy",
                 "-T", "1", "--method", "datta", "-q"]) == 0
    assert out.is_file()


def test_one_models_warnings_are_logged_once_over_several_builds(caplog):
    """One calibration, several T (README's pattern, and demo): the model's own warnings are
    logged by the first build, not by every one."""
    import logging
    import onnx_snn
    nm = onnx_snn.prepare(B.vgg(13, "relu"))
    cal = onnx_snn.calibrate(nm, B.rand_input(16), show_progress=False)
    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        for T in (1, 2, 4):
            snn = onnx_snn.build(nm, cal, T, "datta")
            assert any("plain ReLU" in n for n in snn.report["notes"])    # still in each report
    assert sum("plain ReLU" in r.getMessage() for r in caplog.records) == 1


def test_convert_outputs_keeps_the_named_ones(files):
    """--outputs: an export that also exposes an intermediate tensor (here the Min of a
    clamp, as tf2onnx's from_function does) converts with only its logits kept; a name the
    model lacks is a usage error that lists the ones it has, before anything is written."""
    b = B.GraphBuilder(13)
    lo = b.node("Min", [b.conv("input", 1, 4), b.const(np.array(6, np.float32))])
    r = b.node("Max", [lo, b.const(np.array(0, np.float32))])
    logits = b.gemm(b.node("Flatten", [r]), 4 * 144, 10)
    m = b.model("input", logits, (1, 12, 12), 10)
    m.graph.output.append(onnx.helper.make_tensor_value_info(lo, onnx.TensorProto.FLOAT,
                                                             ["N", 4, 12, 12]))
    src = files / "exposed.onnx"
    src.write_bytes(m.SerializeToString())
    before = src.read_bytes()
    out = files / "exposed.snn.onnx"
    p = run_cli("convert", str(src), "--calib", str(files / "calib.npy"), "-T", "2", "-o", str(out))
    assert_clean_error(p, 4, "also a graph output", "--outputs")
    p = run_cli("convert", str(src), "--calib", str(files / "calib.npy"), "-T", "2", "-o", str(out),
                "--outputs", "nope")
    assert_clean_error(p, 2, "'nope' is not an output", logits, lo)
    assert not out.exists()
    p = run_cli("convert", str(src), "--calib", str(files / "calib.npy"), "-T", "2", "-o", str(out),
                "--outputs", logits)
    assert p.returncode == 0, p.stderr
    assert "--outputs: kept" in p.stderr
    names = [o.name for o in onnx.load(str(out)).graph.output]
    assert names[0] == logits and lo not in names and all(n.endswith(".spikes") for n in names[1:])
    assert src.read_bytes() == before


def test_an_output_whose_weights_file_name_would_be_too_long_is_refused_first(tmp_path, capsys):
    """A model with external data writes <output>.data beside each output: an output name of
    252-255 bytes is valid, its weights file's is not; refused by name (exit 6) before the
    work, for -o and --step-graph alike (it was an OSError traceback, exit 1)."""
    src = tmp_path / "src.onnx"
    onnx.save_model(B.vgg(13, "clip"), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="src.onnx.data", size_threshold=1024)
    np.save(tmp_path / "x.npy", B.rand_input(8))
    long_name = str(tmp_path / ("b" * 248 + ".onnx"))
    for flag in ("-o", "--step-graph"):
        args = ["convert", str(src), "--calib", str(tmp_path / "x.npy"), "-q"]
        args += ["-o", long_name] if flag == "-o" else ["-o", str(tmp_path / "ok.onnx"),
                                                        flag, long_name]
        assert main(args) == 6
        err = capsys.readouterr().err
        assert "longer than file systems allow" in err and "Traceback" not in err
        assert not list(tmp_path.glob("*.onnx.data"))[1:]      # only the source's


def test_error_lines_cut_long_values_and_keep_what_to_do():
    """A damaged value of thousands of characters is shown by its start and its length; a
    message too long for a line keeps its start and its end (the advice); short ones, and
    words and paths of ordinary length, are left as they are."""
    from onnx_snn.errors import LONG_MESSAGE, LONG_WORD, shortened
    plain = "m.onnx: node 'Conv_3' (Conv): some words; convert it again"
    assert shortened(plain) == plain
    path = "/tmp/" + "d" * 200 + "/model.onnx"
    assert shortened(f"{path}: empty file") == f"{path}: empty file"
    cut = shortened("the metadata T is '" + "4" * 5000 + "', not a whole number; convert it again")
    assert len(cut) < LONG_WORD + 100 and "(5003 characters) not a whole number; convert it again" in cut
    long = " ".join(["word"] * 2000) + " so do this"
    assert len(shortened(long)) <= LONG_MESSAGE and shortened(long).endswith("so do this")


def test_convert_records_the_calibration_file_by_its_absolute_path(files, monkeypatch, capsys):
    """--calib calib.npy run in the data's folder was recorded as 'calib.npy' in the history,
    which a command run from another folder could not resolve: it is the absolute path now."""
    monkeypatch.chdir(files)
    out = files / "rel.snn.onnx"
    assert main(["-q", "convert", "model.onnx", "-o", "rel.snn.onnx", "--calib", "calib.npy",
                 "-T", "1", "--method", "max"]) == 0
    hist = json.loads(F.metadata(onnx.load(str(out)))[F.META_HISTORY])[0]
    assert hist["calibration_data"] == str(files / "calib.npy")


def test_a_mean_std_override_is_one_warning_in_every_command(tmp_path, capsys, caplog,
                                                            fmnist_test):
    """--mean/--std other than the model records: a warning in convert and eval, but a note
    in finetune (hidden by -q). One warning now, worded alike, through one function, given
    with -q too."""
    import logging
    dnn, snn = tmp_path / "m.onnx", tmp_path / "m.snn.onnx"
    m = B.vgg(13, "clip", in_shape=(1, 28, 28))
    m.metadata_props.add(key="onnx_snn.preprocess", value='{"mean": [0.286], "std": [0.353]}')
    onnx.save(m, str(dnn))
    other = ["--mean", "0.5", "--std", "0.25"]
    said = "--mean/--std override the preprocessing it records (mean [0.286], std [0.353]) " \
           "with mean [0.5], std [0.25]; "
    runs = [["convert", str(dnn), "--calib", "fashion-mnist", "--calib-samples", "32",
             "--method", "max", "-T", "1", "-o", str(snn), "--mean", "0.286", "--std", "0.353"],
            ["eval", str(snn), "--data", "fashion-mnist", "--limit", "32"],
            ["analyze", str(snn), "--data", "fashion-mnist", "--limit", "32"]]
    if importlib.util.find_spec("torch") is not None:
        runs.append(["finetune", str(snn), "--data", "fashion-mnist", "--epochs", "1",
                     "--limit-train", "32", "--limit-test", "32", "-o", str(tmp_path / "t.onnx")])

    def warned():
        texts = [r.getMessage() for r in caplog.records
                 if r.levelno == logging.WARNING and "override" in r.getMessage()]
        texts += [t for t in capsys.readouterr().err.splitlines() if "override" in t]
        caplog.clear()
        return texts

    with caplog.at_level(logging.WARNING, logger="onnx_snn"):
        for i, argv in enumerate(runs):
            assert main(["-q", *argv, *(other if i else [])]) == 0, argv
            got = warned()
            if i == 0:   # the ones the DNN records: nothing to say
                assert got == []
                continue
            assert len(got) == 1 and got[0].startswith(f"{snn}: {said}"), (argv[0], got)
        assert main(["-q", "convert", str(dnn), "--calib", "fashion-mnist", "--calib-samples",
                     "32", "--method", "max", "-T", "1", "-o", str(tmp_path / "o.snn.onnx"),
                     *other]) == 0
        got = warned()
    assert len(got) == 1 and got[0].startswith(f"{dnn}: {said}the spiking model records"), got


def _image_folder(root, seed=0, n=4):
    """An image folder of 12x12 grayscale PNGs in two class folders."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_other_data_than_the_model_records_gets_a_note(files, capsys, fmnist_test):
    """--data mnist for a model converted on fashion-mnist (or a folder of images other than
    the one it was calibrated on) gave no word; a note now names what the model records.
    Its own data, a file (calibration and test files differ by design) and -q: no note."""
    import shutil
    from onnx_snn.datasets import FASHION_MNIST_SYSTEM_DIR
    mnist = files / "data" / "mnist"     # MNIST's four IDX files (Fashion-MNIST's bytes here)
    mnist.mkdir(parents=True)
    src = os.environ.get("ONNX_SNN_DATA") or str(FASHION_MNIST_SYSTEM_DIR)
    for f in os.listdir(src):
        if f.endswith("ubyte.gz"):
            shutil.copy(os.path.join(src, f), mnist / f)
    dnn, snn = files / "fm.onnx", files / "fm.snn.onnx"
    onnx.save(B.vgg(13, "clip", in_shape=(1, 28, 28)), str(dnn))
    assert main(["-q", "convert", str(dnn), "--calib", "fashion-mnist", "--calib-samples", "32",
                 "--method", "max", "-T", "1", "-o", str(snn)]) == 0
    capsys.readouterr()

    def note(*argv):
        assert main(list(argv)) == 0, argv
        return [t for t in capsys.readouterr().err.splitlines() if "is other data than" in t]

    got = note("eval", str(snn), "--data", "mnist", "--data-dir", str(files / "data"), "--limit", "8")
    assert got == [f"note: --data mnist is other data than {snn} records (dataset fashion-mnist): "
                   "the model was trained or converted on that, so its results on this data may "
                   "be lower and do not compare with results there"]
    assert note("analyze", str(snn), "--data", "mnist", "--data-dir", str(files / "data"),
                "--limit", "8")
    assert not note("-q", "eval", str(snn), "--data", "mnist", "--data-dir", str(files / "data"),
                    "--limit", "8")
    assert not note("eval", str(snn), "--data", "fashion-mnist", "--limit", "8")
    assert not note("eval", str(snn), "--data", "fashion-mnist:train", "--limit", "8")
    # image folders: the one it was calibrated on (any split of it) or another
    own = _image_folder(files / "own" / "train")
    _image_folder(files / "own" / "test", seed=1)
    other = _image_folder(files / "other", seed=2)
    small = files / "model.snn.onnx"
    assert main(["-q", "convert", str(files / "model.onnx"), "--calib", str(own.parent),
                 "--method", "max", "-T", "1", "-o", str(small)]) == 0
    for same in (own.parent, f"{own.parent}:test", own):
        assert not note("eval", str(small), "--data", str(same)), same
    got = note("eval", str(small), "--data", str(other))
    assert len(got) == 1 and f"(data folder {own.parent}:train)" in got[0], got
    assert not note("eval", str(small), "--data", str(files / "test.npz"))    # a file: not compared


def test_finetune_prints_its_warnings_and_notes_on_stderr(files, capsys):
    """finetune printed its warnings and notes on stdout, among its results (the other
    commands print theirs on stderr): stderr now, and -q keeps the warnings alone."""
    pytest.importorskip("torch")
    snn = files / "m.snn.onnx"
    assert main(["-q", "convert", str(files / "model.onnx"), "--calib", str(files / "calib.npy"),
                 "--method", "max", "-T", "1", "-o", str(snn)]) == 0
    capsys.readouterr()
    for quiet in ([], ["-q"]):
        assert main([*quiet, "finetune", str(snn), "--data", str(files / "test.npz"), "--epochs",
                     "1", "--batch-size", "32", "-o", str(files / f"t{len(quiet)}.snn.onnx"),
                     "--resume"]) == 0
        out, err = capsys.readouterr()
        assert "warning: " not in out and "note: " not in out, out
        assert "holds no separate test set" in err
        assert ("note: no checkpoint at" in err) is not bool(quiet), err
        assert out.count("fine-tuned T=1") == 1
        assert ("epoch 1:" in out) is not bool(quiet), out


def test_convert_notes_calibration_data_other_than_the_dnn_records(files, capsys, fmnist_test):
    """A DNN that records its dataset (the zoo's), calibrated on another named dataset: a
    note says what that does to the spiking model; on its own dataset, none."""
    import shutil
    from onnx_snn.datasets import FASHION_MNIST_SYSTEM_DIR
    mnist = files / "data" / "mnist"
    mnist.mkdir(parents=True)
    src = os.environ.get("ONNX_SNN_DATA") or str(FASHION_MNIST_SYSTEM_DIR)
    for f in os.listdir(src):
        if f.endswith("ubyte.gz"):
            shutil.copy(os.path.join(src, f), mnist / f)
    dnn = files / "fm.onnx"
    m = B.vgg(13, "clip", in_shape=(1, 28, 28))
    m.metadata_props.add(key=F.META_DATASET, value="fashion-mnist")
    onnx.save(m, str(dnn))
    for calib, noted in ((["mnist", "--data-dir", str(files / "data")], True),
                         (["fashion-mnist"], False)):
        assert main(["convert", str(dnn), "--calib", *calib, "--calib-samples", "16",
                     "--method", "max", "-T", "1", "-o", str(files / "o.snn.onnx")]) == 0
        err = capsys.readouterr().err
        assert (f"note: --calib mnist is other data than {dnn} records (dataset fashion-mnist): "
                "its spiking model's thresholds are fitted to this data's activations instead"
                in err) is noted, err


def test_an_old_relative_data_record_is_read_from_the_model_folder(tmp_path, monkeypatch):
    """Files written before the history recorded absolute paths hold the folder as the
    command line named it: it is compared from this folder and from the model's."""
    from onnx_snn.cli import _other_data
    own, other = _image_folder(tmp_path / "imgs"), _image_folder(tmp_path / "other", seed=1)
    model = tmp_path / "m.snn.onnx"
    monkeypatch.chdir("/")
    assert _other_data(str(own), None, ["imgs:train"], str(model)) is None
    assert _other_data(str(other), None, ["imgs:train"], str(model)) == "data folder imgs:train"
    monkeypatch.chdir(tmp_path)
    assert _other_data("imgs", None, ["imgs"], "elsewhere/m.snn.onnx") is None


def test_an_error_inside_a_progress_bar_starts_its_own_line(monkeypatch, capsys):
    """A command that fails while a progress bar is drawn closes the bar first: the error
    line starts a line of its own (an outside sweep saw 'calibrating:   0%|...onnx-snn:
    error: ...' on one line), and the exit code is the error's."""
    import onnx_snn.cli as cli
    from onnx_snn.errors import DataError
    from onnx_snn.progress import Progress

    def failing(args):
        bar = Progress(10, desc="calibrating", unit="sample", enabled=True)
        bar.update(3)
        raise DataError("calibration data: sample 3 is damaged")
    monkeypatch.setitem(cli.COMMANDS, "info", failing)
    assert cli.main(["info", "model.onnx"]) == DataError.exit_code
    err = capsys.readouterr().err
    assert "calibrating" in err
    assert any(line.startswith("onnx-snn: error: calibration data: sample 3")
               for line in err.splitlines()), err


def test_eval_json_records_its_data_and_normalization_and_analyze_repeats_an_override(
        fmnist_test, tmp_path):
    """eval's JSON says what it ran on (the data, the samples asked for, the normalization
    applied) and the warnings it gave; analyze --rates repeats a warning (--mean/--std that
    overrode the model's preprocessing) and says when the rates' normalization is not the
    model's: energy from wrongly normalized rates looked like any other."""
    from onnx_snn.demo import shipped_model_path
    snn = tmp_path / "m.snn.onnx"
    assert main(["-q", "convert", str(shipped_model_path()), "--calib", "fashion-mnist",
                 "--calib-samples", "32", "-T", "1", "--method", "datta", "-o", str(snn)]) == 0
    recorded = F.read_info(onnx.load(str(snn))).preprocess
    plain, other = tmp_path / "plain.json", tmp_path / "other.json"
    assert main(["-q", "eval", str(snn), "--limit", "40", "--json", str(plain)]) == 0
    assert main(["-q", "eval", str(snn), "--limit", "40", "--mean", "0.9", "--std", "0.1",
                 "--json", str(other)]) == 0
    r, o = json.loads(plain.read_text()), json.loads(other.read_text())
    assert (r["data"], r["limit"], r["warnings"]) == ("fashion-mnist", 40, [])
    assert r["preprocess"] == {"mean": recorded["mean"], "std": recorded["std"]}
    assert o["preprocess"] == {"mean": [0.9], "std": [0.1]}
    assert len(o["warnings"]) == 1 and "overrode the preprocessing" in o["warnings"][0]
    p = run_cli("analyze", str(snn), "--rates", str(plain))
    assert p.returncode == 0 and "WARNING" not in p.stderr, p.stderr
    out = tmp_path / "a.json"
    p = run_cli("analyze", str(snn), "--rates", str(other), "--json", str(out))
    assert p.returncode == 0 and "measured with a warning: --mean/--std" in p.stderr, p.stderr
    assert any("overrode the preprocessing" in n for n in json.loads(out.read_text())["notes"])
    o["warnings"] = []        # a result that records the normalization but no warning
    other.write_text(json.dumps(o))
    p = run_cli("analyze", str(snn), "--rates", str(other))
    assert p.returncode == 0 and "normalized with mean [0.9], std [0.1], not as the model" in p.stderr


@pytest.mark.parametrize("signal_error,code,said", [("Terminated", 143, "terminated"),
                                                    ("KeyboardInterrupt", 130, "interrupted")])
def test_a_signal_after_the_outputs_are_in_place_says_they_are_complete(
        tmp_path, monkeypatch, capsys, signal_error, code, said):
    """A SIGTERM (or Ctrl-C) held while the outputs were renamed into place is delivered
    after them: the exit status is the signal's, and the message now names the files, whole,
    which "terminated" alone let a script take for missing. A signal before any is written
    says nothing of files."""
    import onnx_snn.errors as E
    import onnx_snn.model_io as M
    from onnx_snn.cli import main
    err = getattr(E, signal_error, None) or KeyboardInterrupt
    real = M.write_all_atomic

    def then_signal(items):
        real(items)
        raise err()
    monkeypatch.setattr(M, "write_all_atomic", then_signal)
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    np.save(tmp_path / "c.npy", B.rand_input(8))
    out = tmp_path / "m.snn.onnx"
    argv = ["-q", "convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"),
            "--method", "max", "-o", str(out)]
    assert main(argv) == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"onnx-snn: {said} after writing {out}, which is complete"
    assert onnx.load(str(out)).graph.node
    monkeypatch.setattr(M, "write_all_atomic", lambda items: (_ for _ in ()).throw(err()))
    assert main(argv[:-1] + [str(tmp_path / "n.snn.onnx")]) == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"onnx-snn: {said}"


def test_a_signal_names_each_complete_output_once_and_those_not_written():
    from onnx_snn.cli import _complete
    assert _complete(["m.onnx", "m.onnx", "m.onnx.ckpt.pt"], ["r.json (--json)"]) == \
        " after writing m.onnx, m.onnx.ckpt.pt, which are complete; not written: r.json (--json)"
    assert _complete([], ["r.json (--json)"]) == ""
    assert _complete(["m.onnx"]) == " after writing m.onnx, which is complete"


def _max_conversion(tmp_path):
    """tmp_path/m.snn.onnx: B.vgg() converted by ``max`` from tmp_path/d.npz (32 labelled
    samples), as the command line writes it."""
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    x = B.rand_input(32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(32) % 10)
    snn = tmp_path / "m.snn.onnx"
    assert main(["-q", "convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "d.npz"),
                 "--method", "max", "-o", str(snn)]) == 0
    return snn


def test_a_signal_after_fine_tuning_wrote_its_model_says_the_json_was_not_written(
        tmp_path, monkeypatch, capsys):
    """finetune writes its model at each best epoch, then --json and --plot: a SIGTERM
    between them named the model twice and not the JSON it left out."""
    pytest.importorskip("torch")
    import onnx_snn.runtimes.torch.finetune as F
    from onnx_snn.cli import main
    from onnx_snn.errors import Terminated
    from onnx_snn.model_io import write_all_atomic
    snn = _max_conversion(tmp_path)
    out = tmp_path / "f.snn.onnx"

    def wrote_then_terminated(model, output, *a, **k):
        for _ in range(2):             # (each best epoch)
            write_all_atomic([(output, onnx.load(str(model)).SerializeToString())])
        raise Terminated()
    monkeypatch.setattr(F, "finetune", wrote_then_terminated)
    assert main(["-q", "finetune", str(snn), "--data", str(tmp_path / "d.npz"), "-o", str(out),
                 "--json", str(tmp_path / "f.json")]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"onnx-snn: terminated after writing {out}, which is complete; not written: "
        f"{tmp_path / 'f.json'} (--json)")


def test_a_signal_once_the_command_has_returned_leaves_its_exit_status(tmp_path):
    """The entry point ignores SIGTERM once the work is done: a signal while the interpreter
    shut down killed it with 143 and no word, after a run that had written everything."""
    code = ("import os, signal, sys\n"
            "from onnx_snn.launch import main\n"
            "status = main(['info', 'no such model.onnx'])\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "sys.exit(status)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3 and "no such model.onnx" in p.stderr, p.stderr


def _long_loop_model() -> onnx.ModelProto:
    """A Loop of ``trips`` (an input) Adds of a 64 x 64 tensor: one onnxruntime run as long
    as asked (1.7 us a trip on the 2-core machine of 2026-12-07)."""
    body = h.make_graph(
        [h.make_node("Add", ["acc_in", "one"], ["acc_out"]),
         h.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [h.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         h.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         h.make_tensor_value_info("acc_in", onnx.TensorProto.FLOAT, [64, 64])],
        [h.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         h.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, [64, 64])],
        [onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "one")])
    g = h.make_graph(
        [h.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], "long",
        [h.make_tensor_value_info("trips", onnx.TensorProto.INT64, []),
         h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64, 64])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 64])],
        [onnx.numpy_helper.from_array(np.array(True), "cond")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def test_a_signal_stops_a_long_onnxruntime_run_at_once(monkeypatch):
    """SIGINT in one long onnxruntime run (eval of a loop graph at T = 4096: minutes) waited
    for the run to end (an outside tester killed eval a minute after SIGTERM): the sessions
    run in a worker thread while the main thread waits, and the signal stops the run
    (RunOptions.terminate); the session runs again after it."""
    import signal
    import threading
    import time
    from onnx_snn.calibrate import make_session
    from onnx_snn.model_io import IN_COMMAND
    monkeypatch.setitem(IN_COMMAND, "active", True)     # (as within a command: cli.main)
    sess = make_session(_long_loop_model())
    x = np.zeros((64, 64), np.float32)
    assert sess.run(None, {"trips": np.array(3), "x": x})[0][0, 0] == 3
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        sess.run(None, {"trips": np.array(3 * 10 ** 7), "x": x})   # about 50 s
    assert time.perf_counter() - t0 < 10
    timer.join()
    assert sess.run(None, {"trips": np.array(5), "x": x})[0][0, 0] == 5


def test_eval_exits_143_on_sigterm_inside_one_onnxruntime_run(tmp_path, fmnist_test):
    """The command line on a SIGTERM during one long run: 143 within seconds, not when the
    run ends, and not 134 ("terminate called") from the stopped session's destructor at the
    interpreter's shutdown."""
    import signal
    import time
    from onnx_snn.demo import shipped_model_path
    snn = tmp_path / "m.snn.onnx"
    assert main(["convert", str(shipped_model_path()), "--calib",
                 "fashion-mnist", "--calib-samples", "64", "--method", "datta", "-T", "2",
                 "-q", "-o", str(snn)]) == 0
    code = "import sys\nfrom onnx_snn.launch import main\nsys.exit(main(sys.argv[1:]))\n"
    p = subprocess.Popen([sys.executable, "-c", code, "eval", str(snn), "--data", "fashion-mnist",
                          "--limit", "64", "-T", "4096", "-q"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = p.stderr.readline()                # the warning about T, just before the run
    assert "T=4096" in line, line
    time.sleep(1.0)
    t0 = time.perf_counter()
    p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("eval still ran 30 s after SIGTERM")
    assert p.returncode == 143, (p.returncode, err)
    assert time.perf_counter() - t0 < 15 and "terminate called" not in err


def test_quiet_convert_still_says_what_changed_in_the_inputs_and_outputs(tmp_path, capsys):
    """-q drops the notes, but not those that say the spiking model's inputs or outputs
    differ from the DNN's (onnx_snn/notes.py): a final Softmax dropped (scores, not
    probabilities), an ArgMax head dropped, free spatial dimensions pinned to the data's."""
    m = B.vgg(13, "clip")                                   # ends in a Softmax
    scores = m.graph.output[0].name
    m.graph.node.append(h.make_node("ArgMax", [scores], ["cls"], axis=1, keepdims=0))
    m.graph.output.append(h.make_tensor_value_info("cls", onnx.TensorProto.INT64, ["N"]))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, name in zip(dims[2:], "HW"):
        d.Clear()
        d.dim_param = name
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", B.rand_input(32))
    said = {}
    for quiet in (True, False):
        assert main((["-q"] if quiet else []) + ["convert", str(tmp_path / "m.onnx"), "--calib",
                    str(tmp_path / "calib.npy"), "-o", str(tmp_path / f"{quiet}.snn.onnx")]) == 0
        said[quiet] = [n for n in capsys.readouterr().err.splitlines() if n.startswith("note:")]
    for what in ("dropped the final Softmax", "dropped the output head ArgMax",
                 "has free dimensions"):
        assert sum(what in n for n in said[True]) == 1, (what, said[True])
    assert not any("interface:" in n for n in said[True] + said[False])    # (the mark unsaid)
    assert set(said[True]) < set(said[False])    # (the others: without -q only)


def test_analyze_says_a_limit_it_does_not_use(tmp_path, capsys):
    """--limit counts the samples a spiking model runs to record its rates; with none run
    (a DNN, no data) it was silently ignored."""
    from onnx_snn.cli import main
    onnx.save(B.vgg(), str(tmp_path / "m.onnx"))
    assert main(["analyze", str(tmp_path / "m.onnx"), "--limit", "5"]) == 0
    assert "note: --limit 5 is not used: no data is run here" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "m.onnx")]) == 0
    assert "--limit" not in capsys.readouterr().err


@pytest.mark.parametrize("epochs_done", [1, 0])
def test_a_diverged_fine_tuning_writes_its_curves_up_to_it(tmp_path, monkeypatch, capsys,
                                                           epochs_done):
    """--plot on a run that diverged: the epochs completed before it are plotted (with
    --json's record), exit 7, the message names both; with none completed, the plot is
    said not written and nothing is left half-written."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    import onnx_snn.runtimes.torch.finetune as F
    from onnx_snn.errors import TrainingDivergedError
    snn = _max_conversion(tmp_path)
    epoch = {"epoch": 1, "loss": 2.1, "train_top1": 12.5, "test_top1": 15.0, "seconds": 0.3,
             "spikes_per_neuron": {}, "pool_spikes_per_neuron": {}}

    def diverges(model, output, *a, **k):
        err = TrainingDivergedError("the loss turned non-finite in epoch 2")
        err.record = {"diverged": "the loss", "output": str(output), "timesteps": 2,
                      "initial_top1": 10.0, "best_top1": 15.0, "best_epoch": 1,
                      "epochs": [epoch][:epochs_done], "written": True}
        raise err
    monkeypatch.setattr(F, "finetune", diverges)
    png, js = tmp_path / "c.png", tmp_path / "r.json"
    assert main(["-q", "finetune", str(snn), "--data", str(tmp_path / "d.npz"), "-o",
                 str(tmp_path / "f.snn.onnx"), "--json", str(js), "--plot", str(png)]) == 7
    err = capsys.readouterr().err
    assert f"the run's record up to it is in {js}" in err
    assert json.loads(js.read_text())["epochs"] == [epoch][:epochs_done]
    if epochs_done:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"curves up to it in {png}" in err
    else:
        assert not png.exists() and f"--plot {png} not written: no epoch completed" in err
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("command", ["convert", "eval"])
def test_a_model_of_an_empty_graph_without_data_is_a_damaged_model(tmp_path, capsys, command):
    """A file that parses as a ModelProto with an empty graph, given without --calib/--data:
    exit 3 "not an ONNX model", as info and convert --calib say, not exit 5 "no data" (the
    model records no dataset because it records nothing)."""
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"\x08\x07\x3a\x00")
    assert main([command, str(path)]) == 3
    assert "not an ONNX model" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_full_standard_output_is_named(tmp_path):
    """`info --json > /dev/full`: exit 6 naming standard output (the line said 'a file')."""
    import onnx_snn
    m = tmp_path / "m.snn.onnx"
    x = B.rand_input(8)
    onnx.save(onnx_snn.convert(B.vgg(13, "clip"), x, timesteps=1, method="max",
                               show_progress=False).model, str(m))
    code = "import sys\nfrom onnx_snn.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-c", code, "info", str(m), "--json"], stdout=full,
                           stderr=subprocess.PIPE, text=True)
    assert p.returncode == 6 and "standard output: No space left" in p.stderr, p.stderr
