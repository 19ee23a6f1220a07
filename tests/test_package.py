"""The package's import surface (onnx_snn/__init__.py) and the command's entry point
(onnx_snn/launch.py): both light to import, and the API's names are the functions even where a
submodule has the same name."""
import subprocess
import sys
from importlib import metadata

import onnx_snn


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


def test_import_is_light_and_the_entry_point_too():
    heavy = "[m for m in ('onnx', 'onnxruntime', 'numpy', 'onnx_graphsurgeon') if m in sys.modules]"
    assert _run(f"import sys, onnx_snn; print({heavy})") == "[]"
    assert _run(f"import sys, onnx_snn.launch; print({heavy})") == "[]"


def test_api_names_are_the_functions_after_their_submodules_load():
    # convert, calibrate and evaluate are also submodules: importing those (as the command
    # line does first) must not hide the functions
    out = _run("import onnx_snn.cli, onnx_snn.convert, onnx_snn.evaluate, onnx_snn.calibrate, "
               "onnx_snn as p; print([type(getattr(p, n)).__name__ for n in "
               "('convert', 'calibrate', 'evaluate', 'build', 'prepare', 'deploy')])")
    assert out == "['function', 'function', 'function', 'function', 'function', 'function']"
    assert _run("import onnx_snn as p; print(p.SearchConfig().__class__.__module__, "
                "p.SpikingModel.__name__, p.EvalResult.__name__, p.OnnxSnnError.__name__)") \
        == "onnx_snn.scales SpikingModel EvalResult OnnxSnnError"


def test_every_name_in_all_resolves():
    for name in onnx_snn.__all__:
        assert getattr(onnx_snn, name) is not None
    assert set(onnx_snn.__all__) <= set(dir(onnx_snn))
    try:
        onnx_snn.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name resolved")


def test_the_console_script_starts_at_the_light_entry_point():
    scripts = [e for e in metadata.entry_points(group="console_scripts") if e.name == "onnx-snn"]
    assert [e.value for e in scripts] == ["onnx_snn.launch:main"]


def test_python_m_runs_the_command_line():
    p = subprocess.run([sys.executable, "-m", "onnx_snn", "--version"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and onnx_snn.__version__ in p.stdout + p.stderr
