"""A single sequence's recurrence shared by two threads (lstm.SPLIT_MIN_BYTES)
gives what one thread gives, and agrees with the reference.

Each thread holds half of the units. The recurrent product sums every row
in the same order however the rows are split; the input projection is then
several narrower GEMMs, which BLAS may sum in another order (seen: 1 ulp),
so the comparison allows a few ulps.
"""
import os

import numpy as np
import pytest

import lstmx
import lstmx.lstm as lstm_module
from helpers import Arch, needs_split, random_state, random_x, run_reference


def _l2_unknown(monkeypatch):
    """A bidirectional single sequence then splits by units as one
    direction does (SPLIT_MIN_BYTES), whatever this machine's L2."""
    monkeypatch.setattr(lstm_module, "l2_cache_bytes", lambda: None)


@pytest.fixture
def split_always(monkeypatch):
    _l2_unknown(monkeypatch)
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
    _l2_unknown(monkeypatch)
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


def test_when_a_recurrence_splits_by_units():
    small = lstmx.LSTM(4, 8, dtype=np.float32)       # W_h 1 KB
    large = lstmx.LSTM(4, 320, dtype=np.float32)     # W_h 1.6 MB
    assert not small._split_recurrence(1)
    assert large._split_recurrence(1) == lstmx._lstm.can_split()
    assert not large._split_recurrence(2)
    assert not large._split_recurrence(64)            # the batch is halved instead
    huge = lstmx.LSTM(4, 1024, dtype=np.float32)      # W_h 16 MB
    assert huge._split_recurrence(64) == lstmx._lstm.can_split()
    bi = lstmx.LSTM(4, 1024, bidirectional=True, dtype=np.float32)
    assert not bi._split_recurrence(64)               # a direction on each thread


@pytest.mark.parametrize("hidden, l2, units", [
    (64, 512 << 10, False),     # W_h 64 KB: fits L2 whole
    (192, 512 << 10, False),    # 576 KB: not SPLIT_L2_OVER times L2
    (224, 512 << 10, True),     # 784 KB: a half fits L2, the whole does not
    (256, 512 << 10, True),     # 1 MB: a half is L2's size
    (320, 512 << 10, False),    # 1.6 MB: a half does not fit either
    (320, 1 << 20, True),       # ... but fits a 1 MB L2
    (320, None, True),          # L2 unknown: split from SPLIT_MIN_BYTES
    (16, None, False),
])
def test_when_a_bidirectional_sequence_splits_by_units(hidden, l2, units, monkeypatch):
    """A bidirectional single sequence runs a direction on each thread
    unless a half of W_h fits L2 and the whole does not (SPLIT_L2_OVER)."""
    monkeypatch.setattr(lstm_module, "l2_cache_bytes", lambda: l2)
    net = lstmx.LSTM(4, hidden, bidirectional=True, dtype=np.float32)
    expected = units and lstmx._lstm.can_split()
    assert net._split_recurrence(1) == expected
    assert net._split(1) == ("units" if expected else None)
    assert not net._split_recurrence(1, threads=1)


