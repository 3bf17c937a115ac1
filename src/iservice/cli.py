"""The ``iservice`` command.

Subcommands:
  serve       run the service in the foreground (root; systemd starts it this way)
  start       send one raw startup request and print openvpn's PID (or the error)
  connect     start a profile and answer its prompts; returns once connected (connect.py)
  sessions    list your sessions (--all: everyone's, for admins)
  status      one session in detail
  log         a session's openvpn output (--follow: keep printing)
  disconnect  end a session (or --all) and wait until the service has undone it
  profiles    the profiles you may use: approved ones and your own
  import      import an openvpn config as a profile of your own
  remove      delete a profile of your own
  auth        answer what a running session asks again (an OTP at a reconnect)
  forget      remove a profile's saved credentials (connect --save-credentials)
  enable      connect a profile at boot (root) or login; disable undoes it (autoconnect.py)
  cleanup     undo what a stopped or killed service left, then exit (root; cleanup.py)

Exit statuses of ``start``: 0 = started (with ``--wait``: openvpn exited cleanly),
1 = the service refused the request or openvpn exited with an error (the reply is
printed), 2 = usage error, 3 = the service cannot be reached.  ``connect`` adds
4-8 and 130 (``iservice.connect``).  ``sessions``, ``status``, ``log``,
``disconnect`` and ``profiles``: 0 = done, 1 = refused (no such session of yours,
``--all`` without admin rights), 2 = usage error, 3 = the service cannot be reached.
``enable`` and ``disable``: 0 = done, 1 = systemctl failed, 2 = usage error (unknown
profile), 3 = no systemctl.  ``cleanup``: 0 = nothing left, 1 = a change could not be
undone (kept for the next start) or a running service is in the way, 2 = usage error.
"""

from __future__ import annotations

import argparse
import os
import sys

from iservice import __version__

# Everything printed here may carry text from elsewhere (openvpn's output, server texts,
# names): control characters are escaped before they reach a terminal (termsafe.py).
from iservice.termsafe import print_safe as print

# Only argparse at import (not even typing): `iservice --help` and a mistyped command
# start fast.  Each command imports what it needs; the client commands never import the
# service's modules (asyncio, ctypes, the server) — tests/unit/test_cli_imports.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

    from iservice.settings import Settings
    from iservice.wire import control as wc
    from iservice.wire import startup as w

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _settings(args: argparse.Namespace) -> Settings:
    from iservice.settings import load_settings
    return load_settings(args.settings, instance=args.instance)


def _client_settings(args: argparse.Namespace) -> Settings:
    """The settings a client goes by: the file if readable and valid, else the defaults."""
    from iservice.errors import SettingsError
    from iservice.settings import default_settings_path, load_settings
    path = args.settings or default_settings_path(args.instance)
    try:
        return load_settings(path if os.access(path, os.R_OK) else None, instance=args.instance)
    except SettingsError:
        return load_settings(None, instance=args.instance)


def _client_socket(args: argparse.Namespace) -> str:
    """Where a client connects: --socket, else the settings file if readable, else default."""
    if args.socket:
        return str(args.socket)
    return _client_settings(args).socket_path


def _control_socket(args: argparse.Namespace) -> str:
    """The control socket: next to --socket when given, else from the settings."""
    if args.socket:
        return os.path.join(os.path.dirname(os.path.abspath(args.socket)), "control")
    return _client_settings(args).control_socket_path


def cmd_serve(args: argparse.Namespace) -> int:
    from iservice import server
    from iservice.errors import SettingsError
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"iservice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if os.geteuid() != 0:
        print("iservice serve: must run as root", file=sys.stderr)
        return EXIT_USAGE
    return server.run(settings)


def format_reply(reply: w.Reply) -> str:
    from iservice.wire import startup as w
    if isinstance(reply, w.PidReply):
        return str(reply.pid)
    text = f"error 0x{reply.code:08x}: {reply.func}"
    return text + (f": {reply.message.strip()}" if reply.message.strip() else "")


