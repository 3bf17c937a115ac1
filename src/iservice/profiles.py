"""Users' own profiles, the service's side (``docs/profiles.md``): read an imported file
with the user's rights, store the result root-owned per user, list and remove it.

Layout: ``state_dir/profiles/<uid>/<name>.ovpn``.  Everything is root's and mode
0700/0600; the owner alone gets a POSIX ACL entry (``user:<uid>:--x`` on the
directories, ``user:<uid>:r--`` on the file), because openvpn runs as the user and
reads the profile itself, while nobody else may even learn which profiles exist.
``grant_path`` re-applies the directory entries at every listing and import, and
``grant_all`` every user's at the service's start: a ``chmod`` of ``state_dir``
(systemd's ``StateDirectoryMode=`` at each start) clears the ACL mask.  The user can
read their profile but never change it: what openvpn reads is exactly what
``policy.profile`` accepted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct

from iservice.policy import profile as pp
from iservice.wire import control as wc

PROFILES = "profiles"
SUFFIX = ".ovpn"
MAX_OWN_PROFILES = 100

# Linux's system.posix_acl_access layout: a version word, then (tag, perm, id) entries.
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF


def profile_dir(state_dir: str, uid: int) -> str:
    """The directory of ``uid``'s own profiles (an approved config location for that
    user only: ``policy.options.validate_options``'s ``user_profile_dir``)."""
    return os.path.join(state_dir, PROFILES, str(uid))


def acl_entries(raw: bytes) -> list[tuple[int, int, int]]:
    """The (tag, perm, id) entries of a ``system.posix_acl_access`` value."""
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != _ACL_VERSION or (len(raw) - 4) % 8:
        raise ValueError("not a POSIX ACL")
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8)]


def acl_bytes(mode: int, grants: dict[int, int]) -> bytes:
    """The ACL of a file with ``mode`` plus ``user:uid:perm`` for each of ``grants``."""
    group = (mode >> 3) & 7
    mask = group
    for perm in grants.values():
        mask |= perm
    entries = [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED_ID),
               *((_USER, perm, uid) for uid, perm in sorted(grants.items())),
               (_GROUP_OBJ, group, _UNDEFINED_ID), (_MASK, mask, _UNDEFINED_ID),
               (_OTHER, mode & 7, _UNDEFINED_ID)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _grant(path: str, uid: int, perm: int) -> None:
    """Give ``uid`` ``perm`` on ``path`` besides the users it has already been given to;
    the mode's own bits stay, the mask is recomputed (a chmod may have cleared it)."""
    if uid == 0:
        return
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    grants: dict[int, int] = {}
    try:
        raw = os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
        grants = {i: p for tag, p, i in acl_entries(raw) if tag == _USER}
        # the owner's bits come from the mode: with an ACL, the group bits show the mask
        mode = (mode & 0o707) | (next(p for tag, p, _ in acl_entries(raw)
                                      if tag == _GROUP_OBJ) << 3)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    grants[uid] = perm
    try:
        os.setxattr(path, "system.posix_acl_access", acl_bytes(mode, grants),
                    follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(exc.errno, f"the file system of {path} has no POSIX ACLs, which "
                                     "users' own profiles need") from None
        raise


def _private_dir(path: str) -> None:
    """A root-owned 0700 directory (made if missing); refuses anything else there."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise OSError(errno.EPERM, f"{path} is not a directory of root's")


def grant_path(state_dir: str, uid: int) -> str:
    """Make ``uid``'s profile directory (if needed) and let ``uid`` traverse to it."""
    base = os.path.join(state_dir, PROFILES)
    mine = profile_dir(state_dir, uid)
    _private_dir(base)
    _private_dir(mine)
    for path in (state_dir, base, mine):
        _grant(path, uid, 1)  # --x: enter, not list
    return mine


def grant_all(state_dir: str) -> list[str]:
    """At the service's start: every user's entries again (systemd's
    ``StateDirectoryMode=`` chmods ``state_dir`` before each start, which clears the ACL
    mask), so a user who starts openvpn with their profile's path — not by name, which
    lists first — can still reach it.  Returns the problems met (one per user)."""
    base = os.path.join(state_dir, PROFILES)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    problems = []
    for name in sorted(names):
        if not name.isascii() or not name.isdigit():
            continue
        try:
            grant_path(state_dir, int(name))
        except OSError as exc:
            problems.append(f"{os.path.join(base, name)}: {exc.strerror or exc}")
    return problems


def list_own(state_dir: str, uid: int) -> list[wc.Profile]:
    """``uid``'s own profiles (root reads the directory; the user cannot list it)."""
    mine = profile_dir(state_dir, uid)
    try:
        names = sorted(os.listdir(mine))
    except FileNotFoundError:
        return []
    if uid != 0:
        grant_path(state_dir, uid)
    return [wc.Profile(n[: -len(SUFFIX)], os.path.join(mine, n), own=True)
            for n in names if n.endswith(SUFFIX) and pp.valid_profile_name(n[: -len(SUFFIX)])]


def save(state_dir: str, uid: int, name: str, text: str, *, replace: bool) -> wc.Profile:
    """Store ``text`` as ``uid``'s profile ``name`` (root-owned, readable by ``uid`` only)."""
    mine = grant_path(state_dir, uid)
    path = os.path.join(mine, name + SUFFIX)
    if os.path.lexists(path) and not replace:
        raise FileExistsError(errno.EEXIST, f"you already have a profile {name!r}")
    if not os.path.lexists(path) and len(list_own(state_dir, uid)) >= MAX_OWN_PROFILES:
        raise OSError(errno.EDQUOT, f"at most {MAX_OWN_PROFILES} profiles of your own")
    tmp = os.path.join(mine, f".{name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _grant(tmp, uid, 4)  # r--
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return wc.Profile(name, path, own=True)


def remove(state_dir: str, uid: int, name: str) -> bool:
    """Delete ``uid``'s profile ``name``; False if there is none."""
    if not pp.valid_profile_name(name):
        return False
    try:
        os.unlink(os.path.join(profile_dir(state_dir, uid), name + SUFFIX))
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- as the user


def _read_limited(path: str) -> bytes:
    """A regular file's bytes, at most ``MAX_PROFILE_BYTES`` (run with the user's rights)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        data = b""
        while len(data) <= pp.MAX_PROFILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        if len(data) > pp.MAX_PROFILE_BYTES:
            raise OSError(errno.EFBIG, f"{path} is larger than {pp.MAX_PROFILE_BYTES} bytes")
        return data
    finally:
        os.close(fd)


def read_and_render(path: str) -> str:
    """Read the config at ``path`` and every file it names, judge and render it.

    Run in a thread holding the user's file-system rights (``run_as_fs_user``): every
    open is the user's own.  Relative file names are taken from the config's directory,
    as openvpn does when started in it.  Raises ``ProfileError`` (the profile's problems)
    or ``OSError`` (a file cannot be read with the user's rights)."""
    raw = _read_limited(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise pp.ProfileError([pp.Problem(0, "", "the file is not UTF-8 text")]) from None
    plan = pp.examine(pp.parse(text))
    base = os.path.dirname(path)
    contents: dict[str, bytes] = {}
    for ref in plan.files:
        full = os.path.join(base, ref.path)
        try:
            contents[ref.path] = _read_limited(full)
        except OSError as exc:
            raise pp.ProfileError([pp.Problem(ref.line, ref.option,
                                              f"cannot read {ref.path} with your rights: "
                                              f"{exc.strerror or exc}")]) from None
    return pp.render(plan, contents, source=os.path.basename(path))
