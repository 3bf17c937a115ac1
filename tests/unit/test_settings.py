"""Settings file parsing and validation (iservice.settings)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.errors import SettingsError
from iservice.settings import (
    PRIORITIES,
    Settings,
    default_settings_path,
    load_settings,
    parse_settings,
    validate_instance,
)

# --- defaults and derived paths -------------------------------------------------------------


def test_defaults() -> None:
    s = parse_settings("")
    assert s == Settings()
    assert s.instance == ""
    assert s.exe_path == "/usr/sbin/openvpn"
    assert s.config_dir == "/etc/openvpn/client"
    assert s.priority == 0
    assert s.ovpn_admin_group == "openvpn-admin"
    assert s.log_dir is None
    assert s.socket_path == "/run/openvpn/service"
    assert s.socket_mode == 0o666
    assert s.socket_group is None
    assert s.state_dir == "/var/lib/iservice"
    assert s.dns_backend == "auto"
    assert s.resolv_conf == "/etc/resolv.conf"
    assert s.block_dns is False
    assert s.hook_path is None
    assert s.hook == "auto"
    assert (s.max_clients, s.max_clients_per_user, s.max_sessions_per_user) == (64, 8, 16)
    assert (s.max_routes, s.max_addresses, s.max_dns_servers, s.max_bypass_routes) == (
        100000, 16, 8, 4,
    )
    assert s.stop_grace == 5.0 and isinstance(s.stop_grace, float)
    assert (s.audit_rate, s.audit_burst) == (10, 20000)
    assert default_settings_path("") == "/etc/openvpn/iservice.conf"


def test_derived_paths_for_named_instance() -> None:
    s = parse_settings("", instance="$v2")
    assert s.instance == "$v2"
    assert s.config_dir == "/etc/openvpn$v2/client"
    assert s.socket_path == "/run/openvpn$v2/service"
    assert s.state_dir == "/var/lib/iservice$v2"
    assert default_settings_path("$v2") == "/etc/openvpn$v2/iservice.conf"


def test_explicit_paths_win_over_derived() -> None:
    s = parse_settings("config_dir = /srv/vpn\nsocket_path=/run/x/s\n", instance="b")
    assert s.config_dir == "/srv/vpn" and s.socket_path == "/run/x/s"
    assert s.state_dir == "/var/lib/iserviceb"


def test_settings_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().exe_path = "/x"  # type: ignore[misc]


# --- every key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("exe_path = /opt/openvpn/sbin/openvpn", "exe_path", "/opt/openvpn/sbin/openvpn"),
        ("config_dir = /etc/vpn configs/client", "config_dir", "/etc/vpn configs/client"),
        ("priority = IDLE_PRIORITY_CLASS", "priority", 19),
        ("priority = below_normal_priority_class", "priority", 10),
        ("priority = Normal_Priority_Class", "priority", 0),
        ("priority = ABOVE_NORMAL_PRIORITY_CLASS", "priority", -5),
        ("priority = high_priority_class", "priority", -10),
        ("ovpn_admin_group = vpn-admins", "ovpn_admin_group", "vpn-admins"),
        ("ovpn_admin_group = OpenVPN Administrators", "ovpn_admin_group",
         "OpenVPN Administrators"),
        ("log_dir = /var/log/openvpn", "log_dir", "/var/log/openvpn"),
        ("log_dir =", "log_dir", None),
        ("socket_path = /run/vpn/sock", "socket_path", "/run/vpn/sock"),
        ("socket_mode = 0660", "socket_mode", 0o660),
        ("socket_mode = 660", "socket_mode", 0o660),
        ("socket_mode = 0o600", "socket_mode", 0o600),
        ("socket_mode = 0666", "socket_mode", 0o666),
        ("socket_group = vpnusers", "socket_group", "vpnusers"),
        ("socket_group =", "socket_group", None),
        ("state_dir = /var/lib/x", "state_dir", "/var/lib/x"),
        ("dns_backend = resolved", "dns_backend", "resolved"),
        ("dns_backend = RESOLVCONF", "dns_backend", "resolvconf"),
        ("dns_backend = file", "dns_backend", "file"),
        ("dns_backend = none", "dns_backend", "none"),
        ("dns_backend = auto", "dns_backend", "auto"),
        ("resolv_conf = /run/resolv.conf", "resolv_conf", "/run/resolv.conf"),
        ("block_dns = true", "block_dns", True),
        ("block_dns = YES", "block_dns", True),
        ("block_dns = on", "block_dns", True),
        ("block_dns = 1", "block_dns", True),
        ("block_dns = False", "block_dns", False),
        ("block_dns = no", "block_dns", False),
        ("block_dns = off", "block_dns", False),
        ("block_dns = 0", "block_dns", False),
        ("hook_path = /usr/libexec/iservice-hook", "hook_path", "/usr/libexec/iservice-hook"),
        ("hook = plugin", "hook", "plugin"),
        ("hook = Script", "hook", "script"),
        ("hook = AUTO", "hook", "auto"),
        ("max_clients = 1", "max_clients", 1),
        ("max_clients_per_user = 5", "max_clients_per_user", 5),
        ("max_sessions_per_user = 2", "max_sessions_per_user", 2),
        ("max_routes = 2147483647", "max_routes", 2**31 - 1),
        ("max_addresses = 4", "max_addresses", 4),
        ("max_dns_servers = 3", "max_dns_servers", 3),
        ("max_bypass_routes = 1", "max_bypass_routes", 1),
        ("stop_grace = 0.5", "stop_grace", 0.5),
        ("stop_grace = 300", "stop_grace", 300.0),
        ("stop_grace = .25", "stop_grace", 0.25),
        ("stop_grace = 10.", "stop_grace", 10.0),
        ("audit_rate = 1", "audit_rate", 1),
        ("audit_burst = 2147483647", "audit_burst", 2**31 - 1),
    ],
)
def test_each_key(line: str, field: str, value: object) -> None:
    assert getattr(parse_settings(line), field) == value


def test_every_field_has_a_key() -> None:
    keys = {f.name for f in dataclasses.fields(Settings)} - {"instance"}
    text = "\n".join(f"{k} = x" for k in sorted(keys))
    with pytest.raises(SettingsError) as info:  # values are wrong, but no key is unknown
        parse_settings(text)
    assert info.value.reason != "unknown key"


def test_priorities_table() -> None:
    assert dict(PRIORITIES) == {
        "IDLE_PRIORITY_CLASS": 19,
        "BELOW_NORMAL_PRIORITY_CLASS": 10,
        "NORMAL_PRIORITY_CLASS": 0,
        "ABOVE_NORMAL_PRIORITY_CLASS": -5,
        "HIGH_PRIORITY_CLASS": -10,
    }
    with pytest.raises(TypeError):
        PRIORITIES["X"] = 1  # type: ignore[index]


# --- format ----------------------------------------------------------------------------------


def test_comments_blanks_and_whitespace() -> None:
    text = (
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "\t\n"
        "\texe_path\t=\t/usr/local/sbin/openvpn   \r\n"
        "max_routes=10\n"
        "#max_clients = 0\n"
    )
    s = parse_settings(text)
    assert s.exe_path == "/usr/local/sbin/openvpn"
    assert s.max_routes == 10
    assert s.max_clients == 64


def test_value_may_contain_equals() -> None:
    assert parse_settings("log_dir = /var/log/a=b").log_dir == "/var/log/a=b"


def test_no_quoting() -> None:
    with pytest.raises(SettingsError, match="not an absolute path"):
        parse_settings('exe_path = "/usr/sbin/openvpn"')


def test_bom_is_accepted() -> None:
    assert parse_settings("\ufeffmax_routes = 7").max_routes == 7


# --- errors name key, line and file -----------------------------------------------------------


def err(text: str, **kw: str) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        parse_settings(text, path="/etc/openvpn/iservice.conf", **kw)
    return info.value


def test_unknown_key() -> None:
    e = err("# c\nexe_pth = /x\n")
    assert (e.key, e.line, e.path) == ("exe_pth", 2, "/etc/openvpn/iservice.conf")
    assert "unknown key" in e.reason and "exe_path" in e.reason  # a suggestion
    assert str(e).startswith("/etc/openvpn/iservice.conf:2, key 'exe_pth': unknown key")


def test_instance_is_not_a_file_key() -> None:
    assert err("instance = x").key == "instance"


def test_keys_are_case_sensitive() -> None:
    e = err("EXE_PATH = /x")
    assert e.key == "EXE_PATH" and "unknown key" in e.reason


def test_duplicate_key() -> None:
    e = err("max_routes = 1\n\nmax_routes = 1\n")
    assert (e.key, e.line) == ("max_routes", 3)
    assert "first on line 1" in e.reason


def test_line_without_equals() -> None:
    e = err("max_routes = 1\nblock_dns\n")
    assert (e.key, e.line) == (None, 2)
    assert "=" in e.reason


def test_empty_key() -> None:
    e = err("= /x")
    assert e.line == 1 and "unknown key" in e.reason


@pytest.mark.parametrize(
    ("line", "key", "fragment"),
    [
        ("exe_path = usr/sbin/openvpn", "exe_path", "not an absolute path"),
        ("exe_path =", "exe_path", "empty value"),
        ("config_dir = client", "config_dir", "not an absolute path"),
        ("log_dir = logs", "log_dir", "not an absolute path"),
        ("state_dir = ./x", "state_dir", "not an absolute path"),
        ("resolv_conf = resolv.conf", "resolv_conf", "not an absolute path"),
        ("hook_path = hook", "hook_path", "not an absolute path"),
        ("hook = plug-in", "hook", "unknown hook"),
        ("hook =", "hook", "empty value"),
        ("hook = scr\u0131pt", "hook", "unknown hook"),
        ("socket_path = run/s", "socket_path", "not an absolute path"),
        ("socket_path = /run/dir/", "socket_path", "directory"),
        ("socket_path = /" + "x" * 107, "socket_path", "107 bytes"),
        ("priority = REALTIME_PRIORITY_CLASS", "priority", "IDLE_PRIORITY_CLASS"),
        ("priority = 5", "priority", "HIGH_PRIORITY_CLASS"),
        ("priority = ıdle_priority_class", "priority", "unknown priority"),
        ("socket_mode = 0777", "socket_mode", "execute"),
        ("socket_mode = 0466", "socket_mode", "owner read and write"),
        ("socket_mode = 0066", "socket_mode", "owner read and write"),
        ("socket_mode = 4666", "socket_mode", "outside 0o777"),
        ("socket_mode = 0x1b6", "socket_mode", "octal"),
        ("socket_mode = 0668", "socket_mode", "octal"),
        ("socket_mode = rw-rw-rw-", "socket_mode", "octal"),
        ("socket_mode = -0666", "socket_mode", "octal"),
        ("dns_backend = systemd", "dns_backend", "resolvconf"),
        ("block_dns = maybe", "block_dns", "boolean"),
        ("max_clients = 0", "max_clients", "between 1 and"),
        ("max_clients = -1", "max_clients", "positive decimal"),
        ("max_routes = 1_000", "max_routes", "positive decimal"),
        ("max_routes = +5", "max_routes", "positive decimal"),
        ("max_routes = \u0661", "max_routes", "positive decimal"),
        ("max_routes = 2147483648", "max_routes", "between 1 and"),
        ("max_routes = 99999999999999999999", "max_routes", "positive decimal"),
        ("max_addresses = 1.5", "max_addresses", "positive decimal"),
        ("max_dns_servers = many", "max_dns_servers", "positive decimal"),
        ("max_bypass_routes = 0", "max_bypass_routes", "between 1 and"),
        ("max_clients_per_user =", "max_clients_per_user", "empty value"),
        ("max_sessions_per_user = 0", "max_sessions_per_user", "between 1 and"),
        ("audit_rate = 0", "audit_rate", "between 1 and"),
        ("audit_rate = 0.5", "audit_rate", "positive decimal"),
        ("audit_burst =", "audit_burst", "empty value"),
        ("audit_burst = 2147483648", "audit_burst", "between 1 and"),
        ("stop_grace = 0", "stop_grace", "0 < x <= 300"),
        ("stop_grace = 300.5", "stop_grace", "0 < x <= 300"),
        ("stop_grace = nan", "stop_grace", "decimal number"),
        ("stop_grace = inf", "stop_grace", "decimal number"),
        ("stop_grace = 1e2", "stop_grace", "decimal number"),
        ("stop_grace = -1", "stop_grace", "decimal number"),
        ("ovpn_admin_group = wheel:x", "ovpn_admin_group", "not a valid group name"),
        ("ovpn_admin_group =", "ovpn_admin_group", "empty value"),
        ("socket_group = a/b", "socket_group", "not a valid group name"),
        ("exe_path = /usr/sbin/openvpn # default", "exe_path", "inline comments"),
        ("exe_path = /usr/sbin/open\x00vpn", "exe_path", "control characters"),
        ("exe_path = /usr/sbin/open\tvpn", "exe_path", "control characters"),
        ("exe_path = /usr/sbin/\ud800", "exe_path", "not valid Unicode"),
    ],
)
def test_invalid_values(line: str, key: str, fragment: str) -> None:
    e = err("# settings\n" + line + "\n")
    assert (e.key, e.line, e.path) == (key, 2, "/etc/openvpn/iservice.conf")
    assert fragment in e.reason, e.reason
    assert f"/etc/openvpn/iservice.conf:2, key '{key}'" in str(e)


def test_unknown_priority_lists_valid_ones() -> None:
    e = err("priority = LOW")
    for name in PRIORITIES:
        assert name in e.reason


def test_constructor_validates() -> None:
    with pytest.raises(SettingsError, match="absolute"):
        Settings(exe_path="openvpn")
    with pytest.raises(SettingsError, match="between 1"):
        Settings(max_routes=0)
    with pytest.raises(SettingsError, match="wrong type"):
        Settings(max_routes=True)
    with pytest.raises(SettingsError, match="wrong type"):
        Settings(block_dns="yes")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="nice value"):
        Settings(priority=3)
    with pytest.raises(SettingsError, match="instance"):
        Settings(instance="../x")
    assert Settings(stop_grace=2).stop_grace == 2.0


# --- instance names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "v2", "$v2", "a.b", "a_b-c", "x@y", "a+b", "A" * 64, "9"])
def test_valid_instances(name: str) -> None:
    assert validate_instance(name) == name


@pytest.mark.parametrize(
    "name",
    ["a/b", "/", "a\x00b", "..", "a..b", ".hidden", "-x", "a b", "a\tb", "a\nb", "\x7f",
     "A" * 65, "é", "a:b", "a\\b", "%i", "a*b", "`id`", "a;b"],
)
def test_invalid_instances(name: str) -> None:
    with pytest.raises(SettingsError) as info:
        validate_instance(name)
    assert repr(name) in info.value.reason
    with pytest.raises(SettingsError):
        parse_settings("", instance=name)
    with pytest.raises(SettingsError):
        default_settings_path(name)


# --- load_settings --------------------------------------------------------------------------------


def test_load_explicit_file(tmp_path: Path) -> None:
    p = tmp_path / "iservice.conf"
    p.write_text("max_routes = 9\npriority = idle_priority_class\n")
    s = load_settings(str(p), instance="x")
    assert (s.max_routes, s.priority, s.instance) == (9, 19, "x")


def test_load_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(str(tmp_path / "nope.conf"))
    assert info.value.path == str(tmp_path / "nope.conf")
    assert "not found" in info.value.reason


def test_load_missing_default_file_gives_defaults() -> None:
    # an instance name nobody uses: its default file does not exist
    name = "iservice-unit-test-nonexistent"
    assert not os.path.exists(default_settings_path(name))
    assert load_settings(instance=name) == Settings(instance=name)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "c.conf"
    p.write_text("max_routes = 1\nmax_routes = 2\n")
    with pytest.raises(SettingsError) as info:
        load_settings(str(p))
    assert (info.value.path, info.value.line, info.value.key) == (str(p), 2, "max_routes")


def test_load_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "c.conf"
    p.write_bytes(b"max_routes = 1\nlog_dir = /var/log/\xff\n")
    with pytest.raises(SettingsError) as info:
        load_settings(str(p))
    assert info.value.line == 2 and "UTF-8" in info.value.reason


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        load_settings(str(tmp_path))


def test_load_world_writable(tmp_path: Path) -> None:
    p = tmp_path / "c.conf"
    p.write_text("")
    p.chmod(0o666)
    with pytest.raises(SettingsError, match="writable by every user"):
        load_settings(str(p))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_load_foreign_owner(tmp_path: Path) -> None:
    p = tmp_path / "c.conf"
    p.write_text("")
    os.chown(p, 65534, 65534)
    with pytest.raises(SettingsError, match="owned by uid 65534"):
        load_settings(str(p))


def test_load_too_large(tmp_path: Path) -> None:
    p = tmp_path / "c.conf"
    p.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(SettingsError, match="larger than"):
        load_settings(str(p))


def test_load_bad_instance() -> None:
    with pytest.raises(SettingsError):
        load_settings(instance="../etc")


# --- properties ------------------------------------------------------------------------------

_KEYS = [f.name for f in dataclasses.fields(Settings)] + ["bogus", "", "#x", "EXE_PATH"]
_VALUES = st.one_of(
    st.sampled_from(
        ["", "/x", "x", "0", "1", "0660", "true", "auto", "5", "IDLE_PRIORITY_CLASS", "a b # c",
         "1e3", "nan", "-1", "/a=b", "\x00", "\ud800"]
    ),
    st.text(max_size=12),
)
_LINES = st.one_of(
    st.tuples(st.sampled_from(_KEYS), _VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=6).map("\n".join), st.sampled_from(["", "v2", "../x", "\x00"]))
def test_parse_only_settings_or_settings_error(text: str, instance: str) -> None:
    try:
        s = parse_settings(text, instance=instance)
    except SettingsError as exc:
        assert exc.reason
        return
    assert isinstance(s, Settings)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_parse_arbitrary_text(text: str) -> None:
    with contextlib.suppress(SettingsError):
        assert isinstance(parse_settings(text), Settings)
