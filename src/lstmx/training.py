"""A thin training loop: :func:`fit`.

``fit`` only loops. Each step is the public API, nothing more::

    y, cache = net.forward(x, lengths=lengths)
    loss, dy = lstmx.losses.softmax_cross_entropy(y, targets, lengths)   # or mse
    grads = net.backward(dy, cache, input_grad=False)                   # x is data
    lstmx.optim.clip_grad_norm(grads, clip)                              # if clip
    opt.step(grads)

Write that loop yourself for anything fit does not do (truncated BPTT,
losses on the final state, schedules); fit adds mini-batches, shuffling,
padding of variable-length sequences, validation, early stopping and a
progress line.

>>> import numpy as np, lstmx
>>> net = lstmx.LSTM(1, 4, output_size=2, seed=0)
>>> x = np.zeros((6, 8, 1), np.float32); y = np.ones((6, 8), int)
>>> history = lstmx.fit(net, (x, y), epochs=2, batch_size=4, seed=0, progress=False)
>>> [sorted(h) for h in history][0]
['epoch', 'loss', 'time', 'val_loss']
"""
import hashlib
import json
import math
import numbers
import os
import sys
import time

import numpy as np

from . import losses, optim
from .lstm import LSTM
from .persist import write_atomically
from ._validation import _shape_text, as_float_array, check_int

__all__ = ["fit"]

LOSSES = {"ce": losses.softmax_cross_entropy, "mse": losses.mse}


class _Data:
    """Sequences held time-major, with per-sequence lengths; gives padded
    mini-batches in the network's layout.

    Either dense (``x`` (T, N, I), ``y`` (T, N) or (T, N, O), ``lengths``
    (N,)) or ragged (lists of (T_i, I) and (T_i,)/(T_i, O) arrays, padded per
    batch). Every check has run when an instance exists.
    """

    def __init__(self, xs, ys, lengths, dense):
        self.xs, self.ys, self.lengths, self.dense = xs, ys, lengths, dense

    def __len__(self):
        return self.lengths.size

    @property
    def valid_steps(self):
        return int(self.lengths.sum())

    def subset(self, idx):
        idx = np.asarray(idx, dtype=np.intp)
        if self.dense:
            return _Data(self.xs[:, idx], self.ys[:, idx], self.lengths[idx], True)
        return _Data([self.xs[i] for i in idx], [self.ys[i] for i in idx], self.lengths[idx], False)

    def batch(self, idx, batch_first):
        """(x, y, lengths) of the sequences ``idx``, cut to their longest
        length, in the net's layout (time-major unless batch_first)."""
        lengths = self.lengths[idx]
        T = int(lengths.max())
        if self.dense:
            x = self.xs[:T, idx]
            y = self.ys[:T, idx]
        else:
            first_x, first_y = self.xs[idx[0]], self.ys[idx[0]]
            x = np.zeros((T, len(idx)) + first_x.shape[1:], first_x.dtype)
            y = np.zeros((T, len(idx)) + first_y.shape[1:], first_y.dtype)
            for k, i in enumerate(idx):
                x[:lengths[k], k] = self.xs[i]
                y[:lengths[k], k] = self.ys[i]
        if batch_first:
            x, y = x.swapaxes(0, 1), y.swapaxes(0, 1)
        return np.ascontiguousarray(x), np.ascontiguousarray(y), lengths


def _as_data(data, net, loss, name):
    """Check ``data`` against ``net`` and ``loss``; return a _Data."""
    if isinstance(data, _Data):     # already checked (a split of checked data)
        return data
    dtype = net.dtype
    width = net.output_size or net.num_directions * net.hidden_size
    layout = "(N, T" if net.batch_first else "(T, N"
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and isinstance(data[0], np.ndarray):
        return _as_dense(data, net, loss, name, dtype, width, layout)
    if isinstance(data, (tuple, list)) and data and all(
            isinstance(item, (tuple, list)) and len(item) == 2 for item in data):
        return _as_ragged(data, net, loss, name, dtype, width)
    raise TypeError(
        f"{name}: expected (x, y) or (x, y, lengths) with x a NumPy array {layout}, "
        f"{net.input_size}), or a non-empty list of (x_i (T_i, {net.input_size}), y_i) pairs; "
        f"got {type(data).__name__}"
        + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))


