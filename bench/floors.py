"""How close each workload is to what this machine allows, measured.

    python bench/floors.py [workload ...] [--seconds S]

For each workload of lstmx._bench a lower bound on its time on 2 cores:

* every matrix product at the sgemm peak measured now (a 2048^2 sgemm on
  both cores), with no other cost;
* for a single sequence (N=1) also the recurrence, which cannot go faster
  than reading W_h once a step: each step's matrix-vector product over a
  half of W_h, timed with the faster of lstmx's two kernels for it
  (matmat, or the packed GEMM's one-row kernel) on both cores at once (each
  core its half, as the split recurrence runs), times the number of steps.
  At hidden 320 a half is 0.8 MB, read from L2 at its bandwidth.

The activations, the barrier between the threads and everything else count
as zero, so the bound is optimistic. Printed with lstmx's time and the
peers' (when installed) from the same run: "floor/peer" is the best ratio
a goal could reach on this machine, "lstmx/floor" how far lstmx is from it.
"""
import argparse
import threading

import numpy as np

from lstmx import _bench, _lstm


def matvec_step_seconds(hidden, seconds=0.3):
    """Per-step time of the recurrent product of one direction split over
    two cores: each core's product over its half of W_h (2H x H), at once,
    with the faster of the two kernels."""
    return min(_matvec_step_seconds(hidden, packed, seconds / 2) for packed in (False, True))


def _matvec_step_seconds(hidden, packed, seconds):
    rng = np.random.default_rng(0)
    halves = [rng.standard_normal((2 * hidden, hidden)).astype(np.float32) for _ in range(2)]
    x = np.ones(hidden, np.float32)
    single = _lstm._matvec_seconds(halves[0], x, np.empty(2 * hidden, np.float32), 10, packed)
    repeats = max(10, int(seconds / max(single / 10, 1e-7) / 5))
    best = [np.inf, np.inf]

    def run(i):
        y = np.empty(2 * hidden, np.float32)
        for _ in range(5):
            best[i] = min(best[i], _lstm._matvec_seconds(halves[i], x, y, repeats, packed)
                          / repeats)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(best)


def floor_seconds(w, peak_gflops):
    """(floor, its GEMM part, its recurrence part) in seconds."""
    gemm = w.flops() / (peak_gflops * 1e9)
    if w.batch != 1:
        return gemm, gemm, 0.0
    # N = 1: the recurrent products are memory-bound, not flop-bound
    H, D, T = w.hidden_size, w.directions, w.steps
    recurrent_flops = w.num_layers * D * 2 * T * 4 * H * H
    gemm = (w.flops() - recurrent_flops) / (peak_gflops * 1e9)
    recurrence = w.num_layers * D * T * matvec_step_seconds(H)
    return gemm + recurrence, gemm, recurrence


def ms(t):
    return f"{t * 1e3:9.2f}" if t else f"{'-':>9}"


def ratio(a, b, width):
    return f"{a / b:{width}.2f}" if b else f"{'-':>{width}}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(_bench.WORKLOADS))
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per runner")
    args = parser.parse_args(argv)
    peak = _bench.sgemm_peak(seconds=args.seconds)
    print(f"sgemm peak: {peak:.0f} GFLOP/s on 2 cores")
    print(f"{'workload':<13}{'floor':>9}{'gemm':>9}{'recur':>9}{'lstmx':>9}{'torch':>9}{'ort':>9}"
          f"{'floor/torch':>12}{'floor/ort':>10}{'lstmx/floor':>12}")
    for name in args.workloads:
        w = _bench.WORKLOADS[name]
        floor, gemm, recurrence = floor_seconds(w, peak)
        lstmx = _bench.time_min(_bench.lstmx_runner(w, False), args.seconds)
        torch = _bench.torch_runner(w)
        torch = _bench.time_min(torch, args.seconds) if torch else None
        ort = _bench.onnxruntime_runner(w)
        ort = _bench.time_min(ort, args.seconds) if ort else None

        print(f"{name:<13}{ms(floor)}{ms(gemm)}{ms(recurrence)}{ms(lstmx)}{ms(torch)}{ms(ort)}"
              f"{ratio(floor, torch, 12)}{ratio(floor, ort, 10)}{ratio(lstmx, floor, 12)}", flush=True)
    print("ms; lstmx without peepholes (torch has none); the floor counts matrix products only")


if __name__ == "__main__":
    main()
