"""float64 against float32: the Performance issue's goal is at most 2.2x.

    python bench/float64.py [workload ...] [--seconds S]

For each workload of lstmx._bench (peephole network, as `lstmx bench`'s
'lstmx' column), lstmx in float32 and in float64 are timed in alternating
blocks (lstmx._bench.time_blocks), and the ratio is the median over blocks
of the two bests in the same block: this machine's speed drifts over
seconds, and a ratio of two best-of times taken apart compares two moments.
"""
import argparse

import numpy as np

from lstmx import _bench


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", metavar="workload",
                        help=f"default: all of {', '.join(_bench.WORKLOADS)}")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="timed seconds of each dtype per workload (default 2)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.workloads if n not in _bench.WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}; choose from {', '.join(_bench.WORKLOADS)}")
    print(f"{'workload':<13}{'float32':>10}{'float64':>10}{'f64/f32':>9}")
    for name in args.workloads or _bench.WORKLOADS:
        w = _bench.WORKLOADS[name]
        runs = [_bench.lstmx_runner(w, True, dtype) for dtype in (np.float32, np.float64)]
        b32, b64 = _bench.time_blocks(runs, args.seconds, block=0.25, min_blocks=5)
        print(f"{name:<13}{min(b32) * 1e3:10.2f}{min(b64) * 1e3:10.2f}"
              f"{_bench.paired_ratio(b64, b32):9.2f}", flush=True)
    print("times in ms (best of all rounds); f64/f32 the median over alternating blocks"
          " of the two bests in the same block")


if __name__ == "__main__":
    main()
