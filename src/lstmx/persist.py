"""Saving and loading networks; loading never executes anything from a file.

Three forms are read, told apart by their first bytes (not by the suffix):

* **lstmx ``.npz``** (what :func:`save` writes): one array per seed-000 name,
  shaped exactly as ``net.params``, plus ``__lstmx__``, a 0-d unicode array
  holding JSON metadata (format version and the constructor's arguments).
  Read back bit-exactly: same ``flat`` bytes, dtype and configuration.
* **plain ``.npz``** holding only seed-000-named arrays: the configuration
  (layers, directions, sizes, peephole, head) is inferred from the names and
  shapes, the dtype from the arrays.
* **legacy ``.npy``**, the form the seed-000 network was distributed in:
  ``np.save(path, {name: array, ...})``, i.e. a pickled 0-d object array
  holding a dict. The ``.npy`` header is parsed here and the pickle is read
  by :class:`_ArrayUnpickler`, which admits only the four globals NumPy's
  array pickles reference and refuses every other one *before* anything is
  called.

Errors: a missing file raises ``FileNotFoundError`` and a directory
``IsADirectoryError`` (both ``OSError``: the file system's problems); anything
wrong with the bytes -- empty, truncated, random, corrupt, a refused pickle,
missing/unknown names, inconsistent shapes, non-float arrays, NaN/inf (unless
``check_finite=False``) -- raises ``ValueError`` naming the file and the
problem. No other exception type escapes from parsing the file's contents.
"""
import io
import json
import os
import pickle
import re
import secrets
import zipfile

import numpy as np
from numpy.lib import format as npy_format

from .lstm import DIRECTIONS, FC_BIASES, FC_WEIGHTS, LSTM
from ._validation import check_dtype

__all__ = ["save", "load"]

META_KEY = "__lstmx__"
FORMAT_NAME = "lstmx"
FORMAT_VERSION = 1

_NPZ_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")   # zip: first member / empty archive
_NPY_MAGIC = b"\x93NUMPY"

_LSTM_NAME = re.compile(
    r"(?:W_[ifco]_[xh]|b_[ifco]|(?P<peephole>peephole_[ifo]_c))"
    r"_(?P<direction>fw|bw)_layer(?P<layer>[1-9][0-9]*)"
)


# ----------------------------------------------------------------------
# saving

