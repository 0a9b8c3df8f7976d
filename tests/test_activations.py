"""Error bounds of the float32 activations used by the cell kernels.

float32 replaces glibc's scalar expf and tanhf with vectorizable polynomial
forms (src/lstmx/_cell.c); these tests bound their error against float64
libm on a dense grid and on the tails. float64 uses libm itself.
"""
import numpy as np
import pytest

from lstmx import _lstm

EPS32 = float(np.finfo(np.float32).eps)   # 1.19e-7


def activations(z):
    z = np.ascontiguousarray(z, dtype=np.float32)
    e, s, t = (np.empty_like(z) for _ in range(3))
    _lstm._activations_f32(z, e, s, t)
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


def _on_both_paths(values):
    """Activations of ``values`` (7 of them) as the first 7 of 8 vector
    lanes and as a scalar tail: the kernels run 8 lanes at a time where the
    CPU has AVX2, and the rest one by one. Both must agree exactly."""
    values = np.asarray(values, np.float64)
    assert len(values) == 7
    z = np.concatenate([values, [0.0], values])
    _, e, s, t = activations(z)
    for out in (e, s, t):
        np.testing.assert_array_equal(out[:7], out[8:])
    return e[:7], s[:7], t[:7]


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
