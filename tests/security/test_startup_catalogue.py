"""Hostile startup requests against the real service: the documented reply, nothing else.

Rows of docs/security.md: CVE-2018-9336 (malformed startup data, the 1-byte
read), CVE-2024-27903 (script and plugin options), CVE-2026-63649 (``--setenv
opt`` and the other ways to smuggle an option past the whitelist), 2.6.16/2.7
hardening (``stdin`` config, canonical config paths, ``..``, symlinks, sibling
prefixes, unreadable files, working directories), plus catalogue cases.

All cases go to one service, each on its own connection, from one client process
running as an unprivileged lab user.  Each case asserts the exact reply bytes; then
the service must still answer, and nothing may have been started or changed
(routes, addresses, links, nftables, tun devices, journal, the user's processes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.isv import Service, terminate
from tests.lab import Lab, User
from tests.security.helpers import raw_requests, snapshot

from iservice.policy import options as opt
from iservice.wire import startup as w

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

CONFIG = ('You have specified a config file location ({cfg} relative to {wd}) that '
          'requires admin approval. This error may be avoided by adding your account '
          'to the "{group}" group')
OPTION = ('You have specified an option ({opt}) that may be used only with admin '
          'approval. This error may be avoided by adding your account to the '
          '"{group}" group')

# Every openvpn 2.6 option that runs a program, loads code or names a file the
# service-started openvpn would act on: none is in the whitelist (CVE-2024-27903).
SCRIPT_OPTIONS = [
    ("plugin", "/tmp/evil.so"), ("up", "/bin/sh"), ("down", "/bin/sh"),
    ("route-up", "/bin/sh"), ("route-pre-down", "/bin/sh"), ("ipchange", "/bin/sh"),
    ("tls-verify", "/bin/sh"), ("auth-user-pass-verify", "/bin/sh via-env"),
    ("client-connect", "/bin/sh"), ("client-disconnect", "/bin/sh"),
    ("learn-address", "/bin/sh"), ("tls-crypt-v2-verify", "/bin/sh"),
    ("iproute", "/bin/sh"), ("setenv-safe", "opt"), ("cd", "/"), ("chroot", "/"),
    ("writepid", "/etc/passwd"), ("status", "/etc/passwd"), ("daemon", "x"),
    ("dev-node", "/dev/mem"), ("askpass", "/etc/shadow"), ("auth-user-pass", "/etc/shadow"),
    ("up-delay", "x"), ("down-pre", "x"),
    ("dev", "lab-c"), ("lladdr", "00:00:00:00:00:01"), ("route-noexec", "x"),
]


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    func: str  # the expected reply's second line (the message line is empty)
    prefix: bool = False  # func is a prefix (the reason comes from the OS)


def startup(workdir: str, options: str, stdin: str = "") -> bytes:
    return f"{workdir}\0{options}\0{stdin}\0".encode("utf-16-le", "surrogatepass")


def build_cases(lab: Lab, svc: Service) -> list[Case]:
    wd = str(lab.config_dir)
    g = svc.admin_group
    outside = lab.base_dir / "elsewhere" / "own.ovpn"
    sibling = lab.base_dir / f"{lab.config_dir.name}2" / "x.ovpn"

    def cfg(name: str, param: str, cfg_text: str | None = None, workdir: str = wd) -> Case:
        return Case(name, startup(workdir, param),
                    CONFIG.format(cfg=param.split()[-1] if cfg_text is None else cfg_text,
                                  wd=workdir, group=g))

    def option(name: str, options: str, bad: str) -> Case:
        return Case(name, startup(wd, options), OPTION.format(opt=bad, group=g))

    cases = [
        # -- CVE-2018-9336 and the 1-byte read: malformed startup data ------------
        Case("empty", b"", w.FUNC_EMPTY),
        Case("one-byte", b"a", w.FUNC_ODD_LENGTH),
        Case("three-bytes", b"a\0b", w.FUNC_ODD_LENGTH),
        Case("odd-after-valid", startup(wd, "approved.ovpn") + b"\0", w.FUNC_ODD_LENGTH),
        Case("one-unit-no-nul", "a".encode("utf-16-le"), w.FUNC_NOT_TERMINATED),
        Case("no-nul-at-all", "abcdef".encode("utf-16-le"), w.FUNC_NOT_TERMINATED),
        Case("only-nul", b"\0\0", w.FUNC_ENDS_AT_WORKDIR),
        Case("ends-at-workdir", f"{wd}\0".encode("utf-16-le"), w.FUNC_ENDS_AT_WORKDIR),
        Case("ends-at-options", f"{wd}\0approved.ovpn\0".encode("utf-16-le"),
             w.FUNC_ENDS_AT_OPTIONS),
        Case("4097-units", ("x" * 4094 + "\0\0\0").encode("utf-16-le"), w.FUNC_TOO_LONG),
        Case("100k-bytes", b"\x41\x00" * 50000, w.FUNC_TOO_LONG),
        Case("lone-high-surrogate-workdir", startup(wd + "\ud800", "approved.ovpn"),
             w.FUNC_NOT_UTF16),
        Case("lone-low-surrogate-options", startup(wd, "approved.ovpn\udc00"),
             w.FUNC_NOT_UTF16),
        Case("lone-surrogate-stdin", startup(wd, "approved.ovpn", "\udbff"), w.FUNC_NOT_UTF16),
        Case("reversed-pair", startup(wd, "\udc00\ud800"), w.FUNC_NOT_UTF16),
        Case("three-nuls", b"\0\0" * 3, opt._WORKDIR_RELATIVE.format(workdir="")),
        Case("4096-units-long-token", startup(wd, "y" * (4093 - len(wd))),
             "Cannot access the config file", prefix=True),
        # -- working directory ------------------------------------------------------
        Case("workdir-relative", startup("client", "approved.ovpn"),
             opt._WORKDIR_RELATIVE.format(workdir="client")),
        Case("workdir-missing", startup("/nonexistent-isv", "approved.ovpn"),
             opt._WORKDIR_MISSING.format(workdir="/nonexistent-isv")),
        Case("workdir-not-enterable", startup(str(lab.base_dir / "closed"), "approved.ovpn"),
             opt._WORKDIR_MISSING.format(workdir=str(lab.base_dir / "closed"))),
        Case("workdir-is-a-file", startup(f"{wd}/approved.ovpn", "approved.ovpn"),
             opt._WORKDIR_MISSING.format(workdir=f"{wd}/approved.ovpn")),
        Case("no-options", startup(wd, ""), opt._NO_OPTIONS),
        Case("blank-options", startup(wd, "  \t "), opt._NO_OPTIONS),
        # -- config paths (2.6.16 / 2.7 hardening) ------------------------------------
        cfg("config-stdin", "--config stdin"),
        Case("config-stdin-with-data", startup(wd, "--config stdin", "client\nremote x\n"),
             CONFIG.format(cfg="stdin", wd=wd, group=g)),
        cfg("config-twice", "--config approved.ovpn --config approved.ovpn", "approved.ovpn"),
        cfg("config-without-parameter", "--config", ""),
        cfg("config-parameter-is-option", "--config --up", "--up"),
        cfg("config-outside-absolute", f"--config {outside}"),
        cfg("config-dotdot", "--config ../elsewhere/own.ovpn"),
        cfg("config-dotdot-via-subdir", "--config sub/../../elsewhere/own.ovpn"),
        cfg("config-sibling-prefix", f"--config {sibling}"),
        cfg("config-symlink-leaving", "--config out.ovpn"),
        cfg("config-dir-itself", f"--config {wd}"),
        cfg("config-empty-token", '""', ""),
        cfg("config-quoted-split", '--co""nfig ../elsewhere/own.ovpn'),
        cfg("config-single-token-outside", str(outside)),
        Case("config-unreadable", startup(wd, "--config secret.ovpn"),
             opt._CANNOT_READ.format(cfg="secret.ovpn", workdir=wd)),
        Case("config-is-directory", startup(wd, "--config adir.ovpn"),
             opt._CANNOT_READ.format(cfg="adir.ovpn", workdir=wd)),
        Case("config-missing", startup(wd, "--config missing.ovpn"),
             opt._CANNOT_ACCESS.format(cfg="missing.ovpn", workdir=wd,
                                       reason="No such file or directory")),
        Case("config-under-closed-dir", startup(wd, f"--config {lab.base_dir}/closed/x.ovpn"),
             opt._CANNOT_ACCESS.format(cfg=f"{lab.base_dir}/closed/x.ovpn", workdir=wd,
                                       reason="Permission denied")),
        # -- CVE-2026-63649: smuggling past the whitelist -----------------------------
        option("setenv-opt-option", "--config approved.ovpn --setenv opt --up /bin/sh",
               "--setenv"),
        option("setenv-opt-bare", "--config approved.ovpn --setenv opt up /bin/sh",
               "--setenv"),
        option("setenv-opt-quoted", '--config approved.ovpn --setenv "opt" up /bin/sh',
               "--setenv"),
        option("setenv-opt-split-quotes", '--config approved.ovpn --setenv op""t up /bin/sh',
               "--setenv"),
        option("setenv-opt-tabs", "--config approved.ovpn\t--setenv\topt\tup\t/bin/sh",
               "--setenv"),
        option("setenv-opt-config", "--setenv opt config /tmp/evil.ovpn --config approved.ovpn",
               "--setenv"),
        option("setenv-upper-case", "--config approved.ovpn --SETENV opt up /bin/sh",
               "--SETENV"),
        option("option-with-equals", "--config=approved.ovpn", "--config=approved.ovpn"),
        # "" inside quotes is a literal quote that closes the section; the last quote
        # opens one that runs to the end: a single token (CommandLineToArgvW rules)
        option("quoted-option-name", '"--co""nfig" approved.ovpn', '--co"nfig approved.ovpn'),
        option("abbreviation", "--config approved.ovpn --scr 3", "--scr"),
        option("single-dash-dash", "--config approved.ovpn -- up /bin/sh", "--"),
        option("lone-option-token", "--up", "--up"),
        option("option-after-whitelisted-params",
               "--config approved.ovpn --management 127.0.0.1 7505 --plugin x", "--plugin"),
        option("pull-filter-then-up", "--config approved.ovpn --pull-filter ignore x --up y",
               "--up"),
        option("quotes-inside-name", '--config approved.ovpn "--u"p /bin/sh', "--up"),
        option("backslash-in-name", "--config approved.ovpn --u\\p /bin/sh", "--u\\p"),
        option("escaped-quote-then-option",
               '--config approved.ovpn --verb \\"3 --up /bin/sh', "--up"),
    ]
    # -- CVE-2024-27903: every script and plugin option -----------------------------
    for name, param in SCRIPT_OPTIONS:
        cases.append(option(f"script-option-{name}", f"--config approved.ovpn --{name} {param}",
                            f"--{name}"))
    return cases


@pytest.fixture(scope="module")
def catalogue(lab: Lab) -> Iterator[dict[str, Any]]:
    """Run every case once against one service; yields the outcome of each."""
    svc = Service(lab, name="seccat", extra="dns_backend = none\n")
    outside = lab.write_file("elsewhere/own.ovpn", lab.client_config_text())
    lab.write_file(f"{lab.config_dir.name}2/x.ovpn", lab.client_config_text())
    lab.write_file(f"{lab.config_dir.name}/secret.ovpn", "client\n", mode=0o600)
    lab.make_dir(f"{lab.config_dir.name}/adir.ovpn")
    lab.make_dir(f"{lab.config_dir.name}/sub")
    lab.make_dir("closed", mode=0o700)
    link = lab.config_dir / "out.ovpn"
    if not link.is_symlink():
        link.symlink_to(outside)
    user = lab.add_user("isvc")
    svc.start()
    try:
        before = snapshot(lab, svc, user)
        cases = build_cases(lab, svc)
        results = raw_requests(lab, svc, user, [c.payload for c in cases])
        after = snapshot(lab, svc, user)
        yield {"cases": {c.name: (c, r) for c, r in zip(cases, results, strict=True)},
               "before": before, "after": after, "svc": svc, "log": svc.log(), "user": user}
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            assert svc.stop() == 0, svc.log_tail()
        link.unlink(missing_ok=True)


def _names() -> list[str]:
    # The case names, known without a lab (a fake Lab/Service only for the names).
    class _P:
        def __truediv__(self, other: object) -> _P:
            return self

        name = "client"

        def __str__(self) -> str:
            return "/x"

    class _L:
        config_dir = base_dir = _P()

    class _S:
        admin_group = "g"

    return [c.name for c in build_cases(_L(), _S())]  # type: ignore[arg-type]


CASE_NAMES = _names()


def test_catalogue_is_big_enough() -> None:
    assert len(CASE_NAMES) >= 60 and len(set(CASE_NAMES)) == len(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_case_gets_the_documented_reply(catalogue: dict[str, Any], name: str) -> None:
    case, result = catalogue["cases"][name]
    replies = result["replies"]
    assert len(replies) == 1, (name, replies)
    reply = w.decode_reply(replies[0])
    assert isinstance(reply, w.ErrorReply), reply
    assert reply.code == 0x20000001, reply
    if case.prefix:
        assert reply.func.startswith(case.func), reply.func
    else:
        assert reply.func == case.func
        assert replies[0] == f"0x20000001\n{case.func}\n".encode("utf-16-le")
    assert result["seconds"] < 5  # answered at once (the timeout case is separate)


def test_catalogue_left_nothing_and_the_service_is_unharmed(catalogue: dict[str, Any]) -> None:
    svc: Service = catalogue["svc"]
    assert catalogue["before"] == catalogue["after"]
    assert svc.proc is not None and svc.proc.poll() is None
    assert svc.connectable()
    log = catalogue["log"]
    assert "event=started" not in log and "session-bug" not in log and "Traceback" not in log
    # one audit line per refused request, with who and why
    user: User = catalogue["user"]
    refused = [x for x in log.splitlines() if "event=refused" in x]
    assert len(refused) == len(CASE_NAMES)
    assert all(f"uid={user.uid}" in x and "verdict=refused" in x and "reason=" in x
               for x in refused)


def test_config_swapped_after_the_check_changes_nothing(lab: Lab, svc: Service,
                                                        user: User) -> None:
    """The approved path goes to openvpn resolved, so swapping a symlink is too late."""
    link = user.home / "mine.ovpn"
    os.symlink(lab.config_dir / "approved.ovpn", link)
    os.lchown(link, user.uid, user.gid)
    cp = svc.start_as(user, "--config", str(link), workdir=user.home)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    pid = int(cp.stdout.strip())
    # the race: the user points the link elsewhere right after the check
    evil = lab.write_file(f"home/{user.name}/evil.ovpn", "client\n", owner=user)
    link.unlink()
    os.symlink(evil, link)
    started = [x for x in svc.log().splitlines() if "event=started" in x]
    assert len(started) == 1
    assert f"--config {lab.config_dir / 'approved.ovpn'}" in started[0]
    assert str(link) not in started[0]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert str(lab.config_dir / "approved.ovpn").encode() in argv
    assert str(link).encode() not in argv
    terminate(pid, lambda: not svc.tuns() and not svc.journal()["sessions"])
