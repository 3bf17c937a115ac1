"""Lab users and groups: system accounts made with shadow-utils, and commands run as them."""

from __future__ import annotations

import pwd
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.lab.procs import LabError, run

# PATH given to commands run as a lab user (they get a clean environment).
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@dataclass(frozen=True)
class User:
    """A lab user (system account, no login shell); removed when the lab closes."""

    name: str
    uid: int
    gid: int
    home: Path
    groups: tuple[str, ...] = ()


def check_name(name: str, prefix: str) -> str:
    """``name`` if it is a valid account name made from a sane ``prefix``."""
    if len(name) > 32 or not prefix.replace("-", "").isalnum() or not prefix[:1].isalpha():
        raise ValueError(f"bad user/group name {name!r} (prefix must be short, alphanumeric)")
    return name


def create_group(name: str) -> None:
    retry_locked(["groupadd", "--system", name])


def create_user(name: str, *, home: Path, comment: str, groups: Sequence[str] = ()) -> User:
    """A system user with its own group, no login shell, ``home`` (not created here)."""
    argv = ["useradd", "--system", "--no-create-home", "--home-dir", str(home),
            "--shell", "/usr/sbin/nologin", "--user-group", "--comment", comment]
    if groups:
        argv += ["--groups", ",".join(groups)]
    retry_locked([*argv, name])
    pw = pwd.getpwnam(name)
    return User(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=home, groups=tuple(groups))


def uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def delete_user(name: str) -> None:
    """userdel (if the user exists) and its own group if userdel left it."""
    if uid_of(name) is not None:
        retry_locked(["userdel", name])
    delete_group(name)


def delete_group(name: str) -> None:
    if run(["getent", "group", name], check=False).returncode == 0:
        retry_locked(["groupdel", name])


def env_args(env: Mapping[str, str]) -> list[str]:
    """``NAME=value`` arguments for ``env``; refuses names that would not be names."""
    for key in env:
        if not key or "=" in key:
            raise ValueError(f"bad environment variable name {key!r}")
    return [f"{k}={v}" for k, v in env.items()]


def as_user(argv: Sequence[str], user: User | None, env: Mapping[str, str] | None) -> list[str]:
    """``argv`` as ``user`` (setpriv with the user's ids and groups, a clean environment
    plus ``env``), or as it is (with ``env`` added) when ``user`` is None."""
    if user is None:
        return list(argv) if env is None else ["env", *env_args(env), *argv]
    clean = {"PATH": USER_PATH, "HOME": str(user.home), "USER": user.name,
             "LOGNAME": user.name, "LANG": "C.UTF-8", **(env or {})}
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
            "--", "env", "-i", *env_args(clean), *argv]


def retry_locked(argv: Sequence[str], attempts: int = 20) -> None:
    """Run a shadow-utils command, retrying while another process holds the passwd lock."""
    for i in range(attempts):
        cp = run(argv, check=False)
        if cp.returncode == 0:
            return
        if "lock" not in cp.stderr.lower() or i == attempts - 1:
            raise LabError(f"{' '.join(argv)} failed (exit {cp.returncode}): {cp.stderr.strip()}")
        time.sleep(0.1 + secrets.randbelow(100) / 1000)
