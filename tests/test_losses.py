"""Losses: values and gradients against central differences and torch, masking, layouts, errors."""

import numpy as np
import pytest

import lstmx
from lstmx.losses import mse, softmax_cross_entropy

DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["f64", "f32"]
# Against torch, same dtype: float32 rounds differently in log-sum-exp.
TORCH_TOL = {np.float64: 1e-12, np.float32: 2e-6}

T, N, C = 5, 3, 4
LENGTHS = np.array([5, 2, 3])


def _logits(rng, dtype=np.float64, shape=(T, N, C)):
    return rng.standard_normal(shape).astype(dtype)


def _classes(rng, shape=(T, N), classes=C):
    return rng.integers(0, classes, size=shape)


def _central_differences(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f(x)
        x[i] = old - h
        down = f(x)
        x[i] = old
        grad[i] = (up - down) / (2 * h)
    return grad


def _valid(lengths, steps=T):
    return np.arange(steps)[:, None] < np.asarray(lengths)[None, :]


# ----------------------------------------------------------------------
# softmax_cross_entropy

@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
def test_cross_entropy_gradient_matches_central_differences(rng, lengths):
    logits = _logits(rng)
    targets = _classes(rng)
    loss, dy = softmax_cross_entropy(logits, targets, lengths)
    numeric = _central_differences(lambda z: softmax_cross_entropy(z, targets, lengths)[0], logits.copy())
    np.testing.assert_allclose(dy, numeric, rtol=1e-7, atol=1e-9)


def test_cross_entropy_value_by_hand():
    logits = np.array([[[0.0, 1.0, 2.0]], [[3.0, 0.0, -1.0]]])   # (T=2, N=1, C=3)
    targets = np.array([[2], [1]])
    expected = np.mean([np.log(np.exp(logits[0, 0]).sum()) - 2.0,
                        np.log(np.exp(logits[1, 0]).sum()) - 0.0])
    loss, _ = softmax_cross_entropy(logits, targets)
    assert loss == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
def test_cross_entropy_matches_torch(rng, dtype, lengths):
    torch = pytest.importorskip("torch")
    logits = _logits(rng, dtype) * 3
    targets = _classes(rng)
    loss, dy = softmax_cross_entropy(logits, targets, lengths)
    assert dy.dtype == dtype and dy.shape == logits.shape
    valid = _valid(LENGTHS if lengths is not None else [T] * N)

    z = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(z[torch.from_numpy(valid)], torch.from_numpy(targets[valid]))
    ref.backward()
    tol = TORCH_TOL[dtype]
    assert loss == pytest.approx(ref.item(), rel=tol, abs=tol)
    np.testing.assert_allclose(dy, z.grad.numpy(), rtol=tol, atol=tol)


def test_cross_entropy_masking(rng):
    logits = _logits(rng)
    targets = _classes(rng)
    loss, dy = softmax_cross_entropy(logits, targets, LENGTHS)
    padded = ~_valid(LENGTHS)
    assert np.all(dy[padded] == 0)
    # Padded steps are not read: garbage there changes nothing, -1 is a fine pad.
    logits2, targets2 = logits.copy(), targets.copy()
    logits2[padded] = 1e30
    targets2[padded] = -1
    loss2, dy2 = softmax_cross_entropy(logits2, targets2, LENGTHS)
    assert loss2 == loss
    np.testing.assert_array_equal(dy2, dy)
    # Mean over valid steps: the mean of per-sequence sums divided by sum(lengths).
    per_step = [softmax_cross_entropy(logits[t:t + 1, n], targets[t:t + 1, n])[0]
                for n in range(N) for t in range(LENGTHS[n])]
    assert loss == pytest.approx(np.mean(per_step), rel=1e-13)


def test_cross_entropy_is_stable_for_large_logits(rng):
    logits = _logits(rng)
    targets = _classes(rng)
    loss, dy = softmax_cross_entropy(logits, targets)
    big_loss, big_dy = softmax_cross_entropy(logits + 1e4, targets)   # softmax is shift-invariant
    assert np.isfinite(big_loss)
    assert big_loss == pytest.approx(loss, rel=1e-9)
    np.testing.assert_allclose(big_dy, dy, atol=1e-12)
    f32_loss, f32_dy = softmax_cross_entropy((logits * 1e3).astype(np.float32), targets)
    assert np.isfinite(f32_loss) and np.isfinite(f32_dy).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_entropy_unbatched_and_batch_first(rng, dtype):
    logits = _logits(rng, dtype)
    targets = _classes(rng)
    loss, dy = softmax_cross_entropy(logits, targets, LENGTHS)
    bf_loss, bf_dy = softmax_cross_entropy(logits.transpose(1, 0, 2), targets.T, LENGTHS, batch_first=True)
    assert bf_loss == loss
    np.testing.assert_array_equal(bf_dy, dy.transpose(1, 0, 2))
    one_loss, one_dy = softmax_cross_entropy(logits[:, 0], targets[:, 0])
    ref_loss, ref_dy = softmax_cross_entropy(logits[:, :1], targets[:, :1])
    assert one_dy.shape == (T, C) and one_dy.dtype == dtype
    assert one_loss == ref_loss
    np.testing.assert_array_equal(one_dy, ref_dy[:, 0])
    short_loss, _ = softmax_cross_entropy(logits[:, 0], targets[:, 0], lengths=2)
    assert short_loss == softmax_cross_entropy(logits[:2, 0], targets[:2, 0])[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", [None, "ragged"])
def test_cross_entropy_on_two_threads_gives_one_threads_bits(rng, dtype, lengths, monkeypatch):
    """Large logits: the two halves of the rows run at once
    (losses.SOFTMAX_SPLIT_MIN); the same loss and gradient, bit for bit,
    as the halves one after the other, and the reference's values."""
    import lstmx.losses as losses_module
    steps, batch, classes = 61, 7, 44
    logits = _logits(rng, dtype, (steps, batch, classes))
    targets = _classes(rng, (steps, batch), classes)
    if lengths is not None:
        lengths = rng.integers(1, steps + 1, batch)
    paired = []

    def pair(a, b, threads):
        paired.append(threads)
        real_pair(a, b, threads)
    real_pair = losses_module._pair
    monkeypatch.setattr(losses_module, "_pair", pair)
    monkeypatch.setattr(losses_module, "get_num_threads", lambda: 2)
    monkeypatch.setattr(losses_module, "SOFTMAX_SPLIT_MIN", 0)
    both = softmax_cross_entropy(logits, targets, lengths)
    monkeypatch.setattr(losses_module, "SOFTMAX_SPLIT_MIN", 1 << 62)
    one = softmax_cross_entropy(logits, targets, lengths)
    assert paired == [2, 1]     # at once on two threads, then one after the other
    assert both[0] == one[0]
    np.testing.assert_array_equal(both[1], one[1])
    z = logits.astype(np.float64)
    valid = _valid(lengths if lengths is not None else [steps] * batch, steps)
    log_softmax = z - z.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
    expected = -picked[valid].sum() / valid.sum()
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert one[0] == pytest.approx(expected, rel=tol)
    dy = np.exp(log_softmax)
    np.put_along_axis(dy, targets[..., None], np.take_along_axis(dy, targets[..., None], -1) - 1, -1)
    dy = np.where(valid[..., None], dy / valid.sum(), 0)
    np.testing.assert_allclose(one[1], dy, rtol=tol, atol=tol / valid.sum())


def test_softmax_kernel_refuses_mismatched_arrays():
    z = np.zeros((4, 3), np.float32)
    classes = np.zeros(4, np.intp)
    with pytest.raises(ValueError, match="^total: "):
        lstmx._lstm.softmax_xent(z, classes, np.empty(0, np.uint8), np.float32(1), z.copy(),
                                 np.zeros(1), 0, 2)
    with pytest.raises(ValueError, match="^classes: "):
        lstmx._lstm.softmax_xent(z, classes[:3], np.empty(0, np.uint8), np.float32(1), z.copy(),
                                 np.zeros(1))
    with pytest.raises(ValueError, match="^part, nparts: "):
        lstmx._lstm.softmax_xent(z, classes, np.empty(0, np.uint8), np.float32(1), z.copy(),
                                 np.zeros(2), 2, 2)


def test_cross_entropy_errors(rng):
    logits = _logits(rng)
    targets = _classes(rng)
    with pytest.raises(ValueError, match="targets"):
        softmax_cross_entropy(logits, targets[:, :2])
    with pytest.raises(ValueError, match="targets"):
        softmax_cross_entropy(logits, targets.T)
    with pytest.raises(TypeError, match="targets"):
        softmax_cross_entropy(logits, targets.astype(float))
    too_big = targets.copy()
    too_big[0, 0] = C
    with pytest.raises(ValueError, match=r"targets.*\[0, 4\)"):
        softmax_cross_entropy(logits, too_big)
    negative = targets.copy()
    negative[-1, 0] = -1                       # valid step of sequence 0
    with pytest.raises(ValueError, match="targets"):
        softmax_cross_entropy(logits, negative, LENGTHS)
    with pytest.raises(TypeError, match="logits"):
        softmax_cross_entropy(logits.astype(int), targets)
    with pytest.raises(ValueError, match="logits"):
        softmax_cross_entropy(logits[0, 0], targets[0, 0])
    nan = logits.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="logits"):
        softmax_cross_entropy(nan, targets)
    with pytest.raises(ValueError, match="lengths"):
        softmax_cross_entropy(logits, targets, lengths=[1, 2])
    with pytest.raises(ValueError, match="lengths"):
        softmax_cross_entropy(logits, targets, lengths=[1, 2, T + 1])


# ----------------------------------------------------------------------
# mse

@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
def test_mse_gradient_matches_central_differences(rng, lengths):
    y = _logits(rng)
    targets = _logits(rng)
    _, dy = mse(y, targets, lengths)
    numeric = _central_differences(lambda v: mse(v, targets, lengths)[0], y.copy())
    np.testing.assert_allclose(dy, numeric, rtol=1e-7, atol=1e-9)


def test_mse_averages_over_valid_steps_and_features(rng):
    y = _logits(rng)
    targets = _logits(rng)
    loss, _ = mse(y, targets, LENGTHS)
    valid = _valid(LENGTHS)
    assert loss == pytest.approx(np.sum((y - targets)[valid] ** 2) / (LENGTHS.sum() * C), rel=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "ragged"])
