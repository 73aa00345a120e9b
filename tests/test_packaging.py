"""`python -m build` makes an sdist and a wheel that work on their own.

The wheel is built the way a user builds it (isolated, from the sdist) out of a copy of
the source tree, and installed with its dependencies into a new venv that cannot see
this checkout. Its `wspush` command then starts and serves, which needs the console
script, the package's modules and the uvicorn protocols it names by import string.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import wspush
from tests.conftest import RedisServer, free_port
from tests.processes import assert_relays, assert_stops_cleanly, serving

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    ".*_cache",
    ".hypothesis",
    "test-artifacts",
)


@dataclass
class Built:
    wheel: Path
    sdist: Path
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def run(*command: str, cwd: Path | None = None, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    dist = base / "dist"
    run(sys.executable, "-m", "build", "--outdir", str(dist), str(source))
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    venv = base / "venv"
    # A venv of the base interpreter: neither this checkout nor the test venv is visible.
    run(sys._base_executable, "-m", "venv", str(venv))
    run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel))
    return Built(wheel, sdist, venv)


def data_files() -> list[str]:
    """Everything under wspush/ that is not Python source, as paths in the wheel."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "wspush").rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    )


def test_the_wheel_holds_the_package_its_data_and_the_license(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    assert "wspush/py.typed" in data_files()
    for path in data_files():
        assert path in names, path
    for module in (ROOT / "wspush").glob("*.py"):
        assert f"wspush/{module.name}" in names, module.name
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), names
    assert not any(name.startswith("tests/") for name in names)


def test_the_sdist_holds_the_license_readme_and_changelog(built: Built) -> None:
    with tarfile.open(built.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for document in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"):
        assert document in names, document
    for path in data_files():
        assert path in names, path


def test_the_installed_commands_report_the_project_version(built: Built) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert wspush.__version__ == version
    # Run outside the checkout: `python -m`/`-c` would import ./wspush from the cwd.
    outside = built.venv
    assert run(built.bin("wspush"), "--version", cwd=outside).strip() == f"wspush {version}"
    module = run(built.bin("python"), "-m", "wspush", "--version", cwd=outside)
    assert module.strip() == f"wspush {version}"
    # The venv imports the wheel's copy, not this checkout.
    location = run(built.bin("python"), "-c", "import wspush; print(wspush.__file__)", cwd=outside)
    assert Path(location.strip()).is_relative_to(built.venv), location


async def test_the_installed_command_relays_and_stops(
    built: Built, redis_server: RedisServer, tmp_path: Path, token: str
) -> None:
    port = free_port()
    command = [built.bin("wspush"), "-addr", f"127.0.0.1:{port}", "-redis", redis_server.address]
    with serving(command, port, {"PATH": os.environ["PATH"]}, tmp_path) as process:
        await assert_relays(port, redis_server, f"example.{token}", token)
        assert_stops_cleanly(process)
