"""CVE-2026-13379: the original removed search domains by substring (``wcsstr``) and
corrupted the admin's list.  Here the managed resolv.conf is always rendered from the
admin's original plus the live sessions, so ending a session can only drop that
session's tokens, whole.  Property-tested with domains that are substrings, suffixes
and prefixes of each other and of the admin's own; the end-to-end version with real
sessions and all three end orders is tests/integration/test_dns.py.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.linux.dns import render
from iservice.policy.dns import LinkDns

POOL = ["example.com", "ex.com", "corp.example.com", "corp.example", "example.co",
        "xample.com", "com", "sub.corp.example", "e", "example.com.", "EXAMPLE.com"]


def link(domains: list[str]) -> LinkDns:
    return LinkDns(servers=(IPv4Address("10.9.0.1"),), search=tuple(domains), routing_domains=(),
                   default_route=True, dnssec=None)


def search_tokens(data: bytes) -> list[str]:
    found: list[str] = []
    for line in data.decode("latin-1").splitlines():
        words = line.split()
        if words and words[0] in ("search", "domain"):
            found = words[1:]
    return found


def original_file(tokens: list[str]) -> bytes:
    return ("# admin's own\nnameserver 192.0.2.53\n" + ("search " + " ".join(tokens) + "\n"
            if tokens else "") + "options ndots:2\n").encode()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(POOL), unique=True, max_size=5),
       st.lists(st.lists(st.sampled_from(POOL), unique=True, max_size=4), min_size=1,
                max_size=3),
       st.data())
def test_ending_sessions_removes_exactly_their_tokens(admin: list[str],
                                                     sessions: list[list[str]],
                                                     data: st.DataObject) -> None:
    original = original_file(admin)
    live = [(f"istun{i}", link(d)) for i, d in enumerate(sessions)]
    rendered = search_tokens(render(original, live))
    # every admin token survives exactly once, whatever the sessions added
    for t in admin:
        assert rendered.count(t) == 1, (t, rendered)
    assert len(rendered) == len(set(rendered))
    # end the sessions in a random order: each step is the list of the rest, whole tokens
    order = data.draw(st.permutations(range(len(live))))
    remaining = list(live)
    for i in order:
        remaining = [x for x in remaining if x[0] != f"istun{i}"]
        now = search_tokens(render(original, remaining))
        still = {d for _, lk in remaining for d in lk.search}
        assert set(now) == set(admin) | still, (now, admin, still)
        for t in admin:
            assert now.count(t) == 1
    assert search_tokens(render(original, [])) == admin
