"""Which hook the service gives openvpn (``hook`` setting) and the options that follow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from iservice import plugin, server
from iservice.linux.launch import service_options
from iservice.server import Hook, StartupError, select_hook
from iservice.settings import Settings

SCRIPT = os.path.join(os.path.dirname(sys.executable), "iservice-hook")


def _settings(hook: str) -> Settings:
    return Settings(hook=hook, hook_path=SCRIPT)


def _fake_plugin(monkeypatch: pytest.MonkeyPatch, path: str | None) -> None:
    monkeypatch.setattr(server, "plugin_path", lambda: path)


def test_auto_prefers_the_plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    so = tmp_path / "iservice_plugin.so"
    so.write_bytes(b"")
    _fake_plugin(monkeypatch, str(so))
    # pytest's temporary directories are private; the check has its own test below
    monkeypatch.setattr(server, "_check_usable_by_others", lambda *a: None)
    assert select_hook(_settings("auto")) == Hook("plugin", str(so))
    assert select_hook(_settings("plugin")) == Hook("plugin", str(so))
    assert select_hook(_settings("script")) == Hook("script", SCRIPT)


def test_auto_without_the_plugin_is_the_script(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_plugin(monkeypatch, None)
    assert select_hook(_settings("auto")) == Hook("script", SCRIPT)
    with pytest.raises(StartupError, match="plugin is not installed"):
        select_hook(_settings("plugin"))


def test_the_plugin_must_be_readable_by_others(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    so = tmp_path / "iservice_plugin.so"
    so.write_bytes(b"")
    so.chmod(0o640)
    _fake_plugin(monkeypatch, str(so))
    with pytest.raises(StartupError, match="cannot be used by other users"):
        select_hook(_settings("plugin"))
    spaced = tmp_path / "a b.so"
    spaced.write_bytes(b"")
    _fake_plugin(monkeypatch, str(spaced))
    with pytest.raises(StartupError, match="spaces"):
        select_hook(_settings("auto"))


def test_the_installed_plugin_is_usable() -> None:
    """The installed copy (what openvpn loads) passes the start-up check."""
    found = plugin.plugin_path()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("the plugin was not built by pip install (gcc, openvpn-plugin.h?)")
        pytest.skip("the plugin is not installed")
    assert select_hook(Settings()) == Hook("plugin", found)


def _options(hook: Hook) -> list[str]:
    return service_options(hook.kind, hook.path, "istun3", 7)


def test_plugin_mode_options() -> None:
    assert _options(Hook("plugin", "/opt/x/iservice_plugin.so")) == [
        "--dev", "istun3", "--dev-type", "tun", "--disable-dco", "--ifconfig-noexec",
        "--route-noexec", "--plugin", "/opt/x/iservice_plugin.so", "7", "--up-restart"]


def test_script_mode_options() -> None:
    opts = _options(Hook("script", "/opt/x/iservice-hook"))
    assert opts[opts.index("--script-security") + 1] == "2"
    for name in ("--up", "--route-up", "--route-pre-down", "--down"):
        assert opts[opts.index(name) + 1] == "/opt/x/iservice-hook 7"
    assert "--plugin" not in opts and opts[-1] == "--up-restart"
    assert "--setenv" not in opts  # the facts stay in the service (produce.py)
