"""Converting a network between file formats (``lstmx convert``).

Formats (``FORMATS``), chosen from the file's suffix unless named:

=============== ========== ==========================================================
name            suffix     what
=============== ========== ==========================================================
``lstmx-npz``   ``.npz``   :func:`lstmx.persist.save`: seed-000 arrays + metadata
``seed000-npz`` (named)    only the seed-000-named arrays, no metadata
``legacy-npy``  ``.npy``   the legacy pickled dict: **read only**
``torch``       ``.pt``,   a ``torch.nn.LSTM`` (+ ``nn.Linear``) state_dict, read
                ``.pth``   with ``torch.load(weights_only=True)``
``onnx``        ``.onnx``  :func:`lstmx.io.to_onnx` / :func:`lstmx.io.from_onnx`
=============== ========== ==========================================================

Reading ``.npz`` or ``.npy`` goes through :func:`lstmx.load`, which tells the
three NumPy forms apart by their bytes and executes nothing. Writing
``.npz`` writes the lstmx form; name ``seed000-npz`` to write the names-only
one (``np.savez(OUT, **net.params)``). Writing the legacy ``.npy`` is refused:
lstmx never writes pickles.

torch state_dicts
-----------------
Written: one flat dict, ``lstm.``-prefixed keys of
``lstmx.io.to_torch(net)[0].state_dict()`` (``lstm.weight_ih_l0``, ...,
``lstm.bias_hh_l0_reverse``) and, with a head, ``linear.weight`` and
``linear.bias``; a torch user restores it with
``lstm.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("lstm.")})``.

Read: a dict of tensors holding the keys of one ``torch.nn.LSTM``
(``weight_ih_l{k}[_reverse]``, ``weight_hh_...``, and ``bias_ih_...`` /
``bias_hh_...`` unless it was built with ``bias=False``) under one prefix --
none (a bare ``lstm.state_dict()``), ``lstm.``, or any other such as ``rnn.``
or ``0.`` -- plus optionally a head: ``weight`` (O, D*H) and optionally
``bias`` (O,) under one other prefix (``linear.``, ``fc.``, ``1.``, ...).
Nested dicts are flattened with ``.``, so ``{"lstm": lstm.state_dict(),
"linear": linear.state_dict()}`` reads too (``"linear": None`` means no
head). Sizes, layers and directions are inferred from the shapes; torch
checks them when the state_dict is loaded into the rebuilt modules, and
:func:`lstmx.io.from_torch` does the rest. Any other key is refused.
``torch.load(weights_only=True)`` only builds tensors and plain containers:
a file that references any other Python object (a pickled module, a
hostile payload) is refused before anything in it runs.

torch and onnx are imported only when a file in their format is read or
written; if missing, an ImportError says what to install.
"""
import os
import re

import numpy as np

from .lstm import LSTM, _rebuild
from .persist import _listing, write_atomically
from ._validation import check_dtype

__all__ = ["convert", "read", "write", "format_of", "FORMATS", "FormatError"]

FORMATS = ("lstmx-npz", "seed000-npz", "legacy-npy", "torch", "onnx")
_NUMPY_FORMATS = ("lstmx-npz", "seed000-npz", "legacy-npy")
_SUFFIXES = {".npz": "lstmx-npz", ".npy": "legacy-npy", ".pt": "torch", ".pth": "torch",
             ".onnx": "onnx"}
_SUFFIX_HELP = ".npz, .npy, .pt, .pth or .onnx"


class FormatError(ValueError):
    """The format cannot be told from the suffix, is unknown, or cannot be
    written (the legacy pickled .npy); a problem of the request, not of a
    file's contents (``lstmx convert`` exits with status 2)."""


def format_of(path, format=None, *, writing=False):
    """The format name for ``path``: ``format`` if given (checked), else from
    the suffix. Raises :class:`FormatError`."""
    path = os.fsdecode(os.fspath(path))
    if format is None:
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in _SUFFIXES:
            option = "--format-out" if writing else "--format-in"
            raise FormatError(
                f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
                f"use {_SUFFIX_HELP}, or name it with {option} (one of {', '.join(FORMATS)})")
        format = _SUFFIXES[suffix]
    elif format not in FORMATS:
        raise FormatError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if writing and format == "legacy-npy":
        raise FormatError(
            f"{path}: writing the legacy pickled .npy format is refused (lstmx never writes "
            f"pickles); write an .npz instead (lstmx-npz, or seed000-npz for the names-only "
            f"archive)")
    return format


