"""backward against central differences in float64, for every parameter element.

Loss = sum(R * y) + sum(Rh * h_n) + sum(Rc * c_n) with random R's, so
dy = R and dstate = (Rh, Rc); the finite differences run the net's own
forward (itself checked against the reference in test_forward.py).
"""

import numpy as np
import pytest

from helpers import Arch, padding_mask, random_state, random_x

EPS = 1e-6
RTOL = 1e-7
ATOL = 1e-7

I, H, T, N, O = 3, 4, 5, 3, 2
LENGTHS = np.array([5, 2, 4])

GRAD_ARCHS = [
    Arch(I, H, num_layers=2, bidirectional=bi, peephole=peep, output_size=head)
    for bi in (False, True)
    for peep in (True, False)
    for head in (None, O)
] + [
    Arch(I, H, num_layers=1, bidirectional=True, peephole=True, output_size=O),
    Arch(I, H, num_layers=3, bidirectional=False, peephole=True, output_size=None),
]


class Problem:
    """A net, inputs and the random weights R of the loss."""

    def __init__(self, arch, rng, lengths=LENGTHS, with_state=True, T_=T, N_=None):
        N_ = len(lengths) if lengths is not None else (N if N_ is None else N_)
        self.net = arch.make(dtype=np.float64, seed=21)
        self.x = random_x(rng, T_, N_, arch.input_size)
        self.lengths = lengths
        self.state = random_state(rng, self.net, N_) if with_state else None
        y, cache = self.net.forward(self.x, lengths=lengths, state=self.state)
        self.R = rng.standard_normal(y.shape)
        self.Rh = rng.standard_normal(cache.state[0].shape)
        self.Rc = rng.standard_normal(cache.state[1].shape)

    def loss(self, x=None, state=None):
        x = self.x if x is None else x
        state = self.state if state is None else state
        y, cache = self.net.forward(x, lengths=self.lengths, state=state)
        h_n, c_n = cache.state
        return float(np.sum(self.R * y) + np.sum(self.Rh * h_n) + np.sum(self.Rc * c_n))

    def grads(self):
        _, cache = self.net.forward(self.x, lengths=self.lengths, state=self.state)
        return self.net.backward(self.R, cache, dstate=(self.Rh, self.Rc))


def central_difference(f, array):
    """d f / d array, element by element, perturbing ``array`` in place."""
    grad = np.zeros(array.shape)
    for idx in np.ndindex(array.shape):
        orig = array[idx]
        array[idx] = orig + EPS
        plus = f()
        array[idx] = orig - EPS
        minus = f()
        array[idx] = orig
        grad[idx] = (plus - minus) / (2 * EPS)
    return grad


@pytest.mark.parametrize("arch", GRAD_ARCHS, ids=lambda a: a.id)
def test_parameter_gradients(arch, rng):
    p = Problem(arch, rng)
    loss_before = p.loss()
    grads = p.grads()
    assert set(grads.keys()) == set(p.net.params.keys())
    analytic = {name: np.array(grads[name]) for name in p.net.params}
    for name, view in p.net.params.items():
        assert analytic[name].shape == view.shape, name
        numeric = central_difference(p.loss, view)
        np.testing.assert_allclose(analytic[name], numeric, rtol=RTOL, atol=ATOL, err_msg=name)
    # Every element was visited, and the parameters are back where they were.
    assert p.loss() == loss_before


@pytest.mark.parametrize("arch", GRAD_ARCHS, ids=lambda a: a.id)
def test_input_and_initial_state_gradients(arch, rng):
    p = Problem(arch, rng)
    grads = p.grads()
    assert grads.x.shape == p.x.shape
    np.testing.assert_allclose(grads.x, central_difference(p.loss, p.x),
                               rtol=RTOL, atol=ATOL, err_msg="x")
    dh0, dc0 = grads.state
    h0, c0 = p.state
    assert dh0.shape == h0.shape and dc0.shape == c0.shape
    np.testing.assert_allclose(dh0, central_difference(p.loss, h0), rtol=RTOL, atol=ATOL,
                               err_msg="h0")
    np.testing.assert_allclose(dc0, central_difference(p.loss, c0), rtol=RTOL, atol=ATOL,
                               err_msg="c0")
    # Padded steps receive exactly no gradient.
    assert np.all(grads.x[~padding_mask(LENGTHS, T)] == 0.0)


@pytest.mark.parametrize("arch", [Arch(I, H, 2, True, True, O), Arch(I, H, 2, False, True)],
                         ids=lambda a: a.id)
