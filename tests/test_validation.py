"""Bad input raises ValueError/TypeError naming the argument; odd-but-valid input is converted."""

import numpy as np
import pytest

from helpers import Arch, random_state, random_x

I, H, T, N, O = 3, 4, 5, 2, 2
LD = 4  # 2 layers x 2 directions


@pytest.fixture
def net():
    return Arch(I, H, 2, True, True, O).make(dtype=np.float64, seed=51)


@pytest.fixture
def x(rng):
    return random_x(rng, T, N, I)


def _all_entry_points(net, x, **kwargs):
    """Call predict and forward with the same (bad) arguments; each must raise."""
    yield lambda: net.predict(x, **kwargs)
    yield lambda: net.predict(x, return_state=True, **kwargs)
    yield lambda: net.forward(x, **kwargs)


def _raises_everywhere(exc, name, net, x, **kwargs):
    """Every entry point raises exc with a message that starts with the
    argument's name."""
    flat_before = net.flat.copy()
    for call in _all_entry_points(net, x, **kwargs):
        with pytest.raises(exc, match=rf"^{name}\b"):
            call()
    np.testing.assert_array_equal(net.flat, flat_before)


# ------------------------------------------------------------------- x ----

BAD_X_SHAPES = {
    "1d": (T,),
    "4d": (T, N, I, 1),
    "wrong-features": (T, N, I + 1),
    "wrong-features-unbatched": (T, I - 1),
    "0d": (),
}


@pytest.mark.parametrize("shape", list(BAD_X_SHAPES.values()), ids=list(BAD_X_SHAPES))
def test_x_bad_shape(net, shape):
    _raises_everywhere(ValueError, "x", net, np.zeros(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_x_not_finite(net, x, bad):
    x[2, 1, 0] = bad
    _raises_everywhere(ValueError, "x", net, x)


def test_x_not_finite_unchecked(net, x):
    """check_finite=False skips the scan: no exception, NaN propagates to that sequence."""
    x[2, 1, 0] = np.nan
    y = net.predict(x, check_finite=False)
    assert np.all(np.isnan(y[2:, 1]))
    assert np.all(np.isfinite(y[:, 0]))  # the other sequence is untouched
    y_f, cache = net.forward(x, check_finite=False)
    assert np.isnan(y_f[2, 1]).all()


@pytest.mark.parametrize("dtype", [np.complex128, object, "U4", bool],
                         ids=["complex", "object", "str", "bool"])
def test_x_non_numeric_dtype(net, dtype):
    if dtype == "U4":
        bad = np.full((T, N, I), "ab", dtype="U4")
    else:
        bad = np.ones((T, N, I), dtype=dtype)
    _raises_everywhere(TypeError, "x", net, bad)


def test_x_nested_list_is_accepted(net, x):
    np.testing.assert_array_equal(net.predict(x.tolist()), net.predict(x))


def test_empty_x_is_refused(net):
    """T=0 or N=0: a clean ValueError naming x, no crash."""
    for shape in [(0, N, I), (T, 0, I), (0, I)]:
        with pytest.raises(ValueError, match=r"^x: expected at least one step"):
            net.predict(np.zeros(shape))


# ------------------------------------------------------- converted input ----

def _ref(net, x, **kw):
    return net.predict(np.ascontiguousarray(x, dtype=net.dtype), **kw)


@pytest.mark.parametrize("make", [
    lambda x: np.asfortranarray(x),
    lambda x: np.repeat(x, 2, axis=0)[::2],
    lambda x: np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2),
    lambda x: np.repeat(x, 3, axis=2)[:, :, ::3],
], ids=["fortran", "strided-time", "transposed", "strided-features"])
def test_non_contiguous_x_accepted(net, x, make):
    odd = make(x)
    assert not odd.flags.c_contiguous
    np.testing.assert_array_equal(odd, x)
    y, cache = net.forward(odd)
    np.testing.assert_array_equal(y, _ref(net, x))
    np.testing.assert_array_equal(net.predict(odd), _ref(net, x))
    grads = net.backward(np.ones_like(y), cache)
    assert grads.x.shape == x.shape


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int32, np.int64, np.uint8, np.int8],
                         ids=["f16", "f32", "i32", "i64", "u8", "i8"])
@pytest.mark.parametrize("net_dtype", [np.float64, np.float32], ids=["net-f64", "net-f32"])
def test_other_numeric_dtypes_accepted(dtype, net_dtype, rng):
    net = Arch(I, H, 2, True, True, O).make(dtype=net_dtype, seed=52)
    x = rng.integers(-3, 4, size=(T, N, I)).astype(dtype)
    if np.dtype(dtype).kind == "u":
        x = rng.integers(0, 4, size=(T, N, I)).astype(dtype)
    y = net.predict(x)
    assert y.dtype == net_dtype
    np.testing.assert_array_equal(y, _ref(net, x))
    y_f, cache = net.forward(x)
    np.testing.assert_array_equal(y_f, y)
    grads = net.backward(np.ones_like(y), cache)
    assert grads.x.shape == x.shape