def cmd_start(args: argparse.Namespace) -> int:
    from iservice import client
    from iservice.errors import ReplyFormatError
    from iservice.policy.argv import quote_argv
    from iservice.wire import startup as w
    if args.options is not None and args.openvpn_args:
        print("iservice start: give either --options or arguments after --", file=sys.stderr)
        return EXIT_USAGE
    options = args.options if args.options is not None else quote_argv(args.openvpn_args)
    workdir = os.path.abspath(args.workdir or os.getcwd())
    stdin = args.stdin or ""
    try:
        conn, reply = client.start(_client_socket(args), workdir, options, stdin)
    except client.ServiceUnavailable as exc:
        return fail(args, EXIT_UNAVAILABLE, "unavailable", exc.explain(args.instance))
    except (OSError, ReplyFormatError) as exc:
        return fail(args, EXIT_UNAVAILABLE, "protocol", f"talking to the service failed: {exc}")
    with conn:
        print(format_reply(reply), flush=True)
        if isinstance(reply, w.ErrorReply):
            return EXIT_REFUSED
        if not args.wait:
            return EXIT_OK
        conn.sock.settimeout(None)
        status = EXIT_OK
        try:
            for later in conn.replies():
                print(format_reply(later), flush=True)
                if isinstance(later, w.ErrorReply):
                    status = EXIT_REFUSED
        except (OSError, ReplyFormatError) as exc:
            print(f"iservice: connection to the service broke: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        return status


def cmd_connect(args: argparse.Namespace) -> int:
    from iservice import connect
    opts = connect.Options(profile=args.profile, socket_path=_client_socket(args),
                           control_path=_control_socket(args), foreground=args.foreground,
                           timeout=args.timeout, username=args.username,
                           auth_retries=args.auth_retries, verb=args.verb,
                           instance=args.instance, save_credentials=args.save_credentials,
                           askpass=args.askpass)
    return connect.run(opts)


def cmd_auth(args: argparse.Namespace) -> int:
    from iservice import connect
    return connect.reauth(connect.AuthOptions(
        name=args.name, control_path=_control_socket(args), timeout=args.timeout,
        username=args.username, instance=args.instance, askpass=args.askpass))


def cmd_forget(args: argparse.Namespace) -> int:
    from iservice.keyring import KeyringError, SecretService, attributes
    try:
        with SecretService.open() as keyring:
            removed = keyring.delete(attributes(args.profile, args.instance))
    except KeyringError as exc:
        print(f"iservice forget: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not removed:
        print(f"iservice forget: no saved credentials for {args.profile}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"Forgot the saved credentials for {args.profile}.")
    return EXIT_OK


def fail(args: argparse.Namespace, status: int, code: str, message: str) -> int:
    """Report a failure and return its exit status.  With ``--json``: one JSON object
    ``{"code": C, "message": M}`` on standard output (scripts read one stream); otherwise
    the message on standard error.  ``code`` is the service's (docs/control.md) or one of
    the client's own: ``usage``, ``unavailable`` (the service cannot be reached),
    ``protocol`` (the connection broke or the reply was malformed)."""
    if getattr(args, "json", False):
        import json
        print(json.dumps({"code": code, "message": message}))
    else:
        print(f"iservice {args.command}: {message}", file=sys.stderr)
    return status


def _control(args: argparse.Namespace, **fields: Any) -> wc.Reply | int:
    """One control request; the reply, or an exit status after reporting the problem."""
    from iservice import client
    from iservice.wire import control as wc
    try:
        req = wc.Request(**fields)
    except wc.ControlError as exc:  # refused before sending (say a name too long)
        return fail(args, EXIT_USAGE, exc.code, exc.message)
    try:
        reply = client.control_request(_control_socket(args), req)
    except client.ServiceUnavailable as exc:
        return fail(args, EXIT_UNAVAILABLE, "unavailable", exc.explain(args.instance))
    except (OSError, wc.ReplyError) as exc:
        return fail(args, EXIT_UNAVAILABLE, "protocol",
                    f"talking to the service failed: {exc}")
    if isinstance(reply, wc.ErrorReply):
        return fail(args, EXIT_USAGE if reply.code == "bad-request" else EXIT_REFUSED,
                    reply.code, reply.error)
    return reply


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _clock(t: float | None) -> str:
    import time
    if not t:
        return "-"
    when = time.localtime(t)
    fmt = "%H:%M:%S" if time.time() - t < 86400 else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, when)


def format_sessions(sessions: Sequence[wc.SessionInfo], *, show_user: bool) -> str:
    if not sessions:
        return "No sessions."
    head = ["NAME", "PROFILE", *(["USER"] if show_user else []), "STATE", "SINCE", "TUN",
            "ADDRESSES", "IN", "OUT", "PID"]
    rows = [head]
    for s in sessions:
        rows.append([s.name, s.profile, *([s.user] if show_user else []),
                     s.state, _clock(s.started), s.tun or "-",
                     ",".join(s.addresses) or "-",
                     human_bytes(s.bytes_in), human_bytes(s.bytes_out),
                     str(s.pid or "-")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def format_status(s: wc.SessionInfo) -> str:
    state = s.state + (f" ({s.detail})" if s.detail else "")
    pairs = [("session", s.name), ("profile", f"{s.profile} ({s.config or '-'})"),
             ("user", f"{s.user} (uid {s.uid})"),
             ("state", f"{state} since {_clock(s.state_since)}"),
             ("started", _clock(s.started)), ("tun", s.tun or "-"),
             ("addresses", ", ".join(s.addresses) or "-"),
             ("bytes in", human_bytes(s.bytes_in)),
             ("bytes out", human_bytes(s.bytes_out)), ("openvpn pid", str(s.pid))]
    return "\n".join(f"{k + ':':<13}{v}" for k, v in pairs)


def _print_json(value: object) -> None:
    import json
    print(json.dumps(value, indent=2))


def cmd_sessions(args: argparse.Namespace) -> int:
    from iservice.wire import control as wc
    reply = _control(args, op="sessions", all=args.all)
    if isinstance(reply, int):
        return reply
    assert isinstance(reply, wc.SessionsReply)
    if args.json:
        _print_json([s.to_json() for s in reply.sessions])
    else:
        print(format_sessions(reply.sessions, show_user=args.all))
        for s in reply.sessions:
            if s.waits_for_credentials:
                print(f"{s.name} waits for credentials: answer with `iservice auth {s.name}`")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from iservice.wire import control as wc
    reply = _control(args, op="status", name=args.name, all=args.all)
    if isinstance(reply, int):
        return reply
    assert isinstance(reply, wc.StatusReply)
    if args.json:
        _print_json(reply.session.to_json())
    else:
        print(format_status(reply.session))
    return EXIT_OK


def cmd_profiles(args: argparse.Namespace) -> int:
    from iservice.wire import control as wc
    reply = _control(args, op="profiles")
    if isinstance(reply, int):
        return reply
    assert isinstance(reply, wc.ProfilesReply)
    if args.json:
        _print_json([p.to_json() for p in reply.profiles])
    elif not reply.profiles:
        print(f"No approved profiles you can read in {reply.config_dir}.")
    else:
        width = max(len(p.name) for p in reply.profiles)
        for p in reply.profiles:
            print(f"{p.name:<{width}}  {p.path}" + ("  (your own)" if p.own else ""))
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from iservice.wire import control as wc
    path = os.path.abspath(args.file)
    reply = _control(args, op="import", path=path, name=args.name, replace=args.replace)
    if isinstance(reply, int):
        return reply
    assert isinstance(reply, wc.ImportReply)
    if args.json:
        _print_json(reply.profile.to_json())
    else:
        print(f"Imported {path} as your profile {reply.profile.name!r}: connect with "
              f"`iservice connect {reply.profile.name}`.")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from iservice.wire import control as wc
    reply = _control(args, op="remove", name=args.name)
    if isinstance(reply, int):
        return reply
    assert isinstance(reply, wc.RemoveReply)
    if args.json:
        _print_json({"removed": reply.removed})
    else:
        print(f"Removed your profile {reply.removed!r}.")
    return EXIT_OK


def cmd_disconnect(args: argparse.Namespace) -> int:
    from iservice.wire import control as wc
    if args.name is None and not args.all:
        print("iservice disconnect: give a session NAME or --all", file=sys.stderr)
        return EXIT_USAGE
    reply = _control(args, op="disconnect", name=args.name, all=args.all)
    if isinstance(reply, int):
        return reply
    assert isinstance(reply, wc.DisconnectReply)
    names = reply.disconnected
    print(f"Disconnected {', '.join(names)}." if names else "No sessions to disconnect.")
    return EXIT_OK


def cmd_log(args: argparse.Namespace) -> int:
    from iservice import client
    from iservice.wire import control as wc
    try:
        req = wc.Request("log", args.name, all=args.all, follow=args.follow, lines=args.lines)
    except wc.ControlError as exc:
        print(f"iservice log: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        for msg in client.control_stream(_control_socket(args), req,
                                         timeout=None if args.follow else 30):
            if isinstance(msg, wc.ErrorReply):
                print(f"iservice log: {msg.error}", file=sys.stderr)
                return EXIT_USAGE if msg.code == "bad-request" else EXIT_REFUSED
            if isinstance(msg, wc.LogEnd):
                break
            if isinstance(msg, wc.LogLines):
                for line in msg.lines:
                    print(line, flush=args.follow)
    except KeyboardInterrupt:
        return EXIT_OK
    except client.ServiceUnavailable as exc:
        return fail(args, EXIT_UNAVAILABLE, "unavailable", exc.explain(args.instance))
    except (OSError, wc.ReplyError) as exc:
        return fail(args, EXIT_UNAVAILABLE, "protocol", f"talking to the service failed: {exc}")
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    from iservice import cleanup
    from iservice.errors import SettingsError
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"iservice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return cleanup.run(settings, stop=args.stop)


def cmd_autoconnect(args: argparse.Namespace) -> int:
    from iservice import autoconnect
    return autoconnect.run(args.command, args.profile, now=args.now,
                           check=autoconnect.profile_check(_control_socket(args)))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="iservice", description=(
        "OpenVPN Interactive Service for Linux: unprivileged users run openvpn, "
        "the service makes the network changes and undoes them."))
    p.add_argument("--version", action="version", version=f"iservice {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--instance", default="", type=_instance,
                        help="service instance name (default: the default instance)")
        sp.add_argument("--settings", metavar="FILE",
                        help="settings file (default /etc/openvpn<instance>/iservice.conf)")

    sp = sub.add_parser("serve", help="run the service in the foreground (as root)")
    common(sp)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("start", help="ask the service to start openvpn; prints its PID",
                        description="Send one startup request (SPEC §2) and print the PID "
                        "of the openvpn the service started, or the service's error.")
    common(sp)
    sp.add_argument("--socket", metavar="PATH", help="service socket (default from settings)")
    sp.add_argument("--workdir", metavar="DIR", help="working directory (default: current)")
    sp.add_argument("--stdin", metavar="TEXT", help="text openvpn reads on its stdin")
    sp.add_argument("--options", metavar="STRING",
                    help="the raw options string (Windows command-line quoting)")
    sp.add_argument("--wait", action="store_true",
                    help="stay connected and report openvpn's exit error")
    sp.add_argument("openvpn_args", nargs="*", metavar="OPTIONS",
                    help="openvpn options, after --")
    sp.set_defaults(func=cmd_start)

    def client_common(sp: argparse.ArgumentParser) -> None:
        common(sp)
        sp.add_argument("--socket", metavar="PATH",
                        help="service socket (default from settings; the control socket "
                             "is 'control' next to it)")

    sp = sub.add_parser("connect", help="connect a profile: prompts, progress, then detach",
                        description="Start openvpn with PROFILE through the service, answer "
                        "its prompts on this terminal, show the progress, and return once "
                        "connected (the session keeps running; end it with `iservice "
                        "disconnect`). Exit statuses: 0 connected, 1 refused by the service, "
                        "2 usage, 3 service unreachable, 4 authentication failed, 5 timeout / "
                        "server unreachable, 6 openvpn exited, 7 connection lost "
                        "(--foreground), 8 connected with errors, 130 interrupted.")
    client_common(sp)
    sp.add_argument("profile", metavar="PROFILE",
                    help="an approved profile name (see `iservice profiles`) or a path")
    sp.add_argument("--foreground", action="store_true",
                    help="stay attached once connected; Ctrl-C disconnects")
    sp.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="give up if not connected after this long (default 60; time spent "
                         "at prompts does not count)")
    sp.add_argument("--username", metavar="NAME", help="the username to answer (not secret)")
    sp.add_argument("--auth-retries", type=int, default=0, metavar="N",
                    help="ask again this many times after a refused password (default 0)")
    sp.add_argument("--verb", type=int, choices=range(0, 12), metavar="0-11",
                    help="openvpn's log verbosity (default: the profile's)")
    sp.add_argument("--save-credentials", action="store_true",
                    help="once connected, keep the username and password you typed in your "
                         "keyring (Secret Service); later connects use them. One-time "
                         "passwords and challenge answers are never kept")
    sp.add_argument("--askpass", metavar="PROG",
                    help="ask with this program (prompt as its argument, answer on its "
                         "output) instead of the terminal; default: SSH_ASKPASS by "
                         "OpenSSH's rules")
    sp.set_defaults(func=cmd_connect)

    sp = sub.add_parser("auth", help="answer what a running session asks again (OTP, password)",
                        description="A session that needs credentials again (an OTP at a "
                        "reconnect, a dynamic challenge) waits; `iservice sessions` shows it. "
                        "This answers its prompts and returns once it is connected again. "
                        "Exit statuses: 0 connected, 1 refused (no such session, it does not "
                        "wait), 3 service unreachable, 4 authentication failed, 5 timeout, "
                        "130 interrupted (the session goes on waiting).")
    client_common(sp)
    sp.add_argument("name", metavar="NAME", help="session name, id, or profile")
    sp.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                    help="give up after this long (default 120; time at prompts does not "
                         "count)")
    sp.add_argument("--username", metavar="NAME", help="the username to answer")
    sp.add_argument("--askpass", metavar="PROG", help="ask with this program (see connect)")
    sp.set_defaults(func=cmd_auth)

    sp = sub.add_parser("forget", help="remove a profile's saved credentials from your keyring")
    common(sp)
    sp.add_argument("profile", metavar="PROFILE", help="the profile's name")
    sp.set_defaults(func=cmd_forget)

    sp = sub.add_parser("sessions", help="list your sessions")
    client_common(sp)
    sp.add_argument("--all", action="store_true", help="everyone's sessions (admins only)")
    sp.add_argument("--json", action="store_true", help="JSON for scripts")
    sp.set_defaults(func=cmd_sessions)

    sp = sub.add_parser("status", help="one session in detail")
    client_common(sp)
    sp.add_argument("name", metavar="NAME", help="session name, id, or profile")
    sp.add_argument("--all", action="store_true", help="look among everyone's (admins only)")
    sp.add_argument("--json", action="store_true", help="JSON for scripts")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("log", help="a session's openvpn output")
    client_common(sp)
    sp.add_argument("name", metavar="NAME", help="session name, id, or profile")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    sp.add_argument("--lines", "-n", type=int, default=200, help="recent lines (default 200)")
    sp.add_argument("--all", action="store_true", help="look among everyone's (admins only)")
    sp.set_defaults(func=cmd_log)

    sp = sub.add_parser("disconnect", help="end a session; returns once it is undone")
    client_common(sp)
    sp.add_argument("name", metavar="NAME", nargs="?", help="session name, id, or profile")
    sp.add_argument("--all", action="store_true", help="every session (admins only)")
    sp.set_defaults(func=cmd_disconnect)

    sp = sub.add_parser("profiles", help="the profiles you may use (approved, and your own)")
    client_common(sp)
    sp.add_argument("--json", action="store_true", help="JSON for scripts")
    sp.set_defaults(func=cmd_profiles)

    for action, what in (("enable", "connect PROFILE at boot (root) or at your login"),
                         ("disable", "stop connecting PROFILE at boot or login")):
        sp = sub.add_parser(action, help=what, description=what[0].upper() + what[1:] + ": the "
                            "systemd unit iservice-connect@PROFILE.service (docs/install.md, "
                            "Auto-connect).")
        client_common(sp)
        sp.add_argument("profile", metavar="PROFILE", help="profile name or path")
        sp.add_argument("--now", action="store_true",
                        help="also start (enable) or stop (disable) it now")
        sp.set_defaults(func=cmd_autoconnect)

    sp = sub.add_parser("cleanup", help="undo what a stopped or killed service left (root)",
                        description="Undo every session left in the journal (ending its "
                        "openvpn), as a start after a crash does, then exit; opens no "
                        "socket. The Debian package's prerm runs it.")
    common(sp)
    sp.add_argument("--stop", action="store_true",
                    help="stop a running service of this instance first (SIGTERM)")
    sp.set_defaults(func=cmd_cleanup)

    sp = sub.add_parser("import", help="import an openvpn config as a profile of your own",
                        description="The service reads FILE (and the files it names) with "
                        "your rights, refuses directives that would run programs, load "
                        "plugins or weaken its rules, and keeps the profile with every file "
                        "inline, for you alone (docs/profiles.md). Needs user_profiles = yes "
                        "in the service's settings.")
    client_common(sp)
    sp.add_argument("file", metavar="FILE", help="the openvpn config (.ovpn) to import")
    sp.add_argument("--name", metavar="NAME",
                    help="the profile's name (default: FILE's name without .ovpn/.conf)")
    sp.add_argument("--replace", action="store_true",
                    help="replace your profile of that name if there is one")
    sp.add_argument("--json", action="store_true", help="JSON for scripts")
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("remove", help="delete a profile of your own")
    client_common(sp)
    sp.add_argument("name", metavar="NAME", help="the profile's name")
    sp.add_argument("--json", action="store_true", help="JSON for scripts")
    sp.set_defaults(func=cmd_remove)
    return p


def _instance(text: str) -> str:
    from iservice.errors import SettingsError
    from iservice.settings import validate_instance
    try:
        return validate_instance(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors come as JSON when ``--json`` was asked for."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if _Parser.json_errors:
            import json
            print(json.dumps({"code": "usage", "message": f"{self.prog}: {message}"}))
            sys.exit(EXIT_USAGE)
        super().error(message)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in words[:words.index("--") if "--" in words else None]
    parser = build_parser()
    args = parser.parse_args(words)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
