"""Checking user data against a model's inputs (onnx_snn/feeds.py): what a shape error says."""
import numpy as np
import pytest

from onnx_snn.errors import DataError
from onnx_snn.feeds import validate_feeds

NCHW = [("input", [None, 1, 28, 28])]
NHWC = [("input", [None, 28, 28, 1])]


@pytest.mark.parametrize("specs,shape,hint", [
    (NCHW, (4, 28, 28), "np.expand_dims(x, 1)"),                 # no channel axis
    (NCHW, (4, 28, 28, 1), "x.transpose(0, 3, 1, 2)"),           # channels last
    (NHWC, (4, 1, 28, 28), "x.transpose(0, 2, 3, 1)"),           # channels first
    (NCHW, (4, 784), "reshape it to ['N', 1, 28, 28]"),          # flattened
    ([("input", [None, 784])], (4, 784, 1), "x.squeeze(2)"),     # an extra unit axis
    ([("input", [None, 3, 32, 32])], (4, 32, 32, 3), "x.transpose(0, 3, 1, 2)"),
    (NCHW, (1, 28, 28), "x[None]"),                              # one sample, no batch axis
    ([("input", [None, 3, 32, 32])], (3, 32, 32), "x[None]"),
])
def test_a_layout_mismatch_says_how_to_fix_it(specs, shape, hint):
    with pytest.raises(DataError, match="does not fit the model input") as e:
        validate_feeds(specs, np.zeros(shape, np.float32), "d.npz")
    assert hint in str(e.value) and str(e.value).startswith("d.npz: shape")


def test_data_that_is_not_a_layout_away_says_to_give_data_of_the_models_shape():
    """Fashion-MNIST's 1 x 28 x 28 images for a 3 x 32 x 32 model (an outside sweep: the
    message gave no remedy); a model with a free size gets no such hint."""
    with pytest.raises(DataError) as e:
        validate_feeds([("input", [None, 3, 32, 32])], np.zeros((4, 1, 28, 28), np.float32), "d")
    assert "of shape ['N', 3, 32, 32]; the data is of other images" in str(e.value)
    assert "a .npy or .npz of ['N', 3, 32, 32]" in str(e.value)
    with pytest.raises(DataError) as e:
        validate_feeds([("input", [None, 3, None, None])], np.zeros((4, 1, 28, 28), np.float32), "d")
    assert str(e.value).endswith("of shape ['N', 3, 'N', 'N']")


def test_fitting_data_passes_as_float32():
    feeds = validate_feeds(NCHW, np.zeros((4, 1, 28, 28), np.float64))
    assert feeds["input"].dtype == np.float32 and feeds["input"].shape == (4, 1, 28, 28)
