"""The ``lstmx`` command line: in-process through ``lstmx.cli.main`` and as
``python -m lstmx`` in a subprocess (exit status, stdout, stderr)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy

import lstmx
from lstmx import cli


def run_module(*args):
    """``python -m lstmx ARGS`` -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "lstmx", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(stderr, *fragments):
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert "error:" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ----------------------------------------------------------------------
# help, version

def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lstmx")
    for name in cli._COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(cli._COMMANDS))
def test_command_help(name, capsys):
    assert cli.main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lstmx {name}")


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lstmx {lstmx.__version__}"


def test_module_help():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m lstmx")
    assert "predict" in result.stdout and "info" in result.stdout


# ----------------------------------------------------------------------
# info

def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert lstmx.__version__ in out
    assert np.__version__ in out
    assert scipy.__version__ in out
    assert "float32, float64" in out
    assert scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"] in out
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "cpus"):
        assert name in out
    assert "float64 kept (lstmx.set_flush_denormals)" in out


def test_info_json_reports_thread_settings(capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["lstmx"] == lstmx.__version__
    assert report["numpy"] == np.__version__
    assert report["scipy"] == scipy.__version__
    assert report["dtypes"] == ["float32", "float64"]
    assert report["blas"]["name"] == scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    assert report["threads"]["OMP_NUM_THREADS"] == "3"
    assert report["threads"]["OPENBLAS_NUM_THREADS"] is None
    assert report["threads"]["cpu_count"] == __import__("os").cpu_count()
    assert report["threads"]["l2_cache_bytes"] == lstmx._threads.l2_cache_bytes()
    flushing = lstmx._lstm.can_flush()
    assert report["flush_denormals"] == {"float32": flushing, "float64": False}
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        assert report["threadpoolctl"] is None
    else:
        assert isinstance(report["threadpoolctl"], list)


def test_module_info():
    result = run_module("info")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[0].split() == ["lstmx", lstmx.__version__]


# ----------------------------------------------------------------------
# predict

needs_load = pytest.mark.skipif(not hasattr(lstmx, "load") or not hasattr(lstmx.LSTM, "save"),
                                reason="lstmx.load / LSTM.save (persist.py) not available yet")


@pytest.fixture
def saved(tmp_path):
    """A saved float64 network and an .npz of x (T=6, N=3, I=3) with lengths."""
    net = lstmx.LSTM(input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
                     output_size=2, dtype=np.float64, seed=0)
    model = tmp_path / "model.npz"
    net.save(model)
    x = np.random.default_rng(1).standard_normal((6, 3, 3))
    lengths = np.array([6, 2, 4])
    data = tmp_path / "data.npz"
    np.savez(data, x=x, lengths=lengths)
    return net, model, data, x, lengths


@needs_load
def test_predict_round_trip(saved, tmp_path, capsys):
    net, model, data, x, lengths = saved
    out = tmp_path / "y.npy"
    assert cli.main(["predict", str(model), str(data), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    y = np.load(out, allow_pickle=False)
    np.testing.assert_array_equal(y, net.predict(x, lengths=lengths))
    assert y.dtype == np.float64 and y.shape == (6, 3, 2)
    assert not y[2:, 1].any()   # padded steps give zeros


@needs_load
def test_predict_npy_input_one_sequence(saved, tmp_path):
    net, model, _, x, _ = saved
    data = tmp_path / "x.npy"
    np.save(data, x[:, 0])   # (T, I): one sequence
    out = tmp_path / "y.out"   # written exactly here: no .npy appended
    assert cli.main(["predict", str(model), str(data), "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), net.predict(x[:, 0]))


@needs_load
def test_predict_batch_first(saved, tmp_path):
    net, model, _, x, lengths = saved
    data = tmp_path / "bf.npz"
    np.savez(data, x=x.transpose(1, 0, 2), lengths=lengths)
    out = tmp_path / "y.npy"
    assert cli.main(["predict", str(model), str(data), "--out", str(out), "--batch-first"]) == 0
    np.testing.assert_array_equal(np.load(out), net.predict(x, lengths=lengths).transpose(1, 0, 2))


@needs_load
def test_module_predict_round_trip(saved, tmp_path):
    net, model, data, x, lengths = saved
    out = tmp_path / "y.npy"
    result = run_module("predict", model, data, "--out", out)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(out), net.predict(x, lengths=lengths), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------
# errors: one line on stderr, non-zero exit, no traceback

def bad_invocations(tmp_path, model):
    """case -> (argv after 'lstmx', exit status, a fragment of the message);
    ``model`` is a good saved network."""
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an array file at all")
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 1, 3)))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:60])
    no_x = tmp_path / "no_x.npz"
    np.savez(no_x, X=np.zeros((4, 1, 3)))
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    wrong_width = tmp_path / "wrong_width.npz"
    np.savez(wrong_width, x=np.zeros((4, 1, 5)))
    missing = tmp_path / "missing.npz"
    y = tmp_path / "y.npy"
    return {
        "no command": ([], 2, "COMMAND"),
        "unknown command": (["fly"], 2, "fly"),
        "unknown option": (["info", "--bogus"], 2, "--bogus"),
        "no --out": (["predict", model, good], 2, "--out"),
        "missing model": (["predict", missing, good, "--out", y], 1, "missing.npz"),
        "junk model": (["predict", junk, good, "--out", y], 1, "junk.bin"),
        "model is a directory": (["predict", tmp_path, good, "--out", y], 1, "directory"),
        "missing data": (["predict", model, missing, "--out", y], 1, "missing.npz"),
        "junk data": (["predict", model, junk, "--out", y], 1, "junk.bin"),
        "truncated data": (["predict", model, truncated, "--out", y], 1, "truncated.npz"),
        "data without x": (["predict", model, no_x, "--out", y], 1, "'x'"),
        "pickled data": (["predict", model, pickled, "--out", y], 1, "pickled.npy"),
        "wrong input width": (["predict", model, wrong_width, "--out", y], 1, "wrong_width.npz"),
        "unwritable out": (["predict", model, good, "--out", tmp_path / "no-such-dir" / "y.npy"],
                           1, "no-such-dir"),
    }


