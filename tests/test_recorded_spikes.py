"""The refinement's recorded spikes (onnx_snn.recorded_spikes): what is written is what is
read, by any ranges of samples and steps, in an eighth of the bytes for binary spikes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_snn.recorded_spikes import RecordedSpikes


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 4), n=st.integers(1, 9),
       shape=st.sampled_from([(), (1,), (3,), (2, 5), (3, 4, 7), (8, 2, 2)]),
       signed=st.booleans())
def test_what_is_written_is_read(seed, T, n, shape, signed):
    rng = np.random.default_rng(seed)
    # the steps' outputs: spikes times an amplitude per neuron (negative ones for signed)
    s = rng.integers(-1 if signed else 0, 2, (T, n, *shape))
    values = (s * rng.uniform(0.1, 2.0, shape)).astype(np.float32)
    rec = RecordedSpikes(T, n, shape, signed)
    cut = int(rng.integers(0, n + 1))                 # written in two batches
    rec.write(0, values[:, :cut])
    rec.write(cut, values[:, cut:])
    want = s.astype(np.int8 if signed else np.uint8)
    got = rec.read(0, n)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    a, b = sorted(rng.integers(0, n + 1, 2))
    for t in range(T):
        np.testing.assert_array_equal(rec.read(a, b, step=t), want[t, a:b])


@pytest.mark.parametrize("signed,per_neuron", [(False, 1 / 8), (True, 1)])
def test_binary_spikes_take_a_bit_each(signed, per_neuron):
    rec = RecordedSpikes(2, 512, (32, 56, 56), signed)
    assert rec.nbytes == RecordedSpikes.bytes_for(2, 512, 32 * 56 * 56, signed)
    assert rec.nbytes == 2 * 512 * 32 * 56 * 56 * per_neuron
