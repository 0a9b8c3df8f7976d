"""Peak memory of one training step (forward + backward + SGD step), lstmx
against torch, each measured in a fresh process.

    python bench/train_memory.py [workload ...]      (default: seed_train)

What is reported is the growth of the process's peak resident set size
(ru_maxrss) over the first step, after the network, the data and the
optimizer exist: the memory a step itself needs (Linux reports ru_maxrss
in KiB, as read here).
"""
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np
from lstmx import _bench
w = _bench.WORKLOADS[sys.argv[1]]
who = sys.argv[2]
run = _bench.lstmx_runner(w) if who == "lstmx" else _bench.torch_runner(w)
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
run()
first = peak_mb()
run()
print(json.dumps({"setup_mb": before, "step_mb": first - before, "after_2_steps_mb": peak_mb()}))
"""


def measure(workload, who):
    out = subprocess.run([sys.executable, "-c", CHILD, workload, who],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv):
    for workload in argv or ["seed_train"]:
        for who in ("lstmx", "torch"):
            try:
                m = measure(workload, who)
            except subprocess.CalledProcessError as exc:
                print(f"{workload:<12} {who:<6} failed: {exc.stderr.strip().splitlines()[-1]}")
                continue
            print(f"{workload:<12} {who:<6} peak growth over one step: {m['step_mb']:8.1f} MB "
                  f"(process peak {m['after_2_steps_mb']:.0f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
