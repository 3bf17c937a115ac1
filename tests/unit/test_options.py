"""Option validation and authorization (iservice.policy.options), on a real temp tree."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.errors import ERROR_STARTUP_DATA, StartupDataError
from iservice.policy.argv import quote_argv, split_command_line
from iservice.policy.options import (
    WHITELIST,
    Approved,
    OsPathResolver,
    PathResolver,
    validate_options,
)

GROUP = "openvpn-admin"


def config_sentence(cfg: str, workdir: str, group: str = GROUP) -> str:
    return (
        f"You have specified a config file location ({cfg} relative to {workdir}) that "
        f"requires admin approval. This error may be avoided by adding your account to "
        f'the "{group}" group'
    )


def option_sentence(opt: str, group: str = GROUP) -> str:
    return (
        f"You have specified an option ({opt}) that may be used only with admin approval. "
        f'This error may be avoided by adding your account to the "{group}" group'
    )


class Tree:
    """A small file system:

    root/etc/openvpn/client/         config_dir
        a.ovpn  sub/b.ovpn  adir.ovpn/  secret.ovpn (0000)
        in-link.ovpn -> a.ovpn        out-link.ovpn -> root/outside/evil.ovpn
        sub-link -> ../../../outside  (a directory symlink leading out)
    root/etc/openvpn/client2/x.ovpn  a sibling whose name extends config_dir's
    root/outside/evil.ovpn  root/home/user/ (a workdir outside)  root/cfglink -> config_dir
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_dir = root / "etc/openvpn/client"
        self.sibling = root / "etc/openvpn/client2"
        self.outside = root / "outside"
        self.home = root / "home/user"
        for d in (self.config_dir / "sub", self.config_dir / "adir.ovpn", self.sibling,
                  self.outside, self.home):
            d.mkdir(parents=True)
        for f in ("a.ovpn", "sub/b.ovpn", "secret.ovpn"):
            (self.config_dir / f).write_text("client\n")
        (self.sibling / "x.ovpn").write_text("client\n")
        (self.outside / "evil.ovpn").write_text("up /bin/sh\n")
        (self.home / "mine.ovpn").write_text("client\n")
        (self.config_dir / "in-link.ovpn").symlink_to("a.ovpn")
        (self.config_dir / "out-link.ovpn").symlink_to(self.outside / "evil.ovpn")
        (self.config_dir / "sub-link").symlink_to("../../../outside")
        (root / "cfglink").symlink_to(self.config_dir)
        (self.config_dir / "secret.ovpn").chmod(0)
        for dirpath, dirnames, _ in os.walk(root):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
        root.chmod(0o755)

    @property
    def cdir(self) -> str:
        return str(self.config_dir)


