"""pytest set-up for the benchmarks.

pytest runs with --import-mode=importlib, which does not put this folder on
sys.path; the suites import ``workloads`` by plain name, so put it there.
"""
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    """Peers and lstmx get the same 2 threads."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)
