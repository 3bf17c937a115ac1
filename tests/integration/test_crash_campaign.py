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
from tests.campaign import PHASES, Campaign, figures, format_figures
from tests.lab import Lab, Pki

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

TRIALS = 10
ROUTES = 1000
def test_ten_crashes_in_every_phase_leave_nothing(pki: Pki, lab_swept: list[str]) -> None:
    lines: list[str] = []
    with Lab(pki) as lab, Campaign(lab, routes=ROUTES, report=lines.append) as campaign:
        trials = campaign.run(TRIALS, seconds=600)
    report = "\n".join(lines) + "\n" + format_figures(figures(trials))
    print(report)  # pytest -s, or the failure report, shows every trial
    assert len(trials) == TRIALS, report
    assert {t.phase for t in trials} == set(PHASES), report
    assert [t.error for t in trials if t.error] == [], report
    # A session's openvpn and all it forks are in the session's cgroup, journaled before
    # openvpn runs: no stage leaves a process (the campaign found 17 of 100 before).
    assert [t for t in trials if t.leftovers] == [], report