def _as_dense(data, net, loss, name, dtype, width, layout):
    x, y = data[0], data[1]
    lengths = data[2] if len(data) == 3 else None
    if x.ndim != 3 or x.shape[-1] != net.input_size or 0 in x.shape:
        raise ValueError(f"{name}: x must have shape {layout}, {net.input_size}) "
                         f"(input_size={net.input_size}), got {_shape_text(x.shape)}")
    x = as_float_array(x, f"{name}: x", dtype, True)
    if net.batch_first:
        x = x.swapaxes(0, 1)
    T, N = x.shape[:2]
    y = _as_targets(y, (N, T) if net.batch_first else (T, N), loss, width, dtype, f"{name}: y")
    if net.batch_first:
        y = y.swapaxes(0, 1)
    if lengths is None:
        lengths = np.full(N, T, np.intp)
    else:
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"{name}: lengths must be integers, got dtype {lengths.dtype}")
        if lengths.shape != (N,):
            raise ValueError(f"{name}: lengths must have shape ({N},), one per sequence, "
                             f"got {_shape_text(lengths.shape)}")
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"{name}: lengths must lie in [1, {T}] (T={T}), "
                             f"got min {lengths.min()} and max {lengths.max()}")
        lengths = lengths.astype(np.intp)
    if loss == "ce":
        valid = np.arange(T)[:, None] < lengths[None, :]
        _check_classes(y[valid], width, f"{name}: y")
    return _Data(np.ascontiguousarray(x), np.ascontiguousarray(y), lengths, True)


def _as_ragged(data, net, loss, name, dtype, width):
    xs, ys, lengths = [], [], []
    for k, (x, y) in enumerate(data):
        x = as_float_array(x, f"{name}[{k}]: x", dtype, True)
        if x.ndim != 2 or x.shape[1] != net.input_size or x.shape[0] == 0:
            raise ValueError(f"{name}[{k}]: x must have shape (T_i, {net.input_size}) with T_i >= 1, "
                             f"got {_shape_text(x.shape)}")
        y = _as_targets(y, (x.shape[0],), loss, width, dtype, f"{name}[{k}]: y")
        if loss == "ce":
            _check_classes(y, width, f"{name}[{k}]: y")
        xs.append(x)
        ys.append(y)
        lengths.append(x.shape[0])
    return _Data(xs, ys, np.asarray(lengths, np.intp), False)


def _as_targets(y, steps, loss, width, dtype, name):
    """Targets of shape steps (ce: integer classes) or steps + (width,) (mse)."""
    y = np.asarray(y)
    if loss == "ce":
        if y.dtype.kind not in "iu":
            raise TypeError(f"{name}: loss='ce' needs integer class indices, got dtype {y.dtype}")
        if y.shape != steps:
            raise ValueError(f"{name}: expected shape {_shape_text(steps)} (one class per step), "
                             f"got {_shape_text(y.shape)}")
        return y
    want = steps + (width,)
    if y.shape != want:
        raise ValueError(f"{name}: loss='mse' needs targets of shape {_shape_text(want)} "
                         f"(the network's {width} outputs per step), got {_shape_text(y.shape)}")
    return as_float_array(y, name, dtype, True)


def _check_classes(classes, width, name):
    if classes.size and (classes.min() < 0 or classes.max() >= width):
        raise ValueError(f"{name}: class indices must lie in [0, {width}) (the network's {width} "
                         f"outputs), got min {classes.min()} and max {classes.max()}")


def _split(data, fraction, rng):
    n_val = int(round(fraction * len(data)))
    if n_val < 1 or n_val >= len(data):
        raise ValueError(f"validation: a fraction of {fraction} of {len(data)} sequences leaves "
                         f"{n_val} for validation and {len(data) - n_val} for training; both need >= 1")
    order = rng.permutation(len(data))
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))


def _evaluate(net, data, loss_fn, batch_size):
    """Mean loss over every valid step of ``data`` (inference, no update)."""
    total = 0.0
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        x, y, lengths = data.batch(idx, net.batch_first)
        out = net.predict(x, lengths=lengths, check_finite=False)
        value, _ = loss_fn(out, y, lengths, batch_first=net.batch_first, check_finite=False)
        total += value * int(lengths.sum())
    return total / data.valid_steps


