"""Streaming: predict chunk by chunk, carrying (h, c) with return_state=True."""

import numpy as np
import pytest

from helpers import Arch, out_width, random_state, random_x, run_reference

TOL = {np.float64: 1e-12, np.float32: 1e-6}
I, H, T = 3, 5, 12

UNI_ARCHS = [
    Arch(I, H, 1, False, True, None),
    Arch(I, H, 2, False, True, 4),
    Arch(I, H, 3, False, False, None),
    Arch(I, H, 2, False, False, 2),
]
CHUNKINGS = {"1-step": [1] * T, "3x4": [4, 4, 4], "uneven": [5, 1, 2, 4], "one": [T]}


def stream(net, x, chunks, state=None, time_axis=0):
    """Run predict over consecutive chunks of x along ``time_axis``; return (y, state)."""
    ys = []
    start = 0
    for size in chunks:
        piece = np.take(x, np.arange(start, start + size), axis=time_axis)
        y, state = net.predict(piece, state=state, return_state=True)
        ys.append(y)
        start += size
    assert start == x.shape[time_axis]
    return np.concatenate(ys, axis=time_axis), state


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("chunks", list(CHUNKINGS.values()), ids=list(CHUNKINGS))
@pytest.mark.parametrize("arch", UNI_ARCHS, ids=lambda a: a.id)
def test_unidirectional_stream_equals_one_pass(arch, chunks, dtype, rng):
    net = arch.make(dtype=dtype, seed=41)
    N = 3
    x = random_x(rng, T, N, I, dtype)
    state0 = random_state(rng, net, N)
    for initial in (None, state0):
        y_one, (h_one, c_one) = net.predict(x, state=initial, return_state=True)
        y_str, (h_str, c_str) = stream(net, x, chunks, state=initial)
        tol = TOL[np.dtype(dtype).type]
        np.testing.assert_allclose(y_str, y_one, rtol=0, atol=tol)
        np.testing.assert_allclose(h_str, h_one, rtol=0, atol=tol)
        np.testing.assert_allclose(c_str, c_one, rtol=0, atol=tol)


@pytest.mark.parametrize("layout", ["unbatched", "N1", "batch_first"])
def test_unidirectional_stream_layouts(layout, rng):
    arch = Arch(I, H, 2, False, True, 2)
    net = arch.make(seed=42, batch_first=(layout == "batch_first"))
    if layout == "unbatched":
        x, axis = rng.standard_normal((T, I)), 0
    elif layout == "N1":
        x, axis = random_x(rng, T, 1, I), 0
    else:
        x, axis = rng.standard_normal((2, T, I)), 1
    y_one, (h_one, c_one) = net.predict(x, return_state=True)
    y_str, (h_str, c_str) = stream(net, x, [3, 1, 8], time_axis=axis)
    assert y_str.shape == y_one.shape
    assert h_str.shape == h_one.shape
    np.testing.assert_allclose(y_str, y_one, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_str, h_one, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_str, c_one, rtol=0, atol=1e-12)
    # And against the reference, independently of predict's one-pass path.
    y_ref, _ = run_reference(net, x)
    np.testing.assert_allclose(y_str, y_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", [Arch(I, H, 1, True, True, None), Arch(I, H, 2, True, True, 3),
                                  Arch(I, H, 2, True, False, None)], ids=lambda a: a.id)
def test_bidirectional_state_carrying(arch, rng):
    """Bidirectional streaming is not one pass (the reverse direction needs the future),
    but each chunk must equal the reference run on that chunk from the carried state."""
    net = arch.make(seed=43)
    N = 2
    LD = arch.num_layers * 2
    x = random_x(rng, T, N, I)
    state = None
    start = 0
    for size in (5, 3, 4):
        piece = x[start:start + size]
        y, new_state = net.predict(piece, state=state, return_state=True)
        assert y.shape == (size, N, out_width(net))
        assert new_state[0].shape == new_state[1].shape == (LD, N, H)
        y_ref, (h_ref, c_ref) = run_reference(net, piece, state=state)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(new_state[0], h_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(new_state[1], c_ref, rtol=0, atol=1e-10)
        state = new_state
        start += size
    if arch.num_layers == 1 and arch.output_size is None:
        # One layer, no head: the forward half does not depend on the reverse one.
        y_one = net.predict(x)
        y_str, _ = stream(net, x, [5, 3, 4])
        np.testing.assert_allclose(y_str[..., :H], y_one[..., :H], rtol=0, atol=1e-12)
        assert not np.allclose(y_str[..., H:], y_one[..., H:])
