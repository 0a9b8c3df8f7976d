"""Error bounds of the activations used by the cell kernels.

Both dtypes replace libm's scalar exp and tanh with vectorizable arithmetic
(src/lstmx/_cell.c). float32's is bounded against float64 libm on a dense
grid and on the tails; float64's, which must stay as exact as libm, in ulps
against long double where long double is wider than double, and against
libm itself everywhere.
"""
import numpy as np
import pytest

from lstmx import _lstm

EPS32 = float(np.finfo(np.float32).eps)   # 1.19e-7


def activations(z, dtype=np.float32):
    z = np.ascontiguousarray(z, dtype=dtype)
    e, s, t = (np.empty_like(z) for _ in range(3))
    _lstm._activations(z, e, s, t)
    return z.astype(np.float64), e, s, t


GRIDS = {
    "wide": np.linspace(-100, 100, 400_001),
    "unit": np.linspace(-1, 1, 400_001),
    "tiny": np.concatenate([np.geomspace(1e-30, 1, 20_000), -np.geomspace(1e-30, 1, 20_000)]),
    "near-switch": np.linspace(0.2, 0.3, 100_001),
}


@pytest.mark.parametrize("grid", list(GRIDS), ids=list(GRIDS))
def test_exp_relative_error(grid):
    z, e, _, _ = activations(GRIDS[grid])
    inside = (z > -87) & (z < 88)
    ref = np.exp(z[inside])
    assert np.max(np.abs(e[inside] - ref) / ref) <= 1.5 * EPS32


@pytest.mark.parametrize("grid", list(GRIDS), ids=list(GRIDS))
def test_sigmoid_error(grid):
    z, _, s, _ = activations(GRIDS[grid])
    ref = 1.0 / (1.0 + np.exp(-z))
    assert np.max(np.abs(s - ref)) <= 1.0 * EPS32
    # relative, where the value is representable well above the clamp at -87
    ok = z > -80
    assert np.max(np.abs(s[ok] - ref[ok]) / ref[ok]) <= 3 * EPS32


@pytest.mark.parametrize("grid", list(GRIDS), ids=list(GRIDS))
def test_tanh_error(grid):
    z, _, _, t = activations(GRIDS[grid])
    ref = np.tanh(z)
    assert np.max(np.abs(t - ref)) <= 1.0 * EPS32
    nz = ref != 0
    assert np.max(np.abs(t[nz] - ref[nz]) / np.abs(ref[nz])) <= 3 * EPS32


def _on_both_paths(values, dtype=np.float32):
    """Activations of ``values`` as the first of a vector's lanes and as a
    scalar tail: the kernels run 8 float32 or 4 float64 lanes at a time
    where the CPU has AVX2 (16 or 8 with AVX-512), and the rest one by one.
    Both must agree exactly."""
    wide = _lstm.kernel_target() == "avx512"
    lanes = (16 if wide else 8) if dtype == np.float32 else (8 if wide else 4)
    values = np.asarray(values, np.float64)
    n = len(values)
    assert n < lanes
    values = np.resize(values, lanes - 1)    # repeated to fill the lanes
    z = np.concatenate([values, [0.0], values])
    _, e, s, t = activations(z, dtype)
    for out in (e, s, t):
        np.testing.assert_array_equal(out[:lanes - 1], out[lanes:])
    return e[:n], s[:n], t[:n]


def test_saturation_and_symmetry():
    e, s, t = _on_both_paths([-1e30, -1e4, -90.0, 0.0, 90.0, 1e4, 1e30])
    assert np.all(np.isfinite(e)) and np.all(np.isfinite(s)) and np.all(np.isfinite(t))
    assert s[3] == 0.5 and t[3] == 0.0
    assert s[-1] == 1.0 and s[0] < 1e-37
    assert t[-1] == 1.0 and t[0] == -1.0
    zz = np.linspace(-20, 20, 40_001)
    _, _, _, tt = activations(zz)
    np.testing.assert_array_equal(tt, -tt[::-1])   # odd, exactly


def test_nan_and_infinities():
    """NaN gives NaN (so that a NaN input reaches the output, unchecked),
    and the infinities saturate, on both paths."""
    e, s, t = _on_both_paths([np.nan, np.inf, -np.inf, -np.nan, 1.0, -1.0, 0.5])
    assert np.isnan(e[0]) and np.isnan(s[0]) and np.isnan(t[0])
    assert np.isnan(e[3]) and np.isnan(s[3]) and np.isnan(t[3])
    assert s[1] == 1.0 and s[2] < 1e-37 and t[1] == 1.0 and t[2] == -1.0
    assert e[2] < 1e-37 and e[1] > 1e38


# ---- float64: as exact as libm ------------------------------------------

# glibc's own on these grids, measured here: exp 0.51 ulp, tanh 1.17, sigmoid
# on glibc's exp 2.23
ULP_EXP64, ULP_SIGMOID64, ULP_TANH64 = 1.25, 2.5, 1.5
WIDE_LONG_DOUBLE = np.finfo(np.longdouble).eps < 1e-18
GRIDS64 = {
    "wide": np.linspace(-745, 709, 1_000_001),
    "unit": np.linspace(-3, 3, 1_000_001),
    "tiny": np.concatenate([np.geomspace(1e-300, 1, 20_000),
                            -np.geomspace(1e-300, 1, 20_000)]),
    "near-switch": np.linspace(0.62, 0.63, 100_001),
    "random": np.random.default_rng(0).uniform(-40, 40, 1_000_000),
}


