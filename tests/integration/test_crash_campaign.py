"""The crash campaign's short run (issue 17 item 1; ``tests/campaign.py``): ten
``kill -9``s of the service, every phase of a session at least once, each followed by a
restart that must leave nothing of the session within 5 s.

The long run (100 trials, 10,000 routes) is ``python -m tests.campaign``; its figures are
in docs/security.md ("Crash campaign").  Here the server pushes fewer routes so that the
ten trials take well under a minute (every trial waits for openvpn to take the pushed
routes in; 10,000 cost ~4 s of openvpn's own time each).
"""

from __future__ import annotations

import os

import pytest
from tests.campaign import PHASES, Campaign, Trial, figures, format_figures
from tests.lab import Lab, Pki

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

TRIALS = 10
ROUTES = 1000
# Known on the current core (issue 17 item 1): a kill after openvpn is spawned but before
# the journal holds its pid (stage "tun", ~20 µs) or its start time (the ~1.5 ms after
# the PID reply) leaves that openvpn running, because recovery ends a process only when
# pid *and* start time match.  The lead's cgroup per session ends it; then this
# exception goes, and such a trial must pass.
KNOWN = ("openvpn outlives recovery after a kill before its pid and start time are "
         "journaled (issue 17 item 1: to be fixed by a cgroup per session)")


def known(trial: Trial) -> bool:
    return set(trial.leftovers) == {"processes"} and \
        trial.stage in ("tun", "pid-without-start-time")


def test_ten_crashes_in_every_phase_leave_nothing(pki: Pki, lab_swept: list[str]) -> None:
    lines: list[str] = []
    with Lab(pki) as lab, Campaign(lab, routes=ROUTES, report=lines.append) as campaign:
        trials = campaign.run(TRIALS, seconds=600)
    report = "\n".join(lines) + "\n" + format_figures(figures(trials))
    print(report)  # pytest -s, or the failure report, shows every trial
    assert len(trials) == TRIALS, report
    assert {t.phase for t in trials} == set(PHASES), report
    assert [t.error for t in trials if t.error] == [], report
    left = [t for t in trials if t.leftovers]
    if left and all(known(t) for t in left):
        pytest.xfail(f"{KNOWN}: trials {[t.number for t in left]}")
    assert left == [], report
