"""Imported profiles, the pure part (iservice.policy.profile): openvpn's config syntax, the
directive table, rendering with files inline — by example and by property (hypothesis)."""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.policy import profile as pp

CLIENT = """client
dev tun
remote vpn.example.org 1194 udp  # the server
;remote commented.example 1
proto udp
ca ca.crt
cert "my cert.crt"
key 'k\\ey.pem'
tls-auth ta.key 1
auth-user-pass
static-challenge "Enter OTP" 1
<tls-crypt>
-----BEGIN OpenVPN Static key V1-----
abcd
-----END OpenVPN Static key V1-----
</tls-crypt>
verb 3
"""


def test_parse_reads_openvpns_syntax() -> None:
    ds = pp.parse(CLIENT)
    by = {d.name: d for d in ds}
    assert by["remote"].args == ("vpn.example.org", "1194", "udp")  # '#' starts a comment
    assert "commented.example" not in str(ds)
    assert by["cert"].args == ("my cert.crt",)
    assert by["key"].args == ("k\\ey.pem",)  # single quotes: no escapes
    assert by["static-challenge"].args == ("Enter OTP", "1")
    assert by["tls-crypt"].inline is not None and "abcd\n" in by["tls-crypt"].inline
    assert by["verb"].line == 17
    assert pp.parse("--remote x 1\n")[0].name == "remote"  # a leading -- is dropped
    assert pp.parse("\ufeffclient\n")[0].name == "client"
    assert pp.parse('x "a\\"b" c\\ d "\\\\"\n')[0].args == ('a"b', "c d", "\\")


@pytest.mark.parametrize(("text", "why"), [
    ('remote "x 1\n', "closing quotation"),
    ("remote 'x 1\n", "single quotation"),
    ("remote x\\q\n", "bad backslash"),
    ("remote x\\\n", "backslash ends"),
    ("<ca>\nx\n", "end tag </ca> missing"),
    ("x " + " ".join(["a"] * 16) + "\n", "more than 16"),
    ("remote " + "a" * 256 + "\n", "longer than"),
    ("a\0b\n", "NUL"),
    ("<connection>\n<connection>\nremote a\n</connection>\n</connection>\n", "missing"),
])
def test_parse_refuses_what_openvpn_refuses_or_mangles(text: str, why: str) -> None:
    with pytest.raises(pp.ProfileError, match=why):
        pp.parse(text)


@pytest.mark.parametrize(("line", "reason"), [
    ("up /bin/sh", "runs a program"),
    ("route-up x", "runs a program"),
    ("tls-verify x", "runs a program"),
    ("plugin /x.so", "loads a library"),
    ("providers legacy", "loads a library"),
    ("user nobody", "already runs as you"),
    ("chroot /", "already runs as you"),
    ("log /tmp/x", "must see it"),
    ("daemon", "must see it"),
    ("writepid x", "writes a file"),
    ("config other.ovpn", "import that file itself"),
    ("cd /", "inline"),
    ("capath /etc/ssl", "directory"),
    ("crl-verify crls dir", "directory"),
    ("dev-node /dev/x", "device file"),
    ("management 127.0.0.1 7505", "sets this up itself"),
    ("mode server", "server option"),
    ("genkey secret x", "standalone"),
    ("auth-user-pass creds.txt", "keyring"),
    ("askpass pass.txt", "keyring"),
    ("http-proxy p 8080 creds.txt", "keyring"),
    ("socks-proxy p 1080 creds.txt", "keyring"),
    ("setenv opt up /bin/sh", "unchecked"),
    ("script-security 2", "scripts may not run"),
    ("no-such-option 1", "not an openvpn 2.6 option"),
    ("tls-auth ta.key 7", "key direction"),
])
def test_the_table_refuses_with_a_reason(line: str, reason: str) -> None:
    with pytest.raises(pp.ProfileError) as e:
        pp.examine(pp.parse(f"remote a 1\n{line}\n"))
    (problem,) = e.value.problems
    assert problem.line == 2 and reason in problem.reason, problem


def test_every_problem_is_reported_with_its_line() -> None:
    with pytest.raises(pp.ProfileError) as e:
        pp.examine(pp.parse("up a\nremote b 1\ndown c\n<connection>\nremote d\nup e\n"
                            "</connection>\n<auth-user-pass>\nu\np\n</auth-user-pass>\n"))
    assert [(p.line, p.directive) for p in e.value.problems] == [
        (1, "up"), (3, "down"), (6, "up"), (8, "auth-user-pass")]
    with pytest.raises(pp.ProfileError, match="names no server"):
        pp.examine(pp.parse("client\n"))


def test_table_covers_only_openvpn_options() -> None:
    assert set(pp.REFUSED) <= pp.OPENVPN_OPTIONS
    assert set(pp.FILE_OPTIONS) <= pp.OPENVPN_OPTIONS
    assert pp.INLINE_BLOCKS <= pp.OPENVPN_OPTIONS
    assert not set(pp.REFUSED) & set(pp.FILE_OPTIONS)


