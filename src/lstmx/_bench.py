"""Benchmark workloads shared by ``bench/`` (pytest-benchmark) and
``lstmx bench``: lstmx and its peers, torch.nn.LSTM and onnxruntime's LSTM,
set up identically and timed in the same process with the same threads.

torch has no peepholes, so the ratio against torch compares lstmx with
``peephole=False``; onnxruntime runs the graph of :func:`lstmx.io.to_onnx`
(the standard LSTM operator with its P peephole input), so that ratio
compares peephole networks on both sides. A training step is forward,
softmax cross-entropy, backward and an SGD step on both sides; neither
computes dL/dx (torch's x does not require grad; lstmx passes
``input_grad=False``).
"""
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .lstm import LSTM

THREADS = 2


@dataclass(frozen=True)
class Workload:
    name: str
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    output_size: int
    batch: int
    steps: int
    train: bool

    @property
    def id(self):
        bi = "-bi" if self.bidirectional else ""
        return (f"{self.name}-I{self.input_size}-H{self.hidden_size}-L{self.num_layers}{bi}"
                f"-N{self.batch}-T{self.steps}")

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def flops(self):
        """Multiply-adds x 2 of the matrix products of one forward pass; of
        a training step, three passes (forward, dX/dh, dW) less the first
        layer's dX, which neither lstmx nor torch computes here."""
        H, D, T, N = self.hidden_size, self.directions, self.steps, self.batch
        forward = first_dx = 0
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else D * H
            forward += D * 2 * T * N * 4 * H * (I + H)
            if layer == 0:
                first_dx = D * 2 * T * N * 4 * H * I
        forward += 2 * T * N * D * H * self.output_size
        return 3 * forward - first_dx if self.train else forward


WORKLOADS = {w.name: w for w in (
    Workload("seed_infer", 360, 320, 2, True, 44, 1, 200, False),
    Workload("small_infer", 16, 64, 1, False, 44, 1, 1000, False),
    Workload("big_infer", 512, 512, 1, False, 44, 64, 100, False),
    Workload("seed_train", 360, 320, 2, True, 44, 32, 100, True),
    Workload("small_train", 16, 64, 1, False, 44, 8, 200, True),
)}


def make_data(w, dtype=np.float32, seed=0):
    """x (T, N, I) and integer class targets (T, N) for ``w``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((w.steps, w.batch, w.input_size)).astype(dtype)
    targets = rng.integers(0, w.output_size, (w.steps, w.batch))
    return x, targets


def make_net(w, peephole=True, dtype=np.float32, seed=0):
    return LSTM(w.input_size, w.hidden_size, w.num_layers, bidirectional=w.bidirectional,
                peephole=peephole, output_size=w.output_size, dtype=dtype, seed=seed)


# ----------------------------------------------------------------------
# the runners: each returns a function of no arguments that runs once


def lstmx_runner(w, peephole=True, dtype=np.float32):
    net = make_net(w, peephole, dtype)
    x, targets = make_data(w, dtype)
    if not w.train:
        return lambda: net.predict(x)
    from . import losses, optim
    opt = optim.SGD(net, lr=1e-3)

    def step():
        y, cache = net.forward(x)
        _, dy = losses.softmax_cross_entropy(y, targets)
        opt.step(net.backward(dy, cache, input_grad=False))
    return step


def torch_runner(w):
    """torch.nn.LSTM + Linear with lstmx's (peephole-free) weights, or None
    when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    from . import io
    torch.set_num_threads(THREADS)
    lstm, head = io.to_torch(make_net(w, peephole=False))
    x_np, targets_np = make_data(w)
    x = torch.from_numpy(x_np)
    if not w.train:
        def run():
            with torch.inference_mode():
                return head(lstm(x)[0])
        return run
    targets = torch.from_numpy(targets_np.reshape(-1))
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        y = head(lstm(x)[0])
        loss = torch.nn.functional.cross_entropy(y.reshape(-1, w.output_size), targets)
        loss.backward()
        opt.step()
    return step


