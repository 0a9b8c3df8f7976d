"""Optimizers and gradient clipping: step by step against torch.optim, resuming, errors."""

import numpy as np
import pytest

import lstmx
from lstmx import optim

DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["f64", "f32"]
TORCH_TOL = {np.float64: 1e-12, np.float32: 1e-6}

# (lstmx class, torch class name, keyword arguments shared by both; lstmx-only extras)
CONFIGS = {
    "sgd": ("SGD", "SGD", dict(lr=0.1), {}),
    "sgd-momentum": ("SGD", "SGD", dict(lr=0.05, momentum=0.9, dampening=0.1), {}),
    "sgd-nesterov-wd": ("SGD", "SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1), {}),
    "adam": ("Adam", "Adam", dict(lr=1e-2), {}),
    "adam-wd": ("Adam", "Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), {}),
    "adam-amsgrad": ("Adam", "Adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.05), {}),
    "adam-decoupled": ("Adam", "AdamW", dict(lr=1e-2, weight_decay=0.1), dict(decoupled=True)),
    "adamw": ("AdamW", "AdamW", dict(lr=1e-2), {}),
    "adamw-amsgrad": ("AdamW", "AdamW", dict(lr=1e-2, betas=(0.3, 0.9), amsgrad=True), {}),
    "rmsprop": ("RMSprop", "RMSprop", dict(lr=1e-2), {}),
    "rmsprop-centered-momentum-wd": ("RMSprop", "RMSprop",
                                     dict(lr=1e-2, alpha=0.9, centered=True, momentum=0.7, weight_decay=0.1), {}),
    "rmsprop-momentum": ("RMSprop", "RMSprop", dict(lr=1e-3, momentum=0.5, eps=1e-6), {}),
    "adagrad": ("Adagrad", "Adagrad", dict(lr=0.1), {}),
    "adagrad-decay": ("Adagrad", "Adagrad",
                      dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-8), {}),
}


def _net(dtype, seed=0):
    return lstmx.LSTM(3, 4, num_layers=2, bidirectional=True, output_size=2, dtype=dtype, seed=seed)


def _make(config, net):
    ours, _, kw, extra = CONFIGS[config]
    return getattr(optim, ours)(net, **kw, **extra)


def _offsets(mapping, flat):
    """Where each named view starts in flat (every view is a contiguous slice)."""
    offsets = [(v.ctypes.data - flat.ctypes.data) // flat.itemsize for v in mapping.values()]
    assert sum(v.size for v in mapping.values()) == flat.size
    return offsets


def _gather(tensors, mapping, flat):
    """torch tensors, one per named view, back into one flat array."""
    out = np.empty_like(flat)
    for tensor, view, start in zip(tensors, mapping.values(), _offsets(mapping, flat)):
        out[start:start + view.size] = tensor.detach().numpy().ravel()
    return out


def _random_gradients(rng, size, dtype, steps):
    return [rng.standard_normal(size).astype(dtype) for _ in range(steps)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_steps_match_torch(rng, config, dtype):
    torch = pytest.importorskip("torch")
    _, theirs, kw, _ = CONFIGS[config]
    net = _net(dtype)
    # torch sees the same parameters as several tensors (one per named view):
    # the flat update must equal its per-tensor one.
    tensors = [torch.nn.Parameter(torch.tensor(v.copy())) for v in net.params.values()]
    ref = getattr(torch.optim, theirs)(tensors, **kw)
    opt = _make(config, net)
    grads = net.backward(np.zeros((4, 1, 2)), net.forward(np.zeros((4, 1, 3)))[1])
    for g in _random_gradients(rng, net.flat.size, dtype, 20):
        grads.flat[:] = g                       # step takes a Gradients
        opt.step(grads)
        for tensor, view in zip(tensors, grads.values()):
            tensor.grad = torch.tensor(view.copy())
        ref.step()
        expected = _gather(tensors, net.params, net.flat)
        tol = TORCH_TOL[dtype]
        np.testing.assert_allclose(net.flat, expected, rtol=tol, atol=tol)
    assert net.flat.dtype == dtype


@pytest.mark.parametrize("config", ["sgd-momentum", "adam", "rmsprop-centered-momentum-wd", "adagrad-decay"])
def test_learning_rate_can_change_between_steps_as_in_torch(rng, config):
    torch = pytest.importorskip("torch")
    _, theirs, kw, _ = CONFIGS[config]
    flat = rng.standard_normal(50)
    tensor = torch.nn.Parameter(torch.tensor(flat.copy()))
    ref = getattr(torch.optim, theirs)([tensor], **kw)
    opt = _make(config, flat)                   # a bare 1-D buffer works too
    for step, g in enumerate(_random_gradients(rng, flat.size, np.float64, 10)):
        lr = kw["lr"] * 0.8 ** step
        opt.lr = lr
        ref.param_groups[0]["lr"] = lr
        opt.step(g)
        tensor.grad = torch.tensor(g)
        ref.step()
    np.testing.assert_allclose(flat, tensor.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_step_updates_the_network_in_place(rng):
    net = _net(np.float64)
    flat, before = net.flat, net.flat.copy()
    view = net.params["W_i_x_fw_layer1"]
    opt = optim.SGD(net, lr=0.5)
    g = rng.standard_normal(net.flat.size)
    opt.step(g)
    assert net.flat is flat
    np.testing.assert_array_equal(net.flat, before - 0.5 * g)
    np.testing.assert_array_equal(view, net.flat[:view.size].reshape(view.shape))


def test_training_reduces_the_loss(rng):
    net = lstmx.LSTM(3, 8, output_size=3, dtype=np.float64, seed=0)
    x = rng.standard_normal((6, 4, 3))
    targets = rng.integers(0, 3, size=(6, 4))
    opt = optim.Adam(net, lr=0.05)
    losses = []
    for _ in range(30):
        y, cache = net.forward(x)
        loss, dy = lstmx.losses.softmax_cross_entropy(y, targets)
        grads = net.backward(dy, cache)
        optim.clip_grad_norm(grads, 1.0)
        opt.step(grads)
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_state_dict_resumes_bit_exactly(rng, tmp_path, config, dtype):
    grads = _random_gradients(rng, _net(dtype).flat.size, dtype, 20)
    straight = _net(dtype)
    opt = _make(config, straight)
    for g in grads[:10]:
        opt.step(g)
    saved = opt.state_dict()
    saved_flat = straight.flat.copy()
    for g in grads[10:]:
        opt.step(g)

    resumed = _net(dtype, seed=1)
    resumed.flat[:] = saved_flat
    fresh = _make(config, resumed)
    np.savez(tmp_path / "opt.npz", **saved)
    with np.load(tmp_path / "opt.npz") as f:
        fresh.load_state_dict(dict(f))
    for g in grads[10:]:
        fresh.step(g)
    np.testing.assert_array_equal(resumed.flat.view(np.uint8), straight.flat.view(np.uint8))
    assert fresh.state_dict()["step"] == 20


def test_state_dict_is_a_snapshot_with_hyperparameters(rng):
    net = _net(np.float64)
    opt = optim.Adam(net, lr=0.01, betas=(0.8, 0.9), amsgrad=True)
    opt.step(rng.standard_normal(net.flat.size))
    d = opt.state_dict()
    assert d["optimizer"] == "Adam" and d["step"] == 1
    assert d["lr"] == 0.01 and d["betas"] == (0.8, 0.9) and d["amsgrad"] is True
    assert set(d) >= {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    before = d["exp_avg"].copy()
    opt.step(rng.standard_normal(net.flat.size))
    np.testing.assert_array_equal(d["exp_avg"], before)      # a copy, not the live buffer
    other = optim.Adam(net)
    other.load_state_dict(d)
    assert other.lr == 0.01 and other.betas == (0.8, 0.9) and other.amsgrad


def test_load_state_dict_errors(rng):
    net = _net(np.float64)
    opt = optim.Adam(net)
    opt.step(rng.standard_normal(net.flat.size))
    d = opt.state_dict()
    with pytest.raises(ValueError, match="SGD"):
        optim.SGD(net, lr=0.1).load_state_dict(d)
    with pytest.raises(ValueError, match="exp_avg"):
        optim.Adam(lstmx.LSTM(3, 5, dtype=np.float64)).load_state_dict(d)
    with pytest.raises(TypeError, match="exp_avg"):
        optim.Adam(_net(np.float32)).load_state_dict(d)
    missing = dict(d)
    del missing["lr"]
    with pytest.raises(ValueError, match="lr"):
        optim.Adam(net).load_state_dict(missing)
    bad = dict(d, betas=(0.9, 1.5))
    fresh = optim.Adam(net, lr=0.5)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        fresh.load_state_dict(bad)
    assert fresh.lr == 0.5 and fresh.betas == (0.9, 0.999)    # unchanged after a refused load
    with pytest.raises(ValueError, match="bogus"):
        optim.Adam(net).load_state_dict(dict(d, bogus=np.zeros(net.flat.size)))


# ----------------------------------------------------------------------
# clip_grad_norm

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "keeps"])
def test_clip_grad_norm_matches_torch(rng, dtype, max_norm):
    torch = pytest.importorskip("torch")
    net = _net(dtype)
    grads = net.backward(rng.standard_normal((4, 2, 2)), net.forward(rng.standard_normal((4, 2, 3)))[1])
    grads.flat[:] = rng.standard_normal(grads.flat.size)
    tensors = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64 if dtype == np.float64
                                              else torch.float32)) for v in grads.values()]
    for tensor, view in zip(tensors, grads.values()):
        tensor.grad = torch.tensor(view.copy())
    before = grads.flat.copy()
    norm = optim.clip_grad_norm(grads, max_norm)
    ref = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    tol = TORCH_TOL[dtype]
    assert isinstance(norm, float)
    assert norm == pytest.approx(np.linalg.norm(before.astype(np.float64)), rel=1e-12)
    assert norm == pytest.approx(ref.item(), rel=tol)
    expected = _gather([t.grad for t in tensors], grads, grads.flat)
    np.testing.assert_allclose(grads.flat, expected, rtol=tol, atol=tol)
    if max_norm > norm:
        np.testing.assert_array_equal(grads.flat, before)
    else:
        assert np.linalg.norm(grads.flat) == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_arrays_and_errors(rng):
    g = rng.standard_normal(100)
    norm = optim.clip_grad_norm(g, 1.0)
    assert np.linalg.norm(g) == pytest.approx(1.0, rel=1e-6) and norm > 1
    assert optim.clip_grad_norm(g, np.inf) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm(g, -1.0)
    with pytest.raises(TypeError, match="grads"):
        optim.clip_grad_norm([1.0, 2.0], 1.0)
    with pytest.raises(TypeError, match="grads"):
        optim.clip_grad_norm(np.arange(3), 1.0)
    with pytest.raises(ValueError, match="grads"):
        optim.clip_grad_norm(g[::2], 1.0)
    bad = g.copy()
    bad[3] = np.nan
    assert np.isnan(optim.clip_grad_norm(bad, 1.0))
    with pytest.raises(ValueError, match="grads"):
        optim.clip_grad_norm(bad, 1.0, error_if_nonfinite=True)


# ----------------------------------------------------------------------
# validation

@pytest.mark.parametrize("make, name", [
    (lambda n: optim.SGD(n, lr=-0.1), "lr"),
    (lambda n: optim.SGD(n, lr=0.1, momentum=-1), "momentum"),
    (lambda n: optim.SGD(n, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda n: optim.SGD(n, lr=0.1, nesterov=True), "nesterov"),
    (lambda n: optim.SGD(n, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda n: optim.SGD(n, lr=np.nan), "lr"),
    (lambda n: optim.Adam(n, lr=-1), "lr"),
    (lambda n: optim.Adam(n, betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda n: optim.Adam(n, betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda n: optim.Adam(n, betas=(0.9,)), "betas"),
    (lambda n: optim.Adam(n, eps=0), "eps"),
    (lambda n: optim.AdamW(n, weight_decay=-1e-2), "weight_decay"),
    (lambda n: optim.RMSprop(n, alpha=1.5), "alpha"),
    (lambda n: optim.RMSprop(n, eps=-1), "eps"),
    (lambda n: optim.RMSprop(n, momentum=-0.5), "momentum"),
    (lambda n: optim.Adagrad(n, lr_decay=-1), "lr_decay"),
    (lambda n: optim.Adagrad(n, initial_accumulator_value=-1), "initial_accumulator_value"),
    (lambda n: optim.Adagrad(n, eps=0), "eps"),
])
def test_hyperparameters_are_validated(make, name):
    with pytest.raises(ValueError, match=name):
        make(_net(np.float64))


def test_hyperparameter_types_are_checked():
    net = _net(np.float64)
    with pytest.raises(TypeError, match="lr"):
        optim.SGD(net, lr="0.1")
    with pytest.raises(TypeError, match="amsgrad"):
        optim.Adam(net, amsgrad="yes")
    with pytest.raises(TypeError, match="net"):
        optim.Adam(object())
    with pytest.raises(TypeError, match="net"):
        optim.Adam(np.zeros(3, dtype=np.int64))
    opt = optim.Adam(net)
    opt.lr = -1.0                                # checked again at the next step
    with pytest.raises(ValueError, match="lr"):
        opt.step(np.zeros(net.flat.size))


def test_step_checks_the_gradient(rng):
    net = _net(np.float32)
    opt = optim.Adam(net)
    before = net.flat.copy()
    with pytest.raises(ValueError, match="grads"):
        opt.step(np.zeros(net.flat.size + 1, np.float32))
    with pytest.raises(ValueError, match="grads"):
        opt.step(np.zeros((1, net.flat.size), np.float32))
    with pytest.raises(TypeError, match="grads.*float32"):
        opt.step(np.zeros(net.flat.size, np.float64))
    with pytest.raises(TypeError, match="grads"):
        opt.step(np.zeros(net.flat.size, np.int32))
    g = np.zeros(net.flat.size, np.float32)
    g[7] = np.inf
    with pytest.raises(ValueError, match="grads"):
        opt.step(g)
    np.testing.assert_array_equal(net.flat, before)
    assert opt.state_dict()["step"] == 0
    # A strided gradient is accepted (copied to contiguous).
    wide = rng.standard_normal(2 * net.flat.size).astype(np.float32)
    opt.step(wide[::2])
    expected = before.copy()
    optim.Adam(expected).step(np.ascontiguousarray(wide[::2]))
    np.testing.assert_array_equal(net.flat, expected)