@pytest.fixture(scope="module")
def tree() -> Iterator[Tree]:
    # Under /tmp (not pytest's 0700 tmp dir) so an unprivileged child can walk it.
    base = Path(tempfile.mkdtemp(prefix="iservice-options-", dir="/tmp"))
    try:
        yield Tree(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Unreadable(OsPathResolver):
    """The OS view, except that the user may read nothing."""

    def can_read(self, path: str) -> bool:
        return False


class Recording(OsPathResolver):
    """The OS view, recording every path it is asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def realpath(self, path: str) -> str:
        self.asked.append(path)
        return super().realpath(path)


RESOLVER = OsPathResolver()


def run(
    tree: Tree,
    options: str,
    workdir: str | None = None,
    *,
    admin: bool = False,
    resolver: PathResolver = RESOLVER,
    config_dir: str | None = None,
) -> Approved:
    return validate_options(
        options,
        tree.cdir if workdir is None else workdir,
        config_dir=tree.cdir if config_dir is None else config_dir,
        admin_group=GROUP,
        is_admin=admin,
        resolver=resolver,
    )


def refused(tree: Tree, options: str, workdir: str | None = None, **kw: object) -> str:
    with pytest.raises(StartupDataError) as info:
        run(tree, options, workdir, **kw)  # type: ignore[arg-type]
    assert info.value.code == ERROR_STARTUP_DATA
    assert info.value.message == ""
    return info.value.func


# --- working directory ---------------------------------------------------------------


@pytest.mark.parametrize("admin", [False, True])
def test_workdir_must_be_absolute(tree: Tree, admin: bool) -> None:
    func = refused(tree, "a.ovpn", "etc/openvpn/client", admin=admin)
    assert func == "Working directory (etc/openvpn/client) is not an absolute path"


@pytest.mark.parametrize("admin", [False, True])
def test_workdir_must_exist(tree: Tree, admin: bool) -> None:
    missing = str(tree.root / "nope")
    func = refused(tree, "a.ovpn", missing, admin=admin)
    assert missing in func and func.startswith("Working directory (")


def test_workdir_must_be_a_directory(tree: Tree) -> None:
    func = refused(tree, "a.ovpn", str(tree.config_dir / "a.ovpn"))
    assert func.startswith("Working directory (")


def test_workdir_checked_before_options(tree: Tree) -> None:
    assert refused(tree, "--up x", "rel").startswith("Working directory (rel)")


# --- splitting, empty and single-token options ---------------------------------------


@pytest.mark.parametrize("options", ["", "   ", "\t \t"])
def test_no_options(tree: Tree, options: str) -> None:
    assert refused(tree, options).startswith("No options given")


@pytest.mark.parametrize("admin", [False, True])
def test_single_token_is_config(tree: Tree, admin: bool) -> None:
    ok = run(tree, "a.ovpn", admin=admin)
    target = os.path.realpath(tree.config_dir / "a.ovpn")
    assert ok == Approved(argv=("--config", target), config=target)


def test_single_quoted_token_is_config(tree: Tree) -> None:
    ok = run(tree, '"sub/b.ovpn"')
    assert ok.argv == ("--config", str(tree.config_dir / "sub/b.ovpn"))


def test_single_option_token_stays_an_option(tree: Tree) -> None:
    # openvpn's own rule: a lone argument is a config only without a leading "--"
    assert run(tree, "--verb") == Approved(argv=("--verb",), config=None)
    assert refused(tree, "--up") == option_sentence("--up")


def test_single_token_escape_refused(tree: Tree) -> None:
    assert refused(tree, "../client2/x.ovpn") == config_sentence("../client2/x.ovpn", tree.cdir)


# --- config location -------------------------------------------------------------------


def test_relative_config_from_workdir_inside(tree: Tree) -> None:
    ok = run(tree, "--config b.ovpn", str(tree.config_dir / "sub"))
    assert ok.config == str(tree.config_dir / "sub/b.ovpn")
    assert ok.argv == ("--config", ok.config)


def test_relative_config_from_workdir_outside_pointing_in(tree: Tree) -> None:
    ok = run(tree, "--config ../../etc/openvpn/client/a.ovpn", str(tree.home))
    assert ok.config == str(tree.config_dir / "a.ovpn")


def test_relative_config_from_workdir_outside(tree: Tree) -> None:
    assert refused(tree, "--config mine.ovpn", str(tree.home)) == config_sentence(
        "mine.ovpn", str(tree.home)
    )


def test_dotdot_escape_from_config_dir(tree: Tree) -> None:
    assert refused(tree, "--config ../client2/x.ovpn") == config_sentence(
        "../client2/x.ovpn", tree.cdir
    )
    assert refused(tree, "--config sub/../../client2/x.ovpn").startswith(
        "You have specified a config file location (sub/../../client2/x.ovpn relative to"
    )
    outside = os.path.relpath(tree.outside / "evil.ovpn", tree.config_dir)
    assert refused(tree, f"--config {outside}") == config_sentence(outside, tree.cdir)


def test_dotdot_that_stays_inside(tree: Tree) -> None:
    ok = run(tree, "--config sub/../a.ovpn")
    assert ok.config == str(tree.config_dir / "a.ovpn")


def test_absolute_config_inside(tree: Tree) -> None:
    path = str(tree.config_dir / "sub/b.ovpn")
    ok = run(tree, quote_argv(["--config", path]), str(tree.home))
    assert ok == Approved(argv=("--config", path), config=path)


def test_absolute_config_outside(tree: Tree) -> None:
    path = str(tree.outside / "evil.ovpn")
    assert refused(tree, f"--config {path}") == config_sentence(path, tree.cdir)


def test_sibling_dir_with_longer_name_is_outside(tree: Tree) -> None:
    # the lexical prefix "/…/client" matches "/…/client2/x.ovpn"; whole components don't
    path = str(tree.sibling / "x.ovpn")
    assert path.startswith(tree.cdir)
    assert refused(tree, f"--config {path}") == config_sentence(path, tree.cdir)


def test_symlink_in_config_dir_pointing_outside(tree: Tree) -> None:
    assert refused(tree, "--config out-link.ovpn") == config_sentence("out-link.ovpn", tree.cdir)
    assert refused(tree, "--config sub-link/evil.ovpn") == config_sentence(
        "sub-link/evil.ovpn", tree.cdir
    )


def test_symlink_inside_is_resolved(tree: Tree) -> None:
    ok = run(tree, "--config in-link.ovpn")
    assert ok.config == str(tree.config_dir / "a.ovpn")
    assert ok.argv[1] == ok.config  # the checked file, not the swappable link


def test_symlinked_config_dir(tree: Tree) -> None:
    link = str(tree.root / "cfglink")
    ok = run(tree, "--config a.ovpn", link, config_dir=link)
    assert ok.config == str(tree.config_dir / "a.ovpn")


def test_config_dir_that_does_not_resolve_approves_nothing(tree: Tree) -> None:
    missing = str(tree.root / "no-such-dir")
    func = refused(tree, "--config a.ovpn", config_dir=missing)
    assert func == config_sentence("a.ovpn", tree.cdir)


def test_config_dir_itself_is_not_a_config(tree: Tree) -> None:
    assert refused(tree, f"--config {tree.cdir}") == config_sentence(tree.cdir, tree.cdir)


def test_root_config_dir(tree: Tree) -> None:
    ok = run(tree, "--config a.ovpn", config_dir="/")
    assert ok.config == str(tree.config_dir / "a.ovpn")


def test_relative_config_dir_is_a_caller_bug(tree: Tree) -> None:
    with pytest.raises(ValueError):
        run(tree, "a.ovpn", config_dir="etc/openvpn/client")


def test_missing_config_gets_a_clear_sentence(tree: Tree) -> None:
    func = refused(tree, "--config typo.ovpn")
    assert func.startswith(f"Cannot access the config file (typo.ovpn relative to {tree.cdir})")
    assert "No such file or directory" in func
    assert "admin approval" not in func


def test_unreadable_config_by_resolver(tree: Tree) -> None:
    func = refused(tree, "--config a.ovpn", resolver=Unreadable())
    assert func == (
        f"The config file (a.ovpn relative to {tree.cdir}) is not a file your account can read"
    )


def test_config_that_is_a_directory(tree: Tree) -> None:
    assert refused(tree, "--config adir.ovpn").startswith("The config file (adir.ovpn")


def _in_child_as_nobody(tree: Tree, options: str) -> int:
    """Run validate_options as uid/gid 65534 in a child; 0 = refused as unreadable."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 3
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                run(tree, options)
                code = 1
            except StartupDataError as exc:
                code = 0 if exc.func.startswith("The config file (") else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_unreadable_config_chmod_000(tree: Tree) -> None:
    if os.geteuid() == 0:
        # root reads anything: check with the rights of an ordinary user, as the service will
        assert _in_child_as_nobody(tree, "--config secret.ovpn") == 0
        assert _in_child_as_nobody(tree, "--config a.ovpn") == 1  # readable: approved
    else:
        assert refused(tree, "--config secret.ovpn").startswith("The config file (secret.ovpn")


@pytest.mark.parametrize("admin", [False, True])
def test_config_path_goes_through_the_resolver(tree: Tree, admin: bool) -> None:
    rec = Recording()
    run(tree, "--config sub/b.ovpn", admin=admin, resolver=rec)
    assert str(tree.config_dir / "sub/b.ovpn") in rec.asked


# --- config smuggling routes -------------------------------------------------------------


def test_stdin_config_refused(tree: Tree) -> None:
    assert refused(tree, "--config stdin") == config_sentence("stdin", tree.cdir)
    assert refused(tree, "stdin") == config_sentence("stdin", tree.cdir)


def test_stdin_config_for_admin_is_kept(tree: Tree) -> None:
    assert run(tree, "--config stdin", admin=True) == Approved(("--config", "stdin"), None)


def test_config_twice_refused(tree: Tree) -> None:
    func = refused(tree, "--config a.ovpn --config sub/b.ovpn")
    assert func == config_sentence("sub/b.ovpn", tree.cdir)


def test_config_twice_for_admin(tree: Tree) -> None:
    ok = run(tree, "--config a.ovpn --config sub/b.ovpn", admin=True)
    assert ok.argv == (
        "--config", str(tree.config_dir / "a.ovpn"), "--config", str(tree.config_dir / "sub/b.ovpn")
    )
    assert ok.config == str(tree.config_dir / "sub/b.ovpn")


def test_config_parameter_that_is_an_option(tree: Tree) -> None:
    assert refused(tree, "--config --verb 3") == config_sentence("--verb", tree.cdir)


def test_config_without_parameter(tree: Tree) -> None:
    assert refused(tree, "--verb 3 --config") == config_sentence("", tree.cdir)


def test_quoting_tricks(tree: Tree) -> None:
    # --co""nfig splits to --config: it is checked as a config
    assert refused(tree, '--co""nfig ../client2/x.ovpn') == config_sentence(
        "../client2/x.ovpn", tree.cdir
    )
    assert run(tree, '--co""nfig a.ovpn').config == str(tree.config_dir / "a.ovpn")
    # "--co""nfig" splits to one token --co"nfig ...: not an option name we allow
    assert refused(tree, '"--co""nfig" a.ovpn') == option_sentence('--co"nfig a.ovpn')
    assert refused(tree, '"--verb 3"') == option_sentence("--verb 3")
    assert refused(tree, '--verb 3 "--up" x') == option_sentence("--up")


def test_escaped_quote_token_is_a_parameter(tree: Tree) -> None:
    # \"--up splits to "--up (a parameter: it does not start with --); openvpn sees no option
    ok = run(tree, r'--setenv X \"--up')
    assert ok.argv == ("--setenv", "X", '"--up')


# --- option whitelist ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WHITELIST - {"config"}))
def test_each_whitelisted_option_passes(tree: Tree, name: str) -> None:
    assert run(tree, f"--{name} x").argv == (f"--{name}", "x")


def test_gui_command_line_passes_untouched(tree: Tree) -> None:
    options = (
        '--log "/home/user/log/client.log" --config "a.ovpn" --setenv IV_GUI_VER '
        '"OpenVPN_GUI 11" --setenv IV_SSO openurl,crtext --service ovpn-exit 0 '
        "--auth-retry interact --management 127.0.0.1 25340 stdin "
        "--management-query-passwords --management-hold --pull-filter ignore route-method "
        "--management-query-proxy --management-signal --management-forget-disconnect "
        "--management-up-down --mute 10 --verb 3 --log-append /tmp/x --script-security 2"
    )
    ok = run(tree, options)
    expected = split_command_line(options)
    expected[expected.index("a.ovpn")] = str(tree.config_dir / "a.ovpn")
    assert ok.argv == tuple(expected)
    assert ok.config == str(tree.config_dir / "a.ovpn")


def test_whitelist_is_the_original(tree: Tree) -> None:
    original = [
        "auth-retry", "config", "log", "log-append", "management",
        "management-forget-disconnect", "management-hold", "management-query-passwords",
        "management-query-proxy", "management-signal", "management-up-down", "mute",
        "setenv", "service", "verb", "pull-filter", "script-security",
    ]
    assert frozenset(original) == WHITELIST


@pytest.mark.parametrize(
    ("options", "opt"),
    [
        ("--up /bin/sh", "--up"),
        ("--plugin /lib/evil.so", "--plugin"),
        ("--verb 3 --route-up x", "--route-up"),
        ("--setenv-safe X y", "--setenv-safe"),
        ("--con fig", "--con"),
        ("--conf a.ovpn", "--conf"),
        ("--CONFIG a.ovpn", "--CONFIG"),
        ("--Verb 3", "--Verb"),
        ("--verb=3", "--verb=3"),
        ("-- up", "--"),
        ("--\tup", "--"),
        ("--verb 3 --", "--"),
        ("--setenv X --up", "--up"),
    ],
)
def test_non_admin_option_refused(tree: Tree, options: str, opt: str) -> None:
    assert refused(tree, options) == option_sentence(opt)


def test_group_name_in_sentence(tree: Tree) -> None:
    with pytest.raises(StartupDataError) as info:
        validate_options(
            "--up x", tree.cdir, config_dir=tree.cdir, admin_group="vpn admins",
            is_admin=False, resolver=RESOLVER,
        )
    assert info.value.func == option_sentence("--up", "vpn admins")


def test_first_failure_wins(tree: Tree) -> None:
    assert refused(tree, "--up x --config ../client2/x.ovpn") == option_sentence("--up")
    assert refused(tree, "--config ../client2/x.ovpn --up x") == config_sentence(
        "../client2/x.ovpn", tree.cdir
    )


# --- setenv opt (CVE-2026-63649) -------------------------------------------------------


@pytest.mark.parametrize(
    "options", ["--setenv opt --up x", "--setenv opt up x", '--setenv "opt" up x', "--setenv opt"]
)
def test_setenv_opt_refused(tree: Tree, options: str) -> None:
    assert refused(tree, options) == option_sentence("--setenv")


@pytest.mark.parametrize("options", ["--setenv OPT x", "--setenv Opt up", "--setenv FOO opt"])
def test_setenv_harmless_forms_allowed(tree: Tree, options: str) -> None:
    assert run(tree, options).argv == tuple(options.split())


# --- admins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    ["--up /bin/sh --script-security 3", "--plugin x.so", "--setenv opt up x", "--dev tun9"],
)
def test_admin_may_use_anything(tree: Tree, options: str) -> None:
    assert run(tree, options, admin=True) == Approved(tuple(options.split()), None)


