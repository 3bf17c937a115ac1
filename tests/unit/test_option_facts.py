"""facts.read_option_facts: a config file is read in its place in the argv; anything that
is not a regular file is left unread, never waited for (a FIFO without a writer)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from iservice.facts import read_option_facts
from iservice.policy.redirect import OptionFacts


def test_a_config_file_is_read_in_its_place(tmp_path: Path) -> None:
    cfg = tmp_path / "c.ovpn"
    cfg.write_text("verb 3\nroute-nopull\n")
    got = read_option_facts(["--config", str(cfg)])
    assert got.push_visible and got.route_nopull
    # a later option on the command line wins over the file's
    assert not read_option_facts(["--config", str(cfg), "--verb", "1"]).push_visible


def test_a_fifo_config_is_not_waited_for(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.ovpn"
    os.mkfifo(fifo)
    box: dict[str, OptionFacts] = {}
    t = threading.Thread(target=lambda: box.update(
        facts=read_option_facts(["--config", str(fifo), "--verb", "4"])), daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the stuck reader, so the test run can end
        with open(fifo, "w"):
            pass
        raise AssertionError("read_option_facts waited for a writer of the FIFO")
    assert box["facts"].push_visible  # the rest of the argv still counts


def test_missing_and_unreadable_configs_are_skipped(tmp_path: Path) -> None:
    assert not read_option_facts(["--config", str(tmp_path / "none.ovpn")]).push_visible
    assert not read_option_facts(["--config", "bad\0path"]).push_visible
    assert not read_option_facts(["--config", str(tmp_path)]).push_visible  # a directory
