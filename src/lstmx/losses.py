"""Losses over sequence outputs, masked by sequence length.

Each loss takes the network's output ``y`` (time-major (T, N, C), or (T, C)
for one sequence, or (N, T, C) with ``batch_first=True``), the targets and the
optional ``lengths`` (N,) of the batch, and returns ``(loss, dy)``: the loss
as a Python float and dL/dy, of y's shape and dtype, ready for
:meth:`lstmx.LSTM.backward`. Padded steps (t >= lengths[n]) contribute nothing
to the loss, their targets are not read, and their gradient is zero.

>>> import numpy as np, lstmx
>>> logits = np.zeros((5, 2, 3))
>>> loss, dy = lstmx.losses.softmax_cross_entropy(logits, np.zeros((5, 2), int))
>>> round(loss, 6), dy.shape                # log(3): uniform over 3 classes
(1.098612, (5, 2, 3))
"""
import numpy as np

from . import _lstm
from ._threads import get_num_threads
from .lstm import _pair
from ._validation import FLOAT_DTYPES, _shape_text, as_float_array, as_lengths

# Logits (elements) from which softmax_cross_entropy's two halves of the rows
# run on two threads at once. Measured, float32, 44 classes, µs (two threads /
# one, alternating blocks): 200x8 rows 93/149, 100x4 38/50, 50x2 25/27.
SOFTMAX_SPLIT_MIN = 8192

__all__ = ["softmax_cross_entropy", "mse"]


def _as_output(y, name, batch_first, check_finite):
    """y -> (time-major (T, N, C) view, unbatched flag, caller's dtype)."""
    arr = np.asarray(y)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        layout = "(N, T, C)" if batch_first else "(T, N, C)"
        raise ValueError(f"{name}: expected shape {layout} or (T, C), got {_shape_text(arr.shape)}")
    if 0 in arr.shape:
        raise ValueError(f"{name}: expected at least one step, sequence and feature, got shape "
                         f"{_shape_text(arr.shape)}")
    unbatched = arr.ndim == 2
    if unbatched:
        arr = arr[:, None, :]
    elif batch_first:
        arr = arr.transpose(1, 0, 2)
    return arr, unbatched


def _to_caller(dy, unbatched, batch_first):
    """Time-major (T, N, C) gradient -> the layout of the caller's y."""
    if unbatched:
        return dy[:, 0]
    if batch_first:
        return np.ascontiguousarray(dy.transpose(1, 0, 2))
    return dy


def _valid_steps(lengths, T, N):
    """(T, N) boolean mask of valid steps, t < lengths[n], and their count."""
    lengths, _ = as_lengths(lengths, T, N)
    valid = np.arange(T)[:, None] < lengths[None, :]
    return valid, int(lengths.sum())


def _time_major(arr, unbatched, batch_first):
    if unbatched:
        return arr[:, None]
    if batch_first:
        return arr.swapaxes(0, 1)
    return arr


