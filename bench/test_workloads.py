"""The workloads of the Performance issue, lstmx and its peers side by side.

One benchmark group per workload; in each, lstmx with and without peepholes
(float32 and float64), torch.nn.LSTM (no peepholes) and onnxruntime's LSTM
(peepholes, the graph of lstmx.io.to_onnx), all in this process with 2
threads. The definitions live in lstmx._bench, shared with `lstmx bench`.
Compare lstmx-plain with torch and lstmx-peephole with onnxruntime.
"""
import numpy as np
import pytest

from lstmx import _bench

NAMES = list(_bench.WORKLOADS)
IDS = [_bench.WORKLOADS[n].id for n in NAMES]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("peephole", [True, False], ids=["peephole", "plain"])
@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_lstmx(benchmark, name, peephole, dtype):
    w = _bench.WORKLOADS[name]
    benchmark.group = name
    benchmark.extra_info["gflop"] = w.flops() / 1e9
    benchmark(_bench.lstmx_runner(w, peephole, dtype))


@pytest.mark.parametrize("name", NAMES, ids=IDS)
def test_torch(benchmark, name):
    pytest.importorskip("torch")
    w = _bench.WORKLOADS[name]
    benchmark.group = name
    benchmark(_bench.torch_runner(w))


@pytest.mark.parametrize("name", [n for n in NAMES if not _bench.WORKLOADS[n].train],
                         ids=[_bench.WORKLOADS[n].id for n in NAMES if not _bench.WORKLOADS[n].train])
def test_onnxruntime(benchmark, name):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    w = _bench.WORKLOADS[name]
    benchmark.group = name
    benchmark(_bench.onnxruntime_runner(w))
