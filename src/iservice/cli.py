"""The ``iservice`` command.

Subcommands:
  serve   run the service in the foreground (root; systemd starts it this way)
  start   send one raw startup request and print openvpn's PID (or the error)

Exit statuses of ``start``: 0 = started (with ``--wait``: openvpn exited cleanly),
1 = the service refused the request or openvpn exited with an error (the reply is
printed), 2 = usage error, 3 = the service cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from iservice import __version__
from iservice.errors import ReplyFormatError, SettingsError
from iservice.policy.argv import quote_argv
from iservice.settings import Settings, default_settings_path, load_settings, validate_instance
from iservice.wire import startup as w

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.settings, instance=args.instance)


def _client_socket(args: argparse.Namespace) -> str:
    """Where a client connects: --socket, else the settings file if readable, else default."""
    if args.socket:
        return str(args.socket)
    path = args.settings or default_settings_path(args.instance)
    try:
        return load_settings(path if os.access(path, os.R_OK) else None,
                             instance=args.instance).socket_path
    except SettingsError:
        return load_settings(None, instance=args.instance).socket_path


def cmd_serve(args: argparse.Namespace) -> int:
    from iservice import server
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
    if isinstance(reply, w.PidReply):
        return str(reply.pid)
    text = f"error 0x{reply.code:08x}: {reply.func}"
    return text + (f": {reply.message.strip()}" if reply.message.strip() else "")


def cmd_start(args: argparse.Namespace) -> int:
    from iservice import client
    if args.options is not None and args.openvpn_args:
        print("iservice start: give either --options or arguments after --", file=sys.stderr)
        return EXIT_USAGE
    options = args.options if args.options is not None else quote_argv(args.openvpn_args)
    workdir = os.path.abspath(args.workdir or os.getcwd())
    stdin = args.stdin or ""
    try:
        conn, reply = client.start(_client_socket(args), workdir, options, stdin)
    except client.ServiceUnavailable as exc:
        print(f"iservice: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (OSError, ReplyFormatError) as exc:
        print(f"iservice: talking to the service failed: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iservice", description=(
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
    return p


def _instance(text: str) -> str:
    try:
        return validate_instance(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
