"""The real systemd-resolved and openresolv for tests, without installing either (SPEC §9).

Installing systemd-resolved or resolvconf would take over the machine's
/etc/resolv.conf, so both are unpacked from Debian's packages instead
(``apt-get download`` + ``dpkg-deb -x``, cached under ``/var/cache/iservice-test``;
a fresh machine or CI fetches them on first use).

``ResolvedSandbox`` runs, in the lab's client network namespace and a private mount
namespace of its own:

* a tmpfs on ``/run`` (nothing of the host's /run is seen or touched);
* a private ``dbus-daemon`` (system bus at ``/run/dbus/system_bus_socket``, a
  permissive policy: only this test's processes can reach it);
* ``systemd-resolved`` from the unpacked packages (its own libsystemd-shared through
  ``LD_LIBRARY_PATH``), as root, dropping to the ``systemd-resolve`` user that
  bind-mounted copies of passwd/group provide; it creates ``/run/systemd/resolve``
  itself.  A drop-in turns off fallback servers, LLMNR, mDNS and the stub listener,
  and an empty resolv.conf is bind-mounted, so it never sends a packet of its own.

The lab's service wrapper then enters that mount namespace (``lab.service_prefix``),
so the service under test sees the private system bus; ``resolvectl`` (unpacked too)
queries it the same way.  The test process itself reaches the bus through
``/proc/<dbus pid>/root/run/dbus/system_bus_socket``.

``openresolv_root`` unpacks openresolv and relocates its two compiled-in paths
(``SYSCONFDIR``, ``LIBEXECDIR``) into the unpacked tree, so ``resolvconf.conf``
there decides where it keeps state and which file it writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.lab import Lab, LabProcess, run, wait_until

CACHE = Path(os.environ.get("ISERVICE_TEST_CACHE", "/var/cache/iservice-test"))
RESOLVED_PACKAGES = ("systemd-resolved", "libsystemd-shared", "systemd")
LIBDIR = "usr/lib/x86_64-linux-gnu/systemd"

_DBUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""
_RESOLVED_CONF = ("[Resolve]\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\nDNSStubListener=no\n"
                  "DNSSEC=no\n")
_HOLDER = """set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/dbus /run/systemd/resolved.conf.d
cp "$1/resolved.conf" /run/systemd/resolved.conf.d/isv-test.conf
mount --bind "$1/passwd" /etc/passwd
mount --bind "$1/group" /etc/group
mount --bind "$1/resolv.conf" /etc/resolv.conf
exec dbus-daemon --config-file="$1/dbus.conf" --nofork --nopidfile
"""


def debs(packages: tuple[str, ...]) -> list[Path]:
    """The packages' .deb files (the candidate versions), downloaded once into the cache."""
    d = CACHE / "debs"
    d.mkdir(parents=True, exist_ok=True)
    found = [sorted(d.glob(f"{p}_*.deb")) for p in packages]
    if all(found):
        return [f[-1] for f in found]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cp = run(["apt-get", "download", *packages], check=False, cwd=d, env=env, timeout=300)
    if cp.returncode != 0:  # no package lists yet (a fresh machine)
        run(["apt-get", "update", "-qq"], env=env, timeout=300)
        run(["apt-get", "download", *packages], cwd=d, env=env, timeout=300)
    return [sorted(d.glob(f"{p}_*.deb"))[-1] for p in packages]


def unpacked(packages: tuple[str, ...]) -> Path:
    """``dpkg-deb -x`` of the packages into one cached tree (made once, atomically)."""
    files = debs(packages)
    key = hashlib.sha256("\n".join(f.name for f in files).encode()).hexdigest()[:16]
    root = CACHE / f"root-{key}"
    if not root.is_dir():
        tmp = CACHE / f"root-{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            run(["dpkg-deb", "-x", str(f), str(tmp)], timeout=120)
        try:
            tmp.rename(root)
        except OSError:  # another run made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def openresolv_root(lab: Lab, *, resolv_conf: Path) -> Path:
    """openresolv unpacked into the lab, configured to write ``resolv_conf`` and keep its
    state in the lab; returns the directory (the program is ``<dir>/sbin/resolvconf``)."""
    src = unpacked(("openresolv",))
    root = lab.base_dir / "openresolv"
    shutil.copytree(src, root, symlinks=True)
    exe = root / "sbin" / "resolvconf"
    text = exe.read_text()
    for var, path in (("SYSCONFDIR", root / "etc"), ("LIBEXECDIR", root / "lib" / "resolvconf")):
        old = next(line for line in text.splitlines() if line.startswith(f"{var}="))
        text = text.replace(old, f"{var}={path}", 1)
    exe.write_text(text)
    exe.chmod(0o755)
    state = root / "state"
    state.mkdir()
    (root / "etc" / "resolvconf.conf").write_text(
        f"resolv_conf={resolv_conf}\nstate_dir={state}\n")
    return root


