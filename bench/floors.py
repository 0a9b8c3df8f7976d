"""How close each workload is to what this machine allows, measured.

    python bench/floors.py [workload ...] [--seconds S]

For each workload of lstmx._bench a lower bound on its time on 2 cores:

* every matrix product at the sgemm peak measured now (a 2048^2 sgemm on
  both cores), with no other cost;
* for a single sequence (N=1) also the recurrence, which cannot go faster
  than reading W_h once a step, timed with the faster of lstmx's two
  kernels for one row (matmat, or the packed GEMM's one-row kernel), the
  faster of two ways a step can run:
  - each direction on a core of its own, reading all of W_h (4H x H; two
    directions at once on the two cores, one direction with the other
    core idle);
  - each direction split over both cores, each reading half of W_h (2H x
    H) at once, and then meeting (the two threads wait for each other, as
    the split recurrence's parts do after every step, so that each reads
    the other's half of h_t: lstmx's barrier with nothing else to do),
    the directions one after the other.
  At hidden 320 in float32 a half is 0.8 MB, read from L2 at its
  bandwidth; at hidden 64 a half (32 KB) fits L1 and the whole (64 KB)
  does not, and the meeting costs as much as a half's product.

The activations and everything else count as zero, so the bound is
optimistic. Printed with lstmx's time and the peers' (when installed) from
the same run: "floor/peer" is the best ratio a goal could reach on this
machine, "lstmx/floor" how far lstmx is from it; then the per-step times
the recurrence's floors were made of.

For the inference workloads a second table adds the cell (the gates'
activations and the state update), timed alone on rows that stay in L1
(lstmx's own cell: a bound on what lstmx could reach, not on any LSTM):
for a single sequence the cell of a step lies between its product and the
next step's, on the chain of the recurrence, whichever way the step runs;
for a batch its N H units a step are shared by the two cores.
"""
import argparse
import functools
import threading

import numpy as np

from lstmx import _bench, _lstm


def matvec_step_seconds(hidden, rows, threads, seconds=0.3):
    """Per-step time of a product of one row with a (rows x hidden) W on
    each of ``threads`` threads at once (each its own W), with the faster of
    the two kernels."""
    return min(_matvec_step_seconds(hidden, rows, threads, packed, seconds / 2)
               for packed in (False, True))


def _matvec_step_seconds(hidden, rows, threads, packed, seconds):
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((rows, hidden)).astype(np.float32) for _ in range(threads)]
    x = np.ones(hidden, np.float32)
    single = _lstm._matvec_seconds(ws[0], x, np.empty(rows, np.float32), 10, packed)
    repeats = max(10, int(seconds / max(single / 10, 1e-7) / 5))
    best = [np.inf] * threads

    def run(i):
        y = np.empty(rows, np.float32)
        for _ in range(5):
            best[i] = min(best[i], _lstm._matvec_seconds(ws[i], x, y, repeats, packed)
                          / repeats)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return max(best)


def meeting_seconds():
    """A meeting of the two parts of a split recurrence, the best of five
    means of 20000 (inf where a recurrence cannot be split)."""
    if not _lstm.can_split():
        return np.inf
    return min(_lstm._meeting_seconds(20000) for _ in range(5))


def step_seconds(hidden, directions):
    """(floor of a layer's step, whole, half, meeting): the faster of each
    direction on a core of its own (all of W_h) and each split over the two
    cores (half of W_h each, then a meeting), in seconds."""
    whole = matvec_step_seconds(hidden, 4 * hidden, directions)
    half = matvec_step_seconds(hidden, 2 * hidden, 2)
    meet = meeting_seconds()
    return min(whole, directions * (half + meet)), whole, half, meet