def ulps(y, ref):
    """|y - ref| in units of the last place of ref rounded to double."""
    ulp = np.spacing(np.abs(ref.astype(np.float64)))
    return np.asarray(np.abs(y.astype(np.longdouble) - ref) / ulp, np.float64)


@pytest.mark.skipif(not WIDE_LONG_DOUBLE, reason="long double is double here")
@pytest.mark.parametrize("grid", list(GRIDS64), ids=list(GRIDS64))
def test_float64_ulps_against_long_double(grid):
    z, e, s, t = activations(GRIDS64[grid], np.float64)
    zl = z.astype(np.longdouble)
    assert ulps(e, np.exp(zl)).max() <= ULP_EXP64
    # below -709.78, e^-z overflows and 1 / (1 + inf) is 0, as with libm's
    # exp, against a true value below 5.6e-309
    ok = z > -709.78
    assert ulps(s[ok], 1 / (1 + np.exp(-zl[ok]))).max() <= ULP_SIGMOID64
    nz = t != 0
    assert ulps(t[nz], np.tanh(zl[nz])).max() <= ULP_TANH64
    # the exactly representable results
    assert np.all(t[z == 0] == 0) and np.all(e[z == 0] == 1)


@pytest.mark.parametrize("grid", list(GRIDS64), ids=list(GRIDS64))
def test_float64_against_libm(grid):
    """Within an ulp or two of libm's double results, on any platform (and
    a few of the smallest subnormal's steps, where the result is one)."""
    z, e, s, t = activations(GRIDS64[grid], np.float64)
    eps, sub = np.finfo(np.float64).eps, np.finfo(np.float64).smallest_subnormal
    np.testing.assert_allclose(e, np.exp(z), rtol=2 * eps, atol=2 * sub)
    with np.errstate(over="ignore"):   # e^-z = inf: s = 0, as here
        s_libm = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(s, s_libm, rtol=4 * eps, atol=4 * sub)
    np.testing.assert_allclose(t, np.tanh(z), rtol=3 * eps, atol=0)


def test_float64_range_of_exp():
    """libm's range: subnormal results, underflow to 0, overflow to inf."""
    z = np.array([-745.2, -740.0, -708.5, 709.7, 709.8, 710.0, 800.0])
    _, e, s, _ = activations(z, np.float64)
    assert e[0] == 0 and 0 < e[1] < np.finfo(np.float64).tiny
    assert 0 < e[2] < np.finfo(np.float64).tiny * 2**10
    np.testing.assert_allclose(e[1:4], np.exp(z[1:4]), rtol=1e-12)
    assert np.isfinite(e[3]) and np.all(np.isinf(e[4:]))
    assert np.all(s[4:] == 1.0)


def test_float64_saturation_and_symmetry():
    e, s, t = _on_both_paths([-1e300, -40.0, 0.0], np.float64)
    assert e[0] == 0 and s[0] == 0 and t[0] == -1.0 and t[1] == -1.0
    assert e[2] == 1 and s[2] == 0.5 and t[2] == 0.0
    e, s, t = _on_both_paths([1e300, 40.0, 0.3], np.float64)
    assert np.isinf(e[0]) and s[0] == 1 and t[0] == 1.0 and t[1] == 1.0
    zz = np.linspace(0, 20, 20_001)
    _, _, _, tt = activations(np.concatenate([-zz[::-1], zz]), np.float64)
    np.testing.assert_array_equal(tt, -tt[::-1])   # odd, exactly


def test_float64_nan_and_infinities():
    e, s, t = _on_both_paths([np.nan, -np.nan, 1.0], np.float64)
    assert np.all(np.isnan(e[:2])) and np.all(np.isnan(s[:2])) and np.all(np.isnan(t[:2]))
    e, s, t = _on_both_paths([np.inf, -np.inf, -1.0], np.float64)
    assert np.isinf(e[0]) and e[1] == 0
    assert s[0] == 1 and s[1] == 0 and t[0] == 1 and t[1] == -1


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_lanes_match_scalar_tail(dtype):
    """Values of a dense grid, each on a vector lane (a run of 3 with a 0
    after it, so that every group of 4 or 8 is whole) and alone (n = 1, the
    scalar loop): the same bits. The split runs of tests/test_split.py
    rely on it."""
    vals = np.linspace(-3, 3, 3 * 4000).reshape(-1, 3)
    lanes = np.concatenate([vals, np.zeros((len(vals), 1))], axis=1).ravel()
    _, e, s, t = activations(lanes, dtype)
    pick = np.arange(0, len(lanes), 37)
    pick = pick[pick % 4 != 3]
    for i in pick:
        _, e1, s1, t1 = activations(lanes[i:i + 1], dtype)
        assert (e1[0], s1[0], t1[0]) == (e[i], s[i], t[i]), lanes[i]


def test_hook_refuses_mismatched_lengths():
    z = np.zeros(4)
    with pytest.raises(ValueError, match="length 4"):
        _lstm._activations(z, np.zeros(4), np.zeros(3), np.zeros(4))