def test_l2_size_from_sysfs(tmp_path):
    """The L2's size from Linux's cache description; None without one."""
    from lstmx import _threads
    for index, (level, kind, size) in enumerate(
            [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"),
             ("3", "Unified", "32768K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    assert _threads._read_l2_bytes(str(tmp_path)) == 1 << 20
    (tmp_path / "index2" / "size").write_text("2M\n")
    assert _threads._read_l2_bytes(str(tmp_path)) == 2 << 20
    (tmp_path / "index2" / "size").write_text("garbage\n")
    assert _threads._read_l2_bytes(str(tmp_path)) is None
    assert _threads._read_l2_bytes(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("N", [2, 3, 4, 9, 16, 40], ids=lambda n: f"N{n}")
def test_batch_halves_on_two_threads(N, rng, monkeypatch):
    """One direction, 2 or more sequences: each thread runs half of them
    (lstm.SPLIT_MIN_BATCH); the same results as one thread."""
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
def test_matmat_and_packed_gemm_agree(N, rng):
    """The two kernels of the recurrent products, _cell.c's matmat (up to
    SMALL_N sequences) and its packed GEMM, agree to rounding."""
    net = Arch(5, 12, num_layers=1, bidirectional=True, peephole=True, output_size=3).make(
        dtype=np.float64, seed=6)
    x = random_x(rng, 6, N, 5)
    old = lstmx._lstm._set_small_n(1 << 30)
    try:
        matmat = _run(net, x, None, None)
        lstmx._lstm._set_small_n(0)
        packed = _run(net, x, None, None)
    finally:
        lstmx._lstm._set_small_n(old)
    for a, b in zip(matmat, packed):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_packed_gemm_against_numpy(dtype, rng):
    """The packed GEMM on every remainder of its row tiles (6 rows; 8 in
    the AVX-512 build) and column panels (16 float32 or 8 float64 columns;
    32 and 16 in the AVX-512 build), both packings (B = W^T is packed in 8
    x 8 blocks in float32, and a remainder of k), and turned over (A
    packed, W's rows the tiles, stored transposed)."""
    tol = 2e-5 if dtype == np.float32 else 1e-13
    for N in (1, 2, 5, 6, 7, 8, 9, 11, 13, 14, 15, 32):
        for M in (1, 7, 8, 9, 16, 17, 32, 33, 40, 100, 200):
            for K in (1, 3, 16, 33):
                a = rng.standard_normal((N, K)).astype(dtype)
                w = rng.standard_normal((M, K)).astype(dtype)
                expected = a.astype(np.float64) @ w.T.astype(np.float64)
                c = np.full((N, M), np.nan, dtype)
                lstmx._lstm._gemm_packed_test(a, w, True, c)
                np.testing.assert_allclose(c, expected, rtol=tol, atol=tol, err_msg=f"{N} {M} {K}")
                c_cols = np.full((N, M), np.nan, dtype)
                lstmx._lstm._gemm_packed_test(a, np.ascontiguousarray(w.T), False, c_cols)
                # the same sums in the same order, whichever way B was packed
                np.testing.assert_array_equal(c_cols, c)
                # and with a packed instead, w read as it is, each tile of
                # W's rows stored transposed (gemm_packed_a)
                c_a = np.full((N, M), np.nan, dtype)
                lstmx._lstm._gemm_packed_test(a, w, True, c_a, pack_a=True)
                np.testing.assert_array_equal(c_a, c, err_msg=f"{N} {M} {K}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_a_lone_row_sums_as_a_tile_does(dtype, rng):
    """A lone last row (N = 1, 7, ...) runs the one-row kernel across many
    panels, other rows 6-row tiles over one panel at a time: the same sums
    in the same order, so the same bits for the same row."""
    K, M = 37, 150
    a = rng.standard_normal((7, K)).astype(dtype)
    w = rng.standard_normal((M, K)).astype(dtype)
    tiles = np.empty((6, M), dtype)
    lstmx._lstm._gemm_packed_test(np.ascontiguousarray(a[[6, 0, 1, 2, 3, 4]]), w, True, tiles)
    lone = np.empty((7, M), dtype)
    lstmx._lstm._gemm_packed_test(a, w, True, lone)
    np.testing.assert_array_equal(lone[6], tiles[0])
    np.testing.assert_array_equal(lone[:5], tiles[1:])
    one = np.empty((1, M), dtype)
    lstmx._lstm._gemm_packed_test(np.ascontiguousarray(a[6:]), w, True, one)
    np.testing.assert_array_equal(one[0], tiles[0])
    # whatever tiles N rows are cut into (6s, 4+4, 5+4, a lone row), each
    # row gets the bits it gets among 16
    b = rng.standard_normal((16, K)).astype(dtype)
    full = np.empty((16, M), dtype)
    lstmx._lstm._gemm_packed_test(b, w, True, full)
    for N in range(1, 16):
        part = np.empty((N, M), dtype)
        lstmx._lstm._gemm_packed_test(np.ascontiguousarray(b[:N]), w, True, part)
        np.testing.assert_array_equal(part, full[:N], err_msg=f"N={N}")


@needs_split
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("T", [5, 1])
def test_batch_split_by_units(dtype, T, rng, monkeypatch):
    """One direction of several sequences with a W_h too large for both
    threads to read (lstm.SPLIT_BATCH_MAX_BYTES, lowered here): each thread
    projects half of the steps (all of them on one, for T = 1), then
    forward shares each step's packed GEMM between two threads by units;
    the same results as one thread."""
    N = 20
    net = Arch(6, 64, num_layers=2, bidirectional=False, peephole=True, output_size=3).make(
        dtype=dtype, seed=7)
    monkeypatch.setattr(lstm_module, "SPLIT_BATCH_MAX_BYTES", 0)
    assert net._split(N) == "units"
    x = random_x(rng, T, N, 6).astype(dtype)
    state = random_state(rng, net, N)
    lengths = rng.integers(1, T + 1, N)
    split = _run(net, x, lengths, state)
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BATCH", 1 << 30)
    monkeypatch.setattr(lstm_module, "BACKWARD_SPLIT_MIN_FLOPS", 1 << 62)
    assert net._split(N) is None and not net._split_backward(N)
    whole = _run(net, x, lengths, state)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(split, whole):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@pytest.fixture
def one_thread():
    old = lstmx.get_num_threads()
    lstmx.set_num_threads(1)
    yield
    lstmx.set_num_threads(old)


@pytest.mark.parametrize("N, bidirectional, hidden, split, split_backward", [
    (1, False, 64, "units", False), (1, True, 64, "units", False),
    (9, False, 32, "batch", False), (6, True, 12, None, False), (20, False, 64, "batch", True)],
    ids=["units", "units-bi", "halves", "directions", "halves-backward"])
def test_one_thread_gives_what_two_give(N, bidirectional, hidden, split, split_backward, rng,
                                        one_thread, monkeypatch):
    """set_num_threads(1): every run on one thread, none split, the same
    results as on two."""
    _l2_unknown(monkeypatch)
    net = Arch(5, hidden, num_layers=2, bidirectional=bidirectional, peephole=True,
               output_size=3).make(dtype=np.float64, seed=8)
    assert lstmx.get_num_threads() == 1
    assert net._split(N) is None and not net._split_backward(N) and not net._split_recurrence(N)
    x = random_x(rng, 6, N, 5)
    state = random_state(rng, net, N)
    lengths = rng.integers(1, 7, N)
    one = _run(net, x, lengths, state)
    lstmx.set_num_threads(2)
    if lstmx._lstm.can_split() or split != "units":
        assert net._split(N) == split
    assert net._split_backward(N) == split_backward
    two = _run(net, x, lengths, state)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="positive integer"):
        lstmx.set_num_threads(bad)


def test_num_threads_from_the_environment():
    import subprocess
    import sys
    code = "import lstmx; print(lstmx.get_num_threads())"
    for value, expected in (("1", "1"), ("8", "2"), ("zero", "2")):
        env = dict(os.environ, LSTMX_NUM_THREADS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == expected
        assert ("not a positive integer" in out.stderr) == (value == "zero")


def _tiny_forward_args(T=3, N=1, I=2, H=4):
    """lstm_forward's arguments up to rec, float64 zeros, for inference."""
    z = np.zeros
    return (z((T, N, I)), z((4 * H, I)), z((4 * H, H)), z(4 * H), z(3 * H),
            np.full(N, T, np.intc), False, z((2, N, H)), z((N, H)), z((T, N, H)), 0,
            z((T, N, 4 * H)), z((0, 0, 0)), z((0, 0, 0)), z((N, 4 * H)))


@pytest.mark.parametrize("part, nparts", [(0, 0), (1, 1), (-1, 2), (2, 2)])
def test_lstm_forward_refuses_a_part_outside_its_parts(part, nparts):
    """Checked before any index is computed from them (nparts 0 would
    divide by zero, part 1 of 1 would run units past H)."""
    args = _tiny_forward_args()
    with pytest.raises(ValueError, match="part"):
        lstmx._lstm.lstm_forward(*args, part, nparts, np.zeros(2, np.intc))


def test_an_unprepared_job_is_refused():
    with pytest.raises(ValueError, match="defer=True"):
        lstmx._lstm.Job().run()
    with pytest.raises(ValueError, match="defer=True"):
        lstmx._lstm.run_pair(lstmx._lstm.Job(), lstmx._lstm.Job())


@needs_split
def test_a_job_that_would_wait_forever_is_refused():
    """A part of a split recurrence run alone would wait at its first
    barrier for a partner that never comes; a job paired with itself would
    run on two threads into the same buffers."""
    args = _tiny_forward_args()
    part = lstmx._lstm.lstm_forward(*args, 0, 2, np.zeros(2, np.intc), defer=True)
    with pytest.raises(ValueError, match="run_pair"):
        part.run()
    whole = lstmx._lstm.lstm_forward(*args, defer=True)
    with pytest.raises(ValueError, match="same job"):
        lstmx._lstm.run_pair(whole, whole)
    whole.run()                       # alone, it runs
    # a part paired with anything but the other part of its split
    barrier, other = np.zeros(2, np.intc), np.zeros(2, np.intc)
    first = lstmx._lstm.lstm_forward(*args, 0, 2, barrier, defer=True)
    for partner in (lstmx._lstm.lstm_forward(*args, defer=True),
                    lstmx._lstm.lstm_forward(*args, 0, 2, barrier, defer=True),
                    lstmx._lstm.lstm_forward(*args, 1, 2, other, defer=True),
                    lstmx._lstm.lstm_forward(*args, 1, 3, barrier, defer=True)):
        with pytest.raises(ValueError, match="other part of the same split"):
            lstmx._lstm.run_pair(first, partner)
        with pytest.raises(ValueError, match="other part of the same split"):
            lstmx._lstm.run_pair(partner, first)
    # the two parts run, and run again: run_pair zeroes their barrier first
    second = lstmx._lstm.lstm_forward(*args, 1, 2, barrier, defer=True)
    for _ in range(3):
        lstmx._lstm.run_pair(first, second)


@pytest.mark.parametrize("nparts", [2, 3])
def test_head_in_parts_against_numpy(nparts, rng):
    """The head's products (linear_forward, linear_backward) computed in
    parts, as two threads run them, give what NumPy gives."""
    R, K, O = 23, 9, 5
    h = rng.standard_normal((R, K))
    w = rng.standard_normal((O, K))
    b = rng.standard_normal(O)
    dy = rng.standard_normal((R, O))
    y = np.full((R, O), np.nan)
    dh, dw, db = np.full((R, K), np.nan), np.full((O, K), np.nan), np.full(O, np.nan)
    for part in range(nparts):
        lstmx._lstm.linear_forward(h, w, b, y, part, nparts)
        lstmx._lstm.linear_backward(h, w, dy, dh, dw, db, part, nparts)
    np.testing.assert_allclose(y, h @ w.T + b, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dh, dy @ w, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dw, dy.T @ h, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(db, dy.sum(axis=0), rtol=1e-13, atol=1e-13)


def test_head_refuses_mismatched_shapes():
    h, w, b = np.zeros((4, 3)), np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(ValueError, match="y"):
        lstmx._lstm.linear_forward(h, w, b, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="part"):
        lstmx._lstm.linear_forward(h, w, b, np.zeros((4, 2)), 2, 2)
    with pytest.raises(ValueError, match="db"):
        lstmx._lstm.linear_backward(h, w, np.zeros((4, 2)), np.zeros((4, 3)), np.zeros((2, 3)),
                                    np.zeros(3))


@pytest.mark.parametrize("N", [1, 6])
def test_head_halved_gives_what_one_thread_gives(N, rng, monkeypatch):
    """A head large enough (lstm.HEAD_SPLIT_MIN_MACS, lowered here) runs its
    products in halves on two threads: the same outputs and gradients."""
    net = Arch(5, 12, num_layers=1, bidirectional=True, peephole=True, output_size=7).make(
        dtype=np.float64, seed=9)
    x = random_x(rng, 11, N, 5)
    monkeypatch.setattr(lstm_module, "HEAD_SPLIT_MIN_MACS", 0)
    assert net._split_head(11 * N)
    halves = _run(net, x, None, None)
    monkeypatch.setattr(lstm_module, "HEAD_SPLIT_MIN_MACS", 1 << 62)
    assert not net._split_head(11 * N)
    whole = _run(net, x, None, None)
    for a, b in zip(halves, whole):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@needs_split
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hidden", [28, 33, 64, 100], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_a_chosen_split_gives_the_bits_of_one_thread(bidirectional, hidden, dtype, rng,
                                                     monkeypatch):
    """One sequence, W_h up to _lstm.ONE_PACKED_MAX_BYTES: the run may switch
    between the units split, no split and one thread from call to call
    (lstm._Chooser), so all must give exactly the same outputs, state and
    gradients."""
    net = Arch(6, hidden, num_layers=2, bidirectional=bidirectional, peephole=True,
               output_size=3).make(dtype=dtype, seed=10)
    x = random_x(rng, 9, 1, 6).astype(dtype)
    state = random_state(rng, net, 1)
    _l2_unknown(monkeypatch)
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 0)
    assert net._split(1) == "units"
    for lengths in (None, [7]):
        results = []
        for mode in lstm_module._Chooser.MODES:
            monkeypatch.setattr(lstm_module._Chooser, "choose", lambda self, mode=mode: mode)
            results.append(_run(net, x, lengths, state))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b)


@needs_split
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layers, head", [(1, 44), (2, None)], ids=["L1-head", "L2-nohead"])
def test_the_pipelined_sequence_gives_the_bits_of_the_split(layers, head, dtype, rng,
                                                            monkeypatch):
    """Unsplit, a chosen sequence of one direction runs its recurrence while
    the other thread projects the gates ahead of it and runs the head behind
    it, in blocks of steps (_lstm.lstm_pipe): over several blocks and a
    partial one, the outputs and state are the split's and the training
    forward's, bit for bit, and the reference's."""
    net = Arch(16, 64, num_layers=layers, bidirectional=False, peephole=True,
               output_size=head).make(dtype=dtype, seed=3)
    x = random_x(rng, 100, 1, 16).astype(dtype)
    state = random_state(rng, net, 1)
    pipes = []
    real_pipe = lstmx._lstm.lstm_pipe
    monkeypatch.setattr(lstmx._lstm, "lstm_pipe",
                        lambda *a, **k: pipes.append(1) or real_pipe(*a, **k))
    for lengths in (None, [71]):
        results = []
        for mode in lstm_module._Chooser.MODES:
            monkeypatch.setattr(lstm_module._Chooser, "choose", lambda self, mode=mode: mode)
            pipes.clear()
            results.append(_run(net, x, lengths, state))
            assert len(pipes) == (layers if mode is None else 0)
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b)
        y, h, c, y_train = results[1][:4]
        np.testing.assert_array_equal(y, y_train)
        y_ref, (h_ref, c_ref) = run_reference(net, x, lengths, state)
        tol = 2e-5 if dtype == np.float32 else 1e-12
        for got, want in ((y, y_ref), (h, h_ref), (c, c_ref)):
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_the_pipeline_refuses_what_it_cannot_run():
    """lstm_forward's pipe is for one sequence forwards with x projected
    elsewhere; lstm_pipe checks its shapes and takes the head whole or not."""
    f = np.float32
    T, I, H = 5, 3, 4
    w_x, w_h = np.zeros((4 * H, I), f), np.zeros((4 * H, H), f)
    pipe = np.zeros(2, np.intc)
    empty = np.empty((0, 0, 0), f)

    def forward(N, x, reverse=False):
        return lstmx._lstm.lstm_forward(
            x, w_x, w_h, np.zeros(4 * H, f), np.zeros(3 * H, f), np.full(N, T, np.intc),
            reverse, np.zeros((2, N, H), f), np.zeros((N, H), f), np.zeros((T, N, H), f), 0,
            np.zeros((T, N, 4 * H), f), empty, empty, np.zeros((N, 4 * H), f), pipe=pipe,
            defer=True)

    with pytest.raises(ValueError, match="pipe"):
        forward(2, empty)
    with pytest.raises(ValueError, match="pipe"):
        forward(1, empty, reverse=True)
    with pytest.raises(ValueError, match="pipe"):
        forward(1, np.zeros((T, 1, I), f))
    assert forward(1, empty) is not None
    x, gates, out = np.zeros((T, 1, I), f), np.zeros((T, 1, 4 * H), f), np.zeros((T, 1, H), f)
    with pytest.raises(ValueError, match="expected"):
        lstmx._lstm.lstm_pipe(x, w_x, gates[:-1], pipe, out)
    with pytest.raises(ValueError, match="all or none"):
        lstmx._lstm.lstm_pipe(x, w_x, gates, pipe, out, np.zeros((2, H), f))
    with pytest.raises(ValueError, match="all or none"):
        lstmx._lstm.lstm_pipe(x, w_x, gates, pipe, out, np.zeros((2, H + 1), f),
                              np.zeros(2, f), np.zeros((T, 1, 2), f))
    assert lstmx._lstm.lstm_pipe(x, w_x, gates, pipe, out, defer=True) is not None


def test_the_chooser_keeps_the_faster_way():
    """lstm._Chooser: after PROBE_EVERY calls another way runs once (the two
    others in turn), and the way faster in its last call is kept; when both
    others have lost, the wait for the next probe doubles (up to
    PROBE_MAX), and a winning probe starts it again."""
    c = lstm_module._Chooser()
    every = c.PROBE_EVERY

    def run(mode, calls, seconds):
        for _ in range(calls):
            assert c.choose() == mode
            c.record(mode, seconds)

    def probe(seconds):
        mode = c.choose()
        assert mode != c.mode
        c.record(mode, seconds)
        return mode

    run("units", every, 1.0)                  # no probe before PROBE_EVERY calls
    assert probe(0.8) is None                 # the unsplit way first: faster, kept
    assert c.mode is None
    run(None, every, 0.8)
    first = probe(0.9)                        # slower: stay, same wait
    run(None, every, 0.8)
    second = probe(0.9)                       # the other one, slower too
    assert {first, second} == {"units", "one"}
    run(None, 2 * every, 0.8)                 # both lost: the wait doubled
    probe(0.9)
    run(None, 2 * every, 1.2)                 # the kept way slowed down
    winner = probe(1.1)                       # now faster: switch to it
    assert c.mode == winner
    run(winner, every, 1.1)                   # and the wait starts again
    for _ in range(20):                       # losing probes: at most PROBE_MAX apart
        probe(1.5)
        run(winner, c.every, 1.1)
    assert c.every == c.PROBE_MAX


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("K", [5, 8, 37, 320])
def test_matmat_rows_sum_alike_in_any_group(dtype, K, rng):
    """A single sequence's matmat (W_h above ONE_PACKED_MAX_BYTES) gives
    each row NumPy's value, and in float32 on AVX2+FMA (the 8-row kernel,
    which the AVX-512 build runs too)
    the bits it gets among 16 whether it falls in a group of rows or is
    left over (float64's 4-row and 1-row dot products can differ by an ulp)."""
    w = rng.standard_normal((16, K)).astype(dtype)
    x = rng.standard_normal(K).astype(dtype)
    full = np.empty(16, dtype)
    lstmx._lstm._matvec_seconds(w, x, full, 1)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(full, w.astype(np.float64) @ x.astype(np.float64),
                               rtol=tol, atol=tol * np.sqrt(K))
    for M in range(1, 16):
        part = np.empty(M, dtype)
        lstmx._lstm._matvec_seconds(np.ascontiguousarray(w[16 - M:]), x, part, 1)
        if dtype == np.float32 and lstmx._lstm.kernel_target() != "baseline":
            np.testing.assert_array_equal(part, full[16 - M:], err_msg=f"M={M}")
        else:
            np.testing.assert_allclose(part, full[16 - M:], rtol=tol, atol=tol * np.sqrt(K))


@needs_split
def test_the_chooser_is_asked_only_for_a_small_single_sequence(rng, monkeypatch):
    """lstm._Chooser decides for one sequence split by units with W_h up to
    _lstm.ONE_PACKED_MAX_BYTES; every such run reports its time to it."""
    asked, told = [], []
    monkeypatch.setattr(lstm_module._Chooser, "choose", lambda self: asked.append(1) or None)
    monkeypatch.setattr(lstm_module._Chooser, "record",
                        lambda self, mode, seconds: told.append((mode, seconds)))
    small = lstmx.LSTM(4, 64, dtype=np.float32, seed=0)       # W_h 64 KB: split, chosen
    assert small._split(1) == "units"
    small.predict(random_x(rng, 5, 1, 4))
    assert len(asked) == 1 and len(told) == 1
    assert told[0][0] is None and told[0][1] > 0              # what choose said, timed
    small.predict(random_x(rng, 5, 3, 4))                      # three sequences: not asked
    large = lstmx.LSTM(4, 512, dtype=np.float32, seed=0)      # W_h 4 MB: always split
    assert large._split(1) == "units"
    large.predict(random_x(rng, 3, 1, 4))
    assert len(asked) == 1 and len(told) == 1


@needs_split
def test_each_size_class_of_T_has_its_own_chooser(rng):
    """A call's fixed cost weighs on short calls' time a step: calls of
    one size class of T (a power of two) do not choose for another's."""
    net = lstmx.LSTM(4, 64, dtype=np.float32, seed=0)
    for T in (1, 1, 5, 6, 7, 300, 1, 300):
        net.predict(random_x(rng, T, 1, 4))
    assert set(net._choosers) == {(False, 1), (False, 3), (False, 9)}
    assert len({id(c) for c in net._choosers.values()}) == 3
    y, cache = net.forward(random_x(rng, 5, 1, 4))
    assert (True, 3) in net._choosers and net._choosers[(True, 3)] is not net._choosers[(False, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_weight_gradient_gemm_against_numpy(dtype, rng):
    """gemm_tn, C = A^T B over K rows (the weight gradients), on every
    remainder of its row tiles and column panels, with K across its blocks
    of 512 rows, on operands whose rows are further apart than their width."""
    tol = 5e-5 if dtype == np.float32 else 1e-12
    for M in (1, 2, 5, 6, 7, 8, 9, 10, 13, 22, 44):
        for Nc in (1, 7, 8, 9, 16, 17, 33, 64):
            for K in (0, 1, 3, 511, 513, 1100):
                a = rng.standard_normal((K, M + 3)).astype(dtype)[:, 2:2 + M]
                b = rng.standard_normal((K, Nc + 5)).astype(dtype)[:, :Nc]
                c = np.full((M + 1, Nc), np.nan, dtype)[:M]
                lstmx._lstm._gemm_tn_test(a, b, c)
                expected = a.astype(np.float64).T @ b.astype(np.float64)
                np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * max(1, np.sqrt(K)),
                                           err_msg=f"M={M} Nc={Nc} K={K}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_weight_gradient_rows_sum_alike_in_any_slice(dtype, rng):
    """Each C[m][j] of gemm_tn is summed over k in order whatever rows of C
    are computed with it: the two threads' halves of a weight gradient give
    the bits one thread gives."""
    K, M, Nc = 1100, 40, 21
    a = rng.standard_normal((K, M)).astype(dtype)
    b = rng.standard_normal((K, Nc)).astype(dtype)
    full = np.empty((M, Nc), dtype)
    lstmx._lstm._gemm_tn_test(a, b, full)
    for m0, m1 in [(0, 20), (20, 40), (3, 4), (7, 16), (31, 40)]:
        part = np.empty((m1 - m0, Nc), dtype)
        lstmx._lstm._gemm_tn_test(a[:, m0:m1], b, part)
        np.testing.assert_array_equal(part, full[m0:m1], err_msg=f"rows {m0}:{m1}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_packed_weight_gradient_gemm_gives_gemm_tns_bits(dtype, rng):
    """gemm_tn_packed (both operands packed a block at a time: the weight
    gradients of many units) against NumPy and against gemm_tn's bits, on
    the remainders of its blocks of 256 columns of A and 640 rows of K, of
    its tiles and panels, on operands whose rows are further apart than
    their width; and any slice of the rows of C gives the same bits."""
    tol = 5e-5 if dtype == np.float32 else 1e-12
    for M, Nc, K in [(1, 65, 3), (7, 100, 0), (255, 65, 641), (257, 97, 1281), (300, 70, 640),
                     (520, 33, 700), (1280, 130, 1300)]:
        a = rng.standard_normal((K, M + 3)).astype(dtype)[:, 2:2 + M]
        b = rng.standard_normal((K, Nc + 5)).astype(dtype)[:, :Nc]
        c = np.full((M + 1, Nc), np.nan, dtype)[:M]
        lstmx._lstm._gemm_tn_test(a, b, c, packed=True)
        expected = a.astype(np.float64).T @ b.astype(np.float64)
        np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * max(1, np.sqrt(K)),
                                   err_msg=f"M={M} Nc={Nc} K={K}")
        plain = np.empty((M, Nc), dtype)
        lstmx._lstm._gemm_tn_test(a, b, plain)
        np.testing.assert_array_equal(c, plain, err_msg=f"M={M} Nc={Nc} K={K}")
        m0, m1 = M // 3, M - M // 4
        part = np.empty((m1 - m0, Nc), dtype)
        lstmx._lstm._gemm_tn_test(a[:, m0:m1], b, part, packed=True)
        np.testing.assert_array_equal(part, c[m0:m1], err_msg=f"M={M} rows {m0}:{m1}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_packed_weight_gradients_of_two_operands_at_once(dtype, rng):
    """dW_x and dW_h from one call (dA's blocks packed once for both): each
    the bits of gemm_tn alone, narrow or wide, with K across blocks."""
    for M, K, N1, N2 in [(300, 1281, 70, 65), (260, 700, 16, 130), (257, 641, 3, 9)]:
        a = rng.standard_normal((K, M + 1)).astype(dtype)[:, 1:]
        b1 = rng.standard_normal((K, N1)).astype(dtype)
        b2 = rng.standard_normal((K, N2 + 2)).astype(dtype)[:, :N2]
        c1, c2 = np.empty((M, N1), dtype), np.empty((M, N2), dtype)
        lstmx._lstm._gemm_tn_pair_test(a, b1, c1, b2, c2)
        for b, c in ((b1, c1), (b2, c2)):
            alone = np.empty_like(c)
            lstmx._lstm._gemm_tn_test(a, b, alone)
            np.testing.assert_array_equal(c, alone, err_msg=f"M={M} K={K} Nc={b.shape[1]}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_weights_job_gives_gemm_tns_bits_on_every_path(dtype, rng):
    """lstm_backward_weights' dW_x and dW_h on gemm_tn (narrow, the
    default here), on gemm_tn_packed (both in one call, or dW_h alone) or
    on BLAS, as _set_tn_limits picks: gemm_tn's bits from the packed paths,
    results as close from BLAS (whose bits at these sizes happen to be the
    same); _tn_paths tells which kernels ran."""
    T, N, I, H = 40, 5, 5, 6
    x = rng.standard_normal((T, N, I)).astype(dtype)
    w_x = rng.standard_normal((4 * H, I)).astype(dtype)
    h_prev = rng.standard_normal((T, N, H)).astype(dtype)
    dgates = rng.standard_normal((T, N, 4 * H)).astype(dtype)
    empty = np.empty((0, 0, 0), dtype)

    def weights(limits, ran):
        old = lstmx._lstm._set_tn_limits(*limits)
        before = lstmx._lstm._tn_paths()
        try:
            dw_x, dw_h = np.empty((4 * H, I), dtype), np.empty((4 * H, H), dtype)
            lstmx._lstm.lstm_backward_weights(x, w_x, h_prev, dgates, dw_x, dw_h, empty, False)
        finally:
            lstmx._lstm._set_tn_limits(*old)
        # (gemm_tn, gemm_tn_packed, BLAS) gradients run by this call
        assert tuple(np.subtract(lstmx._lstm._tn_paths(), before)) == ran, limits
        return dw_x, dw_h

    narrow = weights((64, 256), (2, 0, 0))
    for limits, ran in (((0, 1), (0, 2, 0)), ((I, 1), (1, 1, 0))):   # both packed; dW_h
        for got, want in zip(weights(limits, ran), narrow):
            np.testing.assert_array_equal(got, want, err_msg=str(limits))
    for got, want in zip(weights((0, 2**40), (0, 0, 2)), narrow):
        np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-12)


def test_weight_gradient_gemm_refuses_bad_shapes():
    a = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="a \\(K, M\\)"):
        lstmx._lstm._gemm_tn_test(a, np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="adjacent"):
        lstmx._lstm._gemm_tn_test(a, np.zeros((5, 4), np.float32)[:, ::2],
                                  np.zeros((3, 2), np.float32))


def _forward_kernel(net, x, lengths, reverse, training, state, gate_steps=None, **kw):
    """lstm_forward of net's first slot on one thread from state (h0, c0)
    (1, N, H), with gates of gate_steps steps (T): (out, h, c and, when
    training, gates, c_all and h_prev_all)."""
    T, N, _ = x.shape
    H, dt = net.hidden_size, net.dtype
    w_x, w_h, bias, peep = net._kernel_params(0)
    h_buf, c = np.zeros((2, N, H), dt), state[1][0].copy()
    h_buf[0] = state[0][0]
    out, gates = np.zeros((T, N, H), dt), np.zeros((gate_steps or T, N, 4 * H), dt)
    record = [np.zeros((T, N, H), dt) if training else np.empty((0, 0, 0), dt)
              for _ in range(2)]
    lstmx._lstm.lstm_forward(x, w_x, w_h, bias, peep, lengths, reverse, h_buf, c, out, 0,
                             gates, *record, np.zeros((N, 4 * H), dt), **kw)
    return (out, h_buf[T % 2], c) + ((gates, *record) if training else ())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_projection_by_step_gives_the_bits_of_projection_by_rows(dtype, reverse, training,
                                                                 rng):
    """A forward that projects its inputs as the steps come, in blocks of
    any number of steps (a last block partial, one block of all steps, one
    larger than T), gives the bits of the packed projection of all rows
    first (project_whole); and a job on some of the sequences, a step at a
    time, their rows of it. For inference, with gates of a block of steps
    only (ring), the same."""
    T, N, I, H = 7, 5, 6, 19
    net = Arch(I, H, peephole=True).make(dtype=dtype, seed=5)
    x = random_x(rng, T, N, I).astype(dtype)
    lengths = np.full(N, T, np.intc)
    if not reverse:
        lengths[1:3] = (4, 1)
    state = random_state(rng, net, N)
    want = _forward_kernel(net, x, lengths, reverse, training, state, project_whole=True)
    if not reverse:   # (the reference's reverse is a second direction's)
        y_ref, _ = run_reference(net, x, lengths, state)
        tol = 2e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(want[0], y_ref, rtol=0, atol=tol)
    for by_step in (1, 2, 3, T, T + 4):
        got = _forward_kernel(net, x, lengths, reverse, training, state, by_step=by_step)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"by_step={by_step}")
        if not training:
            got = _forward_kernel(net, x, lengths, reverse, training, state,
                                  min(by_step, T), by_step=by_step, ring=True)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b, err_msg=f"ring, by_step={by_step}")
    for n0, n1 in ((0, 2), (2, 5)):
        ring = {} if training else {"gate_steps": 1, "ring": True}
        got = _forward_kernel(net, x, lengths, reverse, training, state, by_step=1, n0=n0,
                              n1=n1, **ring)
        for a, b in zip(got, want):
            if a.ndim == 3:    # (T, N, ...); h and c are (N, H)
                a, b = a[:, n0:n1], b[:, n0:n1]
            else:
                a, b = a[n0:n1], b[n0:n1]
            np.testing.assert_array_equal(a, b, err_msg=f"sequences {n0}:{n1}")


def test_projection_by_step_refuses_what_it_cannot_run():
    """by_step needs x; reverse only when every sequence has all T steps
    (a block of steps is then a block of rows); not with the pipe or
    project_whole; a range of sequences projects a step at a time."""
    args = list(_tiny_forward_args(T=3, N=2))
    rest = args[6:]
    x, w_x, w_h, bias, peep, lengths = args[:6]
    run = lstmx._lstm.lstm_forward
    with pytest.raises(ValueError, match="by_step"):
        run(x, w_x, w_h, bias, peep, lengths, *rest, by_step=-1)
    with pytest.raises(ValueError, match="by_step"):
        run(np.zeros((0, 0, 0)), w_x, w_h, bias, peep, lengths, *rest, by_step=1)
    with pytest.raises(ValueError, match="by_step"):
        run(x, w_x, w_h, bias, peep, lengths, *rest, project_whole=True, by_step=1)
    with pytest.raises(ValueError, match="project_in_place"):
        run(x, w_x, w_h, bias, peep, lengths, *rest, project_in_place=True, by_step=1)
    ragged = np.array([3, 2], np.intc)
    with pytest.raises(ValueError, match="by_step"):
        run(x, w_x, w_h, bias, peep, ragged, True, *rest[1:], by_step=1)
    run(x, w_x, w_h, bias, peep, ragged, False, *rest[1:], by_step=2)     # forwards: runs
    run(x, w_x, w_h, bias, peep, lengths, True, *rest[1:], by_step=2)     # all of T: runs
    with pytest.raises(ValueError, match="n0, n1"):
        run(x, w_x, w_h, bias, peep, lengths, *rest, n0=1, by_step=2)
    run(x, w_x, w_h, bias, peep, lengths, *rest, n0=1, by_step=1)
    # x and out of the gates' steps and sequences (x's steps with ring)
    for bad_x in (np.zeros((2, 2, 2)), np.zeros((3, 1, 2)), np.zeros((3, 2, 3))):
        with pytest.raises(ValueError, match="x \\(T, N, I\\)"):
            run(bad_x, w_x, w_h, bias, peep, lengths, *rest, by_step=1)
    bad_out = list(rest)
    bad_out[3] = np.zeros((2, 2, 4))
    with pytest.raises(ValueError, match="out \\(T, N"):
        run(x, w_x, w_h, bias, peep, lengths, *bad_out)
    # ring: inference by step, gates of a block of steps at least
    with pytest.raises(ValueError, match="ring"):
        run(x, w_x, w_h, bias, peep, lengths, *rest, ring=True)
    short = list(rest)
    short[5] = np.zeros((1, 2, 16))
    with pytest.raises(ValueError, match="ring"):
        run(x, w_x, w_h, bias, peep, lengths, *short, by_step=2, ring=True)
    run(x, w_x, w_h, bias, peep, lengths, *short, by_step=1, ring=True)
    training = list(rest)
    training[6:8] = np.zeros((3, 2, 4)), np.zeros((3, 2, 4))
    run(x, w_x, w_h, bias, peep, lengths, *training, by_step=1)
    with pytest.raises(ValueError, match="ring"):
        run(x, w_x, w_h, bias, peep, lengths, *training, by_step=1, ring=True)


def test_which_runs_project_by_step(monkeypatch):
    """LSTM._by_step: a single sequence never; split by units, from
    BY_STEP_UNITS_MIN_N sequences, blocks of about BY_STEP_ROWS rows; else a
    step at a time while W_x and W_h packed fit half of L2."""
    monkeypatch.setattr(lstm_module, "l2_cache_bytes", lambda: 2 << 20)
    small = Arch(16, 64).make(dtype=np.float32, seed=1)
    assert small._by_step("units", 1, 16) == small._by_step(None, 1, 16) == 0
    assert small._by_step("units", 63, 16) == 0
    assert small._by_step("units", 64, 16) == 4 and small._by_step("units", 300, 16) == 1
    for split in ("batch", None):
        assert small._by_step(split, 2, 16) == 1
        # 4 * 64 * (I + 64) * 4 bytes: 1 MB at I = 960
        assert small._by_step(split, 2, 960) == 1 and small._by_step(split, 2, 961) == 0
    monkeypatch.setattr(lstm_module, "l2_cache_bytes", lambda: 512 << 10)
    assert small._by_step("batch", 2, 192) == 1 and small._by_step("batch", 2, 193) == 0
    monkeypatch.setattr(lstm_module, "l2_cache_bytes", lambda: None)   # BY_STEP_MAX_BYTES
    assert small._by_step("batch", 2, 960) == 1 and small._by_step("batch", 2, 961) == 0


@needs_split
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_units_split_projecting_by_step(dtype, rng, monkeypatch):
    """Split by units with blocks of projection (BY_STEP_UNITS_MIN_N
    lowered): the same bits whatever the block (one step, several, a last
    partial one), close to one thread and to the reference."""
    N, T = 6, 7
    net = Arch(6, 64, num_layers=2, bidirectional=False, peephole=True, output_size=3).make(
        dtype=dtype, seed=7)
    monkeypatch.setattr(lstm_module, "SPLIT_BATCH_MAX_BYTES", 0)
    monkeypatch.setattr(lstm_module, "BY_STEP_UNITS_MIN_N", 1)
    assert net._split(N) == "units"
    x = random_x(rng, T, N, 6).astype(dtype)
    state = random_state(rng, net, N)
    lengths = rng.integers(1, T + 1, N)
    results = []
    for rows in (N, 4 * N, 100 * N):
        monkeypatch.setattr(lstm_module, "BY_STEP_ROWS", rows)
        assert net._by_step("units", N, 6) == rows // N
        results.append(_run(net, x, lengths, state))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    y_ref, (h_ref, c_ref) = run_reference(net, x, lengths, state)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for got, want in zip(results[0][:3], (y_ref, h_ref, c_ref)):
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    monkeypatch.setattr(lstm_module, "BY_STEP_UNITS_MIN_N", 1 << 30)
    assert net._by_step("units", N, 6) == 0
    for a, b in zip(results[0], _run(net, x, lengths, state)):
        np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)


def _record_forward(monkeypatch, *keys):
    """The list to which every lstm_forward call from now on appends the
    values of its keyword arguments ``keys`` (one alone, else a tuple)."""
    calls = []
    real = lstmx._lstm.lstm_forward

    def record(*args, **kwargs):
        values = tuple(kwargs[key] for key in keys)
        calls.append(values[0] if len(values) == 1 else values)
        return real(*args, **kwargs)

    monkeypatch.setattr(lstmx._lstm, "lstm_forward", record)
    return calls


def _predict_checked(net, x, state):
    """predict's y for one sequence, checked bit for bit against training's
    forward and to rounding against the reference."""
    y = net.predict(x, state=state)
    y_train, _ = net.forward(x, state=state)
    np.testing.assert_array_equal(y, y_train)
    y_ref, _ = run_reference(net, x, None, state)
    tol = 2e-5 if net.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=tol)
    return y


