"""Subnormal numbers in the kernels (lstmx/_denormals.py): float32 runs
flush them to zero by default, float64 runs keep them; either can be
changed, and the caller's floating-point environment is left as it was."""
import numpy as np
import pytest

import lstmx
from lstmx import _lstm

needs_flush = pytest.mark.skipif(not _lstm.can_flush(), reason="no flushing on this CPU")


@pytest.fixture(autouse=True)
def default_settings():
    yield
    lstmx.set_flush_denormals(float32=True, float64=False)
    lstmx.set_num_threads(2)


def test_defaults_and_settings():
    assert lstmx.get_flush_denormals() == {"float32": True, "float64": False}
    lstmx.set_flush_denormals(float64=True)
    assert lstmx.get_flush_denormals() == {"float32": True, "float64": True}
    lstmx.set_flush_denormals(float32=False)
    assert lstmx.get_flush_denormals() == {"float32": False, "float64": True}
    lstmx.set_flush_denormals()     # None: unchanged
    assert lstmx.get_flush_denormals() == {"float32": False, "float64": True}
    # a copy: changing it changes nothing
    lstmx.get_flush_denormals()["float32"] = True
    assert lstmx.get_flush_denormals()["float32"] is False


@pytest.mark.parametrize("value", [1, 0, "yes", np.float32(1)])
def test_settings_refuse_anything_but_bools(value):
    with pytest.raises(TypeError, match="float32: expected True, False or None"):
        lstmx.set_flush_denormals(float32=value)
    assert lstmx.get_flush_denormals() == {"float32": True, "float64": False}


def _subnormal_net(dtype):
    """One unit whose first step's h is subnormal: i = sigmoid(b_i) is
    subnormal (6e-39 in float32, 7e-309 in float64), g = tanh(10) = 1 and
    o = sigmoid(10), so c_1 = i g and h_1 = o tanh(c_1) are too."""
    net = lstmx.LSTM(1, 1, peephole=False, dtype=dtype, seed=0)
    net.flat[...] = 0
    net.params["b_i_fw_layer1"][...] = -100.0 if dtype == np.float32 else -709.5
    net.params["b_c_fw_layer1"][...] = 10.0
    net.params["b_o_fw_layer1"][...] = 10.0
    return net


@needs_flush
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_subnormal_results_flushed_or_kept(dtype, threads):
    lstmx.set_num_threads(threads)
    tiny = np.finfo(dtype).tiny
    x = np.zeros((3, 1, 1), dtype)
    net = _subnormal_net(dtype)
    for flush in (True, False):
        lstmx.set_flush_denormals(**{np.dtype(dtype).name: flush})
        y = net.predict(x)
        y_train, _ = net.forward(x)
        if flush:
            assert np.all(y == 0) and np.all(y_train == 0)
        else:
            assert 0 < y[0, 0, 0] < tiny
            np.testing.assert_array_equal(y_train, y)


@pytest.mark.parametrize("threads", [1, 2])
def test_callers_environment_is_kept(threads):
    """After a run that flushed, NumPy on the calling thread still gets
    subnormal results."""
    lstmx.set_num_threads(threads)
    net = lstmx.LSTM(3, 8, bidirectional=True, output_size=2, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 2, 3)).astype(np.float32)
    y, cache = net.forward(x)
    net.backward(np.ones_like(y), cache)
    net.predict(x)
    small = np.array([1e-38], np.float32)
    assert small[0] / np.float32(10) > 0          # not flushed
    assert (np.array([1e-39], np.float32) * np.float32(1))[0] > 0   # not read as zero


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_flushing_changes_nothing_without_subnormals(dtype):
    """Ordinary values never come near the subnormals: the same bits either
    way, forward and backward."""
    net = lstmx.LSTM(5, 16, num_layers=2, bidirectional=True, output_size=3, dtype=dtype,
                     seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 4, 5)).astype(dtype)
    dy = rng.standard_normal((30, 4, 3)).astype(dtype)
    runs = []
    for flush in (True, False):
        lstmx.set_flush_denormals(float32=flush, float64=flush)
        y, cache = net.forward(x)
        runs.append((net.predict(x), y, net.backward(dy, cache).flat))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def _optimizer(kind, flat):
    """An optimizer of this kind whose state buffer ``name`` takes the value
    of a subnormal moment times ``factor`` at the next step of a zero (or,
    for Adagrad, a tiny) gradient: (optimizer, name, gradient, factor)."""
    tiny = np.finfo(flat.dtype).tiny
    zero = np.zeros_like(flat)
    if kind == "sgd":
        return lstmx.optim.SGD(flat, lr=0.1, momentum=0.5), "momentum_buffer", zero, 0.5
    if kind == "adam":
        return lstmx.optim.Adam(flat, lr=1e-3), "exp_avg", zero, 0.9
    if kind == "rmsprop":
        return lstmx.optim.RMSprop(flat, lr=1e-3, alpha=0.5), "square_avg", zero, 0.5
    # Adagrad: state_sum += g^2, with g^2 = tiny / 4 from zero
    return lstmx.optim.Adagrad(flat, lr=1e-3), "state_sum", np.full_like(flat, np.sqrt(tiny) / 2), 0


@needs_flush
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop", "adagrad"])
def test_optimizers_flush_or_keep_subnormals(kind, dtype):
    """An update follows its dtype's setting: a moment that decays (or an
    accumulator that grows) into the subnormals becomes zero when flushing
    and keeps its subnormal value otherwise; the caller's environment is
    left as it was."""
    tiny = np.finfo(dtype).tiny
    for flush in (True, False):
        lstmx.set_flush_denormals(**{np.dtype(dtype).name: flush})
        flat = np.ones(37, dtype)
        opt, name, grad, factor = _optimizer(kind, flat)
        opt.step(grad)        # creates the state buffers
        opt._state[name][...] = tiny / 4 if factor else 0
        opt.step(grad)
        state = opt._state[name]
        if flush:
            np.testing.assert_array_equal(state, 0)
        else:
            expected = (tiny / 4 * factor if factor else tiny / 4).astype(dtype)
            assert 0 < expected < tiny
            np.testing.assert_array_equal(state, expected)
        assert (np.array([tiny], dtype) / dtype(10))[0] > 0     # the caller's: not flushed