BAD_INVOCATIONS = ["no command", "unknown command", "unknown option", "no --out",
                   "missing model", "junk model", "model is a directory", "missing data",
                   "junk data", "truncated data", "data without x", "pickled data",
                   "wrong input width", "unwritable out"]


@pytest.fixture
def model_file(tmp_path):
    if not hasattr(lstmx.LSTM, "save"):
        pytest.skip("LSTM.save (persist.py) not available yet")
    path = tmp_path / "model.npz"
    lstmx.LSTM(input_size=3, hidden_size=4, seed=0).save(path)
    return path


@pytest.mark.parametrize("case", BAD_INVOCATIONS)
def test_error_is_one_line(case, tmp_path, model_file, capsys):
    argv, status, fragment = bad_invocations(tmp_path, model_file)[case]
    assert cli.main([str(a) for a in argv]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, fragment)
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("case", ["unknown command", "junk model", "junk data", "wrong input width"])
def test_module_error_is_one_line(case, tmp_path, model_file):
    argv, status, fragment = bad_invocations(tmp_path, model_file)[case]
    result = run_module(*argv)
    assert result.returncode == status
    assert result.stdout == ""
    assert_one_line_error(result.stderr, fragment)


# ----------------------------------------------------------------------
# registration (the extension point for later subcommands)

def test_command_registration(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))

    @cli.command("echo-twice", "print a word twice", cli.argument("word"))
    def _echo(args):
        """Print WORD twice."""
        print(args.word * 2)

    assert cli.main(["echo-twice", "ab"]) == 0
    assert capsys.readouterr().out == "abab\n"
    assert cli.main(["echo-twice", "--help"]) == 0
    assert "Print WORD twice." in capsys.readouterr().out
    with pytest.raises(ValueError, match="registered twice"):
        cli.command("echo-twice", "again")(_echo)
