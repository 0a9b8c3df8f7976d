"""Saving and loading: lstmx .npz round trips, seed-000 .npz and the legacy
pickled .npy, and refusal (ValueError, nothing executed) of everything else."""

import io
import json
import os
import pickle
import pickletools
import zipfile

import numpy as np
import pytest

import lstmx
from helpers import Arch, random_x

CONFIGS = [  # (arch, dtype, batch_first)
    (Arch(3, 4, 1, False, True, None), np.float64, False),
    (Arch(3, 4, 1, False, False, 2), np.float32, False),
    (Arch(5, 3, 2, True, False, 2), np.float32, True),
    (Arch(5, 3, 2, True, True, None), np.float64, False),
    (Arch(2, 4, 3, True, True, 3), np.float64, True),
    (Arch(2, 4, 3, False, True, 3), np.float32, False),
]
CONFIG_IDS = [f"{a.id}-{np.dtype(dt).name}{'-bf' if bf else ''}" for a, dt, bf in CONFIGS]


def same_network(a, b):
    """Same configuration and bit-identical parameters."""
    assert repr(a) == repr(b)
    assert a.flat.dtype == b.flat.dtype
    assert a.flat.tobytes() == b.flat.tobytes()
    assert {k: v.shape for k, v in a.params.items()} == {k: v.shape for k, v in b.params.items()}


def same_predictions(a, b, rng, T=5, N=2):
    x = random_x(rng, T, N, a.input_size)
    if a.batch_first:
        x = x.transpose(1, 0, 2).copy()
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def param_arrays(net):
    return {name: np.array(view) for name, view in net.params.items()}


def small_net(**kw):
    arch = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
                peephole=True, output_size=2, seed=0)
    arch.update(kw)
    return lstmx.LSTM(**arch)


def write_npy_pickle(path, payload, version=(1, 0)):
    """An .npy file whose header says 0-d object array, followed by raw pickle bytes."""
    with open(path, "wb") as f:
        header = {"descr": "|O", "fortran_order": False, "shape": ()}
        if version == (1, 0):
            np.lib.format.write_array_header_1_0(f, header)
        else:
            np.lib.format.write_array_header_2_0(f, header)
        f.write(payload)


def write(form, path, arrays):
    """arrays as a plain .npz (names only) or a legacy pickled .npy dict."""
    if form == "npz":
        np.savez(path, **arrays)
    else:
        np.save(path, arrays, allow_pickle=True)


def assert_refused(path, *needles):
    with pytest.raises(ValueError) as info:
        lstmx.load(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message
    return message


# ----------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("arch, dtype, batch_first", CONFIGS, ids=CONFIG_IDS)
def test_round_trip_is_bit_exact(tmp_path, rng, arch, dtype, batch_first):
    net = arch.make(dtype=dtype, seed=3, batch_first=batch_first)
    net.flat[:] = rng.standard_normal(net.flat.size)  # every parameter distinct from init
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = lstmx.load(path)
    same_network(net, loaded)
    assert loaded.batch_first is batch_first and loaded.dtype == np.dtype(dtype)
    same_predictions(net, loaded, rng)


def test_saved_file_is_plain_npz_with_seed_names_and_metadata(tmp_path):
    net = small_net(dtype=np.float64, batch_first=True)
    path = tmp_path / "model.npz"
    net.save(str(path))
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == set(net.params) | {"__lstmx__"}
        for name, view in net.params.items():
            assert archive[name].shape == view.shape and archive[name].dtype == view.dtype
        meta = json.loads(str(archive["__lstmx__"][()]))
    assert meta == {
        "format": "lstmx", "version": 1, "input_size": 3, "hidden_size": 4, "num_layers": 2,
        "bidirectional": True, "peephole": True, "output_size": 2, "dtype": "float64",
        "batch_first": True,
    }
    with zipfile.ZipFile(path) as z:   # np.savez, not savez_compressed; nothing pickled
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())


def test_path_is_used_exactly_as_given(tmp_path):
    net = small_net()
    path = tmp_path / "model"   # no suffix: none is appended (unlike np.savez)
    net.save(path)
    assert path.exists() and not (tmp_path / "model.npz").exists()
    same_network(net, lstmx.load(path))

    class Where(os.PathLike):
        def __fspath__(self):
            return str(tmp_path / "other.bin")

    net.save(Where())
    same_network(net, lstmx.load(Where()))
    same_network(net, lstmx.load(os.fsencode(tmp_path / "other.bin")))


