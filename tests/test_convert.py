"""``lstmx convert`` and ``lstmx.convert``: round trips between lstmx .npz,
seed-000 .npz, the legacy .npy (read only), torch state_dicts and ONNX, and
the refusals, through ``lstmx.cli.main`` (exit status, one-line errors)."""
import os
import sys

import numpy as np
import pytest

import lstmx
from lstmx import cli, convert as cv
from lstmx.lstm import FC_WEIGHTS

SUFFIX = {"lstmx-npz": "npz", "seed000-npz": "npz", "legacy-npy": "npy", "torch": "pt",
          "onnx": "onnx"}
NEEDS = {"torch": ("torch",), "onnx": ("onnx",)}


def make(peephole=False, dtype=np.float32, out=3, L=2, bi=True, seed=7, batch_first=False):
    return lstmx.LSTM(5, 4, num_layers=L, bidirectional=bi, peephole=peephole, output_size=out,
                      dtype=dtype, seed=seed, batch_first=batch_first)


def need(fmt):
    for module in NEEDS.get(fmt, ()):
        pytest.importorskip(module)


def write_source(net, fmt, path):
    """``net`` in ``fmt``, written independently of lstmx.convert."""
    if fmt == "lstmx-npz":
        net.save(path)
    elif fmt == "seed000-npz":
        np.savez(path, **dict(net.params.items()))
    elif fmt == "legacy-npy":
        np.save(path, dict(net.params.items()), allow_pickle=True)
    elif fmt == "torch":
        import torch
        lstm, linear = lstmx.io.to_torch(net)
        torch.save({"lstm": lstm.state_dict(),
                    "linear": None if linear is None else linear.state_dict()}, path)
    else:
        lstmx.io.to_onnx(net, path)
    return str(path)


def run(capsys, *args):
    """cli.main(['convert', *args]) -> (status, stdout, stderr)."""
    status = cli.main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err, *fragments):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_same(a, b, batch_first=True):
    for attr in ("input_size", "hidden_size", "num_layers", "bidirectional", "peephole",
                 "output_size", "dtype") + (("batch_first",) if batch_first else ()):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert a.flat.tobytes() == b.flat.tobytes()   # bit-exact
    assert list(a.params) == list(b.params)


def no_leftovers(folder, *expected):
    assert sorted(os.listdir(folder)) == sorted(expected)


# ----------------------------------------------------------------------
# round trips

SOURCES = ["lstmx-npz", "seed000-npz", "legacy-npy", "torch", "onnx"]
TARGETS = ["lstmx-npz", "seed000-npz", "torch", "onnx"]


@pytest.mark.parametrize("dst_fmt", TARGETS)
@pytest.mark.parametrize("src_fmt", SOURCES)
def test_every_pair_round_trips_bit_exactly(src_fmt, dst_fmt, tmp_path, capsys):
    need(src_fmt), need(dst_fmt)
    net = make(peephole=False)
    src = write_source(net, src_fmt, tmp_path / f"in.{SUFFIX[src_fmt]}")
    dst = tmp_path / f"out.{SUFFIX[dst_fmt]}"
    extra = ["--format-out", dst_fmt] if dst_fmt == "seed000-npz" else []
    status, out, err = run(capsys, src, dst, *extra)
    assert status == 0, err
    assert out.startswith(f"{dst}: {dst_fmt}, LSTM(")
    back = cv.read(dst, dst_fmt)
    assert_same(back, net)
    if dst_fmt == "seed000-npz":   # names only, nothing else
        with np.load(dst, allow_pickle=False) as archive:
            assert sorted(archive.files) == sorted(net.params)
    if dst_fmt == "lstmx-npz":
        assert lstmx.load(dst).flat.tobytes() == net.flat.tobytes()


PEEPHOLE_FORMATS = ["lstmx-npz", "seed000-npz", "legacy-npy", "onnx"]


@pytest.mark.parametrize("dst_fmt", [f for f in PEEPHOLE_FORMATS if f != "legacy-npy"])
@pytest.mark.parametrize("src_fmt", PEEPHOLE_FORMATS)
def test_peephole_networks_round_trip_without_torch(src_fmt, dst_fmt, tmp_path):
    need(src_fmt), need(dst_fmt)
    net = make(peephole=True, L=1, bi=False, out=None)
    src = write_source(net, src_fmt, tmp_path / f"in.{SUFFIX[src_fmt]}")
    dst = tmp_path / f"out.{SUFFIX[dst_fmt]}"
    written = cv.convert(src, dst, format_out=dst_fmt)
    assert_same(written, net)
    assert_same(cv.read(dst, dst_fmt), net)


def test_batch_first_survives_npz_and_onnx(tmp_path):
    pytest.importorskip("onnx")
    net = make(batch_first=True)
    net.save(tmp_path / "a.npz")
    cv.convert(tmp_path / "a.npz", tmp_path / "b.onnx")
    cv.convert(tmp_path / "b.onnx", tmp_path / "c.npz")
    assert_same(lstmx.load(tmp_path / "c.npz"), net)


