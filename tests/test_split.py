"""A single sequence's recurrence shared by two threads (lstm.SPLIT_MIN_BYTES)
gives what one thread gives, and agrees with the reference.

Each thread holds half of the units. The recurrent matmat sums every row in
the same order however the rows are split; the input projection is then
several narrower GEMMs, which BLAS may sum in another order (seen: 1 ulp),
so the comparison allows a few ulps.
"""
import numpy as np
import pytest

import lstmx
import lstmx.lstm as lstm_module
from helpers import Arch, random_state, random_x, run_reference

needs_split = pytest.mark.skipif(not lstmx._lstm.can_split(), reason="no barrier in this build")


@pytest.fixture
def split_always(monkeypatch):
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 0)


def _run(net, x, lengths, state):
    y, (h, c) = net.predict(x, lengths=lengths, state=state, return_state=True)
    yt, cache = net.forward(x, lengths=lengths, state=state)
    grads = net.backward(np.ones_like(yt), cache)
    return y, h, c, yt, grads.flat.copy(), grads.x.copy()


@needs_split
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hidden", [5, 16, 33], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_split_equals_one_thread(bidirectional, hidden, dtype, rng, monkeypatch):
    arch = Arch(6, hidden, num_layers=2, bidirectional=bidirectional, peephole=True, output_size=3)
    net = arch.make(dtype=dtype, seed=3)
    T = 9
    x = random_x(rng, T, 1, 6).astype(dtype)
    state = random_state(rng, net, 1)
    for lengths in (None, [6]):
        monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 0)
        assert net._split_recurrence(1)
        split = _run(net, x, lengths, state)
        monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 1 << 62)
        assert not net._split_recurrence(1)
        whole = _run(net, x, lengths, state)
        rtol = 1e-5 if dtype == np.float32 else 1e-13
        for a, b in zip(split, whole):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@needs_split
def test_split_against_reference(rng, split_always):
    arch = Arch(7, 24, num_layers=2, bidirectional=True, peephole=True, output_size=4)
    net = arch.make(dtype=np.float64, seed=4)
    x = random_x(rng, 12, 1, 7)
    state = random_state(rng, net, 1)
    y, (h, c) = net.predict(x, lengths=[10], state=state, return_state=True)
    y_ref, (h_ref, c_ref) = run_reference(net, x, lengths=[10], state=state)
    np.testing.assert_allclose(y, y_ref, atol=1e-10, rtol=0)
    np.testing.assert_allclose(h, h_ref, atol=1e-10, rtol=0)
    np.testing.assert_allclose(c, c_ref, atol=1e-10, rtol=0)


def test_split_only_for_single_sequences_with_large_weights():
    small = lstmx.LSTM(4, 8, dtype=np.float32)       # W_h 1 KB
    large = lstmx.LSTM(4, 320, dtype=np.float32)     # W_h 1.6 MB
    assert not small._split_recurrence(1)
    assert large._split_recurrence(1) == lstmx._lstm.can_split()
    assert not large._split_recurrence(2)


@pytest.mark.parametrize("N", [4, 9, 16], ids=lambda n: f"N{n}")
def test_batch_halves_on_two_threads(N, rng, monkeypatch):
    """One direction, 4..16 sequences: each thread runs half of them
    (lstm.SPLIT_MIN_BATCH); the same results as one thread (to rounding: a
    half of 9 is within SMALL_N and runs matmat, all 9 a BLAS GEMM)."""
    net = Arch(5, 12, num_layers=2, bidirectional=False, peephole=True, output_size=3).make(
        dtype=np.float64, seed=5)
    assert net._split(N) == "batch"
    x = random_x(rng, 7, N, 5)
    state = random_state(rng, net, N)
    lengths = rng.integers(1, 8, N)
    split = _run(net, x, lengths, state)
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BATCH", 1 << 30)
    assert net._split(N) is None
    whole = _run(net, x, lengths, state)
    for a, b in zip(split, whole):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("N", [1, 3, 8, 9, 20], ids=lambda n: f"N{n}")
def test_small_batch_products_match_blas(N, rng):
    """Up to SMALL_N sequences the recurrent products are _cell.c's matmat,
    beyond a BLAS GEMM: both agree with each other to rounding."""
    net = Arch(5, 12, num_layers=1, bidirectional=True, peephole=True, output_size=3).make(
        dtype=np.float64, seed=6)
    x = random_x(rng, 6, N, 5)
    ours = _run(net, x, None, None)
    old = lstmx._lstm._set_small_n(0)
    try:
        blas = _run(net, x, None, None)
    finally:
        lstmx._lstm._set_small_n(old)
    for a, b in zip(ours, blas):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
