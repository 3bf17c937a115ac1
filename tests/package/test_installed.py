"""The installed Debian package (scripts/test-package.sh installs it first and sets
ISERVICE_INSTALLED=1, so tests/isv.py runs /usr/bin/iservice): its files, units, group,
generated man pages and completion, the service it starts, ``iservice cleanup`` and
auto-connect with the real systemctl."""

from __future__ import annotations

import grp
import gzip
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.isv import ISERVICE, PYTHON, Service, Services, alive, wait_for
from tests.lab import Lab, Pki, User

from iservice import __version__, settings
from iservice.autoconnect import unit_name
from iservice.cli import build_parser
from iservice.docgen import commands, setting_keys

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the package, a lab")]

CHECKOUT = Path(__file__).resolve().parents[2]
SITE = Path("/usr/lib/python3/dist-packages/iservice")
SYSTEM_UNITS = Path("/lib/systemd/system")
USER_UNITS = Path("/usr/lib/systemd/user")
PUSH = 'push "route 10.9.0.0 255.255.0.0"\n'


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          **kw)  # type: ignore[call-overload]


def test_it_is_the_installed_package_under_test() -> None:
    assert ISERVICE == "/usr/bin/iservice" and PYTHON == "/usr/bin/python3"
    assert run(["dpkg-query", "-W", "-f=${Status}", "iservice"]).stdout == \
        "install ok installed"
    assert run([ISERVICE, "--version"]).stdout.split() == ["iservice", __version__]
    where = run([PYTHON, "-I", "-c", "import iservice.plugin as p, iservice\n"
                 "print(iservice.__file__); print(p.plugin_path()); print(p.runas_path())\n"
                 "print(p.spawn_library_path())\n"
                 "from iservice.linux import spawn; print(spawn.into_cgroup_available())"])
    assert where.stdout.split() == [str(SITE / "__init__.py"),
                                    str(SITE / "plugin" / "iservice_plugin.so"),
                                    str(SITE / "plugin" / "iservice-runas"),
                                    str(SITE / "plugin" / "iservice_spawn.so"),
                                    "True"], where.stderr
    # Debian's python3 and python3-jeepney, no venv
    jeepney = run([PYTHON, "-I", "-c", "import jeepney; print(jeepney.__file__)"]).stdout
    assert jeepney.startswith("/usr/lib/python3/dist-packages/jeepney/")
    assert os.access("/usr/bin/iservice-hook", os.X_OK)


def test_group_and_state_directory() -> None:
    group = grp.getgrnam(settings.Settings().ovpn_admin_group)
    assert group.gr_gid < 1000 and group.gr_mem == []  # a system group, no members
    st = os.stat("/var/lib/iservice")
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700


def test_every_unit_is_installed_for_usr_bin() -> None:
    shipped = sorted((CHECKOUT / "systemd").glob("*.s*")) + \
        sorted((CHECKOUT / "systemd" / "user").glob("*.service"))
    assert len(shipped) >= 6
    for unit in shipped:
        target = (USER_UNITS if unit.parent.name == "user" else SYSTEM_UNITS) / unit.name
        text = target.read_text()
        assert "/opt/iservice" not in text
        expected = unit.read_text().replace("/opt/iservice/bin/", "/usr/bin/").replace(
            "Documentation=file:///opt/iservice/README.md", "Documentation=man:iservice(1)")
        assert text == expected, unit.name


