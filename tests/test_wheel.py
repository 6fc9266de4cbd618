"""`pip install .` gives a working command outside the repository: build the wheel, install it
into a fresh venv, and run the entry point from a folder with no source tree in reach.

Cheap on purpose: no build isolation and no dependency resolution (the fresh venv sees the test
venv's packages through a .pth line, which does not activate its editable install of this repo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel into a fresh venv

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_wheel_installs_and_its_entry_point_works_outside_the_repo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # a copy of what the wheel is built from: the build would otherwise write build/ and
    # *.egg-info into the working tree
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src, cwd=tmp_path, env=env)
    (wheel,) = dist.glob("monosemantic-*.whl")

    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    py = target / "bin" / "python"
    site = Path(
        _run(
            py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path, env=env
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(*pip, "--python", py, "install", "--no-deps", "--no-index", wheel, cwd=tmp_path, env=env)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run(py, "-c", "import monosemantic; print(monosemantic.__file__)", cwd=outside, env=env)
    assert Path(where.strip()).is_relative_to(site), where
    for packaged in ("data", "web/templates", "web/static"):  # package data made it into the wheel
        files = sorted(p.name for p in (ROOT / "src" / "monosemantic" / packaged).iterdir() if p.is_file())
        assert files and all((site / "monosemantic" / packaged / f).is_file() for f in files), packaged
    help_text = _run(target / "bin" / "monosemantic", "--help", cwd=outside, env=env)
    for command in ("harvest", "train", "evaluate", "import", "export"):
        assert command in help_text
    assert "open_run" in _run(
        py, "-c", "import monosemantic; print(monosemantic.open_run.__name__)", cwd=outside, env=env
    )
