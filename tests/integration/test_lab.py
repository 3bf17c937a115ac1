"""The test lab itself works: namespaces, a real openvpn server and client, lab users, the
service wrapper, and cleanup. Also records what openvpn 2.6 gives its hooks (SPEC §9)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from tests.lab import TUN_DEVICE, Lab, Pki, User, wait_until

pytestmark = pytest.mark.root

PUSHES = (
    'push "route 10.9.0.0 255.255.0.0"\n'
    'push "route-ipv6 fd00:9::/64"\n'
    'push "dhcp-option DNS 10.8.0.1"\n'
    'push "dhcp-option DOMAIN lab.test"\n'
)
HOOKS = ("up", "route-up", "route-pre-down", "down")


def _tun_stat() -> tuple[int, int, int, int] | None:
    if not TUN_DEVICE.exists():
        return None
    st = os.stat(TUN_DEVICE)
    return st.st_mode, st.st_uid, st.st_gid, st.st_rdev


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    return subprocess.run(["getent", "group", name], capture_output=True).returncode == 0


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _assert_all_gone(lab: Lab, users: list[User], groups: list[str], pids: list[int]) -> None:
    names = _netns_names()
    assert lab.server_ns not in names and lab.client_ns not in names
    host_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert lab.tag not in host_links and "lab-c" not in host_links and "lab-s" not in host_links
    for u in users:
        assert not _user_exists(u.name), u
        assert not _group_exists(u.name), u
    for g in groups:
        assert not _group_exists(g), g
    for pid in pids:
        assert _pid_gone(pid), f"pid {pid} still alive"
    assert not lab.base_dir.exists()


# ---------------------------------------------------------------------------- 1


def test_namespaces_veth_routes_and_cleanup(pki: Pki) -> None:
    tun_before = _tun_stat()
    with Lab(pki) as lab:
        assert {lab.server_ns, lab.client_ns} <= set(_netns_names())
        assert lab.base_dir.stat().st_mode & 0o777 == 0o755
        assert lab.config_dir.stat().st_uid == 0
        assert not str(lab.base_dir).startswith("/root")

        link = lab.link(lab.client_if)
        assert link is not None and link["link_type"] == "ether" and "UP" in link["flags"]
        lo = lab.link("lo")
        assert lo is not None and "UP" in lo["flags"]
        assert {a["local"] for a in lab.addrs(lab.client_if)} >= {lab.client_addr,
                                                                   lab.client_addr6}
        default4 = [r for r in lab.routes(4) if r["dst"] == "default"]
        default6 = [r for r in lab.routes(6) if r["dst"] == "default"]
        assert default4[0]["gateway"] == lab.server_addr
        assert default6[0]["gateway"] == lab.server_addr6

        assert lab.ping(lab.server_addr)
        assert lab.ping(lab.vpn_remote)
        assert lab.ping(lab.outside_addr)
        assert lab.ping(lab.outside_addr6)
        # the network behind the VPN is not reachable without the VPN
        assert not lab.ping(lab.pushed_host, timeout=1)

        group = lab.add_group("isvg")
        u = lab.add_user(groups=[group])
        assert _user_exists(u.name) and len(u.name) <= 32
        ident = lab.run_client(["id"], user=u, check=True).stdout
        assert f"uid={u.uid}(" in ident and group in ident
        env = lab.run_client(["env"], user=u, check=True).stdout.splitlines()
        assert sorted(e.split("=")[0] for e in env) == ["HOME", "LANG", "LOGNAME", "PATH", "USER"]
        assert lab.ping(lab.outside_addr, user=u)

        # the service wrapper sees a 0666 /dev/net/tun; the host's node is untouched
        out = lab.run_service(["stat", "-c", "%a %t:%T", "/dev/net/tun"], user=u,
                              check=True).stdout.split()
        assert out == ["666", "a:c8"]
        assert _tun_stat() == tun_before

        sleeper = lab.popen_client(["sleep", "300"], user=u)
        users, groups, pids = [u], [group], [sleeper.pid]
    _assert_all_gone(lab, users, groups, pids)
    assert _tun_stat() == tun_before


# ---------------------------------------------------------------------------- 2


def test_server_and_root_client_connect(lab: Lab) -> None:
    server = lab.start_server(PUSHES)
    assert server.tunnel_addr == "10.8.0.1" and server.tunnel_addr6 == "fd00:8::1"
    cfg = lab.write_client_config()
    st = cfg.stat()
    assert cfg.parent == lab.config_dir and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644
    assert "<tls-crypt>" in cfg.read_text()

    client = lab.start_client(cfg, "--disable-dco")  # root, no service involved
    assert lab.ping(server.tunnel_addr)
    assert lab.ping(lab.pushed_host)
    assert lab.ping(server.tunnel_addr6)
    assert lab.ping(lab.pushed_host6)
    assert lab.route_get(lab.pushed_host)["dev"].startswith("tun")
    routes4 = {r["dst"]: r for r in lab.routes(4)}
    routes6 = {r["dst"]: r for r in lab.routes(6)}
    assert routes4["10.9.0.0/16"]["dev"].startswith("tun")
    assert routes4["10.9.0.0/16"]["gateway"] == server.tunnel_addr
    assert routes6["fd00:9::/64"]["dev"].startswith("tun")

    assert client.stop() == 0
    assert _pid_gone(client.pid)
    assert not any(r["dst"] == "10.9.0.0/16" for r in lab.routes(4))
    assert not lab.ping(lab.pushed_host, timeout=1)
    server.stop()
    assert _pid_gone(server.pid)

    # a second server over TCP, on another port and network
    tcp = lab.start_server(name="tcp", proto="tcp", port=443, network="10.10.0.0/24",
                           network6="fd00:10::/64")
    tcp_client = lab.start_client(lab.write_client_config("tcp.ovpn", proto="tcp", port=443),
                                  "--disable-dco", name="tcp-client")
    assert "TCP connection established" in tcp_client.log()
    assert lab.ping(tcp.tunnel_addr) and lab.ping(tcp.tunnel_addr6)


# ---------------------------------------------------------------------------- 3

def _summary(env: dict[str, str]) -> str:
    n_route = sum(k.startswith("route_") for k in env)
    n_ifc = sum(k.startswith("ifconfig_") for k in env)
    return (f"{env.get('script_type')}[ctx={env.get('script_context')} "
            f"sig={env.get('signal', '-')} route_*={n_route} ifconfig_*={n_ifc} "
            f"ifconfig_local={env.get('ifconfig_local', '-')} fd={env.get('LAB_FD_WRITE')}]")


@pytest.mark.parametrize("variant", [(), ("--up-restart",), ("--persist-tun",),
                                     ("--persist-tun", "--up-restart")],
                         ids=["plain", "up-restart", "persist-tun", "persist-tun+up-restart"])
def test_user_openvpn_on_persistent_tun(lab: Lab, variant: tuple[str, ...]) -> None:
    # a fixed client address, so a restart pulls the same options (the usual case)
    ccd = lab.make_dir("ccd")
    (ccd / "client").write_text("ifconfig-push 10.8.0.50 255.255.255.0\n"
                                "ifconfig-ipv6-push fd00:8::50/64 fd00:8::1\n")
    lab.start_server(PUSHES + f"client-config-dir {ccd}\n")
    cfg = lab.write_client_config()
    u = lab.add_user()
    tun = lab.add_tun("istun0", u)
    out = lab.make_dir("hookenv", owner=u)

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = theirs.fileno()
    hook = lab.write_env_dump_hook("dump-env.sh", out, fd=fd)
    hook_args = [a for h in HOOKS for a in (f"--{h}", str(hook))]
    vpn = lab.start_client(
        cfg, "--dev", tun, "--dev-type", "tun", "--disable-dco", "--ifconfig-noexec",
        "--route-noexec", "--script-security", "2", *hook_args, *variant,
        user=u, service_ns=True, pass_fds=(fd,), name="user-vpn",
    )
    theirs.close()
    try:
        # openvpn runs as the user and holds the inherited descriptor
        with open(f"/proc/{vpn.pid}/status") as fh:
            uids = next(line for line in fh if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(u.uid)}
        assert os.path.exists(f"/proc/{vpn.pid}/fd/{fd}")
        # --ifconfig-noexec: openvpn left the link down, without addresses
        link = lab.link(tun)
        assert link is not None and "UP" not in link["flags"]
        assert lab.addrs(tun) == []

        init = lab.read_env_dumps(out)
        assert [e["script_type"] for e in init] == ["up", "route-up"]
        for env in init:
            assert env["LAB_UID"] == str(u.uid)
            assert env["dev"] == tun and env["tun_mtu"] == "1500"
            assert env["ifconfig_local"] == "10.8.0.50"
            assert env["ifconfig_netmask"] == "255.255.255.0"
            assert env["ifconfig_ipv6_local"] == "fd00:8::50"
            assert env["route_network_1"] == "10.9.0.0"
            assert env["route_netmask_1"] == "255.255.0.0"
            assert env["route_gateway_1"] == "10.8.0.1"
            assert env["route_ipv6_network_1"] == "fd00:9::/64"
            assert env["route_net_gateway"] == lab.server_addr
            assert env["trusted_ip"] == lab.vpn_remote
            assert env["foreign_option_1"] == "dhcp-option DNS 10.8.0.1"
            assert "PATH" not in env
            assert env["LAB_FD_WRITE"] == "ok"  # the inherited fd reached the script
        assert init[0]["LAB_ARGS"] == f"{tun} 1500 0 10.8.0.50 255.255.255.0 init"

        vpn.signal(signal.SIGUSR1)
        vpn.wait_connected(count=2, timeout=20)
        restart = lab.read_env_dumps(out)[len(init):]
    finally:
        vpn.stop()
    final = lab.read_env_dumps(out)[len(init) + len(restart):]

    ours.settimeout(2)
    messages: list[str] = []
    while msg := ours.recv(256):
        messages.append(msg.decode().strip())
    ours.close()

    name = "+".join(v.lstrip("-") for v in variant) or "plain"
    findings = [
        "init:    " + " ".join(_summary(e) for e in init),
        "SIGUSR1: " + (" ".join(_summary(e) for e in restart) or "(no hook ran)"),
        "SIGTERM: " + " ".join(_summary(e) for e in final),
        "fd got:  " + ",".join(messages),
    ]
    print(f"\n[{name}]\n  " + "\n  ".join(findings))

    every = init + restart + final
    assert messages == [e["script_type"] for e in every]  # every hook could write to the fd
    assert all(e["LAB_UID"] == str(u.uid) for e in every)
    types = [e["script_type"] for e in restart]
    full = [e for e in every if "route_network_1" in e and "ifconfig_local" in e]
    if "--persist-tun" not in variant:
        # restart = full teardown and bring-up; down hooks still see routes and addresses
        assert types == ["route-pre-down", "down", "up", "route-up"]
        assert all(e in full for e in restart)
        assert [e.get("signal") for e in restart[:2]] == ["sigusr1", "sigusr1"]
        assert [e["script_type"] for e in final] == ["route-pre-down", "down"]
        assert all(e in full for e in final)
    elif "--up-restart" not in variant:
        # the tun is preserved: no hook at all on restart, and afterwards openvpn has
        # forgotten the routes: the final down hooks get no route_* variables
        assert types == []
        assert [e["script_type"] for e in final] == ["route-pre-down", "down"]
        assert all("route_network_1" not in e and "ifconfig_local" in e for e in final)
    else:
        # down(restart, with routes) then up(restart, without routes); no route hooks
        assert types == ["down", "up"]
        assert [e["script_context"] for e in restart] == ["restart", "restart"]
        assert restart[0] in full and "route_network_1" not in restart[1]
        assert all("route_network_1" not in e for e in final)


# ---------------------------------------------------------------------------- 4


def test_cleanup_after_error_removes_everything(pki: Pki) -> None:
    tun_before = _tun_stat()
    lab = Lab(pki)
    with pytest.raises(RuntimeError, match="boom"), lab:
        lab.start_server()
        group = lab.add_group("isvg")
        u = lab.add_user(groups=[group])
        lab.add_tun("istun7", u)
        tracked = lab.popen_service(["sleep", "300"], user=u)
        client = lab.start_client(lab.write_client_config(), "--disable-dco")
        # untracked leftovers: a user's orphan and a root process in the server namespace
        lab.run_client(["sh", "-c", "sleep 301 >/dev/null 2>&1 &"], user=u, check=True)
        lab.ns_run(lab.server_ns, ["sh", "-c", "sleep 302 >/dev/null 2>&1 &"])
        orphans: list[int] = wait_until(
            lambda: (p if len(p := _pids_named(("sleep 301", "sleep 302"))) == 2 else None),
            timeout=5, what="orphan sleeps")
        pids = [tracked.pid, client.pid, *orphans]
        raise RuntimeError("boom")
    _assert_all_gone(lab, [u], [group], pids)
    assert _tun_stat() == tun_before
    assert not Path(lab.tun_node).exists()


def _pids_named(cmdlines: tuple[str, ...]) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            except OSError:
                continue
            if cmd.decode(errors="replace") in cmdlines:
                found.append(int(entry))
    return found


def test_sweep_removes_leftovers_of_a_dead_lab(pki: Pki) -> None:
    lab = Lab(pki)
    with lab:
        group = lab.add_group("isvg")
        u = lab.add_user()
        sleeper = lab.popen_client(["sleep", "303"], user=u)
        # pretend the owner died: same pid, other start time
        manifest = lab.base_dir / "lab.json"
        data = json.loads(manifest.read_text())
        assert data["namespaces"] == [lab.server_ns, lab.client_ns]
        assert data["users"] == [u.name] and data["groups"] == [group]
        manifest.write_text(json.dumps({**data, "start": "0"}))
        assert lab.tag in Lab.sweep_stale()
        _assert_all_gone(lab, [u], [group], [sleeper.pid])
    # closing after a sweep is quiet: nothing left to remove
