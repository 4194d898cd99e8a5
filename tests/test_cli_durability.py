"""The durable side's commands through `main([...])` and their exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scoreboard.cli import main


def test_migrate_postgres(pg_url: str, capsys: Any) -> None:
    assert main(["migrate", "--database-url", pg_url]) == 0
    assert "applied 1; schema at version 1" in capsys.readouterr().out
    assert main(["migrate", "--database-url", pg_url]) == 0
    assert "schema already at version 1" in capsys.readouterr().out


def test_migrate_embedded_sqlite(tmp_path: Path, capsys: Any) -> None:
    assert main(["migrate", "--data-dir", str(tmp_path)]) == 0
    assert "sqlite:" in capsys.readouterr().out
    assert (tmp_path / "scoreboard.db").is_file()


def test_migrate_unreachable_database(unused_tcp_port: int, capsys: Any) -> None:
    url = f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x"
    assert main(["migrate", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("migrate: postgresql://postgres@127.0.0.1:") and "\n" in err


@pytest.mark.parametrize("command", ["worker", "reseed", "verify"])
def test_commands_needing_redis_refuse_the_embedded_mode(
    command: str, tmp_path: Path, capsys: Any
) -> None:
    assert main([command, "--data-dir", str(tmp_path)]) == 2
    assert "needs SCOREBOARD_REDIS_URL" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["migrate", "worker", "reseed", "verify"])
def test_help(command: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "--database-url" in capsys.readouterr().out


def test_reseed_and_verify_on_empty_stores(redis_url: str, pg_url: str, capsys: Any) -> None:
    args = ["--redis-url", redis_url, "--database-url", pg_url]
    assert main(["reseed", *args]) == 0
    assert "reseed: 0 board(s), 0 users" in capsys.readouterr().out
    assert main(["verify", *args, "--wait", "1"]) == 0
    assert "no boards" in capsys.readouterr().out


def test_bad_board_id(redis_url: str, pg_url: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reseed", "--redis-url", redis_url, "--database-url", pg_url, "--board", "Bad!"])
    assert info.value.code == 2


def test_verify_unreachable_redis(unused_tcp_port: int, pg_url: str, capsys: Any) -> None:
    url = f"redis://127.0.0.1:{unused_tcp_port}/0"
    assert main(["migrate", "--database-url", pg_url]) == 0
    assert main(["verify", "--redis-url", url, "--database-url", pg_url, "--wait", "0"]) == 1
    assert "verify: Redis failed" in capsys.readouterr().err