def onnxruntime_runner(w, peephole=True):
    """onnxruntime on lstmx.io.to_onnx's graph of the same network, or None
    when onnx/onnxruntime are not installed or the workload trains."""
    if w.train:
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from . import io
    net = make_net(w, peephole=peephole)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        io.to_onnx(net, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x, _ = make_data(w)
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


# ----------------------------------------------------------------------
# lstmx bench


def _best_and_spent(run, seconds, min_rounds):
    """One untimed call of ``run()``, then timed calls until at least
    ``min_rounds`` and ``seconds`` in all: (best, seconds spent)."""
    run()
    best, spent, rounds = float("inf"), 0.0, 0
    while rounds < min_rounds or spent < seconds:
        t0 = time.perf_counter()
        run()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        rounds += 1
    return best, spent


def time_min(run, seconds=1.0, min_rounds=5):
    """Best wall time of ``run()`` over at least ``min_rounds`` rounds and
    about ``seconds`` in all, after one warm-up."""
    return _best_and_spent(run, seconds, min_rounds)[0]


def time_blocks(runs, seconds=1.0, block=0.25, min_blocks=5):
    """Time several runs in turn, in blocks: one untimed call, then about
    ``block`` seconds (at least one call) of each run, then of the next,
    until each has had at least ``min_blocks`` blocks and ``seconds`` of
    timed calls. Returns, for each run, its best time in each block.

    This machine's speed drifts over seconds (other tenants of the host);
    blocks that alternate put each run's blocks in the same stretches as
    the others', so a ratio of the same block's bests is not a ratio of two
    different moments. The untimed call absorbs what the run before left
    behind: a first lstmx call of small_infer after a block of onnxruntime
    took 13 ms here against 1.6 (its pool's threads were still spinning),
    after torch 3-5 ms."""
    bests = [[] for _ in runs]
    spent = [0.0 for _ in runs]
    while min(map(len, bests)) < min_blocks or min(spent) < seconds:
        for i, run in enumerate(runs):
            best, used = _best_and_spent(run, block, 1)
            bests[i].append(best)
            spent[i] += used
    return bests


def paired_ratio(a, b):
    """Median over blocks of a's best / b's best in the same block (lists
    from time_blocks), or None without b."""
    if b is None:
        return None
    return float(np.median(np.asarray(a) / np.asarray(b)))


def sgemm_peak(n=2048, seconds=1.0):
    """GFLOP/s of scipy's sgemm on n x n matrices (what BLAS reaches here)."""
    from scipy.linalg import blas
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    t = time_min(lambda: blas.sgemm(1.0, a, b), seconds=seconds, min_rounds=3)
    return 2 * n**3 / t / 1e9


def _ms(t):
    return f"{t * 1e3:10.2f}" if t else f"{'-':>10}"


def _ratio(r):
    return f"{r:8.2f}" if r is not None else f"{'-':>8}"


def run_all(names=None, quick=False, out=print):
    """Time every workload with lstmx and its peers; print a table.

    Returns a list of dicts, one per workload, with the times in seconds.
    """
    seconds = 0.2 if quick else 1.0
    peak = sgemm_peak(1024 if quick else 2048, seconds=seconds)
    out(f"sgemm peak: {peak:.0f} GFLOP/s (scipy's BLAS, {THREADS} threads available)")
    header = (f"{'workload':<13}{'lstmx':>10}{'plain':>10}{'torch':>10}{'ort':>10}"
              f"{'/torch':>8}{'/ort':>8}{'GFLOP/s':>9}{'%peak':>7}")
    out(header)
    rows = []
    for name in names or WORKLOADS:
        w = WORKLOADS[name]
        runs = {"lstmx": lstmx_runner(w, True), "lstmx_plain": lstmx_runner(w, False),
                "torch": torch_runner(w), "onnxruntime": onnxruntime_runner(w)}
        present = [k for k, run in runs.items() if run is not None]
        blocks = dict(zip(present, time_blocks([runs[k] for k in present], seconds,
                                               block=0.1 if quick else 0.25,
                                               min_blocks=3 if quick else 5)))
        row = {"workload": name}
        row.update({k: min(blocks[k]) if k in blocks else None for k in runs})
        row["plain_over_torch"] = paired_ratio(blocks["lstmx_plain"], blocks.get("torch"))
        row["lstmx_over_onnxruntime"] = paired_ratio(blocks["lstmx"], blocks.get("onnxruntime"))
        gflops = w.flops() / row["lstmx"] / 1e9
        row["gflops"], row["sgemm_peak_gflops"] = gflops, peak   # for lstmx bench --json
        rows.append(row)
        out(f"{name:<13}{_ms(row['lstmx'])}{_ms(row['lstmx_plain'])}{_ms(row['torch'])}"
            f"{_ms(row['onnxruntime'])}{_ratio(row['plain_over_torch'])}"
            f"{_ratio(row['lstmx_over_onnxruntime'])}{gflops:9.1f}{100 * gflops / peak:7.1f}")
    out("times in ms (best of all rounds); lstmx with peepholes, 'plain' without;"
        " /torch = plain / torch, /ort = lstmx / onnxruntime (peepholes on both),"
        " each the median over alternating blocks of the two bests in the same block")
    return rows
