"""Users' own profiles (``iservice import``, ``docs/profiles.md``): parse an openvpn
config, judge every directive, and render the result with every file inline.

Pure: text in, typed values out; the service reads the files (with the user's rights)
between ``examine`` and ``render``.

* ``parse`` reads openvpn 2.6's config syntax exactly as ``options.c`` does
  (``parse_line``, ``check_inline_file``): tokens split at blanks; ``"…"`` with ``\\\\``,
  ``\\"`` and ``\\ `` escapes; ``'…'`` literally; a ``#`` or ``;`` where a token would
  start ends the line; a leading ``--`` is dropped from the option name; a line whose
  only token is ``<tag>`` opens an inline block closed by a line that starts (after
  blanks) with ``</tag>``.  What openvpn would silently cut or split (more than 16
  tokens, a token over 255 characters, a line over 255 characters) and what it refuses
  (a bad backslash, an open quote, a block without its end tag, NUL) is refused here.
* ``examine`` judges each directive by ``REFUSED`` (a reason per directive), the
  file-taking options (``FILE_OPTIONS``: read as the user and inlined), and openvpn's
  own option list (``OPENVPN_OPTIONS``, from openvpn 2.6's ``options.c``): anything
  not in that list is refused.  ``<connection>`` blocks are examined the same way.
* ``render`` writes the accepted directives back in a canonical form, each file as
  an inline block, so the stored profile is exactly what was judged
  (``parse(render(x))`` gives the same directives: a property test).

Errors say whose fault: ``ProfileError`` (the user's file) carries every problem found,
each with its line number, directive and reason.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "FILE_OPTIONS",
    "INLINE_BLOCKS",
    "MAX_PROFILE_BYTES",
    "OPENVPN_OPTIONS",
    "REFUSED",
    "Directive",
    "FileRef",
    "Plan",
    "Problem",
    "ProfileError",
    "examine",
    "parse",
    "render",
    "valid_profile_name",
]

MAX_PARMS = 16  # openvpn's MAX_PARMS: tokens past it are dropped silently
MAX_TOKEN = 255  # OPTION_PARM_SIZE - 1
MAX_LINE = 255  # OPTION_LINE_SIZE - 1 characters before the newline
MAX_PROFILE_BYTES = 1 << 20  # the imported file, and each file it refers to
MAX_DIRECTIVES = 2000

# Every option openvpn 2.6.14's options.c knows (``streq(p[0], "…")`` in add_option).
OPENVPN_OPTIONS: frozenset[str] = frozenset("""
allow-compression allow-nonadmin allow-pull-fqdn allow-recursive-routing askpass auth
auth-gen-token auth-gen-token-secret auth-nocache auth-retry auth-token auth-token-user
auth-user-pass auth-user-pass-optional auth-user-pass-verify bcast-buffers bind bind-dev
block-ipv6 block-outside-dns ca capath ccd-exclusive cd cert chroot cipher client
client-cert-not-required client-config-dir client-connect client-crresponse
client-disconnect client-nat client-to-client comp-lzo comp-noadapt compat-mode compat-names
compress config connect-freq connect-freq-initial connect-retry connect-retry-max
connect-timeout connection crl-verify cryptoapicert daemon data-ciphers data-ciphers-fallback
dev dev-node dev-type dh dhcp-internal dhcp-option dhcp-pre-release dhcp-release dhcp-renew
disable disable-dco disable-occ dns down down-pre duplicate-cn ecdh-curve echo engine
errors-to-stderr explicit-exit-notify extra-certs fast-io float
force-tls-key-material-export fragment genkey gremlin group hand-window hash-size help
http-proxy http-proxy-option http-proxy-override http-proxy-retry http-proxy-timeout
http-proxy-user-pass ifconfig ifconfig-ipv6 ifconfig-ipv6-pool ifconfig-ipv6-push
ifconfig-noexec ifconfig-nowarn ifconfig-pool ifconfig-pool-persist ifconfig-push
ifconfig-push-constraint ignore-unknown-option inactive ip-remote-hint ip-win32 ipchange
iproute iroute iroute-ipv6 keepalive key key-derivation key-direction
keying-material-exporter learn-address link-mtu lladdr local log log-append lport
machine-readable-output management management-client management-client-auth
management-client-group management-client-user management-external-cert
management-external-key management-forget-disconnect management-hold management-log-cache
management-query-passwords management-query-proxy management-query-remote management-signal
management-up-down mark max-clients max-packet-size max-routes max-routes-per-client
memstats mktun mlock mode msg-channel mssfix mtu-disc mtu-dynamic mtu-test multihome mute
mute-replay-warnings ncp-ciphers nice no-name-remapping no-replay nobind ns-cert-type
opt-verify parameter passtos pause-exit peer-fingerprint peer-id persist-key
persist-local-ip persist-remote-ip persist-tun ping ping-exit ping-restart ping-timer-rem
pkcs11-cert-private pkcs11-id pkcs11-id-management pkcs11-pin-cache pkcs11-private-mode
pkcs11-protected-authentication pkcs11-providers pkcs12 plugin port port-share preresolve
prng proto proto-force protocol-flags providers pull pull-filter push push-continuation
push-peer-info push-remove push-reset rcvbuf rdns-internal redirect-gateway
redirect-private register-dns remap-usr1 remote remote-cert-eku remote-cert-ku
remote-cert-tls remote-random remote-random-hostname reneg-bytes reneg-pkts reneg-sec
replay-persist replay-window resolv-retry rmtun route route-delay route-gateway route-ipv6
route-ipv6-gateway route-method route-metric route-noexec route-nopull route-pre-down
route-up rport script-security secret server server-bridge server-ipv6 server-poll-timeout
service session-timeout setcon setenv setenv-safe shaper show-adapters show-ciphers
show-curves show-digests show-engines show-gateway show-groups show-net show-net-up
show-pkcs11-ids show-tls show-valid-subnets single-session sndbuf socket-flags socks-proxy
socks-proxy-retry stale-routes-check static-challenge status status-version
suppress-timestamps syslog tap-sleep tcp-nodelay tcp-queue-limit test-crypto tls-auth
tls-cert-profile tls-cipher tls-ciphersuites tls-client tls-crypt tls-crypt-v2
tls-crypt-v2-verify tls-exit tls-export-cert tls-groups tls-server tls-timeout tls-verify
tls-version-max tls-version-min tmp-dir topology tran-window tun-ipv6 tun-mtu tun-mtu-extra
tun-mtu-max txqueuelen udp-mtu up up-delay up-restart use-prediction-resistance user
username-as-common-name verb verify-client-cert verify-hash verify-x509-name version
vlan-accept vlan-pvid vlan-tagging win-sys windows-driver writepid x509-track
x509-username-field
""".split())  # noqa: SIM905 (one list, wrapped: easier to compare with options.c)

_PROGRAM = "runs a program (profiles you import may not run programs)"
_LOADS = "loads a library or plugin into openvpn"
_IDENTITY = "changes openvpn's user, group, root or security context: it already runs as you"
_OUTPUT = ("sends openvpn's output elsewhere or detaches it: the service must see it "
           "(iservice log, the session's state, full-tunnel detection)")
_WRITES = "writes a file"
_INCLUDE = "reads another configuration file: import that file itself"
_CD = "changes where openvpn looks for files: an imported profile carries its files inline"
_SERVICE = "the service sets this up itself"
_SERVER = "a server option: imported profiles are client profiles"
_STANDALONE = "a standalone command, not a connection"
_CREDENTIALS = ("credentials are not stored in profiles: `iservice connect "
                "--save-credentials` keeps them in your keyring")
_DIRECTORY = "names a directory, which cannot be carried inline"
_DEVICE = "opens a device file"

# A reason per directive refused in an imported profile (docs/profiles.md has the table).
REFUSED: Mapping[str, str] = {
    **dict.fromkeys(["up", "down", "route-up", "route-pre-down", "ipchange", "tls-verify",
                     "client-connect", "client-disconnect", "learn-address",
                     "auth-user-pass-verify", "iproute", "tls-crypt-v2-verify"], _PROGRAM),
    **dict.fromkeys(["plugin", "engine", "providers", "pkcs11-providers"], _LOADS),
    **dict.fromkeys(["user", "group", "chroot", "setcon"], _IDENTITY),
    **dict.fromkeys(["daemon", "log", "log-append", "syslog"], _OUTPUT),
    **dict.fromkeys(["status", "writepid", "replay-persist", "ifconfig-pool-persist",
                     "tls-export-cert", "memstats"], _WRITES),
    "config": _INCLUDE,
    "cd": _CD,
    "capath": _DIRECTORY,
    "tmp-dir": _DIRECTORY,
    "dev-node": _DEVICE,
    **dict.fromkeys(["management", "management-client", "management-client-user",
                     "management-client-group", "msg-channel", "mktun", "rmtun"], _SERVICE),
    **dict.fromkeys(["mode", "server", "server-bridge", "server-ipv6", "tls-server",
                     "client-config-dir", "ccd-exclusive", "client-to-client", "duplicate-cn",
                     "ifconfig-pool", "ifconfig-ipv6-pool", "ifconfig-push",
                     "ifconfig-ipv6-push", "ifconfig-push-constraint", "iroute", "iroute-ipv6",
                     "push", "push-reset", "push-remove", "max-clients",
                     "max-routes-per-client", "auth-gen-token", "auth-gen-token-secret",
                     "auth-user-pass-optional", "client-cert-not-required",
                     "verify-client-cert", "username-as-common-name", "opt-verify",
                     "connect-freq", "connect-freq-initial", "hash-size", "bcast-buffers",
                     "stale-routes-check", "port-share", "vlan-tagging", "vlan-accept",
                     "vlan-pvid", "x509-username-field", "management-client-auth",
                     "client-crresponse"], _SERVER),
    **dict.fromkeys(["genkey", "show-adapters", "show-ciphers", "show-curves", "show-digests",
                     "show-engines", "show-gateway", "show-groups", "show-net",
                     "show-net-up", "show-pkcs11-ids", "show-tls", "show-valid-subnets",
                     "test-crypto", "help", "version", "mtu-test"], _STANDALONE),
    "http-proxy-user-pass": _CREDENTIALS,
}

# Options that take a file openvpn reads: (index of the file argument, how many
# arguments at most).  The file is read as the user at import and put inline.
FILE_OPTIONS: Mapping[str, tuple[int, int]] = {
    "ca": (1, 1), "cert": (1, 1), "key": (1, 1), "extra-certs": (1, 1), "dh": (1, 1),
    "pkcs12": (1, 1), "tls-auth": (1, 2), "tls-crypt": (1, 1), "tls-crypt-v2": (1, 1),
    "secret": (1, 2), "crl-verify": (1, 1),
}
# Tags that may be inline blocks.
INLINE_BLOCKS: frozenset[str] = frozenset({*FILE_OPTIONS, "peer-fingerprint", "connection"})
# openvpn's permission mask lets these inside <connection> (OPT_P_CONNECTION).
_IN_CONNECTION: frozenset[str] = frozenset({
    "bind", "connect-retry", "connect-retry-max", "connect-timeout", "explicit-exit-notify",
    "float", "fragment", "http-proxy", "http-proxy-option", "link-mtu", "local", "lport",
    "mssfix", "mtu-disc", "nobind", "port", "proto", "remote", "rport", "socks-proxy",
    "tun-mtu", "tun-mtu-extra", "tun-mtu-max", "udp-mtu", "server-poll-timeout"})


class ProfileError(Exception):
    """The profile cannot be imported; ``problems`` says every reason found, by line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Problem:
    line: int
    directive: str
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f" ({self.directive})" if self.directive else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Directive:
    """One option: its name, its arguments, or an inline block's text (``inline``);
    a ``<connection>`` block's own directives in ``block``."""

    line: int
    name: str
    args: tuple[str, ...] = ()
    inline: str | None = None
    block: tuple[Directive, ...] = ()


