"""The baseline build of _cell.c's kernels, which runs on CPUs without
AVX2 + FMA: the kernel tests again, in a child process that keeps it
(LSTMX_KERNELS=baseline). On this machine every other test runs the AVX2 +
FMA build."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lstmx

HERE = Path(__file__).parent
KERNEL_TESTS = ["test_activations.py", "test_forward.py", "test_gradients.py", "test_losses.py",
                "test_split.py"]


def test_the_environment_picks_the_baseline_build():
    code = "import lstmx; print(lstmx._lstm.kernel_target())"
    env = dict(os.environ, LSTMX_KERNELS="baseline")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "baseline"


@pytest.mark.skipif(lstmx._lstm.kernel_target() == "baseline",
                    reason="the other tests already run the baseline build here")
def test_kernel_tests_pass_on_the_baseline_build():
    env = dict(os.environ, LSTMX_KERNELS="baseline")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         *(str(HERE / name) for name in KERNEL_TESTS)],
        env=env, capture_output=True, text=True, cwd=HERE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