def save(net, path):
    """Write ``net`` to ``path`` as an uncompressed ``.npz`` (no pickle).

    The archive holds one array per seed-000 name, shaped exactly as
    ``net.params[name]`` and of ``net.dtype``, plus ``__lstmx__``: a 0-d
    unicode array of JSON metadata (``format``, ``version``, ``input_size``,
    ``hidden_size``, ``num_layers``, ``bidirectional``, ``peephole``,
    ``output_size``, ``dtype``, ``batch_first``). :func:`load` rebuilds the
    network bit-exactly.

    Parameters
    ----------
    net : LSTM
    path : str or os.PathLike
        Written exactly as given: unlike ``np.savez``, no ``.npz`` suffix is
        appended, so ``load(path)`` reads what ``save(net, path)`` wrote. The
        file is written to a temporary name in the same folder and renamed
        over ``path`` (or over the target of a symbolic link ``path``), so
        an existing file is never left half-written.
    """
    if not isinstance(net, LSTM):
        raise TypeError(f"net: expected an lstmx.LSTM, got {type(net).__name__}")
    path = _as_path(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"path: {path!r} is a directory; expected a file name")
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
            **net._config(), "dtype": net.dtype.name}
    arrays = dict(net.params.items())
    arrays[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    # Every array is float: nothing is pickled. (savez's own allow_pickle=
    # needs NumPy >= 2.1; older ones would store it as an array.)
    write_atomically(path, lambda f: np.savez(f, **arrays))


def write_atomically(path, write):
    """Call ``write(f)`` on a new file next to ``path``, then rename it over
    ``path``: an existing file is never left half-written, and a failure
    leaves nothing behind. A symbolic link ``path`` is written through, as
    open() would, not replaced. The new file honours the umask."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; expected a file name")
    folder, base = os.path.split(os.path.realpath(path) if os.path.islink(path) else path)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
        os.replace(tmp, os.path.join(folder, base))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------
# loading

def load(path, *, check_finite=True, dtype=None, batch_first=None):
    """Read a network written by :func:`save`, a plain ``.npz`` of seed-000
    arrays, or the legacy pickled ``.npy`` dict; executes nothing.

    Parameters
    ----------
    path : str or os.PathLike
        Opened exactly as given; the form is told by the file's first bytes.
    check_finite : bool, default True
        Refuse parameters containing NaN or inf (``ValueError`` naming the
        array); pass False to load them anyway, e.g. to inspect a diverged
        run.
    dtype : numpy.float32 or numpy.float64, optional
        Convert the parameters to this dtype. By default the file's: the
        metadata's for an lstmx file (the arrays must all have it);
        otherwise float64 if any array is float64, else float32 (float16 is
        widened to float32, exactly). Other dtypes (integer, complex,
        object, float128, ...) are refused.
    batch_first : bool, optional
        Override the saved ``batch_first`` (a layout choice, not a
        parameter). Files without metadata default to False.

    Returns
    -------
    LSTM

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        ``path`` is missing or a directory.
    ValueError
        The contents are not a valid network (the message says why).
    """
    path = _as_path(path)
    if dtype is not None:
        dtype = check_dtype(dtype)
    if os.path.isdir(path):
        raise IsADirectoryError(f"path: {path!r} is a directory, not a saved network")
    with open(path, "rb") as f:
        try:
            arrays = _read_arrays(f, path)
        except _BadFile as exc:
            raise ValueError(str(exc)) from None
        except Exception as exc:   # corrupt bytes: whatever numpy, zipfile or zlib raised
            raise ValueError(f"{path}: not a readable network file ({type(exc).__name__}: {exc})") from exc
    return _build(arrays, path, check_finite, dtype, batch_first)


class _BadFile(ValueError):
    """A problem found while reading, already described (load re-raises it
    as a plain ValueError); any other exception there is wrapped."""


def _as_path(path):
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path: expected str or os.PathLike, got {type(path).__name__}") from None


def _read_arrays(f, path):
    """{name: ndarray} from an open file, by its magic bytes."""
    head = f.read(len(_NPY_MAGIC))
    f.seek(0)
    if not head:
        raise _BadFile(f"{path}: empty file")
    if head.startswith(_NPZ_MAGICS):
        return _read_npz(f, path)
    if head == _NPY_MAGIC:
        return _read_legacy_npy(f, path)
    raise _BadFile(f"{path}: neither an .npz archive nor an .npy file (starts with {head!r})")


def _read_npz(f, path):
    try:
        with np.load(f, allow_pickle=False) as archive:
            arrays = {}
            for name in archive.files:
                try:
                    value = archive[name]
                except ValueError as exc:   # e.g. an object array (needs pickle), bad header
                    raise _BadFile(f"{path}: array {name!r} cannot be read ({exc})") from None
                if not isinstance(value, np.ndarray):   # a member that is not .npy
                    raise _BadFile(f"{path}: member {name!r} is not an .npy array")
                arrays[name] = value
            return arrays
    except zipfile.BadZipFile as exc:
        raise _BadFile(f"{path}: corrupt or truncated .npz archive ({exc})") from None


def _read_legacy_npy(f, path):
    """The dict pickled by ``np.save(path, {name: array})``, read without
    running code: a 0-d object array whose payload is a restricted pickle."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dt = npy_format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran_order, dt = npy_format.read_array_header_2_0(f)
    else:
        raise _BadFile(f"{path}: unsupported .npy format version {version}")
    if not dt.hasobject:
        raise _BadFile(
            f"{path}: an .npy file holding one {dt} array of shape {shape}; expected a dict of "
            "named parameters (np.save of a dict) or an .npz archive"
        )
    if shape != ():
        raise _BadFile(f"{path}: an .npy object array of shape {shape}; expected a pickled dict (shape ())")
    payload = f.read()
    if not payload:
        raise _BadFile(f"{path}: truncated .npy file (no data after the header)")
    try:
        obj = _ArrayUnpickler(io.BytesIO(payload)).load()
    except _RefusedGlobal as exc:
        raise _BadFile(f"{path}: refused to unpickle: {exc}") from None
    except Exception as exc:
        raise _BadFile(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype.hasobject:
        obj = obj[()]
    if not isinstance(obj, dict):
        raise _BadFile(f"{path}: the pickle holds a {type(obj).__name__}; expected a dict of arrays")
    for name, value in obj.items():
        if not isinstance(name, str):
            raise _BadFile(f"{path}: the dict has a key {name!r} of type {type(name).__name__}; expected str")
        if not isinstance(value, np.ndarray):
            raise _BadFile(f"{path}: {name!r} is a {type(value).__name__}; expected an ndarray")
    return obj


class _RefusedGlobal(pickle.UnpicklingError):
    pass


# numpy's _reconstruct, found where this NumPy keeps it (numpy.core in 1.x).
_reconstruct = np.empty(0).__reduce__()[0]


def _checked_reconstruct(subtype, shape, typecode):
    # What ndarray.__reduce__ emits; refuse anything but a plain ndarray.
    if subtype is not np.ndarray:
        raise _RefusedGlobal(f"_reconstruct of {subtype!r}; only numpy.ndarray is allowed")
    return _reconstruct(subtype, shape, typecode)


# Exactly the globals in np.save's pickle of a dict of float arrays (checked
# with pickletools; test_legacy_pickle_references_only_the_allowed_globals):
# _reconstruct, ndarray and dtype. NumPy 1.x wrote
# _reconstruct as numpy.core.multiarray, NumPy 2.x as numpy._core.multiarray.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build ndarrays, dtypes and builtin containers
    and nothing else: every other global is refused when it is looked up,
    before it could be called. latin1 reads Python 2 pickles, as np.load."""

    def __init__(self, file):
        super().__init__(file, encoding="latin1")

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(
                f"global {module}.{name} is not allowed (only numpy arrays and dtypes are read)"
            ) from None

    def persistent_load(self, pid):
        raise _RefusedGlobal("persistent ids are not allowed")


# ----------------------------------------------------------------------
# building the network

def _build(arrays, path, check_finite, dtype, batch_first):
    arrays = dict(arrays)
    meta = arrays.pop(META_KEY, None)
    if not arrays:
        raise ValueError(f"{path}: holds no parameters")
    for name, value in arrays.items():
        if value.dtype.kind != "f" or value.dtype.itemsize > 8:
            raise ValueError(
                f"{path}: {name!r} has dtype {value.dtype}; expected float32 or float64 (or float16)"
            )
    if meta is not None:
        config = _parse_meta(meta, path)
        file_dtype = np.dtype(config.pop("dtype"))
        for name, value in arrays.items():
            if value.dtype.newbyteorder("=") != file_dtype:
                raise ValueError(
                    f"{path}: {name!r} has dtype {value.dtype} but the metadata says {file_dtype}"
                )
    else:
        config = _infer_config(arrays, path)
        file_dtype = np.result_type(np.float32, *(v.dtype for v in arrays.values()))
    _check_names_and_shapes(arrays, config, path)
    if check_finite:
        for name, value in arrays.items():
            if not np.isfinite(value).all():
                raise ValueError(f"{path}: {name!r} contains NaN or inf (pass check_finite=False to load anyway)")
    if batch_first is not None:
        config["batch_first"] = bool(batch_first)
    net = LSTM(**config, dtype=file_dtype if dtype is None else dtype)
    if len(net.params) != len(arrays):   # _expected_shapes must mirror LSTM's names
        raise RuntimeError(f"lstmx bug: {len(net.params)} parameters, {len(arrays)} arrays checked")
    for name, view in net.params.items():
        if view.shape != arrays[name].shape:
            raise RuntimeError(f"lstmx bug: {name} is {view.shape} in LSTM, {arrays[name].shape} checked")
        view[...] = arrays[name]   # same dtype: the bits are copied unchanged
    return net


def _parse_meta(meta, path):
    """The LSTM keyword arguments (and dtype) from the ``__lstmx__`` entry."""
    if meta.shape != () or meta.dtype.kind != "U":
        raise ValueError(f"{path}: {META_KEY} is not a 0-d unicode array (got {meta.dtype}, shape {meta.shape})")
    try:
        info = json.loads(str(meta[()]))
    except ValueError as exc:
        raise ValueError(f"{path}: {META_KEY} is not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: {META_KEY} is not lstmx metadata")
    version = info.get("version")
    if type(version) is not int or version < 1:
        raise ValueError(f"{path}: {META_KEY} has no valid format version (got {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written in lstmx file format {version}; this lstmx reads up to {FORMAT_VERSION}"
        )

    def field(key, kinds, minimum=None):
        value = info.get(key)
        if type(value) not in kinds or (minimum is not None and type(value) is int and value < minimum):
            raise ValueError(f"{path}: {META_KEY}[{key!r}] is invalid: {value!r}")
        return value

    config = {
        "input_size": field("input_size", (int,), 1),
        "hidden_size": field("hidden_size", (int,), 1),
        "num_layers": field("num_layers", (int,), 1),
        "bidirectional": field("bidirectional", (bool,)),
        "peephole": field("peephole", (bool,)),
        "output_size": field("output_size", (int, type(None)), 1),
        "batch_first": field("batch_first", (bool,)),
        "dtype": field("dtype", (str,)),
    }
    if config["dtype"] not in ("float32", "float64"):
        raise ValueError(f"{path}: {META_KEY}['dtype'] is invalid: {config['dtype']!r}")
    return config


def _shape(arrays, name, path, ndim=2):
    shape = arrays[name].shape
    if len(shape) != ndim or 0 in shape:
        raise ValueError(f"{path}: {name!r} has shape {shape}; expected a non-empty {ndim}-d array")
    return shape


def _infer_config(arrays, path):
    """LSTM keyword arguments from seed-000 names and shapes alone."""
    layers, directions, unknown = set(), set(), []
    peephole = False
    for name in arrays:
        if name in (FC_WEIGHTS, FC_BIASES):
            continue
        m = _LSTM_NAME.fullmatch(name)
        if m is None:
            unknown.append(name)
            continue
        layers.add(int(m["layer"]))
        directions.add(m["direction"])
        peephole |= m["peephole"] is not None
    if unknown:
        raise ValueError(f"{path}: unknown parameter names {_listing(unknown)}")
    if not layers:
        raise ValueError(f"{path}: no LSTM parameters (names like 'W_i_x_fw_layer1')")
    if "fw" not in directions:
        raise ValueError(f"{path}: has 'bw' parameters but no 'fw' ones")
    num_layers = max(layers)
    gaps = sorted(set(range(1, num_layers + 1)) - layers)
    if gaps:
        raise ValueError(f"{path}: has layer{num_layers} parameters but none for layer(s) {_listing(gaps)}")
    head = FC_WEIGHTS in arrays or FC_BIASES in arrays
    # Every name this configuration has must be there (sizes do not matter).
    names = _expected_shapes(1, 1, num_layers, len(directions) == 2, peephole, 1 if head else None)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"{path}: missing parameters {_listing(missing)}")
    hidden_size = _shape(arrays, "W_i_h_fw_layer1", path)[0]
    input_size = _shape(arrays, "W_i_x_fw_layer1", path)[1]
    output_size = _shape(arrays, FC_WEIGHTS, path)[0] if head else None
    return {
        "input_size": input_size, "hidden_size": hidden_size, "num_layers": num_layers,
        "bidirectional": len(directions) == 2, "peephole": peephole,
        "output_size": output_size, "batch_first": False,
    }


def _expected_shapes(input_size, hidden_size, num_layers, bidirectional, peephole, output_size, **_):
    """{name: shape} of a configuration, as DESIGN.md section 2, computed
    without allocating a network (sizes may come from an untrusted file)."""
    H, D = hidden_size, 2 if bidirectional else 1
    shapes = {}
    for layer in range(1, num_layers + 1):
        width = input_size if layer == 1 else D * H
        for direction in DIRECTIONS[:D]:
            suffix = f"{direction}_layer{layer}"
            for g in "ifco":
                shapes[f"W_{g}_x_{suffix}"] = (H, width)
                shapes[f"W_{g}_h_{suffix}"] = (H, H)
                shapes[f"b_{g}_{suffix}"] = (1, H)
            if peephole:
                for g in "ifo":
                    shapes[f"peephole_{g}_c_{suffix}"] = (1, H)
    if output_size is not None:
        shapes[FC_WEIGHTS] = (output_size, D * H)
        shapes[FC_BIASES] = (1, output_size)
    return shapes


def _check_names_and_shapes(arrays, config, path):
    if config["num_layers"] > len(arrays):   # each layer has >= 12 arrays; bounds the work below
        raise ValueError(f"{path}: the metadata says {config['num_layers']} layers, "
                         f"but the file holds only {len(arrays)} arrays")
    shapes = _expected_shapes(**config)
    missing = [n for n in shapes if n not in arrays]
    extra = [n for n in arrays if n not in shapes]
    if missing:
        raise ValueError(f"{path}: missing parameters {_listing(missing)}")
    if extra:
        raise ValueError(f"{path}: unknown parameter names {_listing(extra)}")
    wrong = [f"{n} is {arrays[n].shape}, expected {s}" for n, s in shapes.items() if arrays[n].shape != s]
    if wrong:
        what = (f"{config['num_layers']}-layer {'bi' if config['bidirectional'] else 'uni'}directional, "
                f"input {config['input_size']}, hidden {config['hidden_size']}, "
                f"head {config['output_size']}")
        raise ValueError(f"{path}: inconsistent shapes for a {what} network: {_listing(wrong, quote=False)}")


def _listing(items, limit=5, quote=True):
    items = sorted(items)
    shown = ", ".join(repr(i) if quote else i for i in items[:limit])
    more = len(items) - limit
    return shown + (f" and {more} more" if more > 0 else "")
