import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
os.environ.setdefault("ONNX_SNN_PROGRESS", "0")
# convert's default reconstruction (onnx_snn/auto_reconstruct.py) off: the suite converts
# hundreds of times, and a trained conversion is not what those tests check;
# tests/test_auto_reconstruct.py turns it on where it is what they check
os.environ.setdefault("ONNX_SNN_RECONSTRUCT", "0")
# an internal error (a bug: cli's exit 70) shows its traceback on stderr, not in a file
os.environ.setdefault("ONNX_SNN_TRACEBACK", "1")

# Property tests draw the same examples on every run (the suite is CI's gate: a rare
# counterexample must not pass one run and fail the next). HYPOTHESIS_PROFILE=explore draws
# new ones, to look for counterexamples on purpose.
try:
    from hypothesis import settings as _hyp_settings
    _hyp_settings.register_profile("ci", derandomize=True)
    _hyp_settings.register_profile("explore", derandomize=False)
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:   # hypothesis is a dev extra; the tests that use it import it themselves
    pass


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*.txt from the converter's current output")


@pytest.fixture
def update_golden(request):
    return request.config.getoption("--update-golden") or os.environ.get("ONNX_SNN_UPDATE_GOLDEN") == "1"


def _fmnist():
    from onnx_snn.datasets import FASHION_MNIST_SYSTEM_DIR
    roots = [os.environ.get("ONNX_SNN_DATA"), str(FASHION_MNIST_SYSTEM_DIR)]
    return any(r and (Path(r) / "t10k-images-idx3-ubyte.gz").is_file() for r in roots)


@pytest.fixture(scope="session")
def fmnist_test():
    if not _fmnist():
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    from onnx_snn.datasets import load_dataset
    return load_dataset("fashion-mnist:test")


@pytest.fixture(scope="session")
def fmnist_train():
    if not _fmnist():
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    from onnx_snn.datasets import load_dataset
    return load_dataset("fashion-mnist:train")