def convert(src, dst, format_in=None, format_out=None, *, dtype=None):
    """Read the network in ``src`` and write it to ``dst``.

    Parameters
    ----------
    src, dst : str or os.PathLike
        ``dst`` is written exactly as given (no suffix appended), through a
        temporary file in the same folder renamed over it, so it is never
        left half-written (``src`` may equal ``dst``).
    format_in, format_out : str, optional
        One of :data:`FORMATS`; by default from the suffix. Reading any of
        the NumPy formats auto-detects which of the three the file holds.
    dtype : numpy.float32 or numpy.float64, optional
        Convert the parameters before writing (e.g. ``numpy.float32`` for
        ONNX, whose LSTM runs in float32 only). By default the file's.

    Returns
    -------
    lstmx.LSTM
        The network as written.

    Raises
    ------
    FormatError (a ValueError)
        Unknown suffix or format, or a write of the legacy ``.npy``.
    ValueError, TypeError, OSError
        The input cannot be read as a network, or the network cannot be
        written in that format (peepholes to torch, float64 to ONNX).
    ImportError
        torch or onnx is needed and missing.
    """
    format_out = format_of(dst, format_out, writing=True)   # refuse before reading anything
    format_in = format_of(src, format_in)
    net = read(src, format_in)
    if dtype is not None:
        net = _astype(net, check_dtype(dtype))
    write(net, dst, format_out)
    return net


# ----------------------------------------------------------------------
# reading

def read(path, format=None):
    """The network in ``path`` (format as :func:`convert`'s ``format_in``)."""
    format = format_of(path, format)
    if format in _NUMPY_FORMATS:
        from .persist import load
        return load(path)
    if format == "torch":
        return _read_torch(path)
    return _read_onnx(path)


def _require(module, what):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{what} needs {module}, which is not installed "
                          f"(pip install {module})") from None


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _read_torch(path):
    torch = _require("torch", f"reading the torch file {os.fsdecode(path)}")
    path = os.fsdecode(os.fspath(path))
    with open(path, "rb") as f:   # OSError (missing file, directory) as is
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if found or "Weights only load failed" in str(exc):
                what = found.group(1) if found else "a Python object"
                why = (f"it references {what}, which torch.load(weights_only=True) refuses "
                       f"(only tensors and plain containers are read); nothing in it was run")
            else:
                why = f"torch.load(weights_only=True) failed ({_first_line(exc)})"
            raise ValueError(f"{path}: not a torch state_dict: {why}") from None
    return _from_state_dict(torch, obj, path)


_TORCH_KEY = re.compile(r"(?P<prefix>(?:.*\.)?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)"
                        r"_l(?P<layer>[0-9]+)(?P<reverse>_reverse)?")