def test_mse_matches_torch(rng, dtype, lengths):
    torch = pytest.importorskip("torch")
    y = _logits(rng, dtype)
    targets = _logits(rng, dtype)
    loss, dy = mse(y, targets, lengths)
    assert dy.dtype == dtype and dy.shape == y.shape
    valid = torch.from_numpy(_valid(LENGTHS if lengths is not None else [T] * N))
    v = torch.tensor(y, requires_grad=True)
    ref = torch.nn.functional.mse_loss(v[valid], torch.from_numpy(targets)[valid])
    ref.backward()
    tol = TORCH_TOL[dtype]
    assert loss == pytest.approx(ref.item(), rel=tol, abs=tol)
    np.testing.assert_allclose(dy, v.grad.numpy(), rtol=tol, atol=tol)


def test_mse_masking_layouts_and_dtype(rng):
    y = _logits(rng, np.float32)
    targets = _logits(rng)                      # float64 targets: converted to y's dtype
    loss, dy = mse(y, targets, LENGTHS)
    assert dy.dtype == np.float32
    padded = ~_valid(LENGTHS)
    assert np.all(dy[padded] == 0)
    targets2 = targets.copy()
    targets2[padded] = np.nan                   # padded targets are not read
    assert mse(y, targets2, LENGTHS)[0] == loss
    bf_loss, bf_dy = mse(y.transpose(1, 0, 2), targets.transpose(1, 0, 2), LENGTHS, batch_first=True)
    assert bf_loss == loss
    np.testing.assert_array_equal(bf_dy, dy.transpose(1, 0, 2))
    one_loss, one_dy = mse(y[:, 1], targets[:, 1])
    ref_loss, ref_dy = mse(y[:, 1:2], targets[:, 1:2])
    assert one_loss == ref_loss and one_dy.shape == (T, C)
    np.testing.assert_array_equal(one_dy, ref_dy[:, 0])