@dataclass(frozen=True)
class FileRef:
    """A file a directive names, to be read with the user's rights and put inline."""

    line: int
    option: str
    path: str


@dataclass(frozen=True)
class Plan:
    """What ``examine`` accepted, and the files ``render`` needs."""

    directives: tuple[Directive, ...]
    files: tuple[FileRef, ...] = field(default=())


# --------------------------------------------------------------------------- parsing


_SPACE = frozenset(" \t\n\v\f\r\0")  # openvpn's space(): isspace() in the C locale, or NUL


def _tokens(line: str, number: int) -> list[str]:
    """openvpn's ``parse_line``, state for state; ``ProfileError`` where openvpn would
    refuse the line or silently mangle it."""
    initial, quoted, unquoted, squoted = 0, 1, 2, 4
    out: list[str] = []
    parm: list[str] = []
    state = initial
    backslash = False
    for ch in line + "\0":  # openvpn's loop sees the terminating NUL too
        emit = ""
        if not backslash and ch == "\\" and state != squoted:
            backslash = True
            continue
        if state == initial:
            if ch not in _SPACE:
                if ch in ";#":  # a comment, also where a token would start mid-line
                    break
                if not backslash and ch == '"':
                    state = quoted
                elif not backslash and ch == "'":
                    state = squoted
                else:
                    emit, state = ch, unquoted
        elif state == unquoted:
            if not backslash and ch in _SPACE:
                out.append("".join(parm))
                parm, state = [], initial
            else:
                emit = ch
        elif state == quoted:
            if not backslash and ch == '"':
                out.append("".join(parm))
                parm, state = [], initial
            else:
                emit = ch
        elif ch == "'":  # single-quoted: everything literal up to the next quote
            out.append("".join(parm))
            parm, state = [], initial
        else:
            emit = ch
        if backslash and emit and emit not in '\\"' and emit not in _SPACE:
            raise ProfileError([Problem(number, "", "bad backslash: only \\\\, \\\" and "
                                        "\\ before a blank are allowed")])
        backslash = False
        if emit and emit != "\0":
            parm.append(emit)
            if len(parm) > MAX_TOKEN:
                raise ProfileError([Problem(number, "", f"a parameter longer than {MAX_TOKEN} "
                                            "characters (openvpn refuses it)")])
    if state == quoted:
        raise ProfileError([Problem(number, "", 'no closing quotation (")')])
    if state == squoted:
        raise ProfileError([Problem(number, "", "no closing single quotation (')")])
    if state != initial or backslash:
        raise ProfileError([Problem(number, "", "a backslash ends the line")])
    if len(out) > MAX_PARMS:
        raise ProfileError([Problem(number, "", f"more than {MAX_PARMS} parameters on a line "
                                    "(openvpn would drop the rest)")])
    return out


