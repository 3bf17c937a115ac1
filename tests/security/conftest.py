"""Fixtures of the security suite: one lab per module, services, a hostile openvpn.

Like tests/integration/test_service.py: two namespaces, a real openvpn server, the
service run as root in the client namespace, lab users.  ``snapshot`` takes what a
hostile request could change (routes, addresses, links, nftables, the user's
processes, the service's tun devices and journal) so each case can assert that
nothing of it was left or changed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.isv import PYTHON, Service, Services
from tests.lab import Lab, Pki, User

PUSH = ('push "route 10.9.0.0 255.255.0.0"\n'
        'push "route-ipv6 fd00:9::/64"\n')
HOSTILE_SRC = Path(__file__).resolve().parent.parent / "hostile_openvpn.py"
# DNS is left alone in these services: the lab must never touch the host's resolv.conf.
SAFE_EXTRA = "dns_backend = none\n"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-sec-pki-", dir="/tmp"))
    try:
        pki = Pki.create(pki_dir)
        with Lab(pki) as lab:
            lab.start_server(PUSH)
            lab.write_client_config("approved.ovpn")
            yield lab
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


@pytest.fixture
def make_service(lab: Lab) -> Iterator[Callable[..., Service]]:
    """Services made by a test; each is stopped at teardown (and recovered if killed)."""
    services = Services(lab, "sec", SAFE_EXTRA)
    yield services.make
    services.close()


@pytest.fixture
def svc(make_service: Callable[..., Service]) -> Iterator[Service]:
    s = make_service()
    s.start()
    yield s
    s.finish()


@pytest.fixture
def user(lab: Lab) -> User:
    return lab.add_user("isvs")


@pytest.fixture
def hostile_exe(lab: Lab) -> Path:
    return lab.write_file("bin/hostile-openvpn",
                          f"#!{PYTHON} -I\n" + HOSTILE_SRC.read_text(), mode=0o755)