@functools.lru_cache(maxsize=None)
def cell_seconds(units, seconds=0.2):
    """One forward cell of ``units`` units of one sequence (float32, as
    inference runs it), best of five means, in seconds (timed once a run:
    the figures printed are those the floors used)."""
    rng = np.random.default_rng(0)
    work = rng.uniform(-1, 1, 18 * units).astype(np.float32)
    single = _lstm._cell_seconds(work, units, 10) / 10
    repeats = max(10, int(seconds / max(single, 1e-8) / 5))
    return min(_lstm._cell_seconds(work, units, repeats) / repeats for _ in range(5))


def with_cells_seconds(w, floor, step):
    """The floor of an inference workload with its cells: for a single
    sequence each layer's step becomes the faster of a whole W_h's product
    and cell a direction a core, or a half's product and cell and a meeting
    for each direction in turn; for a batch the cells' time is shared by
    the two cores. None for training (its backward cell is not timed)."""
    if w.train:
        return None
    H, D, T, L = w.hidden_size, w.directions, w.steps, w.num_layers
    if step is None:
        return floor + L * D * T * w.batch * cell_seconds(H) / 2
    _, whole, half, meet = step
    with_cell = min(whole + cell_seconds(H), D * (half + cell_seconds(max(H // 2, 1)) + meet))
    return floor - L * T * step[0] + L * T * with_cell


def floor_seconds(w, peak_gflops):
    """(floor, its GEMM part, its recurrence part, the step's parts or
    None) in seconds."""
    gemm = w.flops() / (peak_gflops * 1e9)
    if w.batch != 1:
        return gemm, gemm, 0.0, None
    # N = 1: the recurrent products are memory-bound, not flop-bound
    H, D, T = w.hidden_size, w.directions, w.steps
    recurrent_flops = w.num_layers * D * 2 * T * 4 * H * H
    gemm = (w.flops() - recurrent_flops) / (peak_gflops * 1e9)
    step = step_seconds(H, D)
    recurrence = w.num_layers * T * step[0]
    return gemm + recurrence, gemm, recurrence, step


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
    steps, cells = {}, {}
    for name in args.workloads:
        w = _bench.WORKLOADS[name]
        floor, gemm, recurrence, step = floor_seconds(w, peak)
        if step:
            steps[name] = step
        lstmx = _bench.time_min(_bench.lstmx_runner(w, False), args.seconds)
        torch = _bench.torch_runner(w)
        torch = _bench.time_min(torch, args.seconds) if torch else None
        ort = _bench.onnxruntime_runner(w)
        ort = _bench.time_min(ort, args.seconds) if ort else None

        print(f"{name:<13}{ms(floor)}{ms(gemm)}{ms(recurrence)}{ms(lstmx)}{ms(torch)}{ms(ort)}"
              f"{ratio(floor, torch, 12)}{ratio(floor, ort, 10)}{ratio(lstmx, floor, 12)}", flush=True)
        with_cells = with_cells_seconds(w, floor, step)
        if with_cells is not None:
            cells[name] = (with_cells, lstmx, torch, ort)
    print("ms; lstmx without peepholes (torch has none); the floor counts matrix products only")
    for name, (best, whole, half, meet) in steps.items():
        print(f"{name}: a step of a layer {best * 1e6:.2f} us: W_h whole on a core "
              f"{whole * 1e6:.2f} us, half on each {half * 1e6:.2f} + meeting "
              f"{meet * 1e6:.2f} us")
    if cells:
        print(f"\n{'workload':<13}{'+cells':>9}{'lstmx':>9}{'/torch':>9}{'/ort':>9}{'lstmx/floor':>12}")
        for name, (with_cells, lstmx, torch, ort) in cells.items():
            print(f"{name:<13}{ms(with_cells)}{ms(lstmx)}{ratio(with_cells, torch, 9)}"
                  f"{ratio(with_cells, ort, 9)}{ratio(lstmx, with_cells, 12)}")
        print("the floor with lstmx's forward cell at its speed alone (float32): "
              + ", ".join(f"{H} units {cell_seconds(H) * 1e6:.3f} us"
                          for H in sorted({_bench.WORKLOADS[n].hidden_size for n in cells})))


if __name__ == "__main__":
    main()
