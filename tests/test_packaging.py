"""The built wheel carries everything the installed package needs: every module, the zoo's configs and
the demo checkpoint (a wheel without them gave `rtdetr-prune demo` -> "Unknown model")."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # building needs setuptools from the package registry
        pytest.fail(f"pip wheel failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    (wheel,) = out.glob("rtdetr_prune-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def _source_files(pattern: str) -> set[str]:
    return {str(p.relative_to(SRC)) for p in (SRC / "rtdetr_prune").rglob(pattern) if "__pycache__" not in p.parts}


def test_wheel_has_every_module(wheel_files):
    missing = _source_files("*.py") - wheel_files
    assert not missing, sorted(missing)


def test_wheel_has_the_zoo_configs_and_the_demo_checkpoint(wheel_files):
    data = _source_files("*.yaml") | _source_files("*.json") | _source_files("*.safetensors")
    assert "rtdetr_prune/assets/demo-tiny/model.safetensors" in data  # the source tree has them...
    assert "rtdetr_prune/models/ultralytics/cfg/rtdetr-r18.yaml" in data
    missing = data - wheel_files
    assert not missing, f"package data left out of the wheel: {sorted(missing)}"  # ...and so must the wheel
