"""Packaging: what pyproject.toml declares, what the installed distribution
holds, and that ``import lstmx`` stays light. Cheap, deterministic checks
only; building wheels and timing the import are in README's "Wheels"
section and bench/test_import.py."""
import importlib
import json
import re
import subprocess
import sys
from importlib import metadata
from importlib.resources import files
from pathlib import Path

import pytest

import lstmx

ROOT = Path(__file__).resolve().parents[1]   # the source tree the tests came from


def _pyproject():
    try:
        import tomllib
    except ImportError:   # Python 3.10
        tomllib = pytest.importorskip("tomli")
    path = ROOT / "pyproject.toml"
    if not path.is_file():
        pytest.skip(f"no pyproject.toml next to the tests ({path})")
    with open(path, "rb") as f:
        return tomllib.load(f)


def _requirement_name(requirement):
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def test_runtime_dependencies_are_numpy_and_scipy():
    deps = _pyproject()["project"]["dependencies"]
    assert sorted(_requirement_name(d) for d in deps) == ["numpy", "scipy"]


def test_extras():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {_requirement_name(d) for d in extras["test"]} >= {"pytest", "pytest-benchmark"}
    assert {_requirement_name(d) for d in extras["peers"]} == {"torch", "onnx", "onnxruntime"}


def test_console_script_declared():
    assert _pyproject()["project"]["scripts"] == {"lstmx": "lstmx.cli:main"}
    module, _, name = "lstmx.cli:main".partition(":")
    assert callable(getattr(importlib.import_module(module), name))


def test_installed_metadata():
    dist = metadata.distribution("lstmx")
    assert dist.version == lstmx.__version__
    unconditional = [r for r in dist.requires or [] if "extra ==" not in r]
    assert sorted(_requirement_name(r) for r in unconditional) == ["numpy", "scipy"]
    scripts = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    if not scripts and json.loads(dist.read_text("direct_url.json") or "{}").get(
            "dir_info", {}).get("editable"):
        pytest.skip("editable install made before [project.scripts] existed; "
                    "reinstall it (pip install -e .) to get the lstmx command")
    assert [(ep.name, ep.value) for ep in scripts] == [("lstmx", "lstmx.cli:main")]


def test_version_is_meson_project_version():
    meson_build = ROOT / "meson.build"
    if not meson_build.is_file():
        pytest.skip("meson.build not next to the tests")
    version = re.search(r"version:\s*'([^']+)'", meson_build.read_text()).group(1)
    assert lstmx.__version__ == version


def test_every_module_is_installed():
    """A module missing from py.install_sources works in the editable
    install and is silently absent from the wheel."""
    package = ROOT / "src" / "lstmx"
    if not package.is_dir():
        pytest.skip("source tree not next to the tests")
    listed = set(re.findall(r"'([^']+\.(?:py|pxd|h))'", (package / "meson.build").read_text()))
    for source in sorted(package.glob("*.py")):
        assert source.name in listed, f"{source.name} is not in src/lstmx/meson.build's install_sources"
    for name in sorted(listed):
        assert files("lstmx").joinpath(name).is_file(), f"{name} is not installed"


def test_import_is_light():
    """torch and onnx are optional peers, imported only inside lstmx.io's
    functions; the console script imports lstmx.cli."""
    code = ("import sys, lstmx, lstmx.cli; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_wheel_tests_run_outside_the_source_tree_without_benchmarks():
    cibw = _pyproject()["tool"]["cibuildwheel"]
    assert cibw["build"].split() == ["cp311-*", "cp312-*", "cp313-*", "cp314-*"]
    command = cibw["test-command"]
    assert "{project}/tests" in command
    assert "-p no:benchmark" in command or "--benchmark-disable" in command
    assert _pyproject()["tool"]["pytest"]["ini_options"]["addopts"].split()[0] == "--import-mode=importlib"