def test_float32_input_to_float64_net_and_back(rng):
    net64 = Arch(I, H, 1, False, True, None).make(dtype=np.float64, seed=53)
    net32 = Arch(I, H, 1, False, True, None).make(dtype=np.float32, seed=53)
    x = random_x(rng, T, N, I)
    assert net64.predict(x.astype(np.float32)).dtype == np.float64
    assert net32.predict(x).dtype == np.float32
    np.testing.assert_array_equal(net32.predict(x), net32.predict(x.astype(np.float32)))


def test_non_contiguous_state_and_dy_accepted(net, x, rng):
    h0, c0 = random_state(rng, net, N)
    h0_f, c0_f = np.asfortranarray(h0), np.repeat(c0, 2, axis=2)[:, :, ::2]
    assert not h0_f.flags.c_contiguous and not c0_f.flags.c_contiguous
    y, cache = net.forward(x, state=(h0_f, c0_f))
    y_ref, cache_ref = net.forward(x, state=(h0, c0))
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape)
    g = net.backward(np.asfortranarray(dy), cache)
    g_ref = net.backward(dy, cache_ref)
    np.testing.assert_array_equal(g.flat, g_ref.flat)
    # State and dy of another float type are converted too.
    y32, cache32 = net.forward(x, state=(h0.astype(np.float32), c0.astype(np.float32)))
    y_ref32, _ = net.forward(x, state=(h0.astype(np.float32).astype(np.float64),
                                       c0.astype(np.float32).astype(np.float64)))
    np.testing.assert_array_equal(y32, y_ref32)
    g32 = net.backward(dy.astype(np.float32), cache32)
    assert g32.flat.dtype == np.float64


# ------------------------------------------------------------- lengths ----

BAD_LENGTHS_VALUES = {
    "zero": [0, 5],
    "negative": [-1, 5],
    "above-T": [T + 1, 2],
    "too-few": [5],
    "too-many": [5, 5, 5],
    "2d": [[5, 5]],
}


@pytest.mark.parametrize("lengths", list(BAD_LENGTHS_VALUES.values()), ids=list(BAD_LENGTHS_VALUES))
def test_lengths_bad_values(net, x, lengths):
    _raises_everywhere(ValueError, "lengths", net, x, lengths=np.array(lengths))


@pytest.mark.parametrize("lengths", [np.array([5.0, 2.0]), np.array([5.5, 2.0]),
                                     np.array([5 + 0j, 2 + 0j]), np.array(["5", "2"]),
                                     np.array([True, True])],
                         ids=["float-integral", "float", "complex", "str", "bool"])
def test_lengths_non_integer_dtype(net, x, lengths):
    _raises_everywhere(TypeError, "lengths", net, x, lengths=lengths)


@pytest.mark.parametrize("make", [list, tuple, lambda a: a.astype(np.int32),
                                  lambda a: a.astype(np.uint8), lambda a: a.astype(np.int16)],
                         ids=["list", "tuple", "i32", "u8", "i16"])
