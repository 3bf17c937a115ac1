"""Option validation and the authorization decision for a client request (SPEC §3).

``validate_options`` is a pure decision: it sees the file system only through the
injected ``PathResolver``, which the service runs with the *requesting user's*
rights (SPEC §3: "every file-system check made for a user is made with that
user's rights").  It returns the argv to hand to openvpn, or raises
``StartupDataError`` carrying the reply for the client.

Rules, in order
---------------
1. Every string must be encodable as UTF-8 and free of NUL (it becomes an
   ``execve`` argument or a path); otherwise refused, for admins too.
2. ``workdir`` must be absolute, and ``resolver.is_dir(workdir)`` true (a
   directory the user can enter) -- for admins too.
3. ``options`` is split with ``CommandLineToArgvW`` rules (``argv.py``).  No
   tokens: refused.  A single token that does not start with ``--`` means
   ``--config <token>`` (openvpn's own rule for a lone argument; a lone
   ``--option`` stays an option and is checked as one).
4. Every token starting with ``--`` is an option named by the rest (exact,
   case-sensitive -- openvpn has no abbreviations and no case folding); other
   tokens are parameters and are skipped, as in the original.  For an option:

   * ``--config`` -- the next token is the config parameter.  For non-admins it
     must pass the config check below; for admins it is resolved when possible.
   * non-admin and the name is not in ``WHITELIST`` -> the option sentence.
   * non-admin ``--setenv opt`` (exact ``opt``, as openvpn's ``streq``) -> the
     option sentence: openvpn applies ``setenv opt <option> ...`` as
     ``<option> ...``, which would smuggle any option (CVE-2026-63649).
     ``--setenv OPT x`` is harmless and allowed.

Smuggling routes closed for non-admins (each refused with the config sentence)
------------------------------------------------------------------------------
* ``--config`` without a parameter, or whose parameter starts with ``--``:
  openvpn's argv parser ends an option's parameters at the next ``--`` token,
  so the token we would check is not the one openvpn uses.
* ``--config`` given twice: openvpn would read both, and the session records a
  single approved config; one is enough for a legitimate client.
* ``--config stdin``: openvpn reads the config from stdin, which the user
  supplies (the original's a3d8c402 rule; exact ``stdin`` as openvpn's
  ``streq``).
* Quoting tricks need no special rule: whatever the split yields is exactly the
  argv openvpn receives (``--co""nfig`` *is* ``--config`` and is checked as
  such; ``"--co""nfig"`` is ``--co"nfig`` and is not whitelisted).
* Every ``--`` token is checked, parameters included, so ``--setenv X --up``
  still refuses ``--up``.

Config check (non-admins; stricter than the original's lexical prefix test)
---------------------------------------------------------------------------
* ``user_profile_dir`` (the caller's own imported profiles, ``iservice import``;
  ``None`` unless ``user_profiles`` is on) is approved like ``config_dir``, for
  that caller only: the service passes each user their own directory alone.
* path = ``workdir/cfg`` when relative, else ``cfg``;
  resolved = ``resolver.realpath(path)`` (symlinks followed, must exist).
  ``OSError`` -> the "cannot access" sentence: the file is missing or the user
  cannot reach it, and asking for admin approval would not help.
* ``config_dir`` is resolved through the *same* resolver on every call, so an
  administrator's symlinked config_dir works and both paths are seen from the
  same view with the same rights.  If it cannot be resolved nothing is inside it.
* resolved must lie strictly inside resolved config_dir, compared by whole
  path components (``/etc/openvpn/client2/x`` is not inside
  ``/etc/openvpn/client``) -> else the config sentence.
* the file must not be a directory and must be readable with the user's
  rights (``resolver.can_read``) -> else the "cannot be read" sentence (outside
  the approval question: openvpn runs as the user and could not read it).
* The returned argv carries the resolved absolute path instead of the user's
  parameter, so a symlink swapped after the check changes nothing.

Admins (uid 0 or ``ovpn_admin_group``) may use any option and any config path.
Their config parameter is replaced by its resolved absolute path when it
resolves; if it does not (or is ``stdin``, or starts with ``--``) it is kept as
given and openvpn reports the problem itself.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Protocol

from iservice.errors import StartupDataError
from iservice.policy.argv import split_command_line

__all__ = [
    "WHITELIST",
    "Approved",
    "OsPathResolver",
    "PathResolver",
    "validate_options",
]

WHITELIST: frozenset[str] = frozenset(
    {
        "auth-retry",
        "config",
        "log",
        "log-append",
        "management",
        "management-forget-disconnect",
        "management-hold",
        "management-query-passwords",
        "management-query-proxy",
        "management-signal",
        "management-up-down",
        "mute",
        "setenv",
        "service",
        "verb",
        "pull-filter",
        "script-security",
    }
)

# The original's sentences (validate.c), kept byte for byte: clients may match them.
_CONFIG_SENTENCE = (
    "You have specified a config file location ({cfg} relative to {workdir}) that "
    "requires admin approval. This error may be avoided by adding your account to "
    'the "{group}" group'
)
_OPTION_SENTENCE = (
    "You have specified an option ({opt}) that may be used only with admin approval. "
    'This error may be avoided by adding your account to the "{group}" group'
)
# Our own sentences, for failures that admin approval would not cure.
_CANNOT_ACCESS = (
    "Cannot access the config file ({cfg} relative to {workdir}) with your "
    "account's rights: {reason}"
)
_CANNOT_READ = (
    "The config file ({cfg} relative to {workdir}) is not a file your account can read"
)
_WORKDIR_RELATIVE = "Working directory ({workdir}) is not an absolute path"
_WORKDIR_MISSING = (
    "Working directory ({workdir}) does not exist or cannot be entered with your "
    "account's rights"
)
_NO_OPTIONS = "No options given: at least a config file is needed"
_BAD_TEXT = "The working directory or the options contain NUL or text that is not valid Unicode"


class PathResolver(Protocol):
    """The file-system view of the requesting user (the service runs it with their rights)."""

    def realpath(self, path: str) -> str:
        """Absolute path with every symlink resolved; ``OSError`` if missing or unreachable."""
        ...

    def is_dir(self, path: str) -> bool:
        """True if ``path`` is a directory the user can enter."""
        ...

    def can_read(self, path: str) -> bool:
        """True if the user may read the file at ``path``."""
        ...


class OsPathResolver:
    """``PathResolver`` over ``os.path``, with the *calling process's* rights.

    The service calls it in a context that carries the user's credentials
    (a child that dropped to the user's uid/gid/groups); tests use it directly.
    ``can_read`` checks the effective ids (``faccessat(AT_EACCESS)``), so it is
    also right in a process that changed only its effective uid.
    Text that cannot be a path (NUL, unencodable surrogates) is "missing".
    """

    def realpath(self, path: str) -> str:
        try:
            return os.path.realpath(path, strict=True)
        except ValueError as exc:  # embedded NUL, unencodable surrogate
            raise FileNotFoundError(f"not a usable path: {exc}") from None

    def is_dir(self, path: str) -> bool:
        try:
            return os.path.isdir(path) and _access(path, os.X_OK)
        except ValueError:
            return False

    def can_read(self, path: str) -> bool:
        try:
            return _access(path, os.R_OK)
        except ValueError:
            return False


def _access(path: str, mode: int) -> bool:
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)  # pragma: no cover - Linux supports effective ids


@dataclass(frozen=True)
class Approved:
    """What may be started: openvpn's user options, and the approved config, if any.

    ``argv`` excludes the program name; ``config`` is the resolved absolute path of
    the (last) ``--config`` that resolved, or None.
    """

    argv: tuple[str, ...]
    config: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.argv, tuple) or not self.argv:
            raise ValueError("Approved.argv must be a non-empty tuple")
        for arg in self.argv:
            if not isinstance(arg, str) or "\x00" in arg:
                raise ValueError("Approved.argv holds only strings without NUL")
        if self.config is not None and not posixpath.isabs(self.config):
            raise ValueError("Approved.config must be absolute")


def _refuse(sentence: str) -> StartupDataError:
    return StartupDataError(sentence)


def _usable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")  # lone surrogates cannot become an argv byte string
    except UnicodeEncodeError:
        return False
    return True


def _inside(path: str, directory: str) -> bool:
    """True if ``path`` lies strictly below ``directory``, by whole components."""
    if directory == "/":
        return path != "/" and path.startswith("/")
    return path.startswith(directory.rstrip("/") + "/")


def _resolve_or_none(resolver: PathResolver, path: str) -> str | None:
    try:
        resolved = resolver.realpath(path)
    except OSError:
        return None
    return resolved if posixpath.isabs(resolved) else None


def _check_config(
    cfg: str,
    workdir: str,
    *,
    config_dir: str,
    admin_group: str,
    resolver: PathResolver,
    user_profile_dir: str | None = None,
) -> str:
    """The non-admin config check; returns the resolved path or raises."""
    approval = _CONFIG_SENTENCE.format(cfg=cfg, workdir=workdir, group=admin_group)
    if cfg == "stdin" or cfg.startswith("--"):
        raise _refuse(approval)
    path = posixpath.join(workdir, cfg)  # an absolute cfg replaces workdir
    try:
        resolved = resolver.realpath(path)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise _refuse(_CANNOT_ACCESS.format(cfg=cfg, workdir=workdir, reason=reason)) from None
    approved = [b for b in (_resolve_or_none(resolver, d)
                            for d in (config_dir, user_profile_dir) if d is not None)
                if b is not None]
    if not posixpath.isabs(resolved) or not any(_inside(resolved, b) for b in approved):
        raise _refuse(approval)
    if resolver.is_dir(resolved) or not resolver.can_read(resolved):
        raise _refuse(_CANNOT_READ.format(cfg=cfg, workdir=workdir))
    return resolved


def validate_options(
    options: str,
    workdir: str,
    *,
    config_dir: str,
    admin_group: str,
    is_admin: bool,
    resolver: PathResolver,
    user_profile_dir: str | None = None,
) -> Approved:
    """Decide whether ``options`` may be run from ``workdir`` (rules in the module doc).

    Raises ``StartupDataError`` (``ERROR_STARTUP_DATA``, the sentence as ``func``,
    empty message) when not; ``ValueError`` only for a caller bug (a relative
    ``config_dir``).
    """
    if not posixpath.isabs(config_dir):
        raise ValueError(f"config_dir must be absolute, got {config_dir!r}")
    if not (_usable_text(options) and _usable_text(workdir)):
        raise _refuse(_BAD_TEXT)
    if not posixpath.isabs(workdir):
        raise _refuse(_WORKDIR_RELATIVE.format(workdir=workdir))
    if not resolver.is_dir(workdir):
        raise _refuse(_WORKDIR_MISSING.format(workdir=workdir))

    argv = split_command_line(options)
    if not argv:
        raise _refuse(_NO_OPTIONS)
    if len(argv) == 1 and not argv[0].startswith("--"):
        argv = ["--config", argv[0]]

    final = list(argv)
    config: str | None = None
    seen_config = False
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue  # a parameter
        name = token[2:]
        param = argv[i + 1] if i + 1 < len(argv) else None

        if name == "config":
            if is_admin:
                if param is not None and param != "stdin" and not param.startswith("--"):
                    resolved = _resolve_or_none(resolver, posixpath.join(workdir, param))
                    if resolved is not None:
                        final[i + 1] = resolved
                        config = resolved
            else:
                if param is None or seen_config:
                    raise _refuse(
                        _CONFIG_SENTENCE.format(
                            cfg=param or "", workdir=workdir, group=admin_group
                        )
                    )
                config = _check_config(
                    param,
                    workdir,
                    config_dir=config_dir,
                    admin_group=admin_group,
                    resolver=resolver,
                    user_profile_dir=user_profile_dir,
                )
                final[i + 1] = config
            seen_config = True

        if is_admin:
            continue
        if name not in WHITELIST or (name == "setenv" and param == "opt"):
            raise _refuse(_OPTION_SENTENCE.format(opt=token, group=admin_group))

    return Approved(argv=tuple(final), config=config)