def test_save_replaces_a_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.npz"
    small_net(seed=1).save(path)
    net = small_net(seed=2)
    net.save(path)
    assert os.listdir(tmp_path) == ["model.npz"]
    same_network(net, lstmx.load(path))


def test_save_writes_through_a_symbolic_link(tmp_path):
    (tmp_path / "real.npz").write_bytes(b"old")
    (tmp_path / "link.npz").symlink_to(tmp_path / "real.npz")
    net = small_net()
    net.save(tmp_path / "link.npz")
    assert (tmp_path / "link.npz").is_symlink()
    same_network(net, lstmx.load(tmp_path / "real.npz"))


def test_load_is_public():
    assert "load" in lstmx.__all__ and lstmx.load is lstmx.persist.load


# ----------------------------------------------------------------------
# files without metadata: seed 000's names, npz and legacy pickled npy

SEED_000 = dict(input_size=360, hidden_size=320, num_layers=2, bidirectional=True,
                peephole=True, output_size=44)


@pytest.fixture(scope="module")
def seed_net():
    return lstmx.LSTM(**SEED_000, dtype=np.float32, seed=0)


def numpy1_legacy_pickle(arrays):
    """The bytes NumPy 1.x's np.save wrote after the header for a dict: pickle
    protocol 3 of a 0-d object array, referencing numpy.core.multiarray."""
    data = pickle.dumps(np.array(arrays, dtype=object), protocol=3)
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in data   # protocol 3: text GLOBAL, no frames
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's np.save did: protocol 2, text GLOBALs naming
    numpy.core, and array data as a (byte) str, BINSTRING."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[type] = save_global
    dispatch[type(len)] = save_global


def python2_legacy_pickle(arrays):
    out = io.BytesIO()
    Python2Pickler(out, protocol=2).dump(np.array(arrays, dtype=object))
    data = out.getvalue()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data
    assert "BINSTRING" in {op.name for op, _, _ in pickletools.genops(data)}
    return data


@pytest.mark.parametrize("form", ["npz", "npy", "npy-numpy1", "npy-python2"])
def test_seed_000_files_load_as_the_reference_network(tmp_path, rng, seed_net, form):
    arrays = param_arrays(seed_net)
    path = tmp_path / "BiLSTM_parameters.npy"
    if form == "npz":
        np.savez(path.with_suffix(".npz"), **arrays)
        path = path.with_suffix(".npz")
    elif form == "npy":
        np.save(path, arrays, allow_pickle=True)
    elif form == "npy-numpy1":
        write_npy_pickle(path, numpy1_legacy_pickle(arrays))
    else:
        write_npy_pickle(path, python2_legacy_pickle(arrays))
    net = lstmx.load(path)
    same_network(seed_net, net)
    assert (net.num_layers, net.bidirectional, net.peephole, net.output_size) == (2, True, True, 44)
    same_predictions(seed_net, net, rng, T=3, N=1)


