"""Shared pytest fixtures: the throw-away PKI and network lab of ``tests/lab/``.

Tests marked ``root`` (integration tests with namespaces, users and a real openvpn) are
skipped with a reason when not run as root or when a needed tool is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from tests.lab import Lab, Pki, User, missing_tools

# tests/package runs only with the Debian package installed (scripts/test-package.sh)
collect_ignore = [] if os.environ.get("ISERVICE_INSTALLED") == "1" else ["package"]


def _root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return ("needs root: network namespaces, lab users and a real openvpn server "
                "(run the integration tests as root, as CI does)")
    if missing := missing_tools():
        return ("needs these tools on PATH: " + ", ".join(missing)
                + " (apt-get install -y openvpn iproute2 iputils-ping nftables openssl)")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _root_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def _require_root() -> None:
    if (reason := _root_skip_reason()) is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, server and client certificates and a tls-crypt key, made once per session."""
    if (reason := _root_skip_reason()) is not None and "openssl" in reason:
        pytest.skip(reason)
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def lab_swept() -> list[str]:
    """Once per session: remove leftovers of labs whose process died (e.g. SIGKILL)."""
    _require_root()
    return Lab.sweep_stale()


@pytest.fixture
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    """A fresh lab per test (namespaces, veth; no server until ``lab.start_server``)."""
    with Lab(pki) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def module_lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    """One lab shared by a module's tests (cheaper; tests must not leave state behind)."""
    with Lab(pki) as the_lab:
        yield the_lab


@pytest.fixture
def user(lab: Lab) -> Callable[..., User]:
    """Factory: ``user()`` or ``user("pfx", groups=[...])`` makes a lab user in ``lab``."""

    def make(prefix: str = "isvu", *, groups: Sequence[str] = ()) -> User:
        return lab.add_user(prefix, groups=groups)

    return make


@pytest.fixture
def lab_dir(lab: Lab) -> Path:
    """The lab's base directory (root-owned, 0755, outside /root)."""
    return lab.base_dir
