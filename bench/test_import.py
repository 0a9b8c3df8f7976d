"""How long ``import lstmx`` takes, next to what it cannot avoid importing:
NumPy and scipy's BLAS module (``scipy.linalg.cython_blas``, which the
kernels cimport). Each import runs in a fresh interpreter.

The target is lstmx at most 1.5x the baseline. Report it (min over
repetitions of the time the import statement takes inside the interpreter,
runs interleaved):

    python bench/test_import.py [--repeat 9]

or keep a history with pytest-benchmark (whole ``python -c`` runs, so
interpreter start-up is in both):

    python -m pytest bench/test_import.py

Measure an installed wheel: an editable install checks for a rebuild on
every import, which the script points out.
"""
import argparse
import json
import subprocess
import sys

import pytest

STATEMENTS = {
    "numpy+cython_blas": "import numpy, scipy.linalg.cython_blas",
    "lstmx": "import lstmx",
}
TARGET_RATIO = 1.5


def import_seconds(statement):
    """Seconds ``statement`` takes in a fresh interpreter (start-up excluded)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=600).stdout
    return float(out.split()[-1])


def is_editable():
    from importlib import metadata
    try:
        url = metadata.distribution("lstmx").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return False
    return bool(url) and json.loads(url).get("dir_info", {}).get("editable", False)


def measure(repeat):
    """{name: min seconds} over ``repeat`` interleaved rounds."""
    import_seconds("import lstmx")   # warm the file cache (and an editable rebuild)
    times = {name: [] for name in STATEMENTS}
    for _ in range(repeat):
        for name, statement in STATEMENTS.items():
            times[name].append(import_seconds(statement))
    return {name: min(t) for name, t in times.items()}


@pytest.mark.benchmark(group="import")
@pytest.mark.parametrize("name", list(STATEMENTS))
def test_import(benchmark, name):
    command = [sys.executable, "-c", STATEMENTS[name]]
    benchmark.pedantic(subprocess.run, args=(command,), kwargs={"check": True},
                       rounds=5, iterations=1, warmup_rounds=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=9)
    repeat = parser.parse_args().repeat
    best = measure(repeat)
    for name, seconds in best.items():
        print(f"{name:<18} {seconds * 1e3:7.1f} ms   ({STATEMENTS[name]}; min of {repeat})")
    ratio = best["lstmx"] / best["numpy+cython_blas"]
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(f"ratio              {ratio:7.2f}      ({verdict} the {TARGET_RATIO}x target)")
    if is_editable():
        print("note: lstmx is an editable install; its import includes a rebuild check")


if __name__ == "__main__":
    main()
