"""``lstmx bench``: runs in-process and prints its table; no timing
assertions (machines are noisy)."""
import json

import pytest

from lstmx import _bench, cli


def test_bench_quick_small_infer(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    status = cli.main(["bench", "--quick", "--workload", "small_infer", "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("sgemm peak:")
    header = next(line for line in lines if line.startswith("workload"))
    for column in ("lstmx", "plain", "torch", "ort", "/torch", "/ort", "GFLOP/s", "%peak"):
        assert column in header
    rows = [line for line in lines if line.startswith("small_infer")]
    assert len(rows) == 1
    assert len(rows[0].split()) == len(header.split())
    assert not any(line.startswith(("seed_", "big_")) for line in lines)   # only what was asked
    report = json.loads(out_json.read_text())
    assert report["quick"] is True
    assert report["workloads"]["small_infer"]["hidden_size"] == 64
    (result,) = report["results"]
    assert result["workload"] == "small_infer"
    assert result["lstmx"] > 0 and result["lstmx_plain"] > 0
    for peer, ratio in (("torch", "plain_over_torch"), ("onnxruntime", "lstmx_over_onnxruntime")):
        if result[peer] is not None:        # installed (CI requires both)
            assert result[peer] > 0 and result[ratio] > 0
    assert result["gflops"] > 0 and result["sgemm_peak_gflops"] > 0
    assert "blas" in report["info"]


def test_bench_missing_peers_are_dashes(capsys, monkeypatch):
    monkeypatch.setattr(_bench, "torch_runner", lambda w: None)
    monkeypatch.setattr(_bench, "onnxruntime_runner", lambda w, peephole=True: None)
    monkeypatch.setattr(_bench, "sgemm_peak", lambda n, seconds: 100.0)
    monkeypatch.setattr(_bench, "time_blocks", lambda runs, seconds, block, min_blocks: [[1e-3]] * len(runs))
    assert cli.main(["bench", "--quick", "--workload", "small_infer"]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("small_infer")]
    cells = row.split()
    assert cells[3:7] == ["-", "-", "-", "-"]   # torch, ort, /torch, /ort


@pytest.mark.parametrize("argv", [["bench", "--workload", "nope"],
                                  ["bench", "--workload", "small_infer", "nope", "--quick"]])
def test_bench_unknown_workload(argv, capsys):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "unknown workload 'nope'" in lines[0] and "small_infer" in lines[0]
    assert out == ""   # nothing was timed


def test_bench_help(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--workload" in out and "--json" in out


def test_time_blocks_alternates_and_pairs():
    """Each run gets its blocks in turn; the ratio pairs the same block."""
    calls = []
    runs = [lambda: calls.append("a"), lambda: calls.append("b")]
    bests = _bench.time_blocks(runs, seconds=0.0, block=0.0, min_blocks=3)
    assert calls == ["a", "a", "b", "b"] * 3     # alternating blocks, each after a warm-up call
    assert [len(b) for b in bests] == [3, 3]
    assert _bench.paired_ratio([2.0, 9.0, 3.0], [1.0, 3.0, 1.0]) == 3.0
    assert _bench.paired_ratio([1.0], None) is None
