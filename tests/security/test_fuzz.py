"""The short fuzz pass of the normal test run (the long one: ``python fuzz/run.py``).

Per target (``fuzz/targets.py``: startup codec, openvpn-msg codec + request policy,
argv splitter, option validator, settings parser, imported-profile parser and
directive table, control-socket codec): every seed of ``fuzz/corpus``,
then a coverage-guided atheris run of 20,000 inputs; where atheris is not installed,
a hypothesis run over mutated seeds instead.  A crash is any exception other than
the parser's own error type, or a failed oracle.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz.targets import TARGETS, Crash, fuzz_msg, fuzz_options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iservice.policy import options as opt
from iservice.wire import msg as m

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"
SHORT_RUNS = 20000
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


def seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / target).iterdir()) if p.is_file()]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_seed_passes(target: str) -> None:
    found = seeds(target)
    assert len(found) >= 5
    for data in found:
        TARGETS[target](data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz_pass(target: str) -> None:
    if HAVE_ATHERIS:
        cp = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "--quiet",
                             "--runs", str(SHORT_RUNS), target],
                            capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        line = next(x for x in cp.stdout.splitlines() if x.startswith(target))
        assert int(line.split()[1]) >= SHORT_RUNS, line
        return
    _hypothesis_pass(target)


def _hypothesis_pass(target: str) -> None:
    pool = seeds(target)

    @settings(max_examples=3000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(pool), st.lists(st.tuples(st.integers(0, 10**6),
                                                     st.binary(max_size=8)), max_size=6),
           st.binary(max_size=64))
    def run(seed: bytes, edits: list[tuple[int, bytes]], tail: bytes) -> None:
        data = bytearray(seed)
        for pos, chunk in edits:
            at = pos % (len(data) + 1)
            data[at:at + len(chunk)] = chunk
        TARGETS[target](bytes(data) + tail)

    run()


def test_the_option_oracle_catches_a_weakened_whitelist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disable the protection: a whitelist that lets --up through must be reported."""
    fuzz_options(b"--config a.ovpn --verb 3")
    monkeypatch.setattr(opt, "WHITELIST", opt.WHITELIST | {"up"})
    with pytest.raises(Crash, match="non-whitelisted"):
        fuzz_options(b"--config a.ovpn --up /bin/sh")


def test_the_setenv_oracle_catches_a_removed_setenv_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_setenv_rule(options: str, workdir: str, **kw: object) -> opt.Approved:
        return opt.Approved(tuple(options.split()), None)  # approves anything

    monkeypatch.setattr("fuzz.targets.validate_options", no_setenv_rule)
    with pytest.raises(Crash, match="setenv opt"):
        fuzz_options(b"--setenv opt x")


def test_the_msg_oracle_catches_a_policy_that_allows_foreign_interfaces(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ipaddress import IPv4Address

    raw = m.encode_message(m.AddressMsg(m.MsgType.ADD_ADDRESS, 1, IPv4Address("10.66.0.1"),
                                        24, m.Interface(1, "lo")))
    fuzz_msg(raw)  # refused: fine
    from iservice.policy import requests as rq
    monkeypatch.setattr(rq.RequestPolicy, "_require_own_iface", lambda self, iface: None)
    with pytest.raises(Crash, match="foreign interface"):
        fuzz_msg(raw)
