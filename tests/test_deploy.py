"""The container image and the compose stack, checked by structure.

No container engine runs on the development machine, so these tests parse the
Dockerfile and compose.yaml and assert what the deployment relies on; the image's
health check command itself is run against a live server here.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from scoreboard.config import OPTIONS

from .servers import free_port, repo_root

ROOT = repo_root()
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "clang", "libc6-dev", "python3-dev")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): instructions with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name))
        elif not stages:
            if keyword == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_dockerfile_is_multi_stage_on_a_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    final = stages[-1]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", final.base), final.base
    # The final stage takes the built environment from an earlier stage ...
    copies = [c for c in final.all("COPY") if c.startswith("--from=")]
    assert any(
        c.split()[0].removeprefix("--from=") in {s.name for s in stages[:-1]} for c in copies
    )
    # ... installs nothing itself, and above all no compilers.
    for run in final.all("RUN"):
        assert "pip install" not in run and "apt-get install" not in run, run
        assert not any(re.search(rf"\b{re.escape(tool)}\b", run) for tool in BUILD_TOOLS), run


def test_dependencies_come_from_the_lock(stages: list[Stage]) -> None:
    installs = [r for s in stages for r in s.all("RUN") if "pip install" in r]
    assert installs and all("--constraint requirements.lock" in r for r in installs)


def test_final_image_runs_the_cli_as_a_non_root_user(stages: list[Stage]) -> None:
    final = stages[-1]
    user = final.last("USER").split(":")[0]
    assert user not in ("root", "0")
    # USER comes before the process is defined, so nothing later runs as root.
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert json.loads(final.last("ENTRYPOINT")) == ["scoreboard"]
    assert json.loads(final.last("CMD")) == ["serve"]
    env = " ".join(final.all("ENV"))
    assert "SCOREBOARD_HTTP_HOST=0.0.0.0" in env
    assert final.last("EXPOSE") == "8080"


def _healthcheck_command(stages: list[Stage]) -> list[str]:
    spec = stages[-1].last("HEALTHCHECK")
    options, _, cmd = spec.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    command: list[str] = json.loads(cmd)
    return command


def test_healthcheck_asks_healthz(stages: list[Stage]) -> None:
    command = _healthcheck_command(stages)
    assert command[0] == "python" and "/healthz" in command[-1]


async def _run(command: list[str], port: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command[1:],
        env={"SCOREBOARD_HTTP_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 10)


async def test_healthcheck_command_passes_on_a_live_server_and_fails_without(
    stages: list[Stage], client: TestClient[Any, Any]
) -> None:
    command = _healthcheck_command(stages)
    assert client.port is not None
    assert await _run(command, client.port) == 0
    assert await _run(command, free_port()) != 0


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".scoreboard"):
        assert entry in ignored


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert {"redis", "postgres", "migrate", "serve", "worker"} <= set(compose["services"])


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _flags(command: list[str]) -> dict[str, str]:
    return {
        command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")
    }


def test_compose_redis_keeps_what_it_accepts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    flags = _flags(_command(redis))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_postgres_on_a_volume_with_a_health_check(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    mounts = dict(v.split(":", 1) for v in pg["volumes"])
    volume = next(k for k, v in mounts.items() if v == "/var/lib/postgresql/data")
    assert volume in compose["volumes"]
    assert any("pg_isready" in part for part in pg["healthcheck"]["test"])


def _depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service["depends_on"].items()}


def test_compose_start_order_is_health_gated(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert _command(migrate) == ["migrate"]
    assert migrate["restart"] == "no"
    assert _depends(migrate) == {"postgres": "service_healthy"}
    for name in ("serve", "worker"):
        deps = _depends(services[name])
        assert deps["redis"] == "service_healthy", name
        assert deps["migrate"] == "service_completed_successfully", name


def test_compose_two_serve_replicas_behind_one_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    serve = services["serve"]
    assert _command(serve) == ["serve"]
    assert serve["deploy"]["replicas"] == 2
    # The replicas share the network namespace that publishes the port, and so the
    # port itself (SO_REUSEPORT); the dedicated worker drains the stream instead.
    holder = serve["network_mode"].removeprefix("service:")
    assert holder in services and "ports" not in serve
    assert any(p.endswith(":8080") for p in services[holder]["ports"])
    assert serve["environment"]["SCOREBOARD_HTTP_PORT"] == "8080"
    assert serve["environment"]["SCOREBOARD_HTTP_HOST"] == "0.0.0.0"
    assert serve["environment"]["SCOREBOARD_SINK"] == "false"
    assert "/healthz" in serve["healthcheck"]["test"][-1]


def test_compose_one_worker(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert _command(worker) == ["worker"]
    assert worker.get("deploy", {}).get("replicas", 1) == 1


def test_compose_settings_are_real_settings(compose: dict[str, Any]) -> None:
    known = {opt.env for opt in OPTIONS}
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key in env:
            if key.startswith("SCOREBOARD_"):
                assert key in known, (name, key)
        if service.get("build"):
            # No service runs on a baked-in or empty secret.
            for secret in ("SCOREBOARD_JWT_SECRET", "SCOREBOARD_ACTION_SECRET"):
                if secret in env:
                    assert env[secret].startswith(f"${{{secret}:?"), (name, secret)


def test_readme_says_the_stack_was_not_run_here() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "compose.yaml" in readme
    assert "has not been run" in readme


def test_compose_commands_are_cli_commands(compose: dict[str, Any]) -> None:
    from scoreboard.cli import build_parser

    _, commands = build_parser()
    for name, service in compose["services"].items():
        if service.get("build") and service.get("command"):
            assert _command(service)[0] in commands, name
