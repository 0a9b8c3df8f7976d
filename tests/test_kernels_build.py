"""The narrower builds of _cell.c's kernels: the baseline, which runs on
CPUs without AVX2 + FMA (LSTMX_KERNELS=baseline), and on a CPU with
AVX-512 the AVX2 + FMA build (LSTMX_KERNELS=avx2). The kernel tests run
again in a child process that keeps each build narrower than this CPU's;
every other test runs the build chosen for this CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lstmx

HERE = Path(__file__).parent
KERNEL_TESTS = ["test_activations.py", "test_forward.py", "test_gradients.py", "test_losses.py",
                "test_split.py"]
# LSTMX_KERNELS -> kernel_target(), narrowest first
BUILDS = {"baseline": "baseline", "avx2": "avx2+fma"}
ORDER = ["baseline", "avx2+fma", "avx512"]
CHOSEN = lstmx._lstm.kernel_target()


def _target_under(setting):
    code = "import lstmx; print(lstmx._lstm.kernel_target())"
    env = dict(os.environ, LSTMX_KERNELS=setting)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_chosen_build_is_known():
    assert CHOSEN in ORDER


@pytest.mark.parametrize("setting", BUILDS)
def test_the_environment_narrows_the_build(setting):
    # never wider than the CPU's own build, never wider than asked for
    expected = min(BUILDS[setting], CHOSEN, key=ORDER.index)
    assert _target_under(setting) == expected


@pytest.mark.parametrize("setting", BUILDS)
def test_kernel_tests_pass_on_a_narrower_build(setting):
    if ORDER.index(BUILDS[setting]) >= ORDER.index(CHOSEN):
        pytest.skip(f"the other tests already run the {CHOSEN} build here")
    env = dict(os.environ, LSTMX_KERNELS=setting)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         *(str(HERE / name) for name in KERNEL_TESTS)],
        env=env, capture_output=True, text=True, cwd=HERE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
