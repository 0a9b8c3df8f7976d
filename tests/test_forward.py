"""forward and predict against the NumPy reference (DESIGN.md sections 1, 3, 5)."""

import numpy as np
import pytest

import lstmx
from helpers import (DTYPE_IDS, DTYPES, Arch, all_archs, atol_for, out_width, padding_mask,
                     random_state, random_x, run_reference)

ARCHS = all_archs(layers=(1, 2, 3))
T, N, I = 6, 3, 3
UNSORTED_LENGTHS = np.array([4, 6, 1])  # unsorted, includes 1 and T


def _check_against_reference(net, x, lengths=None, state=None):
    """predict, predict(return_state), forward: all equal the reference; return y."""
    atol = atol_for(net.dtype)
    y_ref, (h_ref, c_ref) = run_reference(net, x, lengths, state)

    y_pred = net.predict(x, lengths=lengths, state=state)
    assert isinstance(y_pred, np.ndarray)
    assert y_pred.shape == y_ref.shape
    assert y_pred.dtype == net.dtype
    np.testing.assert_allclose(y_pred, y_ref, rtol=0, atol=atol)

    y_st, (h_n, c_n) = net.predict(x, lengths=lengths, state=state, return_state=True)
    np.testing.assert_array_equal(y_st, y_pred)
    assert h_n.shape == h_ref.shape and c_n.shape == c_ref.shape
    assert h_n.dtype == net.dtype and c_n.dtype == net.dtype
    np.testing.assert_allclose(h_n, h_ref, rtol=0, atol=atol)
    np.testing.assert_allclose(c_n, c_ref, rtol=0, atol=atol)

    y_fwd, cache = net.forward(x, lengths=lengths, state=state)
    np.testing.assert_array_equal(y_fwd, y_pred)  # training and inference paths agree exactly
    h_c, c_c = cache.state
    np.testing.assert_array_equal(h_c, h_n)
    np.testing.assert_array_equal(c_c, c_n)
    return y_pred


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("arch", ARCHS, ids=[a.id for a in ARCHS])
def test_matches_reference_full_length_zero_state(arch, dtype, rng):
    net = arch.make(dtype=dtype, seed=1)
    x = random_x(rng, T, N, arch.input_size, dtype)
    _check_against_reference(net, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("arch", ARCHS, ids=[a.id for a in ARCHS])
def test_matches_reference_lengths_and_state(arch, dtype, rng):
    net = arch.make(dtype=dtype, seed=2)
    x = random_x(rng, T, N, arch.input_size, dtype)
    state = random_state(rng, net, N)
    y = _check_against_reference(net, x, UNSORTED_LENGTHS, state)
    assert np.all(y[~padding_mask(UNSORTED_LENGTHS, T)] == 0)


@pytest.mark.parametrize("lengths", [[1, 1, 1], [6, 6, 6], [6, 1, 3], [2, 5, 6]],
                         ids=["all1", "allT", "T-1-mid", "sorted-up"])
@pytest.mark.parametrize("arch", [Arch(num_layers=2, bidirectional=True, output_size=2),
                                  Arch(num_layers=2, bidirectional=False)],
                         ids=lambda a: a.id)
def test_lengths_edge_cases(arch, lengths, rng):
    net = arch.make(seed=3)
    x = random_x(rng, T, N, arch.input_size)
    y = _check_against_reference(net, x, np.array(lengths), random_state(rng, net, N))
    assert np.all(y[~padding_mask(lengths, T)] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_full_lengths_equal_no_lengths(dtype, rng):
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(dtype=dtype, seed=4)
    x = random_x(rng, T, N, 3, dtype)
    y0, (h0, c0) = net.predict(x, return_state=True)
    y1, (h1, c1) = net.predict(x, lengths=np.full(N, T), return_state=True)
    np.testing.assert_allclose(y1, y0, rtol=0, atol=atol_for(dtype) / 10)
    np.testing.assert_allclose(h1, h0, rtol=0, atol=atol_for(dtype) / 10)
    np.testing.assert_allclose(c1, c0, rtol=0, atol=atol_for(dtype) / 10)


def test_padded_values_do_not_leak(rng):
    """What sits in x beyond a sequence's length changes nothing."""
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(seed=5)
    x = random_x(rng, T, N, 3)
    lengths = UNSORTED_LENGTHS
    y0, (h0, c0) = net.predict(x, lengths=lengths, return_state=True)
    x2 = x.copy()
    x2[~padding_mask(lengths, T)] = 1e3 * rng.standard_normal((np.sum(~padding_mask(lengths, T)), 3))
    y1, (h1, c1) = net.predict(x2, lengths=lengths, return_state=True)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(h1, h0)
    np.testing.assert_array_equal(c1, c0)


def test_each_sequence_equals_running_it_alone(rng):
    """Batching is invisible: sequence n alone, truncated to its length, gives the same."""
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(seed=6)
    x = random_x(rng, T, N, 3)
    h0, c0 = random_state(rng, net, N)
    y, (h_n, c_n) = net.predict(x, lengths=UNSORTED_LENGTHS, state=(h0, c0), return_state=True)
    for n, l in enumerate(UNSORTED_LENGTHS):
        y_n, (h_nn, c_nn) = net.predict(x[:l, n:n + 1], state=(h0[:, n:n + 1], c0[:, n:n + 1]),
                                        return_state=True)
        np.testing.assert_allclose(y[:l, n:n + 1], y_n, rtol=0, atol=1e-12)
        np.testing.assert_allclose(h_n[:, n:n + 1], h_nn, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c_n[:, n:n + 1], c_nn, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("arch", [Arch(num_layers=2, bidirectional=True, output_size=2),
                                  Arch(num_layers=1, bidirectional=False, peephole=True),
                                  Arch(num_layers=3, bidirectional=True, peephole=False)],
                         ids=lambda a: a.id)
def test_single_sequence_batch(arch, dtype, rng):
    net = arch.make(dtype=dtype, seed=7)
    x = random_x(rng, 7, 1, arch.input_size, dtype)
    _check_against_reference(net, x)
    _check_against_reference(net, x, np.array([5]), random_state(rng, net, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("arch", [Arch(num_layers=2, bidirectional=True, output_size=2),
                                  Arch(num_layers=2, bidirectional=False)],
                         ids=lambda a: a.id)
def test_unbatched(arch, dtype, rng):
    """(T, I) is one sequence: y is (T, O or D*H), states are (L*D, H)."""
    net = arch.make(dtype=dtype, seed=8)
    x = rng.standard_normal((T, arch.input_size)).astype(dtype)
    y = _check_against_reference(net, x)
    assert y.shape == (T, out_width(net))
    h0, c0 = random_state(rng, net, 1)
    state = (h0[:, 0], c0[:, 0])
    y, (h_n, c_n) = net.predict(x, state=state, return_state=True)
    L_D = arch.num_layers * arch.num_directions
    assert h_n.shape == c_n.shape == (L_D, arch.hidden_size)
    _check_against_reference(net, x, state=state)
    # The same as a batch of one.
    y_b, (h_b, c_b) = net.predict(x[:, None, :], state=(h0, c0), return_state=True)
    np.testing.assert_array_equal(y, y_b[:, 0])
    np.testing.assert_array_equal(h_n, h_b[:, 0])
    np.testing.assert_array_equal(c_n, c_b[:, 0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("arch", [Arch(num_layers=2, bidirectional=True, output_size=2),
                                  Arch(num_layers=1, bidirectional=False, peephole=False)],
                         ids=lambda a: a.id)
def test_batch_first(arch, dtype, rng):
    """batch_first=True takes (N, T, I), returns (N, T, ...); states stay (L*D, N, H)."""
    net_tm = arch.make(dtype=dtype, seed=9)
    net_bf = arch.make(dtype=dtype, seed=9, batch_first=True)
    assert net_bf.batch_first and not net_tm.batch_first
    np.testing.assert_array_equal(net_bf.flat, net_tm.flat)
    x = random_x(rng, T, N, arch.input_size, dtype)
    x_bf = np.ascontiguousarray(x.transpose(1, 0, 2))
    state = random_state(rng, net_bf, N)
    y_bf = _check_against_reference(net_bf, x_bf, UNSORTED_LENGTHS, state)
    assert y_bf.shape == (N, T, out_width(net_bf))
    y_tm, (h_tm, c_tm) = net_tm.predict(x, lengths=UNSORTED_LENGTHS, state=state, return_state=True)
    _, (h_bf, c_bf) = net_bf.predict(x_bf, lengths=UNSORTED_LENGTHS, state=state, return_state=True)
    np.testing.assert_allclose(y_bf, y_tm.transpose(1, 0, 2), rtol=0, atol=atol_for(dtype) / 10)
    assert h_bf.shape == (arch.num_layers * arch.num_directions, N, arch.hidden_size)
    np.testing.assert_allclose(h_bf, h_tm, rtol=0, atol=atol_for(dtype) / 10)
    np.testing.assert_allclose(c_bf, c_tm, rtol=0, atol=atol_for(dtype) / 10)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", [(5, 7, 1), (5, 7, 4), (2, 33, 5), (9, 16, 2)],
                         ids=["I5-H7-N1", "I5-H7-N4", "I2-H33-N5", "I9-H16-N2"])
def test_odd_sizes_longer_sequences(sizes, dtype, rng):
    """Hidden sizes off any vector width, N=1 (matmat) and N>1 (the packed GEMM), T=25."""
    I_, H, N_ = sizes
    arch = Arch(input_size=I_, hidden_size=H, num_layers=2, bidirectional=True, output_size=3)
    net = arch.make(dtype=dtype, seed=10)
    x = random_x(rng, 25, N_, I_, dtype)
    lengths = rng.integers(1, 26, size=N_)
    lengths[0] = 25
    _check_against_reference(net, x, lengths, random_state(rng, net, N_))


def test_default_state_is_zeros(rng):
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(seed=11)
    x = random_x(rng, T, N, 3)
    zeros = np.zeros((4, N, 4))
    y0, (h0, c0) = net.predict(x, lengths=UNSORTED_LENGTHS, return_state=True)
    y1, (h1, c1) = net.predict(x, lengths=UNSORTED_LENGTHS, state=(zeros, zeros.copy()),
                               return_state=True)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(h0, h1)
    np.testing.assert_array_equal(c0, c1)


def test_initial_state_matters_per_layer_and_direction(rng):
    """Each (layer, direction) slot of the state reaches the output: the order is not ignored."""
    net = Arch(num_layers=2, bidirectional=True).make(seed=12)
    x = random_x(rng, T, N, 3)
    h0, c0 = random_state(rng, net, N)
    base = net.predict(x, state=(h0, c0))
    for slot in range(4):
        h1 = h0.copy()
        h1[slot] += 0.5
        y = net.predict(x, state=(h1, c0))
        assert not np.allclose(y, base)
        np.testing.assert_allclose(y, run_reference(net, x, state=(h1, c0))[0], rtol=0, atol=1e-10)


def test_inputs_not_modified(rng):
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(seed=13)
    x = random_x(rng, T, N, 3)
    h0, c0 = random_state(rng, net, N)
    lengths = UNSORTED_LENGTHS.copy()
    copies = [a.copy() for a in (x, h0, c0, lengths, net.flat)]
    net.predict(x, lengths=lengths, state=(h0, c0), return_state=True)
    net.forward(x, lengths=lengths, state=(h0, c0))
    for before, after in zip(copies, (x, h0, c0, lengths, net.flat)):
        np.testing.assert_array_equal(before, after)


def test_results_are_fresh_arrays(rng):
    """A later call does not overwrite earlier results (no shared output buffers)."""
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(seed=14)
    x1 = random_x(rng, T, N, 3)
    x2 = random_x(rng, T, N, 3)
    y1, (h1, c1) = net.predict(x1, return_state=True)
    saved = [a.copy() for a in (y1, h1, c1)]
    net.predict(x2, return_state=True)
    net.forward(x2)
    for before, after in zip(saved, (y1, h1, c1)):
        np.testing.assert_array_equal(before, after)


def test_batch_size_changes_between_calls(rng):
    """A net used with N=3, then N=1, then N=5, then N=3 gives the same as fresh calls."""
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(seed=15)
    xs = {n: random_x(rng, T, n, 3) for n in (3, 1, 5)}
    first = net.predict(xs[3])
    for n in (1, 5):
        np.testing.assert_allclose(net.predict(xs[n]), run_reference(net, xs[n])[0],
                                   rtol=0, atol=1e-10)
    np.testing.assert_array_equal(net.predict(xs[3]), first)


def test_deterministic(rng):
    net = Arch(num_layers=2, bidirectional=True, output_size=2).make(dtype=np.float32, seed=16)
    x = random_x(rng, T, N, 3, np.float32)
    np.testing.assert_array_equal(net.predict(x), net.predict(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_net_attributes(dtype):
    net = lstmx.LSTM(3, 4, num_layers=2, bidirectional=True, peephole=False, output_size=5,
                     dtype=dtype, seed=0)
    assert (net.input_size, net.hidden_size, net.num_layers) == (3, 4, 2)
    assert net.bidirectional is True and net.num_directions == 2
    assert net.peephole is False and net.output_size == 5
    assert np.dtype(net.dtype) == np.dtype(dtype)
    assert net.batch_first is False
    uni = lstmx.LSTM(3, 4)
    assert uni.num_layers == 1 and uni.num_directions == 1 and uni.bidirectional is False
    assert uni.peephole is True and uni.output_size is None
    assert np.dtype(uni.dtype) == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hidden", [13, 40], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("threads", [1, 2])
def test_backwards_steps_give_the_same_bits(dtype, hidden, threads, monkeypatch):
    """A single sequence's recurrent product on W_h as it is (matmat) takes
    the rows of every other step backwards, in chunks (_lstm.ZIGZAG_BYTES),
    whole or split by units: the same bits as all steps forwards."""
    import lstmx.lstm as lstm_module
    monkeypatch.setattr(lstmx._lstm, "ONE_PACKED_MAX_BYTES", 0)   # matmat
    monkeypatch.setattr(lstm_module, "SPLIT_MIN_BYTES", 0)
    monkeypatch.setattr(lstm_module, "l2_cache_bytes", lambda: None)
    net = lstmx.LSTM(5, hidden, num_layers=2, bidirectional=True, output_size=3, dtype=dtype,
                     seed=7)
    x = np.random.default_rng(8).standard_normal((9, 1, 5)).astype(dtype)
    old_threads = lstmx.get_num_threads()
    lstmx.set_num_threads(threads)
    old = lstmx._lstm._set_zigzag_bytes(1)        # chunks of 8 rows
    try:
        zigzag = net.predict(x), net.forward(x)[0]
        lstmx._lstm._set_zigzag_bytes(0)
        forwards = net.predict(x), net.forward(x)[0]
    finally:
        lstmx._lstm._set_zigzag_bytes(old)
        lstmx.set_num_threads(old_threads)
    for a, b in zip(zigzag, forwards):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_a_unit_has_the_same_bits_in_the_lanes_and_in_the_scalar_loop(dtype, rng):
    """The cell runs its units a vector of lanes at a time (in blocks of 64
    from 64 units) and the last H % lanes one by one: a unit whose weights,
    bias, peepholes and state are unit 0's gives unit 0's bits, in a lane
    or one by one (c_t = f c_prev + i g once fused its products differently
    in the two); and so do its gradients."""
    target = lstmx._lstm.kernel_target()
    lanes = {"avx512": 16, "avx2+fma": 8}.get(target, 1) // (2 if dtype == np.float64 else 1)
    for H in (2 * lanes + 1, 64 + 1):
        net = lstmx.LSTM(7, H, peephole=True, dtype=dtype, seed=2)
        w_x, w_h, bias, peep = net._kernel_params(0)
        copy = H - 1          # the last unit: one by one
        w_h[:, copy] = w_h[:, 0]      # h_{t-1}'s units 0 and copy alike
        for g in range(4):
            w_x[g * H + copy] = w_x[g * H]
            w_h[g * H + copy] = w_h[g * H]
            bias[g * H + copy] = bias[g * H]
        for p in range(3):
            peep[p * H + copy] = 2.0 * rng.standard_normal()
            peep[p * H] = peep[p * H + copy]
        x = (3.0 * rng.standard_normal((60, 2, 7))).astype(dtype)
        h0, c0 = (rng.standard_normal((1, 2, H)).astype(dtype) for _ in range(2))
        h0[..., copy], c0[..., copy] = h0[..., 0], c0[..., 0]
        y, (h, c) = net.predict(x, state=(h0, c0), return_state=True)
        assert np.abs(y[..., 0]).max() > 0.1
        np.testing.assert_array_equal(y[..., copy], y[..., 0], err_msg=f"H={H}")
        np.testing.assert_array_equal(c[..., copy], c[..., 0], err_msg=f"H={H}")
        # and backward's cell, the compiler's vectorized loop and its tail
        y, cache = net.forward(x, state=(h0, c0))
        dy = rng.standard_normal(y.shape).astype(dtype)
        dy[..., copy] = dy[..., 0]
        grads = net.backward(dy, cache)
        for name, d in zip(("dW_x", "dW_h", "dbias"), net._slots[0].packed(grads.flat)):
            d = d.reshape(4, H, -1)
            np.testing.assert_array_equal(d[:, copy], d[:, 0], err_msg=f"{name} H={H}")
        dpeep = net._slots[0].packed(grads.flat)[3].reshape(3, H)
        np.testing.assert_array_equal(dpeep[:, copy], dpeep[:, 0], err_msg=f"dpeep H={H}")