def parse(text: str, *, _first_line: int = 1, _nested: bool = False) -> tuple[Directive, ...]:
    """openvpn config text → directives; ``ProfileError`` naming the line otherwise."""
    if "\0" in text:
        raise ProfileError([Problem(0, "", "the file contains NUL bytes")])
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not text openvpn could have been given
        raise ProfileError([Problem(0, "", "the file is not UTF-8 text")]) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    found: list[Directive] = []
    i = 0
    while i < len(lines):
        number = _first_line + i
        raw = lines[i]
        i += 1
        if len(raw.encode("utf-8")) > MAX_LINE:
            raise ProfileError([Problem(number, "", f"a line longer than {MAX_LINE} bytes "
                                        "(openvpn would split it)")])
        tokens = _tokens(raw, number)
        if not tokens:
            continue
        name = tokens[0]
        if len(name) >= 3 and name.startswith("--"):
            name = name[2:]
        if len(tokens) == 1 and len(name) >= 2 and name[0] == "<" and name[-1] == ">":
            tag = name[1:-1]
            close = f"</{tag}>"
            body: list[str] = []
            while i < len(lines) and not lines[i].lstrip(" \t\r\f\v").startswith(close):
                if len(lines[i].encode("utf-8")) > MAX_LINE:
                    raise ProfileError([Problem(_first_line + i, tag, "an inline line longer "
                                                f"than {MAX_LINE} bytes")])
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ProfileError([Problem(number, tag, f"end tag {close} missing")])
            i += 1  # the close tag's line (openvpn ignores what follows it there)
            inline = "".join(x + "\n" for x in body)
            block: tuple[Directive, ...] = ()
            if tag == "connection":
                if _nested:
                    raise ProfileError([Problem(number, tag, "blocks cannot be nested")])
                block = parse(inline, _first_line=number + 1, _nested=True)
            found.append(Directive(number, tag, (), inline, block))
        else:
            found.append(Directive(number, name, tuple(tokens[1:])))
        if len(found) > MAX_DIRECTIVES:
            raise ProfileError([Problem(number, "", f"more than {MAX_DIRECTIVES} directives")])
    return tuple(found)