def test_admin_config_anywhere_is_resolved(tree: Tree) -> None:
    ok = run(tree, "--config out-link.ovpn --up x", admin=True)
    target = str(tree.outside / "evil.ovpn")
    assert ok == Approved(("--config", target, "--up", "x"), target)


def test_admin_unresolvable_config_is_kept(tree: Tree) -> None:
    ok = run(tree, "--config missing.ovpn", admin=True)
    assert ok == Approved(("--config", "missing.ovpn"), None)


def test_admin_config_parameter_option_kept(tree: Tree) -> None:
    assert run(tree, "--config --verb 3", admin=True).argv == ("--config", "--verb", "3")


# --- text that cannot be an argv ---------------------------------------------------------


@pytest.mark.parametrize("admin", [False, True])
@pytest.mark.parametrize("options", ["--config a\x00b", "--verb \ud800", "\udcff"])
def test_unusable_text_refused(tree: Tree, options: str, admin: bool) -> None:
    assert "NUL" in refused(tree, options, admin=admin)


def test_unusable_workdir_refused(tree: Tree) -> None:
    assert "NUL" in refused(tree, "a.ovpn", tree.cdir + "\x00x")


# --- the result type ---------------------------------------------------------------------


def test_approved_is_frozen_and_validated() -> None:
    ok = Approved(argv=("--verb", "3"), config=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.argv = ()  # type: ignore[misc]
    with pytest.raises(ValueError):
        Approved(argv=(), config=None)
    with pytest.raises(ValueError):
        Approved(argv=("a\x00",), config=None)
    with pytest.raises(ValueError):
        Approved(argv=("x",), config="relative.ovpn")


def test_os_resolver_on_odd_text() -> None:
    r = OsPathResolver()
    with pytest.raises(OSError):
        r.realpath("/tmp/a\x00b")
    with pytest.raises(OSError):
        r.realpath("/tmp/\ud800")
    assert not r.is_dir("/tmp\x00")
    assert not r.can_read("/etc/\ud800")


# --- properties --------------------------------------------------------------------------

_TOKENS = st.sampled_from(
    [
        "--config", "a.ovpn", "../client2/x.ovpn", "out-link.ovpn", "sub/b.ovpn", "stdin",
        "--setenv", "opt", "OPT", "--up", "--verb", "3", "--", "-", "", " ", '"', "\\",
        "--log", "in-link.ovpn", "sub-link/evil.ovpn", "/", "..", "adir.ovpn", "\x00",
    ]
)
_OPTIONS = st.one_of(
    st.lists(_TOKENS, max_size=6).map(" ".join),
    st.lists(_TOKENS, max_size=6).map(lambda t: quote_argv([x for x in t if x != "\x00"])),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(options=_OPTIONS, workdir=st.sampled_from(["", "rel", "/", "/nonexistent", None]),
       admin=st.booleans())
def test_only_approved_or_startup_data_error(
    tree: Tree, options: str, workdir: str | None, admin: bool
) -> None:
    try:
        ok = run(tree, options, workdir, admin=admin)
    except StartupDataError as exc:
        assert exc.code == ERROR_STARTUP_DATA and exc.func
        return
    assert isinstance(ok, Approved)
    if admin:
        return
    # For a non-admin, whatever passed is within the rules.
    configs = [i for i, t in enumerate(ok.argv) if t == "--config"]
    assert len(configs) <= 1
    for i, token in enumerate(ok.argv):
        if token.startswith("--"):
            assert token[2:] in WHITELIST
            if token == "--setenv" and i + 1 < len(ok.argv):
                assert ok.argv[i + 1] != "opt"
    if configs:
        assert ok.config is not None
        assert ok.argv[configs[0] + 1] == ok.config
        assert ok.config.startswith(tree.cdir + "/")


@settings(max_examples=200, deadline=None)
@given(options=st.text(max_size=60), workdir=st.text(max_size=20), admin=st.booleans())
def test_arbitrary_text_never_escapes(
    tree: Tree, options: str, workdir: str, admin: bool
) -> None:
    with contextlib.suppress(StartupDataError):
        assert isinstance(run(tree, options, workdir, admin=admin), Approved)
