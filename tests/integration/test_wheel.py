"""The built wheel works on its own: installed into a fresh venv, run from outside the checkout.

Builds the wheel once and installs it; needs no broker. The fresh venv sees the dev venv's third-party
packages through a ``.pth`` line, which adds that folder to ``sys.path`` without running its
``.pth`` files, so the editable install of this checkout stays invisible: what answers is the wheel.

The same wheel on Python 3.12 and 3.13 (each skipped, with the reason, when no such interpreter is
found on PATH or under pyenv): their dependencies - every pinned one, all extras - come from the
package index pip is configured with, into a folder per interpreter and dependency set under
``STOCKFLOW_CACHE_DIR/wheel-test`` (built once, in parallel for both, then reused until
pyproject.toml's dependencies change), and a fresh venv sees that folder the same way. A cold cache
downloads about 250 MB per interpreter; a warm run takes seconds.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import setuptools

from streams.settings import Settings

pytestmark = pytest.mark.wheel

CHECKOUT = Path(__file__).resolve().parents[2]

# Data files found through streams.resources.packaged() or beside their module: a wheel without them
# imports fine and fails only when a command needs one. Every file of the packages that is not Python
# is one, so a new one cannot be left out of [tool.setuptools.package-data] unnoticed.
PACKAGES = ("agents", "streams", "loadtest", "schemas")


def data_files() -> list[str]:
    tracked = subprocess.run(["git", "ls-files", *PACKAGES], cwd=CHECKOUT, capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    return sorted(f for f in tracked if not f.endswith(".py"))


# The Pythons the wheel is tried on besides the dev venv's own (pyproject.toml's requires-python).
OTHER_PYTHONS = ("3.12", "3.13")


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
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


def fresh_venv(tmp_path: Path, env: dict[str, str], python: str = sys.executable, site_packages: str = "") -> Path:
    """A venv of ``python`` without pip that sees ``site_packages`` (default: the dev venv's)."""
    venv = tmp_path / "venv"
    run([python, "-m", "venv", "--without-pip", venv], tmp_path, env)
    venv_python = venv / "bin" / "python"
    site = run([venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    (Path(site.stdout.strip()) / "dev_site_packages.pth").write_text(
        (site_packages or sysconfig.get_paths()["purelib"]) + "\n"
    )
    return venv


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", COLUMNS="200")
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once for every test here."""
    return build_wheel(tmp_path_factory.mktemp("build"), clean_env())


def test_the_wheel_carries_its_data_and_runs_outside_the_checkout(tmp_path: Path, wheel: Path) -> None:
    env = clean_env()
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    wanted = data_files()
    assert "agents/inspect/config/inspect.toml" in wanted and "schemas/ddl/001_events.sql" in wanted
    missing = [f for f in wanted if f not in in_wheel]
    assert not missing, f"the wheel lacks {missing}: add them to [tool.setuptools.package-data]"

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


# ---- the same wheel on the other supported Pythons --------------------------------------------------


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (``3.12``) that runs: ``python3.12`` on PATH, else the newest pyenv
    build. A pyenv shim on PATH answers for versions pyenv has but did not select, with an error."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    builds = [Path(p) for p in glob.glob(str(root / "versions" / f"{version}.*" / "bin" / "python"))]
    builds = [b for b in builds if b.parent.parent.name.replace(".", "").isdigit()]
    builds.sort(key=lambda b: [int(n) for n in b.parent.parent.name.split(".")], reverse=True)
    on_path = shutil.which(f"python{version}")
    for candidate in ([on_path] if on_path else []) + [str(b) for b in builds]:
        try:
            said = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)  # fmt: skip
        except OSError:
            continue
        if said.returncode == 0 and said.stdout.strip() == version:
            return candidate
    return None


def requirements() -> list[str]:
    """What a full install brings: the dependencies and every extra's, stockflow's own extras left out."""
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    wanted = [r for name, reqs in extras.items() if name != "dev" for r in reqs]
    return sorted({*project["dependencies"], *(r for r in wanted if not r.startswith(project["name"]))})


def dependency_folder(python: str, reqs: list[str]) -> Path:
    """Where ``python``'s copy of ``reqs`` is cached: named by its exact version and the requirements."""
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    return Settings().cache_dir / "wheel-test" / f"py{version}-{digest}"


def install_dependencies(found: dict[str, str], reqs: list[str], env: dict[str, str]) -> dict[str, Path | str]:
    """Each Python's dependency folder, installed where missing, all at once (each a few minutes cold).
    A folder is filled under a temporary name and renamed when complete, so an interrupted install is
    never taken for a cache; older folders of the same Python are removed. Values are the folder, or
    pip's complaint when the dependencies do not install on that Python."""
    folders = {v: dependency_folder(python, reqs) for v, python in found.items()}
    running: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for v, folder in folders.items():
        if folder.is_dir():
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        args = [found[v], "-m", "pip", "install", "--disable-pip-version-check", "-q", "--target", str(staging), *reqs]
        running[v] = (subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                      staging)  # fmt: skip
    result: dict[str, Path | str] = dict(folders)
    for v, (proc, staging) in running.items():
        output, _ = proc.communicate(timeout=540)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            result[v] = f"pip could not install the dependencies on Python {v}:\n{output[-4000:]}"
            continue
        try:
            staging.rename(folders[v])
        except OSError:  # another run finished the same folder first: keep that one
            shutil.rmtree(staging, ignore_errors=True)
    for folder in folders.values():
        prefix = folder.name.split("-", 1)[0] + "-"
        for old in folder.parent.glob(f"{prefix}*"):
            if old != folder and ".partial-" not in old.name:
                shutil.rmtree(old, ignore_errors=True)
    return result


@pytest.fixture(scope="module")
def other_pythons() -> Iterator[dict[str, tuple[str, Path | str]]]:
    """(interpreter, dependency folder or pip's complaint) per version found."""
    found = {v: p for v in OTHER_PYTHONS if (p := find_python(v))}
    folders = install_dependencies(found, requirements(), clean_env()) if found else {}
    yield {v: (found[v], folders[v]) for v in found}


# What a user of each Python runs first, plus the compiled dependencies doing real work: embedded
# ClickHouse taking the migrations, a RocksDB store, an event through the Avro codec, the worker
# and the sink importing (Faust, aiokafka, confluent-kafka, the server driver).
SMOKE = """
import sys, tempfile
from pathlib import Path
import rocksdict
import agents.worker, agents.analytics.sink, agents.analytics.webpage
from streams.contract.codec import default_codec
from streams.stores.clickhouse import EmbeddedClickHouse, ServerClickHouse, apply_migrations
here = Path(tempfile.mkdtemp())
ch = EmbeddedClickHouse(here / "chdb", "wheel_test")
assert apply_migrations(ch), "no migration applied"
assert ch.query("SELECT count() AS n FROM events") == [{"n": 0}]
ch.close()
store = rocksdict.Rdict(str(here / "rocks"))
store[b"k"] = b"v"
assert store[b"k"] == b"v"
store.close()
codec = default_codec()
record = {"event_id": "d1", "event_time_ms": 1, "sku": "SKU-1", "warehouse_id": "WH-SH", "kind": "RECEIPT",
          "qty": 5, "reason": ""}
kind, back = codec.decode(codec.encode("StockAdjusted", record))
assert kind.short_name == "StockAdjusted" and back == record, back
print("smoke ok", sys.version_info[:2])
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_the_wheel_installs_and_runs_on_other_pythons(
    version: str, tmp_path: Path, wheel: Path, other_pythons: dict[str, tuple[str, Path | str]]
) -> None:
    if version not in other_pythons:
        pytest.skip(f"no Python {version} here (python{version} on PATH or a pyenv {version}.x build)")
    python, folder = other_pythons[version]
    assert isinstance(folder, Path), folder
    env = clean_env()
    venv = fresh_venv(tmp_path, env, python=python, site_packages=str(folder))
    bin_dir = venv / "bin"
    # pip is the interpreter's own (its venv has none): --python points it at the fresh venv.
    run([python, "-m", "pip", "--python", bin_dir / "python", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", wheel], tmp_path, env)  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    shown = run([bin_dir / "stockflow", "--version"], outside, env)
    assert shown.stdout.strip() == f"stockflow {wheel.name.split('-')[1]}"
    assert "order.events" in run([bin_dir / "stockflow", "topics", "contract"], outside, env).stdout
    smoke = run([bin_dir / "python", "-c", SMOKE], outside, env, timeout=180)
    assert f"smoke ok ({version.replace('.', ', ')})" in smoke.stdout
    where = run([bin_dir / "python", "-c", "import streams; print(streams.__file__)"], outside, env)
    assert Path(where.stdout.strip()).resolve().is_relative_to(venv.resolve()), "imported the checkout, not the wheel"