# --------------------------------------------------------------------------- judging


def _judge(d: Directive, nested: bool) -> tuple[str | None, FileRef | None]:
    """(a reason to refuse, or None) and the file to inline, if any."""
    name = d.name
    if name not in OPENVPN_OPTIONS:
        return f"not an openvpn 2.6 option ({name!r})", None
    if name in REFUSED:
        return REFUSED[name], None
    if nested and name not in _IN_CONNECTION:
        return "not allowed inside <connection>", None
    if d.inline is not None:
        if name not in INLINE_BLOCKS:
            return ("credentials are not stored in profiles" if name == "auth-user-pass"
                    else f"<{name}> cannot be an inline block"), None
        return None, None
    args = d.args
    if name in FILE_OPTIONS:
        index, most = FILE_OPTIONS[name]
        if not args:
            return "needs a file", None
        if len(args) > most:
            if name == "crl-verify" and args[1:] == ("dir",):
                return _DIRECTORY, None
            return f"takes at most {most} parameter(s) here", None
        if name == "dh" and args[0] == "none":
            return None, None
        if name in ("tls-auth", "secret") and len(args) == 2 and args[1] not in ("0", "1"):
            return "the key direction must be 0 or 1", None
        return None, FileRef(d.line, name, args[index - 1])
    if name in ("auth-user-pass", "askpass") and args:
        return _CREDENTIALS, None
    if name == "http-proxy" and len(args) > 2 and args[2] not in ("auto", "auto-nct"):
        return _CREDENTIALS, None
    if name == "socks-proxy" and len(args) > 2:
        return _CREDENTIALS, None
    if name == "setenv" and args[:1] == ("opt",):
        return "setenv opt would pass any option to openvpn unchecked", None
    if name == "script-security" and args[:1] not in (("0",), ("1",)):
        return "only 0 or 1: scripts may not run from an imported profile", None
    return None, None


