"""Input checks shared by the public entry points.

Every check runs in Python before compiled code: the kernels assume valid,
C-contiguous input of the network's dtype and have their bounds checks off.
Messages name the argument and what was expected.
"""
import operator

import numpy as np

# BLAS takes 32-bit integers (scipy's LP64 build): refuse anything larger
# before it is narrowed.
BLAS_INT_MAX = 2**31 - 1

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype):
    """Return ``dtype`` as a NumPy float32/float64 dtype, or raise TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected numpy.float32 or numpy.float64, got {dtype!r}")
    return dt


def check_int(value, name, minimum=1):
    """An integer >= minimum (bools are refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _asarray(a, name):
    """np.asarray, with what it refuses (ragged lists, say) reported as a
    ValueError naming the argument."""
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: could not be read as a numeric array ({exc})") from None


def as_float_array(a, name, dtype, check_finite):
    """Convert array_like ``a`` of a real numeric dtype to a C-contiguous
    array of ``dtype`` (a copy only when needed)."""
    arr = _asarray(a, name)
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name}: expected a real numeric array (integer or float), got dtype {arr.dtype}"
        )
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf (pass check_finite=False to skip this check)")
    return arr


def _shape_text(shape):
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _x_shapes(input_size, batch_first):
    """The shapes x may have, as text (for errors only: formatting them on
    every call cost a microsecond)."""
    layout = "(N, T, {})" if batch_first else "(T, N, {})"
    return layout.format(input_size) + f" or (T, {input_size})"


def as_sequence_input(x, input_size, dtype, batch_first, check_finite):
    """x -> (time-major (T, N, I) C-contiguous array, unbatched flag)."""
    arr = _asarray(x, "x")
    if arr.ndim not in (2, 3):
        raise ValueError(f"x: expected shape {_x_shapes(input_size, batch_first)}, got "
                         f"{arr.ndim}-d array of shape {_shape_text(arr.shape)}")
    if arr.shape[-1] != input_size:
        raise ValueError(f"x: expected shape {_x_shapes(input_size, batch_first)} "
                         f"(input_size={input_size}), got {_shape_text(arr.shape)}")
    if 0 in arr.shape:
        raise ValueError(f"x: expected at least one step and one sequence, got shape {_shape_text(arr.shape)}")
    unbatched = arr.ndim == 2
    if unbatched:
        arr = arr[:, None, :]
    elif batch_first:
        arr = arr.transpose(1, 0, 2)
    arr = as_float_array(arr, "x", dtype, check_finite)
    return arr, unbatched


def as_lengths(lengths, T, N):
    """lengths -> int32 array (N,) with 1 <= l <= T (all T when None)."""
    if lengths is None:
        return np.full(N, T, dtype=np.intc), False
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.ndim == 0 and N == 1:
        arr = arr.reshape(1)
    if arr.shape != (N,):
        raise ValueError(f"lengths: expected shape ({N},), one length per sequence, got {_shape_text(arr.shape)}")
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"lengths: expected values in [1, {T}] (T={T}), got min {arr.min()} and max {arr.max()}")
    arr = arr.astype(np.intc)
    return arr, bool((arr != T).any())


def _zeros_pair(shape, dtype):
    return np.zeros(shape, dtype), np.zeros(shape, dtype)


def as_state(state, name, num_states, N, H, dtype, unbatched, check_finite, pair=_zeros_pair):
    """(h, c) -> two fresh C-contiguous (L*D, N, H) arrays (zeros when
    None), the two zeroed arrays that ``pair(shape, dtype)`` makes."""
    shape = (num_states, N, H)
    fresh = pair(shape, dtype)
    if state is None:
        return fresh
    expected = _shape_text((num_states, H) if unbatched else shape)
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"{name}: expected a pair (h, c) of arrays of shape {expected}")
    for part, arr, dst in zip("hc", state, fresh):
        arr = as_float_array(arr, f"{name}[{'hc'.index(part)}] ({part})", dtype, check_finite)
        want = (num_states, H) if unbatched else shape
        if arr.shape != want:
            raise ValueError(
                f"{name}: expected {part} of shape {expected} (layers*directions, batch, hidden), "
                f"got {_shape_text(arr.shape)}"
            )
        dst[...] = arr.reshape(shape)
    return fresh


def check_blas_size(*sizes):
    """Refuse matrices whose element count overflows BLAS's 32-bit ints."""
    for size in sizes:
        if size > BLAS_INT_MAX:
            raise ValueError(
                f"input too large: a workspace of {size} elements exceeds the 32-bit BLAS limit "
                f"({BLAS_INT_MAX}); split the batch or the sequence"
            )
