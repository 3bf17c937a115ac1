"""Man pages and completion generated from the code (docgen.py): a new subcommand, option or
settings key appears by itself, and the output is valid for the real man, bash and zsh."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from iservice import docgen, settings
from iservice.cli import build_parser

ZSH = shutil.which("zsh")


def toy_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iservice", description="toy")
    p.add_argument("--version", action="version", version="1")
    sub = p.add_subparsers(dest="command")
    sp = sub.add_parser("frobnicate", help="frob it [really]", description="Frob. It's done.")
    sp.add_argument("--knob", metavar="FILE", help="a knob's file")
    sp.add_argument("--level", type=int, choices=range(3), metavar="0-2", help="how much")
    sp.add_argument("-q", "--quiet", action="store_true", help="say less")
    sp.add_argument("profile", metavar="PROFILE", help="which")
    sub.add_parser("other", help="another")
    return p


def test_a_new_subcommand_and_its_options_appear_everywhere() -> None:
    p = toy_parser()
    (frob, other) = docgen.commands(p)
    assert (frob.name, other.name) == ("frobnicate", "other")
    assert [o.flags for o in frob.flags] == [("-h", "--help"), ("--knob",), ("--level",),
                                             ("-q", "--quiet")]
    page = docgen.man_iservice(p)
    assert ".SS frobnicate\n" in page and "\\fB\\-\\-knob\\fR \\fIFILE\\fR" in page
    bash = docgen.bash_completion(p)
    assert "frobnicate other" in bash and '--knob) COMPREPLY=($(compgen -f -- "$cur"))' in bash
    assert "--level) COMPREPLY=($(compgen -W '0 1 2'" in bash
    assert "$(_iservice_names profiles)" in bash
    zsh = docgen.zsh_completion(p)
    assert "'frobnicate:frob it \\[really\\]'" in zsh
    assert "'(-q --quiet)'{-q,--quiet}'[say less]'" in zsh
    assert "'--level[how much]:0-2:(0 1 2)'" in zsh and "':PROFILE:_iservice_profiles'" in zsh


def test_every_command_of_the_real_parser_is_documented() -> None:
    page = docgen.man_iservice(build_parser())
    names = [c.name for c in docgen.commands(build_parser())]
    assert {"serve", "connect", "enable", "disable", "cleanup"} <= set(names)
    for name in names:
        assert f".SS {name}\n" in page
    assert "cleanup" in docgen.exit_statuses()


def test_every_settings_key_has_a_description_and_a_default() -> None:
    documented = {k for d in docgen.key_docs() for k in d.keys}
    assert set(docgen.setting_keys()) <= documented
    page = docgen.man_settings()
    for key in docgen.setting_keys():
        assert f"\\fB{key}\\fR" in page
    assert docgen.default_text("priority") == "NORMAL_PRIORITY_CLASS"
    assert docgen.default_text("socket_mode") == "0666"
    assert docgen.default_text("block_dns") == "false"
    assert docgen.default_text("stop_grace") == "5"
    assert docgen.default_text("log_dir") == "unset"


def test_a_key_without_a_description_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = settings.__doc__ or ""
    monkeypatch.setattr(settings, "__doc__", doc.replace("``stop_grace``", "``x``"))
    with pytest.raises(ValueError, match="stop_grace"):
        docgen.man_settings()


def test_key_docs_headers_over_two_lines() -> None:
    doc = ("Keys\n----\n``a``        first\n             more\n"
           "``b``, ``c``,\n``d``\n             shared text\nOther\n-----\nx\n")
    assert docgen.key_docs(doc) == [docgen.KeyDoc(("a",), "first more"),
                                    docgen.KeyDoc(("b", "c", "d"), "shared text")]


def test_roff_escapes() -> None:
    assert docgen._roff(".starts\n'quote\\back --opt `code`") == \
        "\\&.starts\n\\&'quote\\eback \\-\\-opt \\fBcode\\fR"


def test_generated_files_are_valid(tmp_path: Path) -> None:
    assert docgen.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(docgen.OUTPUTS)
    for name in ("iservice.1", "iservice-hook.1", "iservice.conf.5"):
        cp = subprocess.run(["man", "--warnings", "-l", str(tmp_path / name)],
                            capture_output=True, text=True, check=False,
                            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
        assert cp.returncode == 0 and cp.stderr == "" and "SEE ALSO" in cp.stdout, name
    script = (f"source {tmp_path / 'iservice.bash'}\n"
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _iservice\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')

    def complete(*words: str) -> list[str]:
        cp = subprocess.run(["bash", "--norc", "-c", script, "bash", *words],
                            capture_output=True, text=True, check=True)
        return cp.stdout.split()
    assert complete("iservice", "dis") == ["disconnect", "disable"]
    assert complete("iservice", "connect", "--verb", "1") == ["1", "10", "11"]
    assert complete("iservice", "log", "--lines", "5", "--fo") == ["--follow"]
    assert complete("iservice", "cleanup", "--settings", str(tmp_path / "iservice.c")) == \
        [str(tmp_path / "iservice.conf.5")]


@pytest.mark.skipif(ZSH is None, reason="zsh is not installed (scripts/setup.sh installs it)")
def test_zsh_completion_parses(tmp_path: Path) -> None:
    path = tmp_path / "_iservice"
    path.write_text(docgen.zsh_completion(build_parser()))
    assert ZSH is not None
    cp = subprocess.run([ZSH, "-n", str(path)], capture_output=True, text=True, check=False)
    assert cp.returncode == 0 and cp.stderr == "", cp.stderr
