"""Benchmark workloads (issue: Performance) and their inputs."""
import numpy as np

# name: (input, hidden, layers, bidirectional, head, batch N, steps T)
WORKLOADS = {
    "seed_infer": (360, 320, 2, True, 44, 1, 200),
    "small_infer": (16, 64, 1, False, 44, 1, 1000),
    "big_infer": (512, 512, 1, False, 44, 64, 100),
}


def workload_id(name):
    I, H, L, bi, O, N, T = WORKLOADS[name]
    return f"{name}-I{I}-H{H}-L{L}{'-bi' if bi else ''}-N{N}-T{T}"




def make_input(name, dtype=np.float32, seed=0):
    I, H, L, bi, O, N, T = WORKLOADS[name]
    return np.random.default_rng(seed).standard_normal((T, N, I)).astype(dtype)