@pytest.mark.parametrize("dst_fmt", ["lstmx-npz", "seed000-npz", "torch"])
def test_float64_round_trips(dst_fmt, tmp_path):
    need(dst_fmt)
    net = make(dtype=np.float64)
    net.save(tmp_path / "a.npz")
    dst = tmp_path / f"b.{SUFFIX[dst_fmt]}"
    cv.convert(tmp_path / "a.npz", dst, format_out=dst_fmt)
    assert_same(cv.read(dst, dst_fmt), net, batch_first=False)


def test_float64_to_onnx_needs_dtype_float32(tmp_path, capsys):
    pytest.importorskip("onnx")
    net = make(dtype=np.float64, peephole=True)
    net.save(tmp_path / "a.npz")
    status, _, err = run(capsys, tmp_path / "a.npz", tmp_path / "b.onnx")
    assert status == 1
    assert_one_line_error(err, "float64", "--dtype float32")
    no_leftovers(tmp_path, "a.npz")
    status, _, err = run(capsys, tmp_path / "a.npz", tmp_path / "b.onnx", "--dtype", "float32")
    assert status == 0, err
    back = cv.read(tmp_path / "b.onnx")
    assert back.dtype == np.float32 and back.peephole
    assert back.flat.tobytes() == net.flat.astype(np.float32).tobytes()


def test_dtype_option_widens_exactly(tmp_path, capsys):
    net = make()
    net.save(tmp_path / "a.npz")
    assert run(capsys, tmp_path / "a.npz", tmp_path / "b.npz", "--dtype", "float64")[0] == 0
    back = lstmx.load(tmp_path / "b.npz")
    assert back.dtype == np.float64
    assert np.array_equal(back.flat, net.flat.astype(np.float64))


def test_format_in_overrides_the_suffix_and_in_place(tmp_path, capsys):
    net = make()
    path = tmp_path / "model.bin"
    net.save(path)
    assert run(capsys, path, path, "--format-in", "lstmx-npz", "--format-out", "seed000-npz")[0] == 0
    with np.load(path, allow_pickle=False) as archive:
        assert "__lstmx__" not in archive.files
    assert_same(lstmx.load(path), net)
    no_leftovers(tmp_path, "model.bin")


# ----------------------------------------------------------------------
# torch state_dicts of other shapes

@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_torch_bare_lstm_state_dict_without_bias(torch, tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bias=False)
    torch.save(lstm.state_dict(), tmp_path / "m.pth")
    net = cv.convert(tmp_path / "m.pth", tmp_path / "m.npz")
    assert_same(net, lstmx.io.from_torch(lstm))
    assert net.output_size is None and net.num_layers == 2
    assert not any(net.params[f"b_{g}_fw_layer{k}"].any() for g in "ifco" for k in (1, 2))


@pytest.mark.parametrize("prefixes", [("lstm.", "linear."), ("0.", "1."), ("rnn.", "fc.")])
@pytest.mark.parametrize("head_bias", [True, False])
def test_torch_prefixed_keys_with_any_head_name(torch, tmp_path, prefixes, head_bias):
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(3, 4, bidirectional=True, dtype=torch.float64)
    linear = torch.nn.Linear(8, 2, bias=head_bias, dtype=torch.float64)
    sd = {prefixes[0] + k: v for k, v in lstm.state_dict().items()}
    sd.update({prefixes[1] + k: v for k, v in linear.state_dict().items()})
    torch.save(sd, tmp_path / "m.pt")
    net = cv.read(tmp_path / "m.pt")
    assert_same(net, lstmx.io.from_torch(lstm, linear))
    assert net.dtype == np.float64 and net.output_size == 2


def test_torch_written_keys(torch, tmp_path):
    net = make(L=1)
    cv.convert(write_source(net, "lstmx-npz", tmp_path / "a.npz"), tmp_path / "b.pt")
    sd = torch.load(tmp_path / "b.pt", weights_only=True)
    assert set(sd) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0",
                       "lstm.bias_hh_l0", "lstm.weight_ih_l0_reverse",
                       "lstm.weight_hh_l0_reverse", "lstm.bias_ih_l0_reverse",
                       "lstm.bias_hh_l0_reverse", "linear.weight", "linear.bias"}
    assert np.array_equal(sd["linear.weight"].numpy(), net.params[FC_WEIGHTS])


# ----------------------------------------------------------------------
# refusals

def test_writing_legacy_npy_is_refused(tmp_path, capsys):
    make().save(tmp_path / "a.npz")
    for args in (["out.npy"], ["out.npz", "--format-out", "legacy-npy"]):
        status, _, err = run(capsys, tmp_path / "a.npz", tmp_path / args[0], *args[1:])
        assert status == 2
        assert_one_line_error(err, "never writes pickles")
    no_leftovers(tmp_path, "a.npz")
    with pytest.raises(cv.FormatError, match="pickle"):
        cv.convert(tmp_path / "a.npz", tmp_path / "x.npy")