def test_lengths_integer_forms_accepted(net, x, make):
    lengths = np.array([5, 2])
    y_ref, (h_ref, c_ref) = net.predict(x, lengths=lengths, return_state=True)
    y, (h, c) = net.predict(x, lengths=make(lengths), return_state=True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(c, c_ref)


def test_lengths_batch_first_out_of_range(rng):
    """With batch_first the time axis is axis 1: lengths are checked against it."""
    net = Arch(I, H, 1, False, True, None).make(seed=54, batch_first=True)
    x = rng.standard_normal((N, T, I))  # N=2, T=5
    net.predict(x, lengths=[T, 1])
    with pytest.raises(ValueError, match="lengths"):
        net.predict(x, lengths=[T + 1, 1])
    with pytest.raises(ValueError, match="lengths"):
        net.predict(x, lengths=[T, 1, 1])


# --------------------------------------------------------------- state ----

def _bad_states():
    good = np.zeros((LD, N, H))
    return {
        "h-wrong-layers": (np.zeros((LD - 1, N, H)), good),
        "c-wrong-batch": (good, np.zeros((LD, N + 1, H))),
        "h-wrong-hidden": (np.zeros((LD, N, H + 1)), good),
        "h-2d-for-batched": (np.zeros((LD, H)), good),
        "c-4d": (good, np.zeros((1, LD, N, H))),
    }


@pytest.mark.parametrize("which", list(_bad_states()))
def test_state_bad_shape(net, x, which):
    _raises_everywhere(ValueError, "state", net, x, state=_bad_states()[which])


def test_state_bad_shape_unbatched(net, rng):
    x1 = rng.standard_normal((T, I))
    with pytest.raises(ValueError, match="state"):
        net.predict(x1, state=(np.zeros((LD, H + 1)), np.zeros((LD, H + 1))))
    with pytest.raises(ValueError, match="state"):
        net.predict(x1, state=(np.zeros((LD - 1, H)), np.zeros((LD - 1, H))))


@pytest.mark.parametrize("state", [np.zeros((LD, N, H)), (np.zeros((LD, N, H)),),
                                   (np.zeros((LD, N, H)),) * 3],
                         ids=["bare-array", "1-tuple", "3-tuple"])
def test_state_not_a_pair(net, x, state):
    _raises_everywhere((ValueError, TypeError), "state", net, x, state=state)


@pytest.mark.parametrize("part", [0, 1], ids=["h", "c"])
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_state_not_finite(net, x, part, bad):
    state = [np.zeros((LD, N, H)), np.zeros((LD, N, H))]
    state[part][1, 0, 2] = bad
    _raises_everywhere(ValueError, "state", net, x, state=tuple(state))
    net.predict(x, state=tuple(state), check_finite=False)  # no exception when unchecked


@pytest.mark.parametrize("dtype", [np.complex128, object], ids=["complex", "object"])
def test_state_non_numeric(net, x, dtype):
    state = (np.zeros((LD, N, H), dtype=dtype), np.zeros((LD, N, H), dtype=dtype))
    _raises_everywhere((TypeError, ValueError), "state", net, x, state=state)


# ------------------------------------------------------------ backward ----

@pytest.fixture
def trained(net, x, rng):
    y, cache = net.forward(x, lengths=[5, 3])
    return net, y, cache


@pytest.mark.parametrize("shape", [(T, N, O + 1), (T - 1, N, O), (T, N + 1, O), (T, N * O),
                                   (T * N * O,)],
                         ids=["width", "time", "batch", "2d", "1d"])
def test_dy_bad_shape(trained, shape):
    net, _, cache = trained
    with pytest.raises(ValueError, match="dy"):
        net.backward(np.zeros(shape), cache)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_dy_not_finite(trained, bad):
    net, y, cache = trained
    dy = np.zeros_like(y)
    dy[0, 0, 0] = bad
    with pytest.raises(ValueError, match="dy"):
        net.backward(dy, cache)
    g = net.backward(dy, cache, check_finite=False)  # unchecked: runs, NaN spreads
    assert not np.all(np.isfinite(g.flat))


@pytest.mark.parametrize("dtype", [np.complex128, object], ids=["complex", "object"])
def test_dy_non_numeric(trained, dtype):
    net, y, cache = trained
    with pytest.raises(TypeError, match="dy"):
        net.backward(np.zeros(y.shape, dtype=dtype), cache)


def test_dstate_bad_shape(trained):
    net, _, cache = trained
    good = np.zeros((LD, N, H))
    for dstate in [(np.zeros((LD, N, H + 1)), good), (good, np.zeros((LD - 1, N, H))),
                   (good, np.zeros((LD, H)))]:
        with pytest.raises(ValueError, match="state"):
            net.backward(np.zeros((T, N, O)), cache, dstate=dstate)


def test_dstate_not_finite(trained):
    net, _, cache = trained
    dh = np.zeros((LD, N, H))
    dh[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="state"):
        net.backward(np.zeros((T, N, O)), cache, dstate=(dh, np.zeros_like(dh)))


def test_cache_from_another_net(trained, x, rng):
    net, y, cache = trained
    other = Arch(I, H, 2, True, True, O).make(seed=55)  # same architecture, other object
    with pytest.raises(ValueError, match="cache"):
        other.backward(np.zeros_like(y), cache)
    different = Arch(I, H + 1, 1, False, True, O).make(seed=56)
    with pytest.raises(ValueError, match="cache"):
        different.backward(np.zeros_like(y), cache)


@pytest.mark.parametrize("cache", [None, "cache", (1, 2)], ids=["none", "str", "tuple"])
def test_cache_wrong_type(trained, cache):
    net, y, _ = trained
    with pytest.raises((ValueError, TypeError), match="cache"):
        net.backward(np.zeros_like(y), cache)


def test_dy_unbatched_shape_checked(net, rng):
    x1 = rng.standard_normal((T, I))
    y, cache = net.forward(x1)
    assert y.shape == (T, O)
    with pytest.raises(ValueError, match="dy"):
        net.backward(np.zeros((T, 1, O)), cache)
    g = net.backward(np.ones((T, O)), cache)
    assert g.x.shape == (T, I)


# --------------------------------------------------------- constructor ----

@pytest.mark.parametrize("kwargs", [
    dict(input_size=0, hidden_size=4), dict(input_size=3, hidden_size=0),
    dict(input_size=3, hidden_size=4, num_layers=0), dict(input_size=-1, hidden_size=4),
    dict(input_size=3, hidden_size=4, output_size=0),
], ids=["input0", "hidden0", "layers0", "input-neg", "output0"])
def test_constructor_bad_sizes(kwargs):
    import lstmx

    with pytest.raises((ValueError, TypeError)):
        lstmx.LSTM(**kwargs)


def test_validation_runs_before_anything_changes(net, x, rng):
    """A failed call leaves the net usable and its results unchanged."""
    y0 = net.predict(x)
    for bad in [dict(lengths=[0, 1]), dict(state=(np.zeros(3), np.zeros(3)))]:
        with pytest.raises(ValueError):
            net.predict(x, **bad)
    with pytest.raises(ValueError):
        net.predict(np.full((T, N, I), np.nan))
    np.testing.assert_array_equal(net.predict(x), y0)