def test_legacy_pickle_references_only_the_allowed_globals(tmp_path):
    """What np.save pickles for a dict of float arrays (this NumPy, and the
    NumPy 1.x form): exactly the globals the restricted unpickler admits."""
    np.save(tmp_path / "p.npy", {"a": np.zeros((2, 3), np.float32), "b": np.ones((1, 2))})
    with open(tmp_path / "p.npy", "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        np.lib.format.read_array_header_1_0(f)
        payload = f.read()

    class Recording(pickle.Unpickler):   # our own, harmless payload
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    allowed = set(lstmx.persist._ALLOWED_GLOBALS)
    small = {"a": np.zeros((2, 3))}
    for data in (payload, numpy1_legacy_pickle(small), python2_legacy_pickle(small)):
        seen = set()
        Recording(io.BytesIO(data), encoding="latin1").load()
        assert ("numpy", "ndarray") in seen and ("numpy", "dtype") in seen
        assert seen <= allowed, seen - allowed


@pytest.mark.parametrize("arch", [
    Arch(3, 4, 1, False, True, None), Arch(3, 4, 1, False, False, 2),
    Arch(5, 3, 3, True, False, None), Arch(2, 4, 2, False, True, 3),
], ids=lambda a: a.id)
@pytest.mark.parametrize("form", ["npz", "npy"])
def test_configuration_is_inferred_from_names_and_shapes(tmp_path, rng, arch, form):
    net = arch.make(dtype=np.float64, seed=5)
    path = tmp_path / f"p.{form}"
    write(form, path, param_arrays(net))
    loaded = lstmx.load(path)
    same_network(net, loaded)
    same_predictions(net, loaded, rng)


def test_dtype_without_metadata(tmp_path):
    net = small_net(dtype=np.float64)
    arrays = param_arrays(net)
    np.savez(tmp_path / "f16.npz", **{k: v.astype(np.float16) for k, v in arrays.items()})
    loaded = lstmx.load(tmp_path / "f16.npz")   # float16 widens exactly to float32
    assert loaded.dtype == np.float32
    for name, value in arrays.items():
        np.testing.assert_array_equal(loaded.params[name], value.astype(np.float16).astype(np.float32))
    mixed = {k: v.astype(np.float32) for k, v in arrays.items()}
    mixed["b_i_fw_layer1"] = arrays["b_i_fw_layer1"]
    np.savez(tmp_path / "mixed.npz", **mixed)
    assert lstmx.load(tmp_path / "mixed.npz").dtype == np.float64   # widest wins, exactly
    np.savez(tmp_path / "big.npz", **{k: v.astype(">f8") for k, v in arrays.items()})
    same_network(net, lstmx.load(tmp_path / "big.npz"))   # non-native byte order


def test_dtype_and_batch_first_overrides(tmp_path, rng):
    net = small_net(dtype=np.float64)
    net.save(tmp_path / "m.npz")
    loaded = lstmx.load(tmp_path / "m.npz", dtype=np.float32, batch_first=True)
    assert loaded.dtype == np.float32 and loaded.batch_first
    np.testing.assert_array_equal(loaded.flat, net.flat.astype(np.float32))
    with pytest.raises(TypeError, match="dtype"):
        lstmx.load(tmp_path / "m.npz", dtype=np.int32)


# ----------------------------------------------------------------------
# hostile pickles: refused before anything is called


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evals:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def crafted_call(module, name, arg):
    """Protocol-3 pickle of module.name(arg), by hand."""
    arg = arg.encode()
    return (b"\x80\x03c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + len(arg).to_bytes(4, "little") + arg + b"\x85R.")


@pytest.mark.parametrize("evil", [RunsCommand, Evals])
def test_hostile_pickle_runs_nothing(tmp_path, seed_net, evil):
    marker = tmp_path / "pwned"
    arrays = {"W_i_x_fw_layer1": np.zeros((2, 3)), "b_i_fw_layer1": evil(marker)}
    path = tmp_path / "BiLSTM_parameters.npy"
    np.save(path, arrays, allow_pickle=True)
    payload = path.read_bytes()
    assert (b"system" if evil is RunsCommand else b"eval") in payload   # the call is really in there
    message = assert_refused(path, "not allowed")
    assert ("system" if evil is RunsCommand else "builtins.eval") in message
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("numpy", "load"),
    ("numpy.ctypeslib", "load_library"),
    ("numpy.testing._private.utils", "runstring"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct_"),
    ("builtins", "exec"),
    ("subprocess", "run"),
])
def test_forbidden_globals_are_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "p.npy"
    write_npy_pickle(path, crafted_call(module, name, f"open({str(marker)!r}, 'w').close()"))
    assert_refused(path, f"{module}.{name}", "not allowed")
    assert not marker.exists()


def test_reconstruct_of_anything_but_ndarray_is_refused(tmp_path):
    # _reconstruct(numpy.dtype, (0,), b'b'): allowed globals, wrong use.
    payload = (b"\x80\x03cnumpy._core.multiarray\n_reconstruct\ncnumpy\ndtype\n"
               b"K\x00\x85C\x01b\x87R.")
    path = tmp_path / "p.npy"
    write_npy_pickle(path, payload, version=(2, 0))
    assert_refused(path, "only numpy.ndarray")


def test_legacy_payloads_that_are_not_a_dict_of_float_arrays(tmp_path):
    cases = {
        "list.npy": (np.array([{}, {}], dtype=object), "expected a pickled dict (shape ())"),
        "int.npy": (np.array(7, dtype=object), "expected a dict"),
        "keys.npy": ({1: np.zeros((1, 4))}, "expected str"),
        "value.npy": ({"b_i_fw_layer1": 1.5}, "expected an ndarray"),
        "ints.npy": (dict(param_arrays(small_net()), b_i_fw_layer1=np.zeros((1, 4), int)), "dtype int64"),
        "plain.npy": (np.zeros((3, 3)), "expected a dict of named parameters"),
    }
    for filename, (obj, needle) in cases.items():
        np.save(tmp_path / filename, obj, allow_pickle=True)
        assert_refused(tmp_path / filename, needle)


# ----------------------------------------------------------------------
# corrupt files


@pytest.fixture
def good_files(tmp_path):
    net = small_net()
    net.save(tmp_path / "good.npz")
    np.save(tmp_path / "good.npy", param_arrays(net))
    return {s: (tmp_path / f"good.{s}").read_bytes() for s in ("npz", "npy")}


def test_empty_random_and_truncated_files(tmp_path, rng, good_files):
    cases = {"empty.npz": b"", "empty.npy": b"",
             "random.bin": rng.bytes(1000),
             "random.npz": b"PK\x03\x04" + rng.bytes(1000),
             "random.npy": b"\x93NUMPY" + rng.bytes(1000),
             "empty_zip.npz": b"PK\x05\x06" + bytes(18)}
    for suffix, data in good_files.items():
        for cut in (1, 6, 10, 60, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
            cases[f"cut{cut}.{suffix}"] = data[:cut]
    for filename, data in cases.items():
        path = tmp_path / filename
        path.write_bytes(data)
        with pytest.raises(ValueError, match=str(path)):
            lstmx.load(path)


def test_flipped_bytes_load_or_raise_value_error(tmp_path, rng, good_files):
    """Corruption anywhere: either still a valid network, or ValueError."""
    for suffix, data in good_files.items():
        for k, pos in enumerate(rng.choice(len(data), 40, replace=False)):
            corrupt = bytearray(data)
            corrupt[pos] ^= 1 << int(rng.integers(8))
            path = tmp_path / f"flip{k}.{suffix}"
            path.write_bytes(bytes(corrupt))
            try:
                net = lstmx.load(path)
            except ValueError:
                continue
            assert isinstance(net, lstmx.LSTM)


# ----------------------------------------------------------------------
# wrong contents


def arrays_with(**changes):
    arrays = param_arrays(small_net())
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    return arrays


@pytest.mark.parametrize("changes, needle", [
    (dict(W_c_h_bw_layer2=None), "missing parameters 'W_c_h_bw_layer2'"),
    (dict(peephole_i_c_fw_layer1=None), "missing parameters 'peephole_i_c_fw_layer1'"),
    (dict(Fully_connected_layerbiases=None), "missing parameters 'Fully_connected_layerbiases'"),
    (dict(W_i_x_fw_layer3=np.zeros((4, 8))), "missing parameters"),
    (dict(W_i_x_fw_layer5=np.zeros((4, 8))), "none for layer(s) 3, 4"),
    (dict(hidden_state=np.zeros((1, 4))), "unknown parameter names 'hidden_state'"),
    (dict(W_f_x_bw_layer2=np.zeros((4, 7))), "W_f_x_bw_layer2 is (4, 7), expected (4, 8)"),
    (dict(W_f_h_fw_layer1=np.zeros((5, 4))), "W_f_h_fw_layer1 is (5, 4), expected (4, 4)"),
    (dict(b_o_bw_layer1=np.zeros(4)), "b_o_bw_layer1 is (4,), expected (1, 4)"),
    (dict(W_i_h_fw_layer1=np.zeros(4)), "'W_i_h_fw_layer1' has shape (4,)"),
    (dict(W_i_x_fw_layer1=np.zeros((4, 0))), "non-empty 2-d"),
    (dict(b_i_fw_layer1=np.zeros((1, 4), np.int32)), "dtype int32"),
    (dict(b_i_fw_layer1=np.zeros((1, 4), np.complex128)), "dtype complex128"),
    (dict(b_i_fw_layer1=np.full((1, 4), np.nan)), "'b_i_fw_layer1' contains NaN or inf"),
])
@pytest.mark.parametrize("form", ["npz", "npy"])
def test_wrong_names_shapes_and_values(tmp_path, changes, needle, form):
    path = tmp_path / f"p.{form}"
    write(form, path, arrays_with(**changes))
    assert_refused(path, needle)


def test_direction_and_empty_archives(tmp_path):
    only_bw = {k.replace("_fw_", "_bw_"): v for k, v in param_arrays(small_net(bidirectional=False)).items()}
    np.savez(tmp_path / "bw.npz", **only_bw)
    assert_refused(tmp_path / "bw.npz", "no 'fw'")
    np.savez(tmp_path / "nothing.npz")
    assert_refused(tmp_path / "nothing.npz", "holds no parameters")
    np.savez(tmp_path / "head.npz", Fully_connected_layerweights=np.zeros((2, 4)),
             Fully_connected_layerbiases=np.zeros((1, 2)))
    assert_refused(tmp_path / "head.npz", "no LSTM parameters")
    np.savez(tmp_path / "obj.npz", **arrays_with(b_i_fw_layer1=np.array([None], dtype=object)))
    assert_refused(tmp_path / "obj.npz", "'b_i_fw_layer1' cannot be read")


def test_nan_loads_with_check_finite_false(tmp_path):
    net = small_net(dtype=np.float64)
    net.params["b_f_bw_layer2"][0, 1] = np.nan
    net.save(tmp_path / "m.npz")
    assert_refused(tmp_path / "m.npz", "NaN")
    same_network(net, lstmx.load(tmp_path / "m.npz", check_finite=False))


def rewrite_meta(tmp_path, net, **changes):
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays["__lstmx__"][()]))
    meta.update(changes)
    arrays["__lstmx__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "m.npz", **arrays)
    return tmp_path / "m.npz"


@pytest.mark.parametrize("changes, needle", [
    (dict(version=2), "file format 2"),
    (dict(version="1"), "no valid format version"),
    (dict(format="other"), "not lstmx metadata"),
    (dict(dtype="float64"), "but the metadata says float64"),
    (dict(dtype="int8"), "['dtype'] is invalid"),
    (dict(hidden_size=5), "W_c_h_bw_layer1 is (4, 4), expected (5, 5)"),
    (dict(num_layers=10**12), "the metadata says 1000000000000 layers"),
    (dict(num_layers=3), "missing parameters"),
    (dict(bidirectional=False), "unknown parameter names"),
    (dict(peephole=1), "['peephole'] is invalid"),
    (dict(output_size=0), "['output_size'] is invalid"),
    (dict(input_size=None), "['input_size'] is invalid"),
])
def test_inconsistent_metadata(tmp_path, changes, needle):
    assert_refused(rewrite_meta(tmp_path, small_net(), **changes), needle)


def test_metadata_that_is_not_json(tmp_path):
    arrays = param_arrays(small_net())
    np.savez(tmp_path / "a.npz", __lstmx__=np.array("{not json"), **arrays)
    assert_refused(tmp_path / "a.npz", "not valid JSON")
    np.savez(tmp_path / "b.npz", __lstmx__=np.zeros(3), **arrays)
    assert_refused(tmp_path / "b.npz", "not a 0-d unicode array")


# ----------------------------------------------------------------------
# paths


def test_missing_file_directory_and_bad_path_type(tmp_path):
    with pytest.raises(FileNotFoundError):
        lstmx.load(tmp_path / "absent.npz")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        lstmx.load(tmp_path)
    net = small_net()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        net.save(tmp_path)
    with pytest.raises(FileNotFoundError):
        net.save(tmp_path / "no" / "such" / "folder.npz")
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError, match="path"):
        lstmx.load(3)
    with pytest.raises(TypeError, match="path"):
        net.save(None)
    with pytest.raises(TypeError, match="net"):
        lstmx.persist.save("not a net", tmp_path / "x.npz")