class _Progress:
    """One line on stderr, redrawn in place during an epoch."""

    def __init__(self, epochs, batches, epoch_lines=True):
        self.epochs, self.batches = epochs, batches
        self.epoch_lines = epoch_lines   # else the caller reports each epoch
        self.last = 0.0

    def update(self, epoch, batch, loss):
        now = time.monotonic()
        if batch < self.batches and now - self.last < 0.1:
            return
        self.last = now
        width = 20
        done = width * batch // self.batches
        sys.stderr.write(f"\repoch {epoch}/{self.epochs} [{'#' * done}{'.' * (width - done)}] "
                         f"{batch}/{self.batches} loss {loss:.4g}")
        sys.stderr.flush()

    def end_epoch(self, metrics):
        if not self.epoch_lines:
            sys.stderr.write("\r" + " " * 79 + "\r")     # the bar goes
            sys.stderr.flush()
            return
        val = metrics["val_loss"]
        sys.stderr.write(f"\repoch {metrics['epoch']}/{self.epochs} loss {metrics['loss']:.4g}"
                         + ("" if val is None else f" val_loss {val:.4g}")
                         + f" ({metrics['time']:.2f}s)" + " " * 30 + "\n")
        sys.stderr.flush()


def fit(net, data, *, loss="ce", optimizer=None, epochs=10, batch_size=32, shuffle=True, seed=None,
        validation=None, clip=None, early_stopping=None, callback=None, progress=None):
    """Train ``net`` on ``data`` with mini-batches; return the history.

    Parameters
    ----------
    net : lstmx.LSTM
        Updated in place (``net.flat``).
    data : (x, y) or (x, y, lengths), or a list of (x_i, y_i)
        x: a NumPy array (T, N, I), or (N, T, I) when ``net.batch_first``;
        y: integer classes (T, N) for ``loss="ce"``, or (T, N, O) for
        ``loss="mse"`` (batch-first likewise), O the network's output width;
        lengths (N,): valid steps per sequence. Or a list of variable-length
        sequences, x_i (T_i, I) and y_i (T_i,) or (T_i, O): each mini-batch
        is padded to its longest sequence and passed with its lengths.
    loss : "ce" or "mse"
        :func:`lstmx.losses.softmax_cross_entropy` or :func:`lstmx.losses.mse`,
        averaged over the valid steps of each mini-batch.
    optimizer : lstmx.optim.Optimizer, optional
        Built on this ``net``. Default ``lstmx.optim.Adam(net, lr=1e-3)``.
    epochs : int >= 1
    batch_size : int >= 1
    shuffle : bool
        Draw the mini-batches in a new random order each epoch.
    seed : int, numpy.random.Generator or None
        Randomness of the shuffling and of a validation split. A Generator
        is used (and advanced) as given, so a caller can save its state.
    validation : None, (x, y), (x, y, lengths), a list like data, or a float
        Data to compute ``val_loss`` on after each epoch; a float in (0, 1)
        holds out that fraction of the sequences of ``data``, drawn with
        ``seed``.
    clip : float > 0, optional
        Clip the gradient's global L2 norm to this
        (:func:`lstmx.optim.clip_grad_norm`) before each step.
    early_stopping : int >= 1, optional
        Stop when ``val_loss`` has not improved for this many epochs, and at
        the end restore the parameters of the epoch with the lowest
        ``val_loss`` (the optimizer's state is not restored). Needs
        ``validation``.
    callback : callable, optional
        Called after each epoch with a dict of the epoch's metrics (a copy
        of its history entry); returning ``False`` stops training.
    progress : bool or None
        Draw a one-line progress bar on stderr; None: only when stderr is a
        terminal.

    Returns
    -------
    list of dict
        One per epoch run: ``epoch`` (from 1), ``loss`` (mean training loss
        over the epoch's valid steps), ``val_loss`` (None without
        validation) and ``time`` (seconds).

    Raises
    ------
    TypeError, ValueError
        A bad argument (named in the message), before any training; or a
        loss that became NaN or inf during training.
    """
    return _fit(net, data, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                shuffle=shuffle, seed=seed, validation=validation, clip=clip,
                early_stopping=early_stopping, callback=callback, progress=progress)


