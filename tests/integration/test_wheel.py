"""The built wheel works on its own: installed into a fresh venv, run from outside the checkout.

Builds the wheel and installs it; needs no broker. The fresh venv sees the dev venv's third-party
packages through a ``.pth`` line, which adds that folder to ``sys.path`` without running its
``.pth`` files, so the editable install of this checkout stays invisible: what answers is the wheel.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import setuptools

pytestmark = pytest.mark.wheel

CHECKOUT = Path(__file__).resolve().parents[2]

# Data files found through streams.resources.packaged(): a wheel without them imports fine and
# fails only when a command needs one.
DATA_FILES = (
    "schemas/*.avsc",
    "schemas/history/*.avsc",
    "schemas/ddl/*.sql",
    "agents/analytics/dashboards/*.sql",
    "agents/analytics/static/index.html",
    "agents/intake/config/*.toml",
    "agents/routing/config/warehouses.toml",
    "agents/routing/data/cn_centroids.csv",
    "streams/devstack/broker/pom.xml",
)


def run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources, and a stale
    # build/ in the shared checkout would leak deleted files into later wheels.
    source = tmp_path / "source"
    shutil.copytree(
        CHECKOUT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".stockflow", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests"
        ),
    )
    wheels = tmp_path / "wheels"
    # setuptools builds wheels by itself from 70.1 on, older ones need the wheel package; without
    # either in the dev venv, pip builds in an isolated env with setuptools from the index (or its cache).
    offline = importlib.util.find_spec("wheel") is not None or _version(setuptools.__version__) >= (70, 1)
    isolation = ["--no-build-isolation"] if offline else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--disable-pip-version-check",
         "-q", "-w", wheels, source], tmp_path, env)  # fmt: skip
    (wheel,) = wheels.glob("stockflow-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, env: dict[str, str]) -> Path:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    dev_site_packages = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "dev_site_packages.pth").write_text(dev_site_packages + "\n")
    return venv


def test_the_wheel_carries_its_data_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", COLUMNS="200")

    wheel = build_wheel(tmp_path, env)
    in_wheel = zipfile.ZipFile(wheel).namelist()
    for pattern in DATA_FILES:
        in_checkout = sorted(p.relative_to(CHECKOUT).as_posix() for p in CHECKOUT.glob(pattern))
        assert in_checkout, f"nothing in the checkout matches {pattern}"
        missing = [f for f in in_checkout if f not in in_wheel]
        assert not missing, f"the wheel lacks {missing}: add them to [tool.setuptools.package-data]"
        assert fnmatch.filter(in_wheel, pattern)

    venv = fresh_venv(tmp_path, env)
    bin_dir = venv / "bin"
    # pip comes from the dev venv through the .pth; --ignore-installed, because that also shows
    # it the checkout's editable stockflow, which it must neither count as installed nor remove.
    run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
         "--disable-pip-version-check", "-q", wheel], tmp_path, env)  # fmt: skip

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    contract = run([bin_dir / "stockflow", "topics", "contract"], outside, env)
    assert "order.events" in contract.stdout
    run([bin_dir / "stockflow", "dash", "--help"], outside, env)
    where = "import streams, agents; print(streams.__file__); print(agents.__file__)"
    imported = run([bin_dir / "python", "-c", where], outside, env)
    for path in imported.stdout.split():
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"imported {path}, not the installed wheel"
