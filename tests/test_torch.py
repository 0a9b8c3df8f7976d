"""lstmx (peephole=False) against torch.nn.LSTM + torch.nn.Linear: outputs, states, every gradient."""

import numpy as np
import pytest

from helpers import (Arch, padding_mask, random_state, random_x, torch_grads_by_name,
                     torch_modules_from_params, torch_run)

torch = pytest.importorskip("torch")

TOL = {np.float64: 1e-10, np.float32: 1e-5}
I, H, T = 3, 5, 6

CASES = [
    # (arch, N, lengths)
    (Arch(I, H, 1, False, False, None), 1, None),
    (Arch(I, H, 1, False, False, 4), 3, None),
    (Arch(I, H, 1, True, False, None), 4, [3, 6, 1, 5]),
    (Arch(I, H, 2, False, False, None), 4, [6, 2, 6, 4]),
    (Arch(I, H, 2, True, False, None), 4, [2, 6, 1, 4]),
    (Arch(I, H, 2, True, False, 4), 4, [5, 1, 6, 3]),
    (Arch(I, H, 2, True, False, 4), 3, None),
    (Arch(I, H, 3, True, False, 2), 2, [4, 6]),
]
CASE_IDS = [f"{a.id}-N{n}-{'lengths' if l else 'full'}" for a, n, l in CASES]


def _both(net_dtype, ours, theirs, scale=1.0, what=""):
    tol = TOL[np.dtype(net_dtype).type]
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    assert np.shape(ours) == np.shape(theirs), what
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("arch,N,lengths", CASES, ids=CASE_IDS)
def test_matches_torch(arch, N, lengths, with_state, dtype, rng):
    net = arch.make(dtype=dtype, seed=31)
    lengths = None if lengths is None else np.array(lengths)
    x = random_x(rng, T, N, I, dtype)
    state = random_state(rng, net, N) if with_state else None
    lstm, head = torch_modules_from_params(
        {k: np.array(v) for k, v in net.params.items()}, input_size=I, hidden_size=H,
        num_layers=arch.num_layers, bidirectional=arch.bidirectional,
        output_size=arch.output_size, dtype=dtype, bias_split_rng=rng)

    # forward
    y, cache = net.forward(x, lengths=lengths, state=state)
    h_n, c_n = cache.state
    ty, th, tc, tx, th0, tc0 = torch_run(lstm, head, x, lengths,
                                         *(state if with_state else (None, None)))
    _both(dtype, y, ty, what="y")
    _both(dtype, h_n, th, what="h_n")
    _both(dtype, c_n, tc, what="c_n")
    _both(dtype, net.predict(x, lengths=lengths, state=state), ty, what="predict y")

    # backward of sum(R*y) + sum(Rh*h_n) + sum(Rc*c_n)
    R = rng.standard_normal(y.shape).astype(dtype)
    Rh = rng.standard_normal(h_n.shape).astype(dtype)
    Rc = rng.standard_normal(c_n.shape).astype(dtype)
    if lengths is not None:
        # Nonzero dy at padded steps must be ignored, as torch's zero padding is constant.
        assert np.any(R[~padding_mask(lengths, T)] != 0)
    grads = net.backward(R, cache, dstate=(Rh, Rc))
    loss = ((ty * torch.from_numpy(R)).sum() + (th * torch.from_numpy(Rh)).sum()
            + (tc * torch.from_numpy(Rc)).sum())
    loss.backward()
    tgrads = torch_grads_by_name(lstm, head, arch.num_layers, arch.bidirectional)
    assert set(tgrads) == set(grads.keys())
    scale = max(1.0, max(float(np.max(np.abs(g))) for g in tgrads.values()))
    for name, tg in tgrads.items():
        _both(dtype, grads[name], tg, scale, what=name)
    # torch's two biases get the same gradient, which is ours.
    _both(dtype, grads["b_f_fw_layer1"].ravel(), lstm.bias_hh_l0.grad[H:2 * H], scale, "bias_hh")
    _both(dtype, grads.x, tx.grad, scale, what="x")
    if with_state:
        _both(dtype, grads.state[0], th0.grad, scale, what="h0")
        _both(dtype, grads.state[1], tc0.grad, scale, what="c0")
    if lengths is not None:
        assert np.all(grads.x[~padding_mask(lengths, T)] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_matches_torch_unbatched_and_batch_first(dtype, rng):
    arch = Arch(I, H, 2, True, False, 3)
    net = arch.make(dtype=dtype, seed=32, batch_first=True)
    lstm, head = torch_modules_from_params(
        {k: np.array(v) for k, v in net.params.items()}, input_size=I, hidden_size=H,
        num_layers=2, bidirectional=True, output_size=3, dtype=dtype)
    lstm.batch_first = True
    x = random_x(rng, 3, T, I, dtype)  # (N, T, I)
    with torch.no_grad():
        tout, (th, tc) = lstm(torch.from_numpy(x))
        ty = head(tout)
    y, (h_n, c_n) = net.predict(x, return_state=True)
    _both(dtype, y, ty, what="y batch_first")
    _both(dtype, h_n, th, what="h_n batch_first")
    _both(dtype, c_n, tc, what="c_n batch_first")
    # torch treats (T, I) as one unbatched sequence whatever batch_first says.
    x1 = x[0]
    with torch.no_grad():
        tout1, (th1, tc1) = lstm(torch.from_numpy(x1))
        ty1 = head(tout1)
    net_tm = arch.make(dtype=dtype, seed=32)
    y1, (h1, c1) = net_tm.predict(x1, return_state=True)
    _both(dtype, y1, ty1, what="y unbatched")
    _both(dtype, h1, th1, what="h_n unbatched")
    _both(dtype, c1, tc1, what="c_n unbatched")