def _fit(net, data, *, loss, optimizer, epochs, batch_size, shuffle, seed, validation, clip,
         early_stopping, callback, progress, first_epoch=1, epoch_lines=True):
    """fit, numbering epochs from first_epoch up to epochs (to resume a run);
    without epoch_lines the progress bar reports no epoch (the callback
    does)."""
    if not isinstance(net, LSTM):
        raise TypeError(f"net: expected an lstmx.LSTM, got {type(net).__name__}")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss: expected 'ce' or 'mse', got {loss!r}")
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    if optimizer is None:
        optimizer = optim.Adam(net, lr=1e-3)
    elif not isinstance(optimizer, optim.Optimizer):
        raise TypeError(f"optimizer: expected an lstmx.optim.Optimizer, got {type(optimizer).__name__}")
    elif optimizer.flat is not net.flat:
        raise ValueError("optimizer: it updates another network's parameters; build it on this net, "
                         "e.g. lstmx.optim.Adam(net)")
    if clip is not None:
        if isinstance(clip, (bool, np.bool_)) or not isinstance(clip, numbers.Real):
            raise TypeError(f"clip: expected a maximum gradient norm (a number), got {clip!r}")
        if not clip > 0:
            raise ValueError(f"clip: expected a maximum gradient norm > 0, got {clip!r}")
        clip = float(clip)
    if early_stopping is not None:
        early_stopping = check_int(early_stopping, "early_stopping")
        if validation is None:
            raise ValueError("early_stopping: needs validation data (validation=...) to monitor")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress: expected True, False or None, got {progress!r}")
    if isinstance(shuffle, (bool, np.bool_)):
        shuffle = bool(shuffle)
    else:
        raise TypeError(f"shuffle: expected a bool, got {shuffle!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    train = _as_data(data, net, loss, "data")
    if validation is None:
        val = None
    elif isinstance(validation, numbers.Real) and not isinstance(validation, (bool, np.bool_)):
        if not 0 < validation < 1:
            raise ValueError(f"validation: a fraction must lie in (0, 1), got {validation}")
        train, val = _split(train, float(validation), rng)
    else:
        val = _as_data(validation, net, loss, "validation")

    loss_fn = LOSSES[loss]
    batches = math.ceil(len(train) / batch_size)
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(epochs, batches, epoch_lines) if show else None
    history = []
    best = (math.inf, None)      # (val_loss, copy of net.flat)
    waited = 0
    for epoch in range(first_epoch, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(train)) if shuffle else np.arange(len(train))
        total, steps = 0.0, 0
        for b in range(batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x, y, lengths = train.batch(idx, net.batch_first)
            out, cache = net.forward(x, lengths=lengths, check_finite=False)
            value, dy = loss_fn(out, y, lengths, batch_first=net.batch_first, check_finite=False)
            if not math.isfinite(value):
                raise ValueError(f"fit: the loss became {value} in epoch {epoch}, batch {b + 1} "
                                 "(lower the learning rate or pass clip=...)")
            grads = net.backward(dy, cache, check_finite=False, input_grad=False)
            if clip is not None:
                optim.clip_grad_norm(grads, clip)
            optimizer.step(grads, check_finite=False)
            total += value * int(lengths.sum())
            steps += int(lengths.sum())
            if bar:
                bar.update(epoch, b + 1, total / steps)
        metrics = {"epoch": epoch, "loss": total / train.valid_steps,
                   "val_loss": None if val is None else _evaluate(net, val, loss_fn, batch_size)}
        metrics["time"] = time.perf_counter() - start
        history.append(metrics)
        if bar:
            bar.end_epoch(metrics)
        stop = callback is not None and callback(dict(metrics)) is False
        if early_stopping is not None:
            if metrics["val_loss"] < best[0]:
                best, waited = (metrics["val_loss"], net.flat.copy()), 0
            else:
                waited += 1
                stop = stop or waited >= early_stopping
        if stop:
            break
    if early_stopping is not None and best[1] is not None:
        net.flat[...] = best[1]
    return history


# ----------------------------------------------------------------------
# ``lstmx train``: training from files, with checkpoints to resume from

TRAIN_META = "__lstmx_train__"
_OPTIM_PREFIX = "optim."


def state_path(out):
    """The checkpoint's training-state file next to the model ``out``:
    ``model.npz`` -> ``model.state.npz``."""
    root, ext = os.path.splitext(os.fspath(out))
    return f"{root}.state{ext or '.npz'}"


def read_training_data(path):
    """(data for fit, input size, y, y's shape for mse) from an .npz: ``x`` (T, N, I), ``y`` and optional
    ``lengths``; or variable-length sequences ``x_flat`` (sum T_i, I),
    ``y_flat`` (sum T_i, ...) and ``lengths`` (N,). Never unpickles."""
    try:
        with open(path, "rb") as f:
            archive = np.load(f, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("an .npy array, not an .npz archive")
            with archive:
                arrays = {name: archive[name] for name in archive.files}
    except OSError:
        raise
    except Exception as exc:   # not a zip, corrupt, object arrays (need pickle), ...
        raise ValueError(f"{path}: not a readable .npz of training data ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())})") from None
    names = ", ".join(sorted(arrays)) or "no arrays"
    if "x" in arrays and "y" in arrays:
        x, y = arrays["x"], arrays["y"]
        if x.ndim != 3:
            raise ValueError(f"{path}: x must be (T, N, I), got shape {_shape_text(x.shape)}")
        data = (x, y) if "lengths" not in arrays else (x, y, arrays["lengths"])
        return data, x.shape[-1], y, "(T, N, O)"
    if {"x_flat", "y_flat", "lengths"} <= set(arrays):
        x, y, lengths = arrays["x_flat"], arrays["y_flat"], arrays["lengths"]
        if x.ndim != 2:
            raise ValueError(f"{path}: x_flat must be (sum of lengths, I), got shape {_shape_text(x.shape)}")
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or lengths.size == 0 \
                or lengths.min() < 1:
            raise ValueError(f"{path}: lengths must be a non-empty 1-D array of integers >= 1")
        if int(lengths.sum()) != x.shape[0] or y.shape[:1] != x.shape[:1]:
            raise ValueError(f"{path}: x_flat and y_flat must have sum(lengths) = {int(lengths.sum())} "
                             f"rows, got {x.shape[0]} and {y.shape[0] if y.ndim else 0}")
        ends = np.cumsum(lengths)[:-1]
        return list(zip(np.split(x, ends), np.split(y, ends))), x.shape[-1], y, "(sum T_i, O)"
    raise ValueError(f"{path}: expected arrays x and y (and optionally lengths), or x_flat, "
                     f"y_flat and lengths; found {names}")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_state(path, optimizer, meta):
    """Optimizer state + JSON metadata as one .npz, atomically (no pickle)."""
    arrays = {_OPTIM_PREFIX + k: np.asarray(v) for k, v in optimizer.state_dict().items()}
    arrays[TRAIN_META] = np.array(json.dumps(meta, sort_keys=True))
    write_atomically(path, lambda f: np.savez(f, **arrays))


def _read_state(path):
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop(TRAIN_META)[()]))
        if not isinstance(meta, dict) or meta.get("format") != "lstmx-train":
            raise ValueError("not lstmx training state")
    except OSError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable training checkpoint ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())})") from None
    state = {k[len(_OPTIM_PREFIX):]: v for k, v in arrays.items() if k.startswith(_OPTIM_PREFIX)}
    return state, meta