def softmax_cross_entropy(logits, targets, lengths=None, batch_first=False, check_finite=True):
    """Softmax cross-entropy with integer class targets, averaged over valid steps.

    ``loss = -(1/S) sum_{n, t < lengths[n]} log softmax(logits[t, n])[targets[t, n]]``
    with S = sum(lengths) the number of valid steps (T*N without lengths):
    torch's ``cross_entropy(..., reduction="mean")`` over the valid steps.
    The log-sum-exp is shifted by each row's maximum, so large logits do not
    overflow.

    Parameters
    ----------
    logits : ndarray (T, N, C), or (N, T, C) with batch_first, or (T, C)
        Unnormalised class scores, float32 or float64.
    targets : array_like of int (T, N), or (N, T) with batch_first, or (T,)
        Class indices in [0, C) at valid steps; padded steps are not read
        (any value, e.g. -1, may pad).
    lengths : array_like of int (N,), optional
        Valid steps per sequence, 1 <= l <= T. All T when omitted.
    batch_first : bool
        logits and targets are batch-major.
    check_finite : bool
        Refuse NaN or inf in logits at valid steps.

    Returns
    -------
    loss : float
    dy : ndarray, logits' shape and dtype
        dL/dlogits = (softmax(logits) - onehot(targets)) / S at valid steps,
        zero at padded steps.
    """
    z, unbatched = _as_output(logits, "logits", batch_first, False)
    T, N, C = z.shape
    tgt = np.asarray(targets)
    if tgt.dtype.kind not in "iu":
        raise TypeError(f"targets: expected integer class indices, got dtype {tgt.dtype}")
    expected = (T,) if unbatched else ((N, T) if batch_first else (T, N))
    if tgt.shape != expected:
        raise ValueError(f"targets: expected shape {_shape_text(expected)} (one class per step of "
                         f"logits {_shape_text(np.shape(logits))}), got {_shape_text(tgt.shape)}")
    tgt = _time_major(tgt, unbatched, batch_first)
    valid, count = _valid_steps(lengths, T, N)
    every = count == T * N

    classes = np.ascontiguousarray(tgt, dtype=np.intp).reshape(T * N)
    valid_flat = valid.reshape(T * N)
    checked = classes if every else classes[valid_flat]
    if checked.size and (checked.min() < 0 or checked.max() >= C):
        bad = checked[(checked < 0) | (checked >= C)][0]
        raise ValueError(f"targets: class indices must lie in [0, {C}) (C={C} classes in logits), "
                         f"got {bad} at a valid step")
    if check_finite and not np.isfinite(z if every else z[valid]).all():
        raise ValueError("logits: contains NaN or inf at a valid step "
                         "(pass check_finite=False to skip this check)")

    rows = np.ascontiguousarray(z).reshape(T * N, C)
    dz = np.empty((T, N, C), dtype=z.dtype)
    mask = np.empty(0, np.uint8) if every else valid_flat.view(np.uint8)
    # the shifted log-sum-exp, its gradient and the zeros at padded steps,
    # one pass over each row (_lstm.softmax_xent), in two halves of the
    # rows: at once on two threads when there are enough of them; the loss
    # is the same sum of the two halves' sums either way
    totals = np.zeros(2)
    args = (rows, classes, mask, z.dtype.type(1.0 / count), dz.reshape(T * N, C), totals)
    threads = get_num_threads() if rows.size >= SOFTMAX_SPLIT_MIN else 1
    _pair(_lstm.softmax_xent(*args, 0, 2, defer=True), _lstm.softmax_xent(*args, 1, 2, defer=True),
          threads)
    return (totals[0] + totals[1]) / count, _to_caller(dz, unbatched, batch_first)


def mse(y, targets, lengths=None, batch_first=False, check_finite=True):
    """Mean squared error, averaged over valid steps and features.

    ``loss = (1/(S*F)) sum_{n, t < lengths[n], f} (y[t, n, f] - targets[t, n, f])**2``
    with S = sum(lengths) valid steps (T*N without lengths) and F = y's last
    dimension: every valid element counts once, as torch's
    ``mse_loss(..., reduction="mean")`` over the valid steps.

    Parameters
    ----------
    y : ndarray (T, N, F), or (N, T, F) with batch_first, or (T, F)
        Network output, float32 or float64.
    targets : array_like, y's shape
        Real targets, converted to y's dtype; padded steps are not read.
    lengths : array_like of int (N,), optional
        Valid steps per sequence, 1 <= l <= T. All T when omitted.
    batch_first : bool
        y and targets are batch-major.
    check_finite : bool
        Refuse NaN or inf in y and targets at valid steps.

    Returns
    -------
    loss : float
    dy : ndarray, y's shape and dtype
        2 (y - targets) / (S*F) at valid steps, zero at padded steps.
    """
    out, unbatched = _as_output(y, "y", batch_first, False)
    T, N, F = out.shape
    tgt = np.asarray(targets)
    if tgt.dtype.kind not in "iuf":
        raise TypeError(f"targets: expected a real numeric array, got dtype {tgt.dtype}")
    if tgt.shape != np.shape(y):
        raise ValueError(f"targets: expected y's shape {_shape_text(np.shape(y))}, "
                         f"got {_shape_text(tgt.shape)}")
    tgt = _time_major(tgt, unbatched, batch_first)
    valid, count = _valid_steps(lengths, T, N)

    every = count == T * N
    pred = out if every else out[valid]                    # (S, F), copies
    goal = as_float_array(tgt if every else tgt[valid], "targets", out.dtype, False)
    if check_finite:
        if not np.isfinite(pred).all():
            raise ValueError("y: contains NaN or inf at a valid step (pass check_finite=False to skip this check)")
        if not np.isfinite(goal).all():
            raise ValueError("targets: contains NaN or inf at a valid step "
                             "(pass check_finite=False to skip this check)")
    diff = pred - goal
    elements = count * F
    loss = float(np.sum(np.square(diff, dtype=np.float64))) / elements
    diff *= diff.dtype.type(2.0 / elements)
    if every:
        dy = diff                                          # a new array, (T, N, F)
    else:
        dy = np.zeros((T, N, F), dtype=out.dtype)
        dy[valid] = diff
    return loss, _to_caller(dy, unbatched, batch_first)
