"""Subnormal numbers in backward (a loss on the last step of a long sequence)
and in the optimizers (a moment that no gradient feeds).

    python bench/denormals.py [--seconds S] [--steps T]

Backpropagating from the last step only, dc shrinks by the forget gate at
every step back and passes through the subnormal numbers, where each
operation takes a microcode assist; a loss on every step keeps it large.
For each dtype this times one backward pass of both (H = 64, I = 16, O = 4,
N = 4, T = 2000 by default) with lstmx flushing subnormals to zero and
keeping them (lstmx.set_flush_denormals), and torch.nn.LSTM's backward
(autograd, the graph kept between calls) with torch's default and with
torch.set_flush_denormal(True), when torch is installed. The runs alternate
in blocks (lstmx._bench.time_blocks); times are each run's best, in ms.

Then an Adam step over P = 10^6 parameters whose gradient is zero and whose
exp_avg has decayed to subnormal numbers (as a parameter that no gradient
reaches, e.g. the weights of an input that is always zero, after some 760
steps in float32), against one with exp_avg 1e-3: lstmx flushing and
keeping, and torch.optim.Adam. Each run refills exp_avg first.
"""
import argparse

import numpy as np

import lstmx
from lstmx import _bench

I, H, O, N = 16, 64, 4, 4


def lstmx_runs(dtype, T, rng):
    net = lstmx.LSTM(I, H, output_size=O, dtype=dtype, seed=0)
    x = rng.standard_normal((T, N, I)).astype(dtype)
    _, cache = net.forward(x)
    name = np.dtype(dtype).name
    runs = {}
    for loss, dy in _losses(T, dtype, rng).items():
        for flush in (True, False):
            def run(dy=dy, flush=flush):
                lstmx.set_flush_denormals(**{name: flush})
                net.backward(dy, cache, input_grad=False)
            runs[f"lstmx {'flush' if flush else 'keep'}, loss {loss}"] = run
    return runs


def torch_runs(dtype, T, rng):
    try:
        import torch
    except ImportError:
        return {}
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    torch.manual_seed(0)
    lstm, fc = torch.nn.LSTM(I, H).to(tdt), torch.nn.Linear(H, O).to(tdt)
    x = torch.from_numpy(rng.standard_normal((T, N, I)).astype(dtype))
    y = fc(lstm(x)[0])
    runs = {}
    for loss, dy in _losses(T, dtype, rng).items():
        for flush in (False, True):
            def run(dy=torch.from_numpy(dy), flush=flush):
                torch.set_flush_denormal(flush)
                y.backward(dy, retain_graph=True)
                torch.set_flush_denormal(False)
            runs[f"torch {'flush' if flush else 'default'}, loss {loss}"] = run
    return runs


P = 10 ** 6


def adam_runs(dtype):
    name = np.dtype(dtype).name
    tiny = np.finfo(dtype).tiny
    flat = np.ones(P, dtype)
    grad = np.zeros(P, dtype)
    opt = lstmx.optim.Adam(flat, lr=1e-3)
    opt.step(grad)
    runs = {}
    for label, m, flush in (("1e-3", 1e-3, True), ("subnormal", tiny / 8, True),
                            ("subnormal", tiny / 8, False)):
        def run(m=m, flush=flush):
            lstmx.set_flush_denormals(**{name: flush})
            opt._state["exp_avg"][...] = m
            opt.step(grad, check_finite=False)
        runs[f"lstmx {'flush' if flush else 'keep'}, exp_avg {label}"] = run
    try:
        import torch
    except ImportError:
        return runs
    p = torch.ones(P, dtype=torch.float32 if dtype == np.float32 else torch.float64,
                   requires_grad=True)
    p.grad = torch.zeros_like(p)
    topt = torch.optim.Adam([p], lr=1e-3)
    topt.step()
    for label, m in (("1e-3", 1e-3), ("subnormal", float(tiny / 8))):
        def run(m=m):
            topt.state[p]["exp_avg"].fill_(m)
            topt.step()
        runs[f"torch, exp_avg {label}"] = run
    return runs


def _losses(T, dtype, rng):
    last = np.zeros((T, N, O), dtype)
    last[-1] = rng.standard_normal((N, O))
    return {"last step": last, "every step": rng.standard_normal((T, N, O)).astype(dtype)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="timed seconds of each run (default 2)")
    parser.add_argument("--steps", type=int, default=2000, help="T (default 2000)")
    args = parser.parse_args(argv)
    saved = lstmx.get_flush_denormals()
    rng = np.random.default_rng(0)
    try:
        for dtype in (np.float32, np.float64):
            runs = {**lstmx_runs(dtype, args.steps, rng), **torch_runs(dtype, args.steps, rng)}
            bests = _bench.time_blocks(list(runs.values()), args.seconds, block=0.25, min_blocks=5)
            print(np.dtype(dtype).name)
            for name, blocks in zip(runs, bests):
                print(f"  {name:<32}{min(blocks) * 1e3:9.2f} ms", flush=True)
            runs = adam_runs(dtype)
            bests = _bench.time_blocks(list(runs.values()), args.seconds, block=0.25, min_blocks=5)
            print(f"  Adam step, P = {P}, zero gradient")
            for name, blocks in zip(runs, bests):
                print(f"    {name:<34}{min(blocks) * 1e3:9.2f} ms", flush=True)
    finally:
        lstmx.set_flush_denormals(**saved)


if __name__ == "__main__":
    main()
