"""The wheel built from the repository works outside the checkout: it carries the shipped
models and everything vaekit reads at run time, its console script runs, and it says its version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it was installed into with pip --target), built from a copy of the
    repository's sources so the checkout gets no build/ or egg-info."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")], check=True
    )
    (wheel,) = (tmp / "dist").glob("vaekit-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True)
    return wheel, tmp / "site"


def _run(site: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    # The installed copy first on the path, so the checkout's editable install is never imported.
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_every_shipped_file_and_the_code(installed) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    zoo = REPO / "src" / "vaekit" / "zoo"
    shipped = {p.relative_to(REPO / "src").as_posix() for p in zoo.rglob("*") if p.is_file()}
    assert shipped and shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    code = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "vaekit").rglob("*.py")}
    assert code <= names, f"missing from the wheel: {sorted(code - names)}"


def test_the_installed_wheel_works_from_another_directory(installed, tmp_path) -> None:
    wheel, site = installed
    version = wheel.name.split("-")[1]
    script = site / "bin" / "vaekit"
    out = _run(site, tmp_path, str(script), "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"vaekit {version}"

    out = _run(site, tmp_path, str(script), "sample", "zoo:fashion-mnist", "-n", "4", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "zoo-fashion-mnist" / "samples.png") as picture:
        assert picture.width > 28 and picture.height > 28

    code = (
        "import json, vaekit; run = vaekit.load_run('zoo:fashion-mnist-long', device='cpu'); "
        "print(json.dumps([vaekit.__file__, str(run.path), vaekit.__version__, list(run.model.sample(2).shape)]))"
    )
    out = _run(site, tmp_path, sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    module, run_path, reported, shape = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(module).is_relative_to(site) and Path(run_path).is_relative_to(site)
    assert reported == version == "0.3.0"
    assert shape == [2, 1, 28, 28]