def test_render_inlines_files_and_keeps_the_rest() -> None:
    plan = pp.examine(pp.parse(CLIENT))
    assert [(f.option, f.path) for f in plan.files] == [
        ("ca", "ca.crt"), ("cert", "my cert.crt"), ("key", "k\\ey.pem"), ("tls-auth", "ta.key")]
    contents = {"ca.crt": b"CA\r\nPEM\n", "my cert.crt": b"CERT\n", "k\\ey.pem": b"KEY",
                "ta.key": b"TA\n"}
    text = pp.render(plan, contents, source="work.ovpn")
    assert "<ca>\nCA\nPEM\n</ca>\n" in text and "<key>\nKEY\n</key>\n" in text
    assert "<tls-auth>\nTA\n</tls-auth>\nkey-direction 1\n" in text
    assert 'static-challenge "Enter OTP" 1\n' in text
    again = pp.examine(pp.parse(text))
    assert again.files == () and {d.name for d in again.directives} >= {
        "ca", "cert", "key", "tls-auth", "key-direction", "tls-crypt", "remote"}


def test_render_refuses_files_that_cannot_be_inline() -> None:
    plan = pp.examine(pp.parse("remote a 1\nca ca.crt\n"))
    for data, why in [(b"x\n</ca> trick\n", "cannot be put inline"), (b"\xff\xfe", "not text"),
                      (b"a" * 300, "cannot be put inline")]:
        with pytest.raises(pp.ProfileError, match=why):
            pp.render(plan, {"ca.crt": data})
    plan = pp.examine(pp.parse("remote a 1\npkcs12 id.p12\n"))
    text = pp.render(plan, {"id.p12": b"\x00\x01binary\xff" * 20})
    body = text.split("<pkcs12>\n")[1].split("</pkcs12>")[0]
    assert base64.b64decode(body.replace("\n", "")) == b"\x00\x01binary\xff" * 20


def test_openvpn_itself_accepts_a_rendered_profile() -> None:
    """The real openvpn parses what render writes (--verb 0, config test only)."""
    plan = pp.examine(pp.parse("client\ndev tun\nremote 192.0.2.1 1194\nca ca.crt\n"
                               'verify-x509-name "CN=a b" subject\n'))
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "x.ovpn"
        cfg.write_text(pp.render(plan, {"ca.crt": b"-----BEGIN CERTIFICATE-----\nx\n"
                                                  b"-----END CERTIFICATE-----\n"}))
        cp = subprocess.run(["openvpn", "--config", str(cfg), "--show-gateway"],
                            capture_output=True, text=True, timeout=30)
    # --show-gateway parses the whole config and exits before using any of it
    assert "Options error" not in cp.stdout + cp.stderr, cp.stdout + cp.stderr


# -- properties ------------------------------------------------------------------------

token = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\0"),
                max_size=30)


@given(token)
def test_quote_round_trips_through_the_parser(t: str) -> None:
    assert pp._tokens("x " + pp.quote(t), 1) == ["x", t]


@given(st.text(max_size=400))
def test_parse_gives_directives_or_a_profile_error(text: str) -> None:
    try:
        ds = pp.parse(text)
    except pp.ProfileError as exc:
        assert exc.problems
        return
    for d in ds:
        assert d.name and (d.inline is None or d.args == ())


names = st.sampled_from(sorted(pp.OPENVPN_OPTIONS)) | st.text("abcdefgh-", min_size=1,
                                                               max_size=8)


@settings(max_examples=300)
@given(st.lists(st.tuples(names, st.lists(token.filter(lambda t: "\n" not in t and
                                                       "\r" not in t), max_size=3)),
                max_size=12))
def test_examine_then_render_is_stable(lines: list[tuple[str, list[str]]]) -> None:
    """Whatever examine accepts renders to text that parses back to the same directives
    (names and arguments) and is accepted again."""
    text = "remote a 1\n" + "".join(" ".join(pp.quote(t) for t in (n, *a)) + "\n"
                                    for n, a in lines)
    try:
        plan = pp.examine(pp.parse(text))
    except pp.ProfileError:
        return
    contents = {f.path: b"X\n" for f in plan.files}
    try:
        rendered = pp.render(plan, contents)
    except pp.ProfileError:
        return
    again = pp.examine(pp.parse(rendered))
    assert again.files == ()
    strip = [(d.name, d.args) for d in plan.directives
             if d.name not in pp.FILE_OPTIONS and d.name != "key-direction"]
    assert [(d.name, d.args) for d in again.directives
            if d.name not in pp.FILE_OPTIONS and d.name != "key-direction"] == strip
    for d in again.directives:
        assert d.name not in pp.REFUSED


@pytest.mark.parametrize(("name", "ok"), [("work", True), ("a.b-c_1", True), (".x", False),
                                          ("-x", False), ("a/b", False), ("a b", False),
                                          ("x" * 65, False), ("a..b", False), ("", False)])
def test_profile_names(name: str, ok: bool) -> None:
    assert pp.valid_profile_name(name) is ok