def _flatten(obj, path, prefix=""):
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state_dict: holds a {type(obj).__name__}"
                         + (f" at {prefix[:-1]!r}" if prefix else "")
                         + "; expected a dict of tensors")
    flat = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: not a state_dict: key {key!r} is not a string")
        if value is None and prefix == "":   # {"lstm": ..., "linear": None}
            continue
        if isinstance(value, dict):
            flat.update(_flatten(value, path, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _from_state_dict(torch, obj, path):
    from . import io

    sd = _flatten(obj, path)
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: not a state_dict of tensors: {key!r} is a {type(value).__name__}")
    lstm_keys = {k: _TORCH_KEY.fullmatch(k) for k in sd}
    lstm_keys = {k: m for k, m in lstm_keys.items() if m}
    if not lstm_keys:
        raise ValueError(f"{path}: not the state_dict of a torch.nn.LSTM: no keys like "
                         f"'weight_ih_l0' or 'lstm.weight_ih_l0' (found {_listing(sd) or 'none'})")
    prefixes = {m["prefix"] for m in lstm_keys.values()}
    if len(prefixes) > 1:
        raise ValueError(f"{path}: holds more than one LSTM (key prefixes {_listing(prefixes)}); "
                         f"expected one")
    (p,) = prefixes
    if any(m["kind"] == "weight_hr" for m in lstm_keys.values()):
        raise ValueError(f"{path}: an LSTM with projections (proj_size > 0, keys {p}weight_hr_l*) "
                         f"cannot be represented in lstmx")
    rest = [k for k in sd if k not in lstm_keys]
    head_prefixes = {k[:-len("weight")] for k in rest if k.endswith("weight")}
    if len(head_prefixes) > 1:
        raise ValueError(f"{path}: more than one head weight ({_listing(head_prefixes)}); "
                         f"expected at most one Linear")
    hp = next(iter(head_prefixes), None)
    unexpected = [k for k in rest if hp is None or k not in (hp + "weight", hp + "bias")]
    if unexpected:
        raise ValueError(f"{path}: unexpected keys {_listing(unexpected)} beside the LSTM's "
                         f"{p}weight_ih_l0, ... and an optional head's weight and bias")
    if p + "weight_ih_l0" not in sd:
        raise ValueError(f"{path}: missing {p + 'weight_ih_l0'!r}")
    w0 = sd[p + "weight_ih_l0"]
    if w0.dim() != 2 or w0.shape[0] % 4 or 0 in w0.shape:
        raise ValueError(f"{path}: {p}weight_ih_l0 has shape {tuple(w0.shape)}; "
                         f"expected (4*hidden_size, input_size)")
    io._torch_dtype_to_numpy(torch, w0.dtype, f"{path}: {p}weight_ih_l0")
    layers = {int(m["layer"]) for m in lstm_keys.values()}
    lstm = torch.nn.LSTM(
        w0.shape[1], w0.shape[0] // 4, num_layers=max(layers) + 1,
        bias=any(m["kind"].startswith("bias") for m in lstm_keys.values()),
        bidirectional=any(m["reverse"] for m in lstm_keys.values()), dtype=w0.dtype)
    _load_into(lstm, {k[len(p):]: sd[k] for k in lstm_keys}, path, "LSTM")
    linear = None
    if hp is not None:
        w = sd[hp + "weight"]
        if w.dim() != 2 or 0 in w.shape:
            raise ValueError(f"{path}: {hp}weight has shape {tuple(w.shape)}; "
                             f"expected (output_size, D*hidden_size)")
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=hp + "bias" in sd, dtype=w.dtype)
        _load_into(linear, {k[len(hp):]: sd[k] for k in rest}, path, "head (Linear)")
    try:
        return io.from_torch(lstm, linear)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _load_into(module, state, path, what):
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:   # missing/unexpected keys, size mismatches
        detail = " ".join(str(exc).split())
        detail = detail.split(f"for {type(module).__name__}:", 1)[-1].strip()
        raise ValueError(f"{path}: inconsistent {what} parameters: {detail}") from None


def _read_onnx(path):
    onnx = _require("onnx", f"reading the ONNX file {os.fsdecode(path)}")
    from . import io

    path = os.fsdecode(os.fspath(path))
    with open(path, "rb") as f:
        try:
            model = onnx.load(f, format="protobuf")
        except Exception as exc:   # DecodeError, external data problems
            raise ValueError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    try:
        return io.from_onnx(model)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------
# writing

def write(net, path, format=None):
    """Write ``net`` to ``path`` (format as :func:`convert`'s ``format_out``)."""
    if not isinstance(net, LSTM):
        raise TypeError(f"net: expected an lstmx.LSTM, got {type(net).__name__}")
    format = format_of(path, format, writing=True)
    path = os.fsdecode(os.fspath(path))
    if format == "lstmx-npz":
        net.save(path)   # atomic already
    elif format == "seed000-npz":
        # every array is float: nothing is pickled
        write_atomically(path, lambda f: np.savez(f, **dict(net.params.items())))
    elif format == "torch":
        torch = _require("torch", f"writing the torch file {path}")
        from . import io
        lstm, linear = io.to_torch(net)   # refuses peepholes
        state = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
        if linear is not None:
            state.update({f"linear.{k}": v for k, v in linear.state_dict().items()})
        write_atomically(path, lambda f: torch.save(state, f))
    else:
        _require("onnx", f"writing the ONNX file {path}")
        from . import io
        if net.dtype == np.float64:
            raise ValueError("the network is float64 and ONNX export is float32 only "
                             "(onnxruntime has no double LSTM); convert with dtype=float32 "
                             "(lstmx convert --dtype float32)")
        write_atomically(path, lambda f: io.to_onnx(net, f))


def _astype(net, dtype):
    if net.dtype == dtype:
        return net
    return _rebuild({**net._config(), "dtype": dtype}, net.flat)   # same layout
