"""The deployment files work as documented: Procfile on Heroku's variables, .env.example."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import RedisServer, free_port
from tests.processes import assert_relays, assert_stops_cleanly, serving
from wspush.settings import env_name, fields, option_name

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    for setting in fields():
        default = setting.default
        if isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = "" if default is None else str(default)
        assert f"# {env_name(setting.name)}={shown}\n" in text, setting.name


async def test_the_procfile_web_line_serves_on_port_with_redis_url(
    redis_server: RedisServer, tmp_path: Path, token: str
) -> None:
    (web,) = [
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    ]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSPUSH_")}
    env.update(
        PORT=str(port),
        REDIS_URL=redis_server.url,
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    command = ["sh", "-c", "exec " + web.removeprefix("web:").strip()]
    with serving(command, port, env, tmp_path) as process:
        await assert_relays(port, redis_server, f"example.{token}", token)
        assert_stops_cleanly(process)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for setting in fields():
        assert f"| `{option_name(setting.name)}" in readme, setting.name
        assert f"`{env_name(setting.name)}`" in readme, setting.name


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    )
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