class ResolvedSandbox:
    """systemd-resolved + a private system bus for one lab (see the module text)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.root = unpacked(RESOLVED_PACKAGES)
        self.dir = lab.make_dir("resolved")
        self.bus: LabProcess | None = None
        self.resolved: LabProcess | None = None

    @property
    def resolved_log(self) -> str:
        return _stderr(self.resolved)

    def _files(self) -> None:
        (self.dir / "dbus.conf").write_text(_DBUS_CONF)
        (self.dir / "resolved.conf").write_text(_RESOLVED_CONF)
        (self.dir / "resolv.conf").write_text("# resolved sandbox: no system DNS\n")
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if not any(line.startswith("systemd-resolve:") for line in passwd.splitlines()):
            uid = 60000 + os.getpid() % 5000  # only ever seen inside the sandbox
            passwd += f"systemd-resolve:x:{uid}:{uid}:systemd Resolver:/:/usr/sbin/nologin\n"
            group += f"systemd-resolve:x:{uid}:\n"
        (self.dir / "passwd").write_text(passwd)
        (self.dir / "group").write_text(group)

    def start(self, timeout: float = 15.0) -> None:
        self._files()
        self.bus = self.lab.popen(self.lab.ns_cmd(self.lab.client_ns, [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _HOLDER, "isv-resolved-sandbox", str(self.dir)]), label="dbus-daemon")
        sock = Path(f"/proc/{self.bus.pid}/root/run/dbus/system_bus_socket")
        wait_until(lambda: sock.exists() or self.bus is None or self.bus.poll() is not None,
                   timeout=timeout, what="the sandbox's dbus-daemon")
        if self.bus.poll() is not None:
            raise RuntimeError(f"dbus-daemon exited: {_stderr(self.bus)}")
        self.resolved = self.lab.popen([
            *self.enter(), "env", f"LD_LIBRARY_PATH={self.root / LIBDIR}",
            "SYSTEMD_LOG_LEVEL=debug", str(self.root / "lib/systemd/systemd-resolved")],
            label="systemd-resolved")
        wait_until(lambda: self.resolvectl("status", check=False).returncode == 0
                   or self.resolved is None or self.resolved.poll() is not None,
                   timeout=timeout, what="systemd-resolved on the sandbox bus")
        if self.resolved.poll() is not None:
            raise RuntimeError(f"systemd-resolved exited: {self.resolved_log[-3000:]}")
        self.lab.service_prefix = self.enter()

    def enter(self) -> list[str]:
        """Command prefix: run in the sandbox's mount and network namespaces."""
        assert self.bus is not None
        return ["nsenter", "-F", "-t", str(self.bus.pid), "-m", "-n", "--"]

    @property
    def bus_address(self) -> str:
        assert self.bus is not None
        return f"unix:path=/proc/{self.bus.pid}/root/run/dbus/system_bus_socket"

    def resolvectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.enter(), "env", f"LD_LIBRARY_PATH={self.root / LIBDIR}",
                    str(self.root / "usr/bin/resolvectl"), "--no-pager", *args], check=check)

    def link(self, ifname: str) -> dict[str, str]:
        """``resolvectl dns/domain/default-route/dnssec IFNAME``, each as text ('' if unset);
        {} if resolved does not know the link."""
        out: dict[str, str] = {}
        for what in ("dns", "domain", "default-route", "dnssec"):
            cp = self.resolvectl(what, ifname, check=False)
            if cp.returncode != 0:
                return {}
            out[what] = cp.stdout.partition(":")[2].strip()
        return out

    def method_calls(self, member: str) -> int:
        """How often resolved was called with method ``member`` (from its debug log)."""
        return self.resolved_log.count(f"member={member} ")

    def stop(self) -> None:
        self.lab.service_prefix = None
        for proc in (self.resolved, self.bus):
            if proc is not None and proc.poll() is None:
                proc.end(grace=3)
        self.resolved = self.bus = None


def _stderr(proc: LabProcess | None) -> str:
    # (LabProcess.errors is shadowed by Popen's own ``errors`` attribute)
    if proc is None or proc.stderr_path is None:
        return ""
    return proc.stderr_path.read_text(errors="replace")


def wait_link(sandbox: ResolvedSandbox, ifname: str, pred: object, timeout: float = 10) -> dict[
        str, str]:
    """Poll ``sandbox.link(ifname)`` until ``pred(link)`` holds; returns the link."""
    deadline = time.monotonic() + timeout
    while True:
        link = sandbox.link(ifname)
        if callable(pred) and pred(link):
            return link
        if time.monotonic() > deadline:
            raise AssertionError(f"resolved link {ifname}: {link}")
        time.sleep(0.1)