def test_unknown_suffixes_and_formats(tmp_path, capsys):
    make().save(tmp_path / "a.npz")
    status, _, err = run(capsys, tmp_path / "a.npz", tmp_path / "out.h5")
    assert status == 2
    assert_one_line_error(err, "'.h5'", "--format-out")
    status, _, err = run(capsys, tmp_path / "a.weird", tmp_path / "out.npz")
    assert status == 2
    assert_one_line_error(err, "'.weird'", "--format-in")
    status, _, err = run(capsys, tmp_path / "a.npz", tmp_path / "out.npz", "--format-out", "hdf5")
    assert status == 2
    assert_one_line_error(err, "invalid choice")
    no_leftovers(tmp_path, "a.npz")


def test_missing_and_bad_inputs(tmp_path, capsys):
    status, _, err = run(capsys, tmp_path / "none.npz", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a network at all")
    status, _, err = run(capsys, tmp_path / "junk.npz", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "junk.npz")
    no_leftovers(tmp_path, "junk.npz")


def test_peephole_network_to_torch_is_refused(torch, tmp_path, capsys):
    make(peephole=True).save(tmp_path / "a.npz")
    status, _, err = run(capsys, tmp_path / "a.npz", tmp_path / "b.pt")
    assert status == 1
    assert_one_line_error(err, "peephole")
    no_leftovers(tmp_path, "a.npz")


@pytest.mark.parametrize("payload, fragment", [
    (lambda torch: torch.zeros(3), "holds a Tensor"),
    (lambda torch: {"foo": torch.zeros(3)}, "no keys like 'weight_ih_l0'"),
    (lambda torch: [1, 2], "holds a list"),
    (lambda torch: {**torch.nn.LSTM(2, 3).state_dict(), "extra": torch.zeros(1)}, "unexpected keys"),
    (lambda torch: {**torch.nn.LSTM(2, 3).state_dict(), "weight_hh_l0": torch.zeros(12, 2)},
     "inconsistent LSTM parameters"),
    (lambda torch: {k: v for k, v in torch.nn.LSTM(2, 3).state_dict().items() if k != "bias_hh_l0"},
     "bias_hh_l0"),
    (lambda torch: torch.nn.LSTM(2, 3, proj_size=2).state_dict(), "projections"),
    (lambda torch: torch.nn.LSTM(2, 3, dtype=torch.float16).state_dict(), "float16"),
    (lambda torch: {"lstm": torch.nn.LSTM(2, 3).state_dict(), "linear": {"weight": torch.zeros(2, 5)}},
     "in_features=5"),
    (lambda torch: {"weight_ih_l0": "text"}, "is a str"),
], ids=["tensor", "no-lstm", "list", "extra-key", "bad-shape", "missing-key", "proj", "f16",
        "head-width", "not-tensor"])
def test_torch_files_that_are_not_an_lstm_state_dict(torch, tmp_path, capsys, payload, fragment):
    torch.save(payload(torch), tmp_path / "m.pt")
    status, _, err = run(capsys, tmp_path / "m.pt", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "m.pt", fragment)
    no_leftovers(tmp_path, "m.pt")


class _Hostile:
    """Pickles as a call to os.mkdir(marker): unpickling would run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_hostile_torch_pickle_is_refused_and_runs_nothing(torch, tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"weight_ih_l0": torch.zeros(4, 2), "payload": _Hostile(str(marker))},
               tmp_path / "evil.pt")
    assert not marker.exists()
    status, _, err = run(capsys, tmp_path / "evil.pt", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "evil.pt", "weights_only=True", "mkdir", "nothing in it was run")
    assert not marker.exists()
    no_leftovers(tmp_path, "evil.pt")


def test_pickled_torch_module_is_refused(torch, tmp_path, capsys):
    torch.save(torch.nn.LSTM(2, 3), tmp_path / "module.pt")   # the object, not its state_dict
    status, _, err = run(capsys, tmp_path / "module.pt", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "not a torch state_dict", "weights_only=True")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 10)
    status, _, err = run(capsys, tmp_path / "junk.pt", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "junk.pt", "not a torch state_dict")


def test_bad_onnx_files(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not a protobuf" * 5)
    status, _, err = run(capsys, tmp_path / "junk.onnx", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "junk.onnx")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "relu.onnx")
    status, _, err = run(capsys, tmp_path / "relu.onnx", tmp_path / "out.npz")
    assert status == 1
    assert_one_line_error(err, "relu.onnx")


@pytest.mark.parametrize("module, path", [("torch", "b.pt"), ("onnx", "b.onnx")])
def test_missing_peer_is_a_one_line_error(module, path, tmp_path, capsys, monkeypatch):
    make().save(tmp_path / "a.npz")
    monkeypatch.setitem(sys.modules, module, None)   # import fails
    status, _, err = run(capsys, tmp_path / "a.npz", tmp_path / path)
    assert status == 1
    assert_one_line_error(err, f"needs {module}", f"pip install {module}")
    no_leftovers(tmp_path, "a.npz")
    with pytest.raises(ImportError, match=module):
        cv.convert(tmp_path / "a.npz", tmp_path / path)


def test_convert_help(capsys):
    assert cli.main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("seed000-npz", "weights_only", "legacy-npy", ".onnx"):
        assert word in out
