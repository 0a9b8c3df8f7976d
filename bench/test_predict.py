"""Inference time of lstmx against torch.nn.LSTM, in the same run.

torch has no peepholes: lstmx is timed with and without them, and the ratio
that compares like with like is lstmx(peephole=False) / torch.
"""
import numpy as np
import pytest

import lstmx
from workloads import WORKLOADS, make_input, workload_id

NAMES = list(WORKLOADS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("peephole", [True, False], ids=["peephole", "plain"])
@pytest.mark.parametrize("name", NAMES, ids=[workload_id(n) for n in NAMES])
def test_lstmx_predict(benchmark, name, peephole, dtype):
    I, H, L, bi, O, N, T = WORKLOADS[name]
    benchmark.group = name
    net = lstmx.LSTM(I, H, L, bidirectional=bi, peephole=peephole, output_size=O,
                     dtype=dtype, seed=0)
    x = make_input(name, dtype)
    y = benchmark(net.predict, x)
    assert y.shape == (T, N, O)


@pytest.mark.parametrize("name", NAMES, ids=[workload_id(n) for n in NAMES])
def test_torch_predict(benchmark, name):
    torch = pytest.importorskip("torch")
    I, H, L, bi, O, N, T = WORKLOADS[name]
    benchmark.group = name
    lstm = torch.nn.LSTM(I, H, L, bidirectional=bi)
    head = torch.nn.Linear(H * (2 if bi else 1), O)
    x = torch.from_numpy(make_input(name))

    def run():
        with torch.inference_mode():
            return head(lstm(x)[0])

    y = benchmark(run)
    assert tuple(y.shape) == (T, N, O)
