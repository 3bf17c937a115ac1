"""The benchmark's pure parts: the machine's name for its results file, the README
section made from ``bench/results/``, the rtnetlink floor's requests."""

from __future__ import annotations

import json
import struct
from ipaddress import ip_address, ip_network
from pathlib import Path

from bench import floor
from bench.cli import shown_command
from bench.readme import latest_runs, replace_section, section
from bench.report import Machine, Row, Run

from iservice.linux.netlink import decode_route


def machine(cpu: str, cpu_id: str = "cpu family 25, model 17, stepping 1") -> Machine:
    return Machine(cpu=cpu, cpu_id=cpu_id, cores=2, hypervisor="KVM", kernel="6.1.0",
                   os="Debian GNU/Linux 12 (bookworm)", mem_gb=24.0,
                   openvpn="OpenVPN 2.6.14", python="3.11.2")


def run(cpu: str, started: str, figure: float, *, mode: str = "full") -> Run:
    rows = [Row("P1 start", figure, 0.2, "ms", "≤ 1.5× peer", figure <= 0.3).to_json(),
            Row("hook start-up", 27.0, 5.0, "ms", "info", None).to_json()]
    return Run(command="bash bench/run.sh", mode=mode, started=started, minutes=5.0,
               load=(0.5, 1.25), machine=machine(cpu), rows=rows)


def test_a_generic_cpu_name_gets_its_family_and_model_in_the_file_name() -> None:
    assert machine("AMD EPYC").slug == "amd-epyc-family-25-model-17"
    assert machine("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz").slug == \
        "intel-r-xeon-r-gold-6248-cpu-2-50ghz"
    assert machine("", "").slug == "unknown-cpu"


def test_the_readme_shows_the_latest_full_run_of_each_cpu_model(tmp_path: Path) -> None:
    runs = [run("AMD EPYC", "2026-12-01T10:00:00+00:00", 1.5),
            run("AMD EPYC", "2026-12-02T10:00:00+00:00", 0.25),
            run("AMD EPYC", "2026-12-03T10:00:00+00:00", 9.0, mode="quick"),
            run("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "2026-11-30T10:00:00+00:00", 2.0)]
    for k, r in enumerate(runs):
        (tmp_path / f"r{k}.json").write_text(json.dumps(r.to_json()))
    (tmp_path / "old.json").write_text(json.dumps({"machine": "a string", "rows": []}))
    latest = latest_runs(tmp_path)
    assert [(r.machine.cpu, r.started[:10]) for r in latest] == [
        ("AMD EPYC", "2026-12-02"), ("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", "2026-11-30")]
    text = section(latest)
    assert "| P1 start | 0.2 ms | 0.2 ms |" in text  # the newer AMD run, not the older
    assert "1.5 ms" not in text and "9.0 ms" not in text
    assert "load average (1 min) at start / end 0.50 / 1.25" in text
    assert "- P1 start" in text  # the Intel run missed its target: listed
    readme = "# x\n\n## Performance\n\nold figures\n\n## Development\n\nkept\n"
    new = replace_section(readme, text)
    assert "old figures" not in new and new.endswith("## Development\n\nkept\n")
    assert replace_section(new, text) == new


def test_the_command_shown_leaves_the_output_path_out() -> None:
    assert shown_command(["--quick", "--out", "/x/y"]) == "bash bench/run.sh --quick"
    assert shown_command(["--only", "P2", "--out=/x"]) == "bash bench/run.sh --only P2"


def test_the_floors_requests_are_the_routes_asked_for() -> None:
    for prefixes, gw in ((["100.64.0.0/26", "100.64.0.64/26"], "10.251.0.1"),
                         (["fd10::/56", "fd10:0:100::/56"], "fd00:251::1")):
        msgs = floor.encode(prefixes, gw, 7, 100)
        for k, (raw, text) in enumerate(zip(msgs, prefixes, strict=True)):
            length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", raw)
            assert (length, mtype, seq) == (len(raw), floor.RTM_NEWROUTE, 100 + k)
            assert flags & floor.NLM_F_CREATE and flags & floor.NLM_F_EXCL
            route = decode_route(memoryview(raw)[16:])
            assert (route.dst, route.gateway, route.oif) == (ip_network(text), ip_address(gw), 7)