def _predict_packing_w_x(net, x, state):
    """predict with a projection of few rows packing W_x, not the rows
    (_lstm's PACK_ROWS hook)."""
    old = lstmx._lstm._set_pack_rows(False)
    try:
        return net.predict(x, state=state)
    finally:
        lstmx._lstm._set_pack_rows(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_a_bidirectional_sequence_projects_on_the_packed_gemm(dtype, rng, monkeypatch):
    """One sequence, a direction a thread: each job projects its direction
    on the packed GEMM (project_whole), in predict and in training's
    forward alike, which agree bit for bit and with the reference."""
    _l2_unknown(monkeypatch)
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 1 << 62)
    net = Arch(6, 24, num_layers=2, bidirectional=True, peephole=True, output_size=3).make(
        dtype=dtype, seed=4)
    assert net._split(1) is None
    calls = _record_forward(monkeypatch, "project_whole")
    x = random_x(rng, 9, 1, 6).astype(dtype)
    state = random_state(rng, net, 1)
    y = _predict_checked(net, x, state)
    assert calls == [True] * 8
    # 9 rows against W_x's 96: the rows were packed, not W_x; packing W_x
    # gives the same bits
    assert np.array_equal(_predict_packing_w_x(net, x, state), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_a_short_sequence_reads_the_weights_as_they_are(dtype, rng, monkeypatch):
    """One sequence, a direction a thread: a call of fewer than
    lstm.ONE_PACKED_MIN_STEPS steps reads W_h as it is rather than packing
    it, and one of at most lstm.PROJECT_IN_PLACE_MAX_ROWS steps W_x too;
    all agree with the reference, and predict with training's forward bit
    for bit. Where the chooser may switch ways (they must give the same
    bits), both are packed whatever the steps."""
    _l2_unknown(monkeypatch)
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 1 << 62)
    net = Arch(6, 24, num_layers=2, bidirectional=True, peephole=True, output_size=3).make(
        dtype=dtype, seed=6)
    calls = _record_forward(monkeypatch, "pack_w_h", "project_in_place")
    state = random_state(rng, net, 1)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    least, most = lstm_module.ONE_PACKED_MIN_STEPS, lstm_module.PROJECT_IN_PLACE_MAX_ROWS
    for T, packs in ((1, (False, True)), (most, (False, True)), (most + 1, (False, False)),
                     (least - 1, (False, False)), (least, (True, False))):
        calls.clear()
        _predict_checked(net, random_x(rng, T, 1, 6).astype(dtype), state)
        assert calls == [packs] * 8, T       # 2 layers, 2 directions, 2 runs
    if lstmx._lstm.can_split():
        monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 0)
        chosen = Arch(6, 24, num_layers=1, peephole=True, output_size=3).make(dtype=dtype, seed=7)
        assert chosen._split(1) == "units"
        calls.clear()
        chosen.predict(random_x(rng, 3, 1, 6).astype(dtype))
        assert calls and all(c == (True, False) for c in calls)
        # split by units beyond the chooser: each part projects its units'
        # columns reading W_x as it is
        monkeypatch.setattr(lstmx._lstm, "ONE_PACKED_MAX_BYTES", 0)
        calls.clear()
        x = random_x(rng, 3, 1, 6).astype(dtype)
        y = net.predict(x, state=state)
        assert net._split(1) == "units" and calls == [(False, True)] * 8
        y_ref, _ = run_reference(net, x, None, state)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=tol)