def test_gradients_without_lengths_and_zero_state(arch, rng):
    p = Problem(arch, rng, lengths=None, with_state=False)
    grads = p.grads()
    np.testing.assert_allclose(grads.x, central_difference(p.loss, p.x), rtol=RTOL, atol=ATOL)
    for name in ("W_i_h_fw_layer1", "peephole_o_c_fw_layer2", "W_f_x_fw_layer2"):
        np.testing.assert_allclose(grads[name], central_difference(p.loss, p.net.params[name]),
                                   rtol=RTOL, atol=ATOL, err_msg=name)
    # With no state given, the gradient w.r.t. the (zero) initial state is still returned.
    dh0, dc0 = grads.state
    shape = (arch.num_layers * arch.num_directions, N, H)
    assert dh0.shape == dc0.shape == shape
    zeros = np.zeros(shape)
    p.state = (zeros.copy(), zeros.copy())
    np.testing.assert_allclose(dh0, central_difference(p.loss, p.state[0]), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(dc0, central_difference(p.loss, p.state[1]), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("arch", [Arch(I, H, 2, True, True, O), Arch(I, H, 2, False, True)],
                         ids=lambda a: a.id)
def test_unbatched_and_batch_first_gradients(arch, rng):
    """grads.x and grads.state come back in the caller's layout, with the same values."""
    net = arch.make(seed=22)
    net_bf = arch.make(seed=22, batch_first=True)
    LD = arch.num_layers * arch.num_directions
    x = random_x(rng, T, N, I)
    h0, c0 = random_state(rng, net, N)
    y, cache = net.forward(x, lengths=LENGTHS, state=(h0, c0))
    R = rng.standard_normal(y.shape)
    Rh, Rc = rng.standard_normal((2, LD, N, H))
    g = net.backward(R, cache, dstate=(Rh, Rc))

    x_bf = np.ascontiguousarray(x.transpose(1, 0, 2))
    _, cache_bf = net_bf.forward(x_bf, lengths=LENGTHS, state=(h0, c0))
    g_bf = net_bf.backward(np.ascontiguousarray(R.transpose(1, 0, 2)), cache_bf, dstate=(Rh, Rc))
    assert g_bf.x.shape == x_bf.shape
    np.testing.assert_allclose(g_bf.x, g.x.transpose(1, 0, 2), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g_bf.flat, g.flat, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g_bf.state[0], g.state[0], rtol=1e-12, atol=1e-13)

    n = 2  # one sequence, unbatched: the same as a batch of that one sequence
    l = LENGTHS[n]
    _, cache_1 = net.forward(x[:l, n], state=(h0[:, n], c0[:, n]))
    g_1 = net.backward(R[:l, n], cache_1, dstate=(Rh[:, n], Rc[:, n]))
    assert g_1.x.shape == (l, I)
    assert g_1.state[0].shape == g_1.state[1].shape == (LD, H)
    _, cache_b = net.forward(x[:l, n:n + 1], state=(h0[:, n:n + 1], c0[:, n:n + 1]))
    g_b = net.backward(R[:l, n:n + 1], cache_b, dstate=(Rh[:, n:n + 1], Rc[:, n:n + 1]))
    np.testing.assert_allclose(g_1.x, g_b.x[:, 0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g_1.flat, g_b.flat, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g_1.state[1], g_b.state[1][:, 0], rtol=1e-12, atol=1e-13)


def test_dstate_none_equals_zero_dstate(rng):
    net = Arch(I, H, 2, True, True, O).make(seed=23)
    x = random_x(rng, T, N, I)
    y, cache = net.forward(x, lengths=LENGTHS)
    R = rng.standard_normal(y.shape)
    g_none = net.backward(R, cache)
    zeros = np.zeros((4, N, H))
    g_zero = net.backward(R, cache, dstate=(zeros, zeros.copy()))
    np.testing.assert_array_equal(g_none.flat, g_zero.flat)
    np.testing.assert_array_equal(g_none.x, g_zero.x)
    np.testing.assert_array_equal(g_none.state[0], g_zero.state[0])
    np.testing.assert_array_equal(g_none.state[1], g_zero.state[1])


def test_padded_dy_is_ignored(rng):
    """dy at padded steps has no effect (the outputs there are constant zeros)."""
    net = Arch(I, H, 2, True, True, O).make(seed=24)
    x = random_x(rng, T, N, I)
    y, cache = net.forward(x, lengths=LENGTHS)
    R = rng.standard_normal(y.shape)
    R_clean = R.copy()
    R_clean[~padding_mask(LENGTHS, T)] = 0.0
    g = net.backward(R, cache)
    g_clean = net.backward(R_clean, cache)
    np.testing.assert_array_equal(g.flat, g_clean.flat)
    np.testing.assert_array_equal(g.x, g_clean.x)
    assert np.all(g.x[~padding_mask(LENGTHS, T)] == 0.0)


def test_grads_flat_and_views_share_memory(rng):
    net = Arch(I, H, 2, True, True, O).make(seed=25)
    _, cache = net.forward(random_x(rng, T, N, I), lengths=LENGTHS)
    grads = net.backward(rng.standard_normal((T, N, O)), cache)
    flat = grads.flat
    assert flat.ndim == 1 and flat.flags.c_contiguous
    assert flat.shape == net.flat.shape and flat.dtype == net.flat.dtype
    assert set(grads.keys()) == set(net.params.keys())
    total = 0
    for name in net.params:
        view = grads[name]
        assert view.shape == net.params[name].shape, name
        assert np.shares_memory(view, flat), name
        total += view.size
    assert total == flat.size
    # The same layout as net.flat: each name sits at the same offset in both buffers.
    for name, pview in net.params.items():
        p_off = (pview.__array_interface__["data"][0]
                 - net.flat.__array_interface__["data"][0]) // flat.itemsize
        g_off = (grads[name].__array_interface__["data"][0]
                 - flat.__array_interface__["data"][0]) // flat.itemsize
        assert p_off == g_off, name
    # Writing through grads.flat shows in the views.
    flat[...] = 0.0
    assert all(np.all(grads[name] == 0.0) for name in net.params)


def test_backward_is_repeatable_and_results_are_fresh(rng):
    """The same cache can be back-propagated twice; a later call leaves earlier grads alone."""
    net = Arch(I, H, 2, True, True, O).make(seed=26)
    x = random_x(rng, T, N, I)
    _, cache = net.forward(x, lengths=LENGTHS)
    R1, R2 = rng.standard_normal((2, T, N, O))
    g1 = net.backward(R1, cache)
    saved = g1.flat.copy(), g1.x.copy(), g1.state[0].copy()
    _, cache2 = net.forward(random_x(rng, T, N, I), lengths=LENGTHS)
    net.backward(R2, cache2)
    g1_again = net.backward(R1, cache)
    np.testing.assert_array_equal(g1.flat, saved[0])
    np.testing.assert_array_equal(g1.x, saved[1])
    np.testing.assert_array_equal(g1.state[0], saved[2])
    np.testing.assert_array_equal(g1_again.flat, saved[0])


def test_backward_is_linear_in_dy(rng):
    net = Arch(I, H, 2, True, True, O).make(seed=27)
    _, cache = net.forward(random_x(rng, T, N, I), lengths=LENGTHS)
    R1, R2 = rng.standard_normal((2, T, N, O))
    g1 = net.backward(R1, cache).flat.copy()
    g2 = net.backward(R2, cache).flat.copy()
    g12 = net.backward(2.0 * R1 - 3.0 * R2, cache).flat
    np.testing.assert_allclose(g12, 2.0 * g1 - 3.0 * g2, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("arch", [Arch(I, H, 2, True, True, O), Arch(I, H, 2, False, False)],
                         ids=lambda a: a.id)
def test_float32_gradients_close_to_float64(arch, rng):
    net64 = arch.make(dtype=np.float64, seed=28)
    net32 = arch.make(dtype=np.float32, seed=28)
    net64.flat[...] = net32.flat  # the same (float32-representable) weights
    x = random_x(rng, T, N, I, np.float32)
    h0, c0 = random_state(rng, net32, N)
    y, cache64 = net64.forward(x.astype(np.float64), lengths=LENGTHS,
                               state=(h0.astype(np.float64), c0.astype(np.float64)))
    R = rng.standard_normal(y.shape)
    LD = arch.num_layers * arch.num_directions
    Rh, Rc = rng.standard_normal((2, LD, N, H))
    g64 = net64.backward(R, cache64, dstate=(Rh, Rc))
    _, cache32 = net32.forward(x, lengths=LENGTHS, state=(h0, c0))
    g32 = net32.backward(R.astype(np.float32), cache32,
                         dstate=(Rh.astype(np.float32), Rc.astype(np.float32)))
    assert g32.flat.dtype == np.float32 and g32.x.dtype == np.float32
    assert g32.state[0].dtype == np.float32
    scale = max(1.0, np.max(np.abs(g64.flat)))
    np.testing.assert_allclose(g32.flat, g64.flat, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(g32.x, g64.x, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(g32.state[0], g64.state[0], rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(g32.state[1], g64.state[1], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("kernel", ["gemv", "matmat"])
@pytest.mark.parametrize("hidden", [4, 13, 20], ids=lambda h: f"H{h}")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_single_sequence_gradients(hidden, bidirectional, kernel, rng, monkeypatch):
    """N = 1: the recurrent step forward is the packed GEMM's one-row kernel
    (gemv_packed), or _cell.c's matmat for a W_h above
    _lstm.ONE_PACKED_MAX_BYTES; backward is matmat_t (SMALL_N). Hidden
    sizes that are not a multiple of the vector width exercise their
    remainder loops, and H=20 in float64 also takes the units split (more
    than SPLIT_MIN_BYTES of W_h; bidirectional too, as where the L2's size
    is unknown)."""
    import lstmx
    import lstmx.lstm as lstm_module
    monkeypatch.setattr(lstm_module, "l2_cache_bytes", lambda: None)
    if kernel == "matmat":
        monkeypatch.setattr(lstmx._lstm, "ONE_PACKED_MAX_BYTES", 0)
    arch = Arch(I, hidden, num_layers=2, bidirectional=bidirectional, peephole=True, output_size=O)
    p = Problem(arch, rng, lengths=None, N_=1, T_=4)
    grads = p.grads()
    for name in (f"W_{g}_h_{d}_layer{k}" for g in "ifco" for k in (1, 2)
                 for d in (("fw", "bw") if bidirectional else ("fw",))):
        np.testing.assert_allclose(grads[name], central_difference(p.loss, p.net.params[name]),
                                   rtol=RTOL, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(grads.x, central_difference(p.loss, p.x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grads.state[0], central_difference(p.loss, p.state[0]),
                               rtol=RTOL, atol=ATOL)


# the splits apply to one direction; two directions run on a thread each
@pytest.mark.parametrize("arch, kernel_path", [
    (arch, path) for arch in (Arch(I, H, 2, False, True, O), Arch(I, H, 2, False, False))
    for path in ("packed", "batch", "units", "tn_packed", "tn_mixed", "tn_blas")]
    + [(Arch(I, H, 1, True, True, O), "packed")],
    ids=lambda v: v if isinstance(v, str) else v.id)
def test_gradients_on_every_kernel_path(arch, kernel_path, rng, monkeypatch):
    """The batched kernels' other paths, which the small problems here do
    not take by themselves: the packed GEMM for the recurrent products
    (beyond _lstm.SMALL_N sequences), and with it one direction split
    across two threads, by sequences or by units (forward; backward halves
    the sequences in both); the weight gradients of many units, on
    gemm_tn_packed (tn_packed; tn_mixed: dW_h only) or BLAS (tn_blas),
    halved too."""
    import lstmx
    import lstmx.lstm as lstm_module
    # every weight gradient is wider than TN_MAX_COLS = 0: on gemm_tn_packed
    # from one row of C (tn_packed, also each half's), or on BLAS (tn_blas);
    # or dW_x (I = 3 columns) on gemm_tn and dW_h (H = 4) packed (tn_mixed)
    tn_limits = {"tn_packed": (0, 1), "tn_mixed": (I, 1), "tn_blas": (0, 2**40)}.get(kernel_path)
    if tn_limits:
        monkeypatch.setattr(lstm_module, "BACKWARD_SPLIT_MIN_FLOPS", 0)
        tn_limits = lstmx._lstm._set_tn_limits(*tn_limits)
    if kernel_path not in ("packed", "tn_packed", "tn_mixed", "tn_blas"):
        monkeypatch.setattr(lstm_module, "SPLIT_MIN_BATCH", 1)
        monkeypatch.setattr(lstm_module, "BACKWARD_SPLIT_MIN_FLOPS", 0)
    if kernel_path == "units":
        monkeypatch.setattr(lstm_module, "SPLIT_BATCH_MAX_BYTES", 0)
    old = lstmx._lstm._set_small_n(0)
    try:
        p = Problem(arch, rng)
        if kernel_path != "packed":
            assert p.net._split_backward(N)
        if kernel_path in ("batch", "units"):
            units = kernel_path == "units" and lstmx._lstm.can_split()
            assert p.net._split(N) == ("units" if units else "batch")
        grads = p.grads()
        for name, view in p.net.params.items():
            np.testing.assert_allclose(grads[name], central_difference(p.loss, view),
                                       rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(grads.x, central_difference(p.loss, p.x), rtol=RTOL, atol=ATOL)
        for analytic, s in zip(grads.state, p.state):
            np.testing.assert_allclose(analytic, central_difference(p.loss, s), rtol=RTOL,
                                       atol=ATOL)
    finally:
        lstmx._lstm._set_small_n(old)
        if tn_limits:
            lstmx._lstm._set_tn_limits(*tn_limits)
