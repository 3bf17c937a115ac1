"""``iservice connect PROFILE``: start openvpn through the service and drive it (docs/client.md).

1. Resolve the profile (a name from ``iservice profiles``, or a path).
2. Ask the service to start ``openvpn --config PROFILE --management SOCK unix
   --management-hold --management-query-passwords --auth-retry interact`` (every
   option is on the non-admin whitelist).  SOCK lives in a directory only the user
   can enter (``$XDG_RUNTIME_DIR/iservice`` or ``~/.cache/iservice``, mode 0700), and
   the peer of the socket must be the very openvpn the service started.
3. Over the management interface: release the hold, answer the prompts on the
   terminal (username/password, private-key passphrase, static and dynamic
   challenges, CR_TEXT; web-auth URLs are shown), show the progress, and return
   once openvpn says ``CONNECTED`` — or stay with ``--foreground`` until Ctrl-C.

Secrets are read with ``getpass`` from the terminal, go only into the management
socket, and are never put into argv, the environment, logs or files; the command
buffers that carried them are overwritten after sending (Python ``str`` copies cannot
be wiped; they are dropped as soon as possible).

``Dialog`` is the decision part (event in → commands and an outcome), tested with
a fake terminal; ``run`` is the I/O around it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import select
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from iservice import client
from iservice import management as mg
from iservice.errors import ReplyFormatError
from iservice.keyring import Credentials
from iservice.policy.argv import quote_argv
from iservice.termsafe import print_safe as print
from iservice.termsafe import safe
from iservice.wire import control as wc
from iservice.wire import startup as w

# Exit statuses (README "Exit statuses"; 0-3 mean what they mean for `iservice start`).
EXIT_OK = 0
EXIT_REFUSED = 1  # the service refused the request (its message is printed)
EXIT_USAGE = 2  # bad arguments, unknown profile, no terminal to ask on
EXIT_UNAVAILABLE = 3  # the service cannot be reached
EXIT_AUTH = 4  # authentication failed (password, OTP, challenge, key passphrase)
EXIT_TIMEOUT = 5  # not connected within --timeout (server unreachable or silent)
EXIT_OPENVPN = 6  # openvpn exited before connecting (its last log lines are printed)
EXIT_LOST = 7  # --foreground: the connection ended on its own, with an error
EXIT_PARTIAL = 8  # connected, but openvpn reported errors (e.g. routes): session kept
EXIT_INTERRUPTED = 130  # Ctrl-C or end of input at a prompt: the session was ended

STATE_TEXT = {
    "STARTING": "starting openvpn",
    "HOLD": "waiting",
    "RESOLVE": "resolving the server's name",
    "TCP_CONNECT": "connecting (TCP)",
    "CONNECTING": "connecting",
    "WAIT": "waiting for the server",
    "AUTH": "authenticating",
    "AUTH_PENDING": "waiting for the authentication to complete",
    "GET_CONFIG": "getting the configuration",
    "ASSIGN_IP": "assigning addresses",
    "ADD_ROUTES": "adding routes",
    "CONNECTED": "connected",
    "RECONNECTING": "reconnecting",
    "EXITING": "exiting",
}
# openvpn 2.6 with --ifconfig-noexec/--route-noexec goes WAIT → AUTH → CONNECTED; its
# log (``log on``) tells the steps in between.
LOG_PROGRESS = (
    ("PUSH: Received control message", "getting the configuration"),
    ("TUN/TAP device", "opening the tun device"),
    ("iservice-hook", "adding addresses and routes (iservice)"),
)
# States before the server answered at all: a timeout there means "unreachable".
EARLY_STATES = frozenset({"STARTING", "HOLD", "RESOLVE", "TCP_CONNECT", "CONNECTING", "WAIT",
                          "RECONNECTING"})


class Cancelled(Exception):
    """The user pressed Ctrl-C or ended the input at a prompt."""


# --------------------------------------------------------------------------- terminal


class Terminal:
    """Prompts and progress.  On a terminal, progress is one rewritten line.

    Prompts go to the controlling terminal; with an askpass program (``--askpass``, or
    ``SSH_ASKPASS`` by OpenSSH's rules: used when there is no terminal and a desktop
    session, or always with ``SSH_ASKPASS_REQUIRE=prefer|force``) the program is run
    with the prompt as its argument and its output is the answer, so a desktop launcher
    without a terminal can connect."""

    def __init__(self, out: IO[str] | None = None, *, tty: bool | None = None,
                 askpass: str | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self._open_line = False
        self._last = ""
        self.askpass = askpass if askpass is not None else askpass_from_env()

    def progress(self, text: str) -> None:
        text = safe(text)  # state details and server texts: no control characters
        if text == self._last:
            return
        self._last = text
        if self.tty:
            self.out.write("\r\033[K" + text)
            self._open_line = True
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        self.end_line()
        self.out.write(safe(text, keep_newlines=True) + "\n")
        self.out.flush()

    def end_line(self) -> None:
        if self._open_line:
            self.out.write("\n")
            self._open_line = False
            self._last = ""

    def ask(self, prompt: str, *, secret: bool) -> str:
        self.end_line()
        prompt = safe(prompt)  # the server's challenge text
        if self.askpass:
            return run_askpass(self.askpass, prompt, secret=secret)
        try:
            if secret:
                return getpass.getpass(prompt)
            return _read_line(prompt)
        except (EOFError, KeyboardInterrupt):
            raise Cancelled() from None


def open_in_browser(url: str, env: dict[str, str] | None = None) -> bool:
    """Open an http(s) URL with ``xdg-open`` when a desktop session is there
    (``DISPLAY``/``WAYLAND_DISPLAY``); False (the caller prints it) otherwise.  Other
    schemes are never opened: the server chose the URL."""
    import shutil
    import subprocess
    env = dict(os.environ) if env is None else env
    if not url.lower().startswith(("https://", "http://")) or any(c.isspace() for c in url) \
            or not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        return False
    opener = shutil.which("xdg-open", path=env.get("PATH"))
    if opener is None:
        return False
    try:
        subprocess.Popen([opener, url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    except OSError:
        return False
    return True


def _have_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def askpass_from_env(env: dict[str, str] | None = None, *,
                     have_terminal: bool | None = None) -> str | None:
    """``SSH_ASKPASS`` when OpenSSH would use it: ``SSH_ASKPASS_REQUIRE`` ``force`` or
    ``prefer``, or no terminal and a desktop session (``DISPLAY``/``WAYLAND_DISPLAY``);
    never with ``SSH_ASKPASS_REQUIRE=never``."""
    env = dict(os.environ) if env is None else env
    program = env.get("SSH_ASKPASS", "")
    require = env.get("SSH_ASKPASS_REQUIRE", "")
    if not program or require == "never":
        return None
    if require in ("force", "prefer"):
        return program
    desktop = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    if have_terminal is None:
        have_terminal = _have_terminal()
    return program if desktop and not have_terminal else None


def run_askpass(program: str, prompt: str, *, secret: bool) -> str:
    """The askpass program's answer to ``prompt`` (its first output line); a non-zero
    exit (the user pressed Cancel) is ``Cancelled``.  The answer reaches us through a
    pipe, never argv or the environment; ``SSH_ASKPASS_PROMPT`` is left unset (an entry
    prompt), as OpenSSH does for passphrases."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "SSH_ASKPASS_PROMPT"}
    try:
        cp = subprocess.run([program, prompt], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=None, env=env, timeout=600,
                            check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Cancelled(f"the askpass program {program} failed: {exc}") from None
    if cp.returncode != 0:
        raise Cancelled()
    answer = cp.stdout.decode("utf-8", "replace")
    return answer.split("\n", 1)[0].rstrip("\r")


def _read_line(prompt: str) -> str:
    """A visible answer, from the controlling terminal when there is one (like getpass)."""
    try:
        tty = open("/dev/tty", "r+")  # noqa: SIM115 (closed below)
    except OSError:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError from None
        return line.rstrip("\n")
    with tty:
        tty.write(prompt)
        tty.flush()
        line = tty.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")


# --------------------------------------------------------------------------- the dialog


@dataclass
class Outcome:
    code: int
    message: str


class Dialog:
    """What to answer to each management event; pure apart from the injected terminal.

    ``send`` gets each command (bytes or a wipeable bytearray, wiped after the call).
    ``handle`` returns an ``Outcome`` once the connection attempt is decided.
    """

    def __init__(self, term: Terminal, send: Callable[[bytes | bytearray], None], *,
                 username: str | None = None, auth_retries: int = 0,
                 saved: Callable[[], Credentials | None] | None = None,
                 open_url: Callable[[str], bool] | None = None) -> None:
        self.term = term
        self._open_url = open_url or open_in_browser
        # AUTH_PENDING's timeout (seconds): the caller's deadline becomes now + this
        self.pending_timeout: float | None = None
        self._send = send
        self.username = username
        self.auth_retries = auth_retries
        # Saved credentials (the keyring): tried once, before asking; if the server
        # refuses them, the next attempt asks (and does not count as a retry).
        self._saved = saved
        self.saved_used = False
        self.saved_refused = False
        # What the user typed for 'Auth' (username, password before any challenge
        # answer is added): the only thing --save-credentials may keep.
        self.typed: Credentials | None = None
        self.state = "STARTING"
        self.remote = ""
        self.local_ip = ""
        self.challenge: mg.DynamicChallenge | None = None
        self.auth_failed = False
        self.connected = False
        self.prompted = False  # a prompt was answered (the caller extends its deadline)
        self.fatal = ""

    def send(self, cmd: bytes | bytearray) -> None:
        try:
            self._send(cmd)
        finally:
            if isinstance(cmd, bytearray):
                mg.wipe(cmd)

    def handle(self, ev: mg.Event) -> Outcome | None:
        if isinstance(ev, mg.Info):
            self.send(mg.command("state", "on"))
            self.send(mg.command("log", "on"))
        elif isinstance(ev, mg.Log):
            if not self.connected:
                for needle, text in LOG_PROGRESS:
                    if needle in ev.text:
                        self.term.progress(text + " …" if self.term.tty else text)
                        break
        elif isinstance(ev, mg.Hold):
            # "hold off" first (as openvpn-gui): after we detach, a restart must not
            # wait for a hold release nobody will send.
            self.send(mg.command("hold", "off"))
            self.send(mg.command("hold", "release"))
        elif isinstance(ev, mg.State):
            return self._state(ev)
        elif isinstance(ev, mg.PasswordRequest):
            self._password(ev)
        elif isinstance(ev, mg.VerificationFailed):
            return self._failed(ev)
        elif isinstance(ev, mg.WebAuth):
            if self._open_url(ev.url):
                self.term.message(f"Opened the login page in your browser: {ev.url}")
            else:
                self.term.message(f"Log in with your browser to continue: {ev.url}")
        elif isinstance(ev, mg.CrText):
            answer = self.term.ask(f"{ev.text}: ", secret=not ev.echo)
            self.prompted = True
            self.send(mg.cr_response_command(answer))
            del answer
        elif isinstance(ev, mg.NeedOk):
            self.term.message(f"openvpn asks: {ev.text or ev.name} (answering ok)")
            self.send(mg.command("needok", ev.name, "ok"))
        elif isinstance(ev, mg.NeedStr):
            answer = self.term.ask(f"{ev.text or ev.name}: ", secret=False)
            self.prompted = True
            self.send(mg.command("needstr", ev.name, answer))
        elif isinstance(ev, mg.Fatal):
            self.fatal = ev.text
        return None

    def _state(self, ev: mg.State) -> Outcome | None:
        self.state = ev.name
        if ev.name == "AUTH_PENDING":
            # The server's word on how long the login may take ("timeout N"; openvpn's
            # hand-window, 60 s, without one) replaces --timeout.
            m = re.search(r"timeout (\d+)", ev.detail)
            self.pending_timeout = float(m.group(1)) if m else 60.0
            self.term.progress(f"waiting for the login to complete (up to "
                               f"{self.pending_timeout:g} s)")
            return None
        if ev.remote_ip:
            self.remote = ev.remote_ip + (f":{ev.remote_port}" if ev.remote_port else "")
        if ev.local_ip:
            self.local_ip = ev.local_ip
        text = STATE_TEXT.get(ev.name, ev.name.lower().replace("_", " "))
        if ev.name in ("CONNECTING", "TCP_CONNECT", "WAIT") and self.remote:
            text += f" to {self.remote}"
        if ev.name in ("RECONNECTING", "EXITING") and ev.detail:
            text += f" ({ev.detail})"
        if ev.name == "CONNECTED":
            self.connected = True
            self.term.end_line()
            if ev.detail == "SUCCESS":
                return Outcome(EXIT_OK, "connected")
            return Outcome(EXIT_PARTIAL, f"connected, but openvpn reported errors ({ev.detail});"
                                         " some routes or settings may be missing")
        self.term.progress(text + " …" if self.term.tty else text)
        if ev.detail in ("auth-failure", "private-key-password-failure") and \
                ev.name in ("RECONNECTING", "EXITING"):
            self.auth_failed = True
            if ev.detail == "auth-failure" and self.saved_used and self.typed is None:
                self._saved_refused()  # the saved credentials failed: the next prompt asks
                return None
            if self.auth_retries <= 0 and self.challenge is None:
                return Outcome(EXIT_AUTH, "authentication failed: the server refused "
                                          "the credentials")
        return None

    def _password(self, ev: mg.PasswordRequest) -> None:
        if ev.kind == "Auth" and self.challenge is not None:
            ch, self.challenge = self.challenge, None
            answer = self.term.ask(f"{ch.text}: ", secret=not ch.echo)
            self.prompted = True
            for cmd in mg.password_commands(
                    "Auth", username=ch.username,
                    password=mg.dynamic_challenge_password(ch, answer)):
                self.send(cmd)
            del answer
            return
        label = {"Auth": "", "Private Key": "Private key "}.get(ev.kind, f"{ev.kind} ")
        stored = None
        if ev.kind == "Auth" and ev.need_password and self._saved is not None \
                and not self.saved_used:
            self.saved_used = True
            stored = self._saved()
        if stored is not None:
            password: str | None = stored.password
            if ev.static_challenge is not None:  # the OTP is asked every time
                challenge = ev.static_challenge
                response = self.term.ask(f"{challenge.text}: ", secret=not challenge.echo)
                self.prompted = True
                password = mg.static_challenge_password(stored.password, response, challenge)
                del response
            self.term.progress("using the saved credentials")
            for cmd in mg.password_commands(
                    "Auth", username=(self.username or stored.username)
                    if ev.need_username else None, password=password):
                self.send(cmd)
            del password, stored
            return
        username = None
        if ev.need_username:
            username = self.username or self.term.ask(
                f"{label}Username: " if label else "Username: ", secret=False)
            self.username = username  # asked again after a failure: keep it
        password = None
        if ev.need_password:
            prompt = "Private key passphrase: " if ev.kind == "Private Key" else \
                f"{label}Password: "
            password = self.term.ask(prompt, secret=True)
            if ev.kind == "Auth" and ev.need_username and username is not None:
                self.typed = Credentials(username, password)
            sc = ev.static_challenge
            if sc is not None and ev.kind == "Auth":
                response = self.term.ask(f"{sc.text}: ", secret=not sc.echo)
                password = mg.static_challenge_password(password, response, sc)
                del response
        self.prompted = True
        for cmd in mg.password_commands(ev.kind, username=username, password=password):
            self.send(cmd)
        del password

    def _saved_refused(self) -> bool:
        """The saved credentials were just refused: ask once, without using a retry."""
        if self.saved_used and not self.saved_refused and self.typed is None:
            self.saved_refused = True
            self.term.message("The saved credentials were refused; asking.")
            return True
        return False

    def _failed(self, ev: mg.VerificationFailed) -> Outcome | None:
        if ev.challenge is not None:
            self.challenge = ev.challenge  # asked at the next "Need 'Auth'"
            return None
        if ev.kind == "Auth" and self._saved_refused():
            return None
        what = "private key passphrase" if ev.kind == "Private Key" else "credentials"
        if self.auth_retries > 0:
            self.auth_retries -= 1
            self.term.message(f"Authentication failed ({what} refused); try again.")
            return None
        return Outcome(EXIT_AUTH, f"authentication failed: the server refused the {what}"
                       if ev.kind == "Auth" else f"authentication failed: wrong {what}")


# --------------------------------------------------------------------------- files


def private_dir() -> str:
    """A directory only the caller can enter, for the management socket."""
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        candidates.append(os.path.join(runtime, "iservice"))
    candidates.append(os.path.join(os.path.expanduser("~"), ".cache", "iservice"))
    problems = []
    for d in candidates:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                problems.append(f"{d} is not a directory of yours")
                continue
            if st.st_mode & 0o077:
                os.chmod(d, 0o700)
            return d
        except OSError as exc:
            problems.append(f"{d}: {exc.strerror}")
    raise OSError("no private directory for the management socket: " + "; ".join(problems))


def management_path(directory: str, profile: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in profile)[:40]
    path = os.path.join(directory, f"{safe}-{os.getpid()}.sock")
    if len(path.encode()) > 107:
        path = os.path.join(directory, f"m{os.getpid()}")
    if len(path.encode()) > 107:
        raise OSError(f"{directory} is too long a path for a unix socket")
    return path


def openvpn_options(config: str, mgmt: str, *, verb: int | None = None) -> str:
    argv = ["--config", config, "--management", mgmt, "unix", "--management-hold",
            "--management-query-passwords", "--auth-retry", "interact",
            # openvpn-gui's IV_SSO: the server may offer web auth and CR_TEXT
            "--setenv", "IV_SSO", "openurl,webauth,crtext"]
    if verb is not None:
        argv += ["--verb", str(verb)]
    return quote_argv(argv)


@dataclass(frozen=True)
class Profile:
    name: str
    path: str


def resolve_profile(text: str, control_path: str) -> Profile:
    """A path (has a ``/`` or names an existing file) or a name from ``iservice profiles``."""
    if "/" in text or os.path.isfile(text):
        path = os.path.abspath(text)
        if not os.path.isfile(path):
            raise LookupError(f"no such file: {path}")
        return Profile(wc.profile_name(path), path)
    try:
        reply = client.control_request(control_path, wc.Request("profiles"), timeout=10)
    except (OSError, wc.ReplyError) as exc:
        raise client.ServiceUnavailable(f"cannot list the approved profiles: {exc}") from None
    if isinstance(reply, wc.ErrorReply):
        raise LookupError(f"cannot list the approved profiles: {reply.error}")
    profiles = reply.profiles if isinstance(reply, wc.ProfilesReply) else ()
    for p in profiles:
        if text in (p.name, os.path.basename(p.path)):
            return Profile(p.name, p.path)
    known = ", ".join(p.name for p in profiles) or "none"
    raise LookupError(f"no profile {text!r} (approved profiles you can use: {known})")


# --------------------------------------------------------------------------- run


@dataclass
class Options:
    profile: str
    socket_path: str
    control_path: str
    foreground: bool = False
    timeout: float = 60.0
    username: str | None = None
    auth_retries: int = 0
    verb: int | None = None
    instance: str = ""
    save_credentials: bool = False
    askpass: str | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _session_of(control_path: str, pid: int) -> wc.SessionInfo | None:
    with contextlib.suppress(Exception):
        reply = client.control_request(control_path, wc.Request("sessions"), timeout=5)
        if isinstance(reply, wc.SessionsReply):
            for s in reply.sessions:
                if s.pid == pid:
                    return s
    return None


def _log_tail(control_path: str, pid: int, lines: int = 12) -> list[str]:
    """openvpn's last lines, while the service still has the session."""
    s = _session_of(control_path, pid)
    if s is None:
        return []
    with contextlib.suppress(Exception):
        reply = client.control_request(control_path, wc.Request("log", s.name, lines=lines),
                                       timeout=5)
        if isinstance(reply, wc.LogLines):
            return list(reply.lines)
    return []


def _saved(instance: str, profile: str) -> Callable[[], Credentials | None]:
    """Look the profile's saved credentials up when openvpn first asks for them."""
    def lookup() -> Credentials | None:
        from iservice.keyring import KeyringError, SecretService, attributes
        try:
            with SecretService.open() as keyring:
                return keyring.lookup(attributes(profile, instance))
        except KeyringError:
            return None  # no keyring: ask, as without one
    return lookup


def _save(opts: Options, term: Terminal, profile: str, creds: Credentials | None) -> None:
    """--save-credentials once connected: only what was typed for 'Auth'."""
    if creds is None:
        term.message("Nothing to save: openvpn did not ask for a username and password "
                     "(or the saved ones were used).")
        return
    from iservice.keyring import KeyringError, SecretService, attributes
    try:
        with SecretService.open() as keyring:
            keyring.store(attributes(profile, opts.instance), f"iservice: {profile}", creds)
    except KeyringError as exc:
        term.message(f"Warning: the credentials were not saved: {exc}")
        return
    term.message(f"Saved the username and password for {profile} in your keyring "
                 f"(`iservice forget {profile}` removes them).")


def run(opts: Options, term: Terminal | None = None) -> int:
    term = term or Terminal(askpass=opts.askpass)
    err = sys.stderr
    try:
        profile = resolve_profile(opts.profile, opts.control_path)
    except LookupError as exc:
        print(f"iservice connect: {exc}", file=err)
        return EXIT_USAGE
    except client.ServiceUnavailable as exc:  # nothing listens: not the user's mistake
        print(f"iservice connect: {exc.explain(opts.instance)}", file=err)
        return EXIT_UNAVAILABLE
    try:
        mgmt_path = management_path(private_dir(), profile.name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mgmt_path)  # a socket of an earlier run with our (recycled) pid
    except OSError as exc:
        print(f"iservice connect: {exc}", file=err)
        return EXIT_USAGE
    options = openvpn_options(profile.path, mgmt_path, verb=opts.verb)
    term.progress(f"starting {profile.name} through iservice")
    try:
        conn, reply = client.start(opts.socket_path, os.path.dirname(profile.path), options)
    except client.ServiceUnavailable as exc:
        term.end_line()
        print(f"iservice connect: {exc.explain(opts.instance)}", file=err)
        return EXIT_UNAVAILABLE
    except (OSError, ReplyFormatError) as exc:
        term.end_line()
        print(f"iservice connect: talking to the service failed: {exc}", file=err)
        return EXIT_UNAVAILABLE
    with conn:
        if isinstance(reply, w.ErrorReply):
            term.end_line()
            text = reply.message.strip() or reply.func
            print(f"iservice connect: the service refused: {text}"
                  + (f" ({reply.func})" if reply.message.strip() else ""), file=err)
            return EXIT_REFUSED
        assert isinstance(reply, w.PidReply)
        code = EXIT_OPENVPN
        try:
            code = _drive(opts, term, conn, reply.pid, mgmt_path, profile)
            return code
        finally:
            # A session left running keeps its management socket: `iservice auth` answers
            # its later prompts there (openvpn removes it when it exits).
            if opts.foreground or code not in (EXIT_OK, EXIT_PARTIAL):
                with contextlib.suppress(OSError):
                    os.unlink(mgmt_path)


def _exit_reply(conn: client.Connection, wait: float) -> str:
    """The service's word on openvpn's exit (it sends one only for a non-zero status)."""
    conn.sock.settimeout(wait)
    try:
        for r in conn.replies():
            if isinstance(r, w.ErrorReply):
                return r.func.strip()
    except (OSError, ReplyFormatError):
        pass
    return ""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _drive(opts: Options, term: Terminal, conn: client.Connection, pid: int,
           mgmt_path: str, profile: Profile) -> int:
    err = sys.stderr
    try:
        mgmt = mg.Client.connect(mgmt_path, timeout=15, expected_pid=pid,
                                 alive=lambda: _alive(pid))
    except mg.ManagementError as exc:
        term.end_line()
        why = _exit_reply(conn, 2)
        print(f"iservice connect: {exc}" + (f" ({why})" if why else ""), file=err)
        for line in _log_tail(opts.control_path, pid):
            print(f"  openvpn: {line}", file=err)
        return EXIT_OPENVPN
    dialog = Dialog(term, mgmt.send, username=opts.username, auth_retries=opts.auth_retries,
                    saved=_saved(opts.instance, profile.name))
    outcome: Outcome | None = None
    stopping = False  # we asked openvpn to exit
    deadline = time.monotonic() + opts.timeout
    stop_deadline = 0.0
    # Ctrl-C, and a closed terminal or a kill (SIGHUP/SIGTERM), end the session cleanly:
    # an openvpn left waiting at a prompt nobody will answer would hold its tun forever.
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, _interrupt)

    def stop(result: Outcome) -> None:
        nonlocal outcome, stopping, stop_deadline
        outcome = result
        if not stopping:
            stopping = True
            stop_deadline = time.monotonic() + 10
            try:
                mgmt.send(mg.command("signal", "SIGTERM"))
            except OSError:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)

    try:
        while not mgmt.closed:
            try:
                if stopping:
                    if time.monotonic() > stop_deadline:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                        break
                    wait: float | None = 0.5
                elif outcome is None:
                    wait = max(0.0, deadline - time.monotonic())
                    if wait == 0:
                        state = dialog.state
                        msg = (f"no answer from the server {dialog.remote or ''} within "
                               f"{opts.timeout:g} s (is it reachable?)"
                               if state in EARLY_STATES else
                               f"not connected within {opts.timeout:g} s (stuck in {state})")
                        stop(Outcome(EXIT_TIMEOUT, msg))
                        continue
                else:
                    wait = None  # --foreground, connected: until something happens
                ready, _, _ = select.select([mgmt], [], [], wait)
                if not ready:
                    continue
                for ev in mgmt.read():
                    if stopping:  # openvpn is on its way out: nothing more to answer
                        continue
                    try:
                        result = dialog.handle(ev)
                    except OSError:  # openvpn went away while we answered
                        break
                    if dialog.prompted:  # time spent typing does not count
                        dialog.prompted = False
                        deadline = time.monotonic() + opts.timeout
                    if dialog.pending_timeout is not None:  # the server's own deadline
                        deadline = time.monotonic() + dialog.pending_timeout + 5
                        dialog.pending_timeout = None
                    if result is None or stopping:
                        continue
                    if result.code in (EXIT_OK, EXIT_PARTIAL):
                        outcome = result
                        if opts.save_credentials:  # the server accepted them
                            _save(opts, term, profile.name, dialog.typed)
                        if not opts.foreground:
                            break
                        term.message(_connected_text(opts, pid, dialog, profile, result)
                                     + "\nStaying in the foreground: Ctrl-C disconnects.")
                    else:
                        stop(result)
                if outcome is not None and outcome.code in (EXIT_OK, EXIT_PARTIAL) \
                        and not opts.foreground:
                    break
            except (KeyboardInterrupt, Cancelled):
                term.end_line()
                if dialog.connected and opts.foreground:
                    term.message("Disconnecting …")
                    stop(Outcome(EXIT_OK, "disconnected"))
                else:
                    stop(Outcome(EXIT_INTERRUPTED, "interrupted: the session was ended"))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        eof = mgmt.closed
        mgmt.close()
    term.end_line()
    if outcome is not None and outcome.code in (EXIT_OK, EXIT_PARTIAL) and not stopping \
            and not eof:
        # Connected and detaching: the session runs on without us.
        print(_connected_text(opts, pid, dialog, profile, outcome), flush=True)
        return outcome.code
    # openvpn has exited (or is exiting): what did the service see?
    why = _exit_reply(conn, 3)
    if outcome is None:
        if dialog.connected:  # --foreground, and the connection ended by itself
            if why:
                print(f"iservice connect: the connection ended: {why}", file=err)
                return EXIT_LOST
            print("Disconnected.")
            return EXIT_OK
        if dialog.auth_failed:
            outcome = Outcome(EXIT_AUTH, "authentication failed")
        else:
            text = dialog.fatal or why or "openvpn exited"
            print(f"iservice connect: openvpn exited before connecting: {text}", file=err)
            for line in _log_tail(opts.control_path, pid):
                print(f"  openvpn: {line}", file=err)
            return EXIT_OPENVPN
    if outcome.code == EXIT_OK:
        print("Disconnected.", flush=True)
    else:
        print(f"iservice connect: {outcome.message}", file=err)
    return outcome.code


