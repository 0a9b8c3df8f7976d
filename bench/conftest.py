"""pytest set-up for the benchmarks: torch gets the same 2 threads as
lstmx (onnxruntime's session is made with 2 in lstmx._bench)."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)