def test_mse_errors(rng):
    y = _logits(rng)
    with pytest.raises(ValueError, match="targets"):
        mse(y, y[:, :2])
    with pytest.raises(TypeError, match="targets"):
        mse(y, y.astype(complex))
    with pytest.raises(TypeError, match="^y:"):
        mse(y.astype(np.float16), y)
    bad = y.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="targets"):
        mse(y, bad)
    with pytest.raises(ValueError, match="^y:"):
        mse(bad, y)


# ----------------------------------------------------------------------
# with the network

def test_losses_feed_backward_end_to_end(rng):
    """dL/dW from net.backward(dy of the loss) matches central differences of the loss."""
    net = lstmx.LSTM(3, 4, bidirectional=True, output_size=C, dtype=np.float64, seed=1)
    x = rng.standard_normal((T, N, 3))
    targets = _classes(rng)
    y, cache = net.forward(x, lengths=LENGTHS)
    _, dy = softmax_cross_entropy(y, targets, LENGTHS)
    grads = net.backward(dy, cache)
    picks = rng.choice(net.flat.size, size=12, replace=False)
    h = 1e-6
    for k in picks:
        old = net.flat[k]
        net.flat[k] = old + h
        up = softmax_cross_entropy(net.predict(x, lengths=LENGTHS), targets, LENGTHS)[0]
        net.flat[k] = old - h
        down = softmax_cross_entropy(net.predict(x, lengths=LENGTHS), targets, LENGTHS)[0]
        net.flat[k] = old
        assert grads.flat[k] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-9)
