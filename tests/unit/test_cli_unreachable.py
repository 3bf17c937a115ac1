"""With nothing listening at the service's sockets every client command exits 3 (service
unreachable, not a usage error) and says how an administrator starts the service."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("argv", [("connect", "nosuch"), ("sessions",), ("profiles",),
                                  ("status", "x"), ("log", "x"), ("disconnect", "x"),
                                  ("start", "--", "--config", "x.ovpn")])
def test_nothing_listening_is_status_3_with_how_to_start(tmp_path: Path,
                                                          argv: tuple[str, ...]) -> None:
    from iservice import cli
    socket_path = tmp_path / "service"
    status = cli.main([argv[0], "--socket", str(socket_path), *argv[1:]])
    assert status == 3


def test_nothing_listening_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from iservice import cli
    assert cli.main(["connect", "--socket", str(tmp_path / "service"), "nosuch"]) == 3
    err = capsys.readouterr().err
    assert "cannot connect to the service" in err
    assert "systemctl enable --now iservice.socket iservice-control.socket" in err
    assert cli.main(["sessions", "--instance", "work", "--socket",
                     str(tmp_path / "service")]) == 3
    assert "iservice@work.socket iservice-control@work.socket" in capsys.readouterr().err
