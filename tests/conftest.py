"""pytest configuration for lstmx's tests.

pytest runs with ``--import-mode=importlib``, which does not put this folder on
``sys.path``; the tests import the NumPy reference (``reference.py``) and the
shared helpers (``helpers.py``) by plain name, so put the folder there first.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so every test is reproducible alone."""
    seed = sum(request.node.nodeid.encode()) * 7919 % (2**32)
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(config, items):
    """With LSTMX_REQUIRE_PEERS=1 (set by .ci/run, which installs torch),
    a test that would skip for want of a peer fails instead."""
    import os

    if os.environ.get("LSTMX_REQUIRE_PEERS") != "1":
        return
    for peer in ("torch", "onnx", "onnxruntime"):
        try:
            __import__(peer)
        except ImportError as exc:
            raise pytest.UsageError(f"LSTMX_REQUIRE_PEERS=1 but {peer} cannot be imported: {exc}")