def test_sockets_are_enabled_services_are_not() -> None:
    link = Path("/etc/systemd/system/sockets.target.wants/iservice.socket")
    assert os.readlink(link) == str(SYSTEM_UNITS / "iservice.socket")
    assert run(["systemctl", "is-enabled", "iservice.socket"]).stdout.strip() == "enabled"
    assert run(["systemctl", "is-enabled", "iservice.service"]).stdout.strip() == "disabled"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Templates are verified as an instance; a warning (unknown key, bad value, missing
    executable) fails the test, not only an error."""
    system, user = tmp_path / "system", tmp_path / "user"
    system.mkdir()
    user.mkdir()
    for unit in SYSTEM_UNITS.glob("iservice*"):
        shutil.copy(unit, system / unit.name.replace("@.", "@test."))
    for unit in USER_UNITS.glob("iservice*"):
        shutil.copy(unit, user / unit.name.replace("@.", "@test."))
    cp = run(["systemd-analyze", "verify", *map(str, sorted(system.iterdir()))])
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    cp = run(["systemd-analyze", "--user", "verify", *map(str, sorted(user.iterdir()))],
             env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr


def _man(path: str) -> str:
    return gzip.decompress(Path(path).read_bytes()).decode()


def test_man_pages_cover_every_command_option_and_key() -> None:
    page = _man("/usr/share/man/man1/iservice.1.gz")
    for c in commands(build_parser()):
        assert f".SS {c.name}\n" in page
        for o in c.flags:
            for flag in o.flags if o.flags != ("-h", "--help") else ():
                assert f"\\fB{flag}\\fR" in page.replace("\\-", "-"), (c.name, flag)
    conf = _man("/usr/share/man/man5/iservice.conf.5.gz")
    for key in setting_keys():
        assert f"\\fB{key}\\fR" in conf.replace("\\_", "_"), key
    for name in ("man1/iservice.1.gz", "man1/iservice-hook.1.gz", "man5/iservice.conf.5.gz"):
        cp = run(["man", "--warnings", "-l", f"/usr/share/man/{name}"],
                 env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_STDERR": "1"})
        assert cp.returncode == 0 and cp.stderr == "" and "NAME" in cp.stdout, \
            (name, cp.stderr)
    assert "iservice cleanup" in run(["man", "-l", "/usr/share/man/man1/iservice.1.gz"],
                                     env={**os.environ, "MANWIDTH": "200"}).stdout


def _bash_complete(*words: str) -> list[str]:
    script = ("source /usr/share/bash-completion/completions/iservice\n"
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _iservice\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    cp = run(["bash", "--norc", "-c", script, "bash", *words])
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.split()


def test_bash_and_zsh_completion() -> None:
    names = [c.name for c in commands(build_parser())]
    assert set(names) <= set(_bash_complete("iservice", ""))
    assert _bash_complete("iservice", "cl") == ["cleanup"]
    assert "--now" in _bash_complete("iservice", "enable", "--")
    assert _bash_complete("iservice", "log", "-n", "5", "--fo") == ["--follow"]
    zsh = "/usr/share/zsh/vendor-completions/_iservice"
    assert Path(zsh).read_text().startswith("#compdef iservice\n")
    cp = run(["zsh", "-n", zsh])
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr


# -- the service, cleanup, auto-connect ------------------------------------------


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.start_server(PUSH)
        lab.write_client_config("approved.ovpn")
        yield lab


@pytest.fixture
def make_service(lab: Lab) -> Iterator[Callable[..., Service]]:
    services = Services(lab, prefix="pkg")
    yield services.make
    services.close()


def session(lab: Lab, svc: Service, user: User) -> tuple[int, str]:
    """A user's session through ``svc``: (openvpn's pid, its tun) once its route is in."""
    cp = svc.start_as(user, "--config", "approved.ovpn")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    pid = int(cp.stdout)

    def tun() -> str | None:
        return next((r["dev"] for r in lab.routes(4) if r["dst"] == "10.9.0.0/16"
                     and str(r.get("dev", "")).startswith("istun")), None)
    return pid, str(wait_for(tun, 15, what=svc.log_tail))


def cleanup_cmd(lab: Lab, svc: Service, *extra: str) -> list[str]:
    # in the lab's client namespace: the journal's tun devices live there
    return lab.ns_cmd(lab.client_ns, [ISERVICE, "cleanup", "--settings",
                                      str(svc.settings_path), *extra])


def test_the_service_uses_the_packaged_plugin_and_runas(
        lab: Lab, make_service: Callable[..., Service]) -> None:
    svc = make_service()
    svc.start()
    ready = next(line for line in svc.log().splitlines() if "event=ready" in line)
    assert f"hook=plugin path={SITE}/plugin/iservice_plugin.so " in ready, ready
    assert f"spawner={SITE}/plugin/iservice-runas" in ready, ready
    user = lab.add_user("isvp")
    pid, tun = session(lab, svc, user)
    assert lab.ping("10.8.0.1")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: tun not in svc.tuns() and not svc.journal()["sessions"], 5,
             what=svc.log_tail)
    svc.finish()


def test_cleanup_undoes_what_a_killed_service_left(
        lab: Lab, make_service: Callable[..., Service]) -> None:
    svc = make_service()
    svc.start()
    pid, tun = session(lab, svc, lab.add_user("isvp"))
    svc.kill9()
    assert tun in svc.tuns() and svc.journal()["sessions"] and alive(pid)
    cp = run(cleanup_cmd(lab, svc))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "event=recovered" in cp.stderr and "killed=True" in cp.stderr
    assert svc.tuns() == [] and svc.journal() == {"sessions": [], "changes": 0}
    wait_for(lambda: not alive(pid), 5, what="the leftover openvpn ended")
    assert not svc.socket_path.exists() or not svc.connectable()  # it opened no socket
    again = run(cleanup_cmd(lab, svc))
    assert again.returncode == 0 and "event=recovered" not in again.stderr


def test_cleanup_stops_a_running_service_only_with_stop(
        lab: Lab, make_service: Callable[..., Service]) -> None:
    svc = make_service()
    proc = svc.start()
    pid, tun = session(lab, svc, lab.add_user("isvp"))
    refused = run(cleanup_cmd(lab, svc))
    assert refused.returncode == 1
    assert f"a service is running (pid {svc.service_pid()}" in refused.stderr
    assert proc.poll() is None and tun in svc.tuns()  # untouched
    cp = run(cleanup_cmd(lab, svc, "--stop"))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert f"stopped the service (pid {svc.service_pid()})" in cp.stdout
    assert proc.wait(5) == 0  # SIGTERM: it stopped itself and undid its session
    assert svc.tuns() == [] and svc.journal()["sessions"] == [] and not alive(pid)


def test_cleanup_needs_root(lab: Lab, make_service: Callable[..., Service]) -> None:
    svc = make_service()
    cp = lab.run_client([ISERVICE, "cleanup", "--settings", str(svc.settings_path)],
                        user=lab.add_user("isvp"))
    assert cp.returncode == 2 and "must run as root" in cp.stderr


def test_enable_and_disable_with_the_real_systemctl() -> None:
    """systemd is not PID 1 here: systemctl enables and disables offline (links only)."""
    profile = "pkg-test.work"
    unit = unit_name(profile)
    assert unit == "iservice-connect@pkg\\x2dtest.work.service"
    link = Path("/etc/systemd/system/multi-user.target.wants") / unit
    try:
        cp = run([ISERVICE, "enable", profile])
        assert cp.returncode == 0, cp.stderr
        assert "was not checked" in cp.stderr  # no service runs for the default instance
        assert os.readlink(link) == str(SYSTEM_UNITS / "iservice-connect@.service")
        assert run(["systemctl", "is-enabled", unit]).stdout.strip() == "enabled"
        # %I, systemd's unescaped instance, is the profile again
        back = run(["systemd-escape", "--unescape", "--instance", unit]).stdout
        assert back == f"{profile}\n"
        assert "ExecStart=/usr/bin/iservice connect --foreground %I\n" in \
            (SYSTEM_UNITS / "iservice-connect@.service").read_text()
        cp = run([ISERVICE, "disable", profile])
        assert cp.returncode == 0, cp.stderr
        assert not link.exists() and not link.is_symlink()
    finally:
        if link.is_symlink():
            link.unlink()