def _connected_text(opts: Options, pid: int, dialog: Dialog, profile: Profile,
                    outcome: Outcome) -> str:
    s = _session_of(opts.control_path, pid)
    name = s.name if s else f"pid {pid}"
    where = []
    if s and s.tun:
        where.append(f"on {s.tun}")
    addrs = list(s.addresses if s else ()) or ([dialog.local_ip] if dialog.local_ip else [])
    if addrs:
        where.append("address " + ", ".join(addrs))
    head = "Connected" if outcome.code == EXIT_OK else f"Warning: {outcome.message}\nConnected"
    text = f"{head}: {profile.name} (session {name}) {' '.join(where)}".rstrip()
    if not opts.foreground:
        text += f"\nDisconnect with: iservice disconnect {name}"
    return text



# --------------------------------------------------------------------------- iservice auth


@dataclass
class AuthOptions:
    name: str
    control_path: str
    timeout: float = 120.0
    username: str | None = None
    instance: str = ""
    askpass: str | None = None


def reauth(opts: AuthOptions, term: Terminal | None = None) -> int:
    """``iservice auth NAME``: answer what a running session asks again (an OTP at a
    reconnect, a new password), as openvpn3's ``session-auth`` does.  Connects to the
    session's management socket (peer checked to be its openvpn), answers the prompts,
    and returns once it is connected again.  The session is never ended here: on a
    failure or Ctrl-C it goes on waiting, and ``iservice auth`` can be run again."""
    term = term or Terminal(askpass=opts.askpass)
    err = sys.stderr
    try:
        reply = client.control_request(opts.control_path, wc.Request("status", opts.name),
                                       timeout=10)
    except client.ServiceUnavailable as exc:
        print(f"iservice auth: {exc.explain(opts.instance)}", file=err)
        return EXIT_UNAVAILABLE
    except (OSError, wc.ReplyError) as exc:
        print(f"iservice auth: talking to the service failed: {exc}", file=err)
        return EXIT_UNAVAILABLE
    if isinstance(reply, wc.ErrorReply):
        print(f"iservice auth: {reply.error}", file=err)
        return EXIT_USAGE if reply.code == "bad-request" else EXIT_REFUSED
    assert isinstance(reply, wc.StatusReply)
    s = reply.session
    if not s.waits_for_credentials:
        print(f"iservice auth: {s.name} does not wait for credentials (state {s.state}"
              + (f", {s.detail}" if s.detail else "") + ")", file=err)
        return EXIT_REFUSED
    if s.management is None or s.pid is None:
        print(f"iservice auth: {s.name} was not started by `iservice connect` (it has no "
              "management socket to answer through)", file=err)
        return EXIT_REFUSED
    try:
        mgmt = mg.Client.connect(s.management, timeout=5, expected_pid=s.pid)
    except (mg.ManagementError, OSError) as exc:
        print(f"iservice auth: {exc}", file=err)
        return EXIT_REFUSED
    dialog = Dialog(term, mgmt.send, username=opts.username,
                    saved=_saved(opts.instance, s.profile))
    deadline = time.monotonic() + opts.timeout
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, _interrupt)
    outcome: Outcome | None = None
    try:
        while outcome is None and not mgmt.closed:
            wait = deadline - time.monotonic()
            if wait <= 0:
                outcome = Outcome(EXIT_TIMEOUT, f"not connected within {opts.timeout:g} s "
                                                f"(stuck in {dialog.state})")
                break
            ready, _, _ = select.select([mgmt], [], [], wait)
            if not ready:
                continue
            for ev in mgmt.read():
                result = dialog.handle(ev)
                if dialog.prompted:
                    dialog.prompted = False
                    deadline = time.monotonic() + opts.timeout
                if dialog.pending_timeout is not None:
                    deadline = time.monotonic() + dialog.pending_timeout + 5
                    dialog.pending_timeout = None
                if result is not None:
                    outcome = result
                    break
    except (KeyboardInterrupt, Cancelled):
        outcome = Outcome(EXIT_INTERRUPTED, f"interrupted: {s.name} still waits "
                                            "(`iservice auth` again to answer)")
    except OSError as exc:
        outcome = Outcome(EXIT_OPENVPN, f"openvpn went away: {exc}")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        mgmt.close()
    term.end_line()
    if outcome is None:
        print(f"iservice auth: openvpn of {s.name} exited", file=err)
        return EXIT_OPENVPN
    if outcome.code in (EXIT_OK, EXIT_PARTIAL):
        print(f"Connected again: {s.name}" + (f" ({outcome.message})"
                                              if outcome.code == EXIT_PARTIAL else ""))
        return outcome.code
    print(f"iservice auth: {outcome.message}", file=err)
    return outcome.code
