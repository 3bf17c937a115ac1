"""Users' own profiles (issue 14 item 3) with the real service and openvpn: `iservice import`
reads the file and the files it names with the user's rights, refuses what a profile may not
do, stores it root-owned for that user alone; the user connects to it by name; nobody else
sees, reads or uses it; `iservice remove` deletes it; off unless `user_profiles = yes`."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.isv import ISERVICE, PYTHON, Service, wait_for
from tests.lab import Lab, Pki, User

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.start_server('push "route 10.9.0.0 255.255.0.0"\n', port=1194, name="own")
        lab.write_client_config("approved.ovpn", port=1194)
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="ownsvc", extra="user_profiles = yes\n")
    s.start()
    yield s
    assert s.stop() == 0, s.log_tail()
    assert s.tuns() == [] and s.journal()["sessions"] == []


def cli(lab: Lab, svc: Service, user: User, *args: str) -> tuple[int, str, str]:
    cp = lab.run_client([ISERVICE, args[0], "--socket", str(svc.socket_path), *args[1:]],
                        user=user, timeout=60)
    return cp.returncode, cp.stdout, cp.stderr


def users_files(lab: Lab, user: User, extra: str = "") -> Path:
    """A profile in the user's home that names its key files (theirs, mode 0600)."""
    pki = lab.pki
    d = user.home / "vpn"
    d.mkdir(mode=0o700)
    for src, name in ((pki.ca, "ca.crt"), (pki.client_cert, "me.crt"),
                      (pki.client_key, "me.key")):
        shutil.copy(src, d / name)
    assert pki.tls_crypt is not None
    shutil.copy(pki.tls_crypt, d / "tc.key")
    text = (f"client\ndev tun\nnobind\nremote {lab.vpn_remote} 1194 udp\n"
            "remote-cert-tls server\nconnect-retry 1 2\nverb 3\n"
            "ca ca.crt\ncert me.crt\nkey me.key\ntls-crypt tc.key\n" + extra)
    (d / "home.ovpn").write_text(text)
    for p in [d, *d.iterdir()]:
        os.chown(p, user.uid, user.gid)
        p.chmod(0o700 if p.is_dir() else 0o600)
    return d / "home.ovpn"


def can_read(lab: Lab, user: User, path: str) -> bool:
    cp = lab.run_client([PYTHON, "-I", "-c", f"open({path!r}).read()"], user=user)
    return cp.returncode == 0


def test_import_connect_remove(lab: Lab, svc: Service) -> None:
    alice, bob = lab.add_user("owna"), lab.add_user("ownb")
    cfg = users_files(lab, alice)
    code, out, err = cli(lab, svc, alice, "import", str(cfg), "--json")
    assert code == 0, out + err + svc.log_tail()
    stored = json.loads(out)
    assert stored["name"] == "home" and stored["own"] is True
    path = Path(stored["path"])
    # root-owned, everything inline, readable by alice alone
    st = path.stat()
    # (with an ACL the group bits show the ACL's mask: r-- for alice's entry)
    assert st.st_uid == 0 and st.st_gid == 0 and st.st_mode & 0o707 == 0o600
    text = path.read_text()
    assert "<ca>" in text and "<key>" in text and "<tls-crypt>" in text
    assert "ca ca.crt" not in text
    assert can_read(lab, alice, str(path)) and not can_read(lab, bob, str(path))
    # alice sees it marked as hers; bob does not see it
    code, out, _ = cli(lab, svc, alice, "profiles", "--json")
    mine = [p for p in json.loads(out) if p["own"]]
    assert code == 0 and [p["name"] for p in mine] == ["home"]
    code, out, _ = cli(lab, svc, alice, "profiles")
    assert "home" in out and "(your own)" in out and "approved" in out
    code, out, _ = cli(lab, svc, bob, "profiles", "--json")
    assert code == 0 and not [p for p in json.loads(out) if p["own"]]
    # bob can use neither the name nor the path
    code, _, err = cli(lab, svc, bob, "connect", "home")
    assert code == 2 and "no profile" in err
    code, _, err = cli(lab, svc, bob, "connect", str(path))
    assert code == 2 and "no such file" in err  # he cannot even see that it exists
    code, out, _ = cli(lab, svc, bob, "start", "--workdir", "/", "--", "--config", str(path))
    assert code == 1 and "Cannot access the config file" in out, out  # checked as bob
    # alice connects to it by name
    code, out, err = cli(lab, svc, alice, "connect", "home", "--timeout", "30")
    assert code == 0 and "Connected: home" in out, out + err + svc.log_tail()
    assert lab.ping(Lab.pushed_host)
    code, out, err = cli(lab, svc, alice, "disconnect", "home")
    assert code == 0, err
    # the same name again needs --replace
    code, _, err = cli(lab, svc, alice, "import", str(cfg))
    assert code == 1 and "--replace" in err
    assert cli(lab, svc, alice, "import", str(cfg), "--replace")[0] == 0
    # an approved profile's name is taken
    code, _, err = cli(lab, svc, alice, "import", str(cfg), "--name", "approved")
    assert code == 1 and "approved profile" in err
    # remove
    code, out, err = cli(lab, svc, bob, "remove", "home")
    assert code == 1 and "no profile" in err  # bob has none: alice's stays
    assert path.exists()
    code, out, err = cli(lab, svc, alice, "remove", "home")
    assert code == 0 and "home" in out, err
    assert not path.exists()
    code, _, err = cli(lab, svc, alice, "connect", "home")
    assert code == 2
    wait_for(lambda: svc.tuns() == [], 10, what="no tun left")