@needs_split
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_a_sequence_split_by_units_projects_on_the_packed_gemm(bidirectional, dtype, rng,
                                                               monkeypatch):
    """One sequence split by units, W_h too large for the chooser: each
    part projects its half of the rows on the packed GEMM (project_whole),
    as a direction a thread does, with the bits whichever operand it packs;
    training's forward agrees bit for bit, and the reference to rounding."""
    _l2_unknown(monkeypatch)
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(lstmx._lstm, "ONE_PACKED_MAX_BYTES", 0)
    net = Arch(6, 24, num_layers=2, bidirectional=bidirectional, peephole=True,
               output_size=3).make(dtype=dtype, seed=5)
    assert net._split(1) == "units"
    calls = _record_forward(monkeypatch, "project_whole")
    x = random_x(rng, 9, 1, 6).astype(dtype)
    state = random_state(rng, net, 1)
    y = _predict_checked(net, x, state)
    D = 2 if bidirectional else 1
    assert calls == [True] * (2 * 2 * D * 2)    # 2 parts, D, 2 layers, 2 runs
    assert np.array_equal(_predict_packing_w_x(net, x, state), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", [1, 37, 64])
def test_cell_hook_runs_the_cell_and_refuses_nonsense(dtype, n, rng):
    """bench/floors.py's cell hook: a call of one repeat leaves the cell's c
    and h, as the reference computes them from the same slices of its work
    array, and sizes that do not fit are refused."""
    work = rng.uniform(-1, 1, 18 * n).astype(dtype)
    w = work.astype(np.float64)
    z = w[:4 * n] + w[4 * n:8 * n] + w[8 * n:12 * n]    # a + recurrent term + bias
    p_i, p_f, p_o = w[12 * n:13 * n], w[13 * n:14 * n], w[14 * n:15 * n]
    c0 = w[16 * n:17 * n]

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    i = sigmoid(z[:n] + p_i * c0)
    f = sigmoid(z[n:2 * n] + p_f * c0)
    g = np.tanh(z[2 * n:3 * n])
    c = f * c0 + i * g
    h = sigmoid(z[3 * n:] + p_o * c) * np.tanh(c)
    assert lstmx._lstm._cell_seconds(work, n, 1) > 0
    tol = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(work[16 * n:17 * n], c, rtol=tol, atol=tol)
    np.testing.assert_allclose(work[15 * n:16 * n], h, rtol=tol, atol=tol)
    np.testing.assert_array_equal(work[17 * n:], work[15 * n:16 * n])
    for bad in ((work[:-1], n, 1), (work, 0, 1), (work, n, 0)):
        with pytest.raises(ValueError, match="18 n elements"):
            lstmx._lstm._cell_seconds(*bad)


@pytest.mark.skipif(not lstmx._lstm.can_split(), reason="no split recurrences in this build")
def test_meeting_hook_meets_and_refuses_nonsense():
    """bench/floors.py's hook: two threads meet that many times (a round
    takes some time, and the barrier is fresh for the next call)."""
    for _ in range(2):
        seconds = lstmx._lstm._meeting_seconds(1000)
        assert 0 < seconds < 1e-3
    with pytest.raises(ValueError, match="rounds >= 1"):
        lstmx._lstm._meeting_seconds(0)