def examine(directives: Iterable[Directive]) -> Plan:
    """Judge every directive; ``ProfileError`` with all the problems, else the plan."""
    problems: list[Problem] = []
    files: list[FileRef] = []
    kept: list[Directive] = []
    for d in directives:
        reason, ref = _judge(d, False)
        for inner in d.block:
            inner_reason, inner_ref = _judge(inner, True)
            if inner_reason is None and inner_ref is not None:
                inner_reason = "files are not allowed inside <connection>"
            if inner_reason is not None:
                problems.append(Problem(inner.line, inner.name, inner_reason))
        if reason is not None:
            problems.append(Problem(d.line, d.name, reason))
            continue
        if ref is not None:
            files.append(ref)
        kept.append(d)
    if problems:
        raise ProfileError(problems)
    if not any(d.name in ("remote", "connection") for d in kept):
        raise ProfileError([Problem(0, "remote", "the profile names no server (remote)")])
    return Plan(tuple(kept), tuple(files))


# --------------------------------------------------------------------------- rendering


_PLAIN = re.compile(r"[A-Za-z0-9_.,:/@%+=\[\]{}()!?*^~`$&|<>-]+")


def quote(token: str) -> str:
    """A token as openvpn's parser reads it back: bare when safe, else double-quoted."""
    if _PLAIN.fullmatch(token) and token[0] not in "#;\"'<":
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _inline_text(ref: FileRef, data: bytes) -> str:
    """A file's content as an inline block body; ``ProfileError`` if it cannot be one."""
    if ref.option == "pkcs12":  # binary: openvpn takes inline pkcs12 as base64
        b64 = base64.b64encode(data).decode("ascii")
        return "".join(b64[i:i + 64] + "\n" for i in range(0, len(b64), 64))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError([Problem(ref.line, ref.option, f"{ref.path} is not text "
                                    "(PEM or a static key)")]) from None
    if "\0" in text:
        raise ProfileError([Problem(ref.line, ref.option, f"{ref.path} contains NUL bytes")])
    text = text.replace("\r\n", "\n")
    close = f"</{ref.option}>"
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        if len(line.encode("utf-8")) > MAX_LINE or line.lstrip(" \t\r\f\v").startswith(close):
            raise ProfileError([Problem(ref.line, ref.option,
                                        f"{ref.path} cannot be put inline (a line is too long "
                                        f"or starts with {close})")])
    return "".join(x + "\n" for x in lines)


def render(plan: Plan, contents: Mapping[str, bytes], *, source: str = "") -> str:
    """The profile to store: ``plan``'s directives with each file inline (``contents``
    maps each ``FileRef.path`` to its bytes).  ``ProfileError`` if a file cannot be
    inlined or a rendered line would be too long for openvpn."""
    out = ["# Imported with `iservice import`" + (f" from {source}" if source.isprintable()
                                                   and source else "") + "\n"]
    refs = {(r.line, r.option): r for r in plan.files}
    for d in plan.directives:
        ref = refs.get((d.line, d.name))
        if ref is not None:
            out.append(f"<{d.name}>\n{_inline_text(ref, contents[ref.path])}</{d.name}>\n")
            if d.name in ("tls-auth", "secret") and len(d.args) == 2:
                out.append(f"key-direction {d.args[1]}\n")
            continue
        if d.inline is not None:
            body = d.inline
            if d.block:
                body = "".join(_line(x) for x in d.block)
            out.append(f"<{d.name}>\n{body}</{d.name}>\n")
            continue
        out.append(_line(d))
    return "".join(out)


def _line(d: Directive) -> str:
    text = " ".join(quote(t) for t in (d.name, *d.args))
    if len(text.encode("utf-8")) > MAX_LINE:
        raise ProfileError([Problem(d.line, d.name, "too long a line once quoted")])
    return text + "\n"


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def valid_profile_name(name: str) -> bool:
    """1-64 of ``A-Z a-z 0-9 _ . -``, not starting with ``.`` or ``-``; it becomes a
    file name (``NAME.ovpn``) and a session name's prefix."""
    return bool(_NAME.fullmatch(name)) and ".." not in name