def test_refused_profiles_say_why(lab: Lab, svc: Service) -> None:
    carol = lab.add_user("ownc")
    cfg = users_files(lab, carol, extra="up /bin/sh\nplugin /tmp/x.so\nlog /tmp/carol.log\n")
    code, out, err = cli(lab, svc, carol, "import", str(cfg))
    assert code == 1, out + err
    for text in ("line 12 (up): runs a program", "line 13 (plugin)", "line 14 (log)"):
        assert text in err, err
    # a file the user cannot read is not read for them by the service (root)
    secret = lab.write_file("root-only.ovpn", lab.client_config_text(), mode=0o600)
    code, _, err = cli(lab, svc, carol, "import", str(secret))
    assert code == 1 and "with your rights" in err, err
    # nor a key it names
    cfg2 = carol.home / "vpn" / "other.ovpn"
    cfg2.write_text(f"remote {lab.vpn_remote} 1194\nkey {lab.pki.client_key}\n")
    os.chown(cfg2, carol.uid, carol.gid)
    code, _, err = cli(lab, svc, carol, "import", str(cfg2))
    assert code == 1 and "cannot read" in err and "with your rights" in err, err
    code, out, _ = cli(lab, svc, carol, "profiles", "--json")
    assert not [p for p in json.loads(out) if p["own"]]


def test_off_unless_the_administrator_allows_it(lab: Lab) -> None:
    off = Service(lab, name="offsvc")
    off.start()
    try:
        dave = lab.add_user("ownd")
        cfg = users_files(lab, dave)
        code, _, err = cli(lab, off, dave, "import", str(cfg))
        assert code == 1 and "user_profiles = yes" in err
    finally:
        assert off.stop() == 0


def test_a_profile_stays_reachable_by_path_after_systemds_chmod_of_state_dir(
        lab: Lab) -> None:
    """systemd's ``StateDirectoryMode=0700`` chmods ``state_dir`` before every start, which
    clears the ACL mask that let the user traverse it; the service grants every user's
    path again at its start (``profiles.grant_all``), so openvpn started with the
    profile's path (no listing by name first) can still read it."""
    svc = Service(lab, name="ownsvc2", extra="user_profiles = yes\n")
    svc.start()
    erin = lab.add_user("owne")
    try:
        code, out, err = cli(lab, svc, erin, "import", str(users_files(lab, erin)), "--json")
        assert code == 0, out + err
        path = json.loads(out)["path"]
        assert can_read(lab, erin, path)
        assert svc.stop() == 0
        svc.state_dir.chmod(0o700)  # what systemd does before the next start
        assert not can_read(lab, erin, path)  # the mask is gone: erin cannot get there
        svc.start()
        assert can_read(lab, erin, path)
        code, out, err = cli(lab, svc, erin, "start", "--workdir", "/", "--", "--config", path)
        assert code == 0 and out.strip().isdigit(), out + err + svc.log_tail()
        [session] = svc.journal()["sessions"]
        # openvpn, as erin, read the profile and connected
        wait_for(lambda: "Initialization Sequence Completed" in svc.session_log(session["id"]),
                 30, what=lambda: svc.session_log(session["id"])[-2000:])
        assert "event=profile-access-failed" not in svc.log()
    finally:
        assert svc.stop() == 0, svc.log_tail()
    wait_for(lambda: svc.tuns() == [] and svc.journal()["sessions"] == [], 10,
             what="nothing left")