_CONFIG = ("hidden", "layers", "bidirectional", "peephole", "loss", "batch", "lr", "val", "seed")
_DEFAULTS = {"layers": 1, "bidirectional": False, "peephole": True, "batch": 32, "lr": 1e-3,
             "val": None, "epochs": 10}


def train_files(data_path, out, *, epochs=None, resume=False, say=print, **options):
    """What ``lstmx train`` does: train on DATA, checkpoint to ``out`` (and
    :func:`state_path` of it) after every epoch, or resume from there.

    ``options``: hidden, layers, bidirectional, peephole, loss, batch, lr,
    val, seed (None: the default, or the checkpoint's value on resume).
    Returns the history of the epochs run now.
    """
    from .persist import load

    unknown = set(options) - set(_CONFIG)
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    data, input_size, y, mse_shape = read_training_data(data_path)
    data_hash = _sha256(data_path)
    spath = state_path(out)
    if resume:
        saved_state, meta = _read_state(spath)
        config = meta["config"]
        for name, value in options.items():
            if value is not None and value != config[name]:
                raise ValueError(f"--resume: --{name} {value} differs from the checkpoint's "
                                 f"{config[name]} ({spath})")
        if meta["data_sha256"] != data_hash:
            raise ValueError(f"--resume: {data_path} is not the data the checkpoint in {spath} "
                             "was trained on")
        net = load(out)
        if hashlib.sha256(net.flat.tobytes()).hexdigest() != meta["params_sha256"]:
            raise ValueError(f"--resume: {out} does not match {spath} (a checkpoint written "
                             "half-way?); train again without --resume")
        done = meta["epoch"]
        epochs = meta["epochs"] if epochs is None else epochs
        optimizer = optim.Adam(net, lr=config["lr"])
        optimizer.load_state_dict(saved_state)
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        history = meta["history"]
    else:
        config = {name: options.get(name) for name in _CONFIG}
        if config["hidden"] is None:
            raise ValueError("--hidden: required (hidden units per direction)")
        for name, value in _DEFAULTS.items():
            if name in config and config[name] is None:
                config[name] = value
        if config["loss"] is None:
            config["loss"] = "ce" if y.dtype.kind in "iu" else "mse"
        if config["seed"] is None:
            config["seed"] = int(np.random.SeedSequence().entropy % 2**63)
        check_int(config["hidden"], "--hidden")
        check_int(config["layers"], "--layers")
        check_int(config["batch"], "--batch")
        if config["val"] is not None and not 0 < config["val"] < 1:
            raise ValueError(f"--val: expected a fraction in (0, 1), got {config['val']}")
        if config["loss"] == "ce":
            if y.dtype.kind not in "iu" or y.size == 0:
                raise ValueError(f"{data_path}: --loss ce needs integer class targets y, "
                                 f"got dtype {y.dtype}")
            output_size = int(y.max()) + 1
        else:
            if y.ndim != mse_shape.count(",") + 1:
                raise ValueError(f"{data_path}: --loss mse needs targets of shape {mse_shape}, "
                                 f"got {_shape_text(y.shape)}")
            output_size = y.shape[-1]
        net = LSTM(input_size, config["hidden"], num_layers=config["layers"],
                   bidirectional=config["bidirectional"], peephole=config["peephole"],
                   output_size=output_size, seed=config["seed"])
        optimizer = optim.Adam(net, lr=config["lr"])
        rng = np.random.default_rng(config["seed"])
        done, history = 0, []
        epochs = _DEFAULTS["epochs"] if epochs is None else epochs
    epochs = check_int(epochs, "--epochs")
    if done >= epochs:
        say(f"{out}: already trained for {done} epochs (--epochs {epochs}); nothing to do")
        return []

    validation = None
    if config["val"] is not None:
        # Drawn from its own stream, so a resumed run holds out the same sequences.
        train_set = _as_data(data, net, config["loss"], "data")
        train_set, validation = _split(train_set, float(config["val"]),
                                       np.random.default_rng([config["seed"], 1]))
        data = train_set

    def checkpoint(metrics):
        net.save(out)
        history.append(metrics)
        _write_state(spath, optimizer, {
            "format": "lstmx-train", "version": 1, "epoch": metrics["epoch"], "epochs": epochs,
            "config": config, "data_sha256": data_hash, "rng": rng.bit_generator.state,
            "params_sha256": hashlib.sha256(net.flat.tobytes()).hexdigest(), "history": history,
        })
        val = metrics["val_loss"]
        say(f"epoch {metrics['epoch']}/{epochs}  loss {metrics['loss']:.6g}"
            + ("" if val is None else f"  val_loss {val:.6g}")
            + f"  ({metrics['time']:.2f}s)  saved {out}")

    return _fit(net, data, loss=config["loss"], optimizer=optimizer, epochs=epochs,
                batch_size=check_int(config["batch"], "--batch"), shuffle=True, seed=rng,
                validation=validation, clip=None, early_stopping=None, callback=checkpoint,
                progress=None, first_epoch=done + 1, epoch_lines=False)

