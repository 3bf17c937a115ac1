"""Man pages and shell completion, generated from the code at build time (docs/install.md).

* ``iservice(1)``: from the argparse parser (``cli.build_parser``): every subcommand, its
  usage, description and options; the exit statuses from ``cli``'s docstring; the
  default paths from ``Settings()``.
* ``iservice.conf(5)``: from the settings declarations: every field of ``Settings`` with
  its default, described by the "Keys" section of ``settings``' docstring (a key
  missing there is an error, so a new key cannot ship undocumented), with the
  "File format" and "Instance names" sections.
* bash and zsh completion: subcommands, their options, the choices of an option, file
  names for options that take a file or directory, and for positionals named PROFILE
  or NAME the approved profiles or your sessions (asked from ``iservice profiles
  --json`` / ``iservice sessions --json`` when the completion runs).

A generator of our own rather than argparse-manpage or shtab: the settings page needs one
anyway, both completions are ~60 lines each from the same walk over the parser, and
nothing is added to the build or the developers' venv.  It reads argparse's
(long-stable) ``_actions`` and ``_choices_actions``, as those tools do.

``python3 -m iservice.docgen DIR`` writes ``iservice.1``, ``iservice-hook.1``,
``iservice.conf.5``, ``iservice.bash`` and ``_iservice`` into DIR; the functions are
pure (text out).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from iservice import __version__, settings
from iservice.settings import PRIORITIES, Settings, default_settings_path

# metavars whose value is a path: complete file names
_FILE_METAVARS = frozenset({"FILE", "PATH", "DIR"})
# positionals completed from the service: metavar -> (subcommand to ask, what)
_DYNAMIC = {"PROFILE": "profiles", "NAME": "sessions"}


# --------------------------------------------------------------------------- the parser


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # ("-f", "--follow"); () for a positional
    metavar: str | None  # None: takes no value
    help: str
    choices: tuple[str, ...] = ()
    nargs: str | int | None = None


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    usage: str
    options: tuple[Option, ...]

    @property
    def positionals(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if not o.flags)

    @property
    def flags(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.flags)


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": prog}
    return " ".join(text.split())


def _option(action: argparse.Action, prog: str) -> Option:
    takes_value = action.nargs != 0
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if takes_value and metavar is None:
        metavar = action.dest.upper() if action.option_strings else action.dest
    choices = tuple(str(c) for c in action.choices) if action.choices is not None else ()
    return Option(tuple(action.option_strings), metavar if takes_value else None,
                  _help(action, prog), choices, action.nargs)


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    return tuple(_option(a, parser.prog) for a in parser._actions
                 if a.help != argparse.SUPPRESS
                 and not isinstance(a, argparse._SubParsersAction))


def _usage(parser: argparse.ArgumentParser) -> str:
    text = " ".join(parser.format_usage().split())
    return text.removeprefix("usage: ").replace(" [-h]", "")


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """Every subcommand of ``parser``, in the order of its help."""
    out: list[Command] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            out.append(Command(name, helps.get(name, ""), " ".join((sub.description or
                                                                      "").split()),
                               _usage(sub), _options(sub)))
    return out


def top_options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    return _options(parser)


# --------------------------------------------------------------------------- roff


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and leading control characters escaped, ``code``
    in bold, hyphens of options as minus signs."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"``([^`]+)``|`([^`]+)`", lambda m: f"\\fB{m.group(1) or m.group(2)}\\fR",
                  text)
    text = re.sub(r"(?<![\w-])-(?=[-\w])", r"\\-", text)
    text = re.sub(r"(?<=\\-)-", r"\\-", text)
    lines = []
    for line in text.split("\n"):
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _date() -> str:
    """The build's date (``SOURCE_DATE_EPOCH``, as dpkg-buildpackage sets it), so that
    the pages are reproducible; else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = time.gmtime(int(epoch)) if epoch and epoch.isdigit() else time.gmtime()
    return time.strftime("%Y-%m-%d", when)


def _flags_text(o: Option) -> str:
    flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in o.flags)
    return flags + (f" \\fI{_roff(o.metavar)}\\fR" if o.metavar else "")


def _paragraphs(text: str) -> Iterator[str]:
    for para in re.split(r"\n\s*\n", text.strip()):
        yield " ".join(para.split())


def exit_statuses() -> str:
    """The "Exit statuses" paragraph of ``cli``'s docstring."""
    from iservice import cli
    doc = cli.__doc__ or ""
    start = doc.find("Exit statuses")
    return " ".join(doc[start:].split()) if start >= 0 else ""


def man_iservice(parser: argparse.ArgumentParser) -> str:
    defaults = Settings()
    cmds = commands(parser)
    out = [f'.TH ISERVICE 1 "{_date()}" "iservice {__version__}" "User Commands"',
           ".SH NAME", "iservice \\- " + _roff(parser.description or "the iservice command"),
           ".SH SYNOPSIS", ".B iservice", "\\fICOMMAND\\fR [\\fIOPTIONS\\fR]", ".br",
           ".B iservice \\-\\-version",
           ".SH DESCRIPTION",
           _roff("An unprivileged user asks the iservice service, over a local socket, to "
                 "start openvpn as that user; the service makes the network changes "
                 "openvpn needs and undoes them when the session ends. The commands "
                 "below are the service itself (serve, cleanup), its clients, and "
                 "auto-connect."),
           ".SH COMMANDS"]
    for c in cmds:
        out += [f".SS {c.name}", _roff(c.description or c.help), ".PP", ".nf",
                _roff(c.usage), ".fi"]
        for o in (*c.positionals, *c.flags):
            if o.flags == ("-h", "--help"):
                continue
            head = _flags_text(o) if o.flags else f"\\fI{_roff(o.metavar or '')}\\fR"
            text = o.help + (f" One of: {', '.join(o.choices)}." if o.choices and
                             len(o.choices) <= 6 else "")
            out += [".TP", head, _roff(text)]
    out += [".SH EXIT STATUS", _roff(exit_statuses()),
            ".SH FILES",
            ".TP", f"\\fB{_roff(default_settings_path(''))}\\fR",
            "The settings of the default instance; an instance NAME uses "
            f"\\fB{_roff(default_settings_path('NAME'))}\\fR (see \\fBiservice.conf\\fR(5)).",
            ".TP", f"\\fB{_roff(defaults.socket_path)}\\fR",
            "The service socket (AF_UNIX, SOCK_SEQPACKET).",
            ".TP", f"\\fB{_roff(defaults.control_socket_path)}\\fR",
            "The control socket: sessions, status, log, disconnect, profiles.",
            ".TP", f"\\fB{_roff(defaults.state_dir)}/journal.sqlite3\\fR",
            "The undo journal (what \\fBcleanup\\fR and a start after a crash undo).",
            ".TP", f"\\fB{_roff(defaults.config_dir)}\\fR",
            "The approved profiles.",
            ".SH SEE ALSO",
            "\\fBiservice.conf\\fR(5), \\fBopenvpn\\fR(8), \\fBsystemctl\\fR(1)", ""]
    return "\n".join(out)


def man_hook() -> str:
    """``iservice-hook(1)``: the script hook's docstring (``hook = script``)."""
    from iservice import hook
    doc = hook.__doc__ or ""
    title, _, body = doc.strip().partition("\n")
    return "\n".join([
        f'.TH ISERVICE-HOOK 1 "{_date()}" "iservice {__version__}" "User Commands"',
        ".SH NAME", "iservice\\-hook \\- " + _roff(title.rstrip(".")),
        ".SH SYNOPSIS", ".B iservice\\-hook", "\\fIFD\\fR",
        ".SH DESCRIPTION",
        _roff("Not a command for people: with hook = script (iservice.conf(5)) the service "
              "makes openvpn run it as its up, route-up, route-pre-down and down script; "
              "FD is the session's channel to the service. By default openvpn loads "
              "iservice's plugin instead, which sends exactly the same messages."),
        *_bullets(body),
        ".SH SEE ALSO", "\\fBiservice\\fR(1), \\fBiservice.conf\\fR(5), \\fBopenvpn\\fR(8)",
        ""])


# --------------------------------------------------------------------------- iservice.conf(5)


@dataclass(frozen=True)
class KeyDoc:
    keys: tuple[str, ...]
    text: str


def _doc_section(doc: str, title: str) -> str:
    """The body of an RST-style section (title line, underline) of a docstring."""
    m = re.search(rf"^{re.escape(title)}[^\n]*\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", doc,
                  re.MULTILINE | re.DOTALL)
    return m.group(1).strip("\n") if m else ""


def key_docs(doc: str | None = None) -> list[KeyDoc]:
    """The "Keys" section of ``settings``' docstring: entries that start with one or
    more ``key`` names (a header line ending in ``,`` goes on to the next line)."""
    body = _doc_section(settings.__doc__ if doc is None else doc, "Keys")
    entries: list[tuple[list[str], list[str]]] = []
    open_header = False
    for line in body.split("\n"):
        # keys are separated by commas; a blank after a key without one ends the list
        m = re.match(r"^(``\w+``(?:,[ \t]*``\w+``)*,?)[ \t]*(.*)$", line)
        if m:
            keys = re.findall(r"``(\w+)``", m.group(1))
            if open_header and entries:
                entries[-1][0].extend(keys)
            else:
                entries.append((keys, []))
            open_header = m.group(1).rstrip().endswith(",") and not m.group(2).strip()
            if m.group(2).strip():
                entries[-1][1].append(m.group(2).strip())
        elif entries and line.strip():
            entries[-1][1].append(line.strip())
            open_header = False
    return [KeyDoc(tuple(k), " ".join(t)) for k, t in entries]


def setting_keys() -> list[str]:
    """The settings file's keys: ``Settings``' fields but the instance."""
    return [f.name for f in dataclasses.fields(Settings) if f.name != "instance"]


def default_text(key: str) -> str:
    """A key's default in the file's own syntax (the default instance's, for the paths
    derived from the instance)."""
    value = getattr(Settings(), key)
    if value is None:
        return "unset"
    if key == "priority":
        return next(k for k, v in PRIORITIES.items() if v == value)
    if key == "socket_mode":
        return f"{value:04o}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _bullets(text: str) -> list[str]:
    """A docstring section with ``*`` items as roff paragraphs."""
    out: list[str] = []
    for para in re.split(r"\n(?=\* )|\n\s*\n", text.strip()):
        para = " ".join(para.split())
        if para.startswith("* "):
            out += [".IP \\(bu 2", _roff(para[2:])]
        elif para:
            out += [".PP", _roff(para)]
    return out


def man_settings() -> str:
    docs = key_docs()
    documented = {k for d in docs for k in d.keys}
    missing = [k for k in setting_keys() if k not in documented]
    if missing:
        raise ValueError(f"settings keys without a description in settings.py's docstring: "
                         f"{', '.join(missing)}")
    doc = settings.__doc__ or ""
    out = [f'.TH ISERVICE.CONF 5 "{_date()}" "iservice {__version__}" "File Formats"',
           ".SH NAME", "iservice.conf \\- settings of the iservice service",
           ".SH SYNOPSIS", f"\\fB{_roff(default_settings_path(''))}\\fR", ".br",
           f"\\fB{_roff(default_settings_path('NAME'))}\\fR",
           ".SH DESCRIPTION",
           _roff("The settings the service (iservice serve) reads at start. Without the "
                 "file every key has its default. An unknown key or an invalid value "
                 "stops the service with a message naming the file, the line and the key."),
           ".SH FORMAT", *_bullets(_doc_section(doc, "File format")),
           ".SH KEYS"]
    for d in docs:
        keys = [k for k in d.keys if k in setting_keys()]
        if not keys:
            continue
        out += [".TP", ", ".join(f"\\fB{_roff(k)}\\fR" for k in keys), _roff(d.text)]
        defaults = sorted({default_text(k) for k in keys})
        if len(defaults) == 1:
            out += [".br", f"Default: \\fB{_roff(defaults[0])}\\fR."]
        else:
            out += [".br", "Defaults: " + ", ".join(
                f"{_roff(k)} \\fB{_roff(default_text(k))}\\fR" for k in keys) + "."]
    out += [".SH INSTANCES", *_bullets(_doc_section(doc, "Instance names")),
            ".SH EXAMPLE", ".nf", "# /etc/openvpn/iservice.conf",
            "ovpn_admin_group = openvpn\\-admin", "log_dir = /var/log/iservice",
            "dns_backend = resolved", "max_sessions_per_user = 4", ".fi",
            ".SH SEE ALSO", "\\fBiservice\\fR(1), \\fBopenvpn\\fR(8)", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- completion


def _value_kind(o: Option) -> str:
    """How an option's value or a positional is completed: file, choice, dynamic, none."""
    if o.choices:
        return "choice"
    if o.metavar in _FILE_METAVARS:
        return "file"
    if not o.flags and o.metavar in _DYNAMIC:
        return "dynamic"
    return "none"


def _sh_words(words: Sequence[str]) -> str:
    return " ".join(words)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    top = [f for o in top_options(parser) for f in o.flags]
    # every flag that takes a value: the word after it is not a positional
    valued = sorted({f for c in cmds for o in c.flags if o.metavar for f in o.flags})
    lines = ["# bash completion for iservice (generated by iservice.docgen; do not edit)",
             "_iservice_names() {",
             '    # $1: profiles or sessions; their names, asked from the service',
             '    iservice "$1" --json 2>/dev/null |',
             "        sed -n 's/^ *\"name\": \"\\([^\"\\\\]*\\)\",\\{0,1\\}$/\\1/p'",
             "}",
             "_iservice() {",
             '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}',
             "    local cmd='' i npos=0",
             "    for ((i = 1; i < COMP_CWORD; i++)); do",
             '        case ${COMP_WORDS[i]} in',
             f"            {'|'.join(valued)}) i=$((i + 1)) ;;",
             "            -*) ;;",
             '            *) if [[ -z $cmd ]]; then cmd=${COMP_WORDS[i]}; '
             'else npos=$((npos + 1)); fi ;;',
             "        esac",
             "    done",
             '    if [[ -z $cmd ]]; then',
             f"        COMPREPLY=($(compgen -W '{_sh_words([c.name for c in cmds] + top)}' "
             '-- "$cur"))',
             "        return",
             "    fi",
             '    case $cmd in']
    for c in cmds:
        flags = [f for o in c.flags for f in o.flags]
        lines.append(f"        {c.name})")
        value_cases = []
        for o in c.flags:
            if o.metavar is None:
                continue
            pat = "|".join(o.flags)
            kind = _value_kind(o)
            if kind == "choice":
                value_cases.append(f"                {pat}) COMPREPLY=($(compgen -W "
                                   f"'{_sh_words(o.choices)}' -- \"$cur\")); return ;;")
            elif kind == "file":
                value_cases.append(f'                {pat}) COMPREPLY=($(compgen -f -- "$cur"))'
                                   "; return ;;")
            else:
                value_cases.append(f"                {pat}) return ;;")
        if value_cases:
            lines += ['            case $prev in', *value_cases, "            esac"]
        lines += ['            if [[ $cur == -* ]]; then',
                  f"                COMPREPLY=($(compgen -W '{_sh_words(flags)}' -- \"$cur\"))",
                  "                return",
                  "            fi"]
        # positionals (but a value of a flag, which counted as one: tolerated)
        pos = c.positionals
        if pos and _value_kind(pos[0]) == "dynamic":
            what = _DYNAMIC[pos[0].metavar or ""]
            lines.append(f"            [[ $npos -eq 0 ]] && COMPREPLY=($(compgen -W "
                         f"\"$(_iservice_names {what})\" -- \"$cur\"))")
        elif pos and _value_kind(pos[0]) == "file":
            lines.append('            COMPREPLY=($(compgen -f -- "$cur"))')
        lines.append("            ;;")
    lines += ["    esac", "}", "complete -F _iservice iservice", ""]
    return "\n".join(lines)


def _zsh_text(text: str) -> str:
    """Help text inside a single-quoted ``_arguments`` spec's brackets."""
    text = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return text.replace("'", "'\\''").replace(":", "\\:")


def _zsh_action(o: Option) -> str:
    kind = _value_kind(o)
    if kind == "choice":
        return f"({' '.join(o.choices)})"
    if kind == "file":
        return "_files"
    if kind == "dynamic":
        return f"_iservice_{_DYNAMIC[o.metavar or '']}"
    return " "


def _zsh_spec(o: Option) -> str:
    desc = _zsh_text(o.help)
    if o.flags:
        value = f":{_zsh_text(o.metavar or '')}:{_zsh_action(o)}" if o.metavar else ""
        if len(o.flags) == 1:
            return f"'{o.flags[0]}[{desc}]{value}'"
        return f"'({' '.join(o.flags)})'{{{','.join(o.flags)}}}'[{desc}]{value}'"
    meta = _zsh_text(o.metavar or "")
    if o.nargs in ("*", "+"):
        return f"'*:{meta}:{_zsh_action(o)}'"
    optional = ":" if o.nargs == "?" else ""
    return f"':{optional}{meta}:{_zsh_action(o)}'"


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    lines = ["#compdef iservice",
             "# zsh completion for iservice (generated by iservice.docgen; do not edit)"]
    for what in sorted(set(_DYNAMIC.values())):
        lines += [f"_iservice_{what}() {{",
                  "    local -a names",
                  f"    names=(${{(f)\"$(iservice {what} --json 2>/dev/null |",
                  "        sed -n 's/^ *\"name\": \"\\([^\"\\\\]*\\)\",\\{0,1\\}$/\\1/p')\"})",
                  f"    _describe '{what}' names",
                  "}"]
    lines += ["_iservice() {",
              "    local curcontext=$curcontext state line",
              "    typeset -A opt_args",
              "    local -a commands",
              "    commands=("]
    lines += [f"        '{c.name}:{_zsh_text(c.help)}'" for c in cmds]
    top = [_zsh_spec(o) for o in top_options(parser)]
    lines += ["    )",
              f"    _arguments -C {' '.join(top)} '1:command:->command' '*::arg:->args'",
              "    case $state in",
              "        command) _describe 'command' commands ;;",
              "        args)",
              "            case $line[1] in"]
    for c in cmds:
        specs = " \\\n                        ".join(_zsh_spec(o) for o in c.options)
        lines.append(f"                {c.name}) _arguments \\\n"
                     f"                        {specs} ;;")
    lines += ["            esac ;;", "    esac", "}", '_iservice "$@"', ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

OUTPUTS = {"iservice.1": "man1", "iservice-hook.1": "hook", "iservice.conf.5": "man5",
           "iservice.bash": "bash", "_iservice": "zsh"}


def render(kind: str) -> str:
    from iservice.cli import build_parser
    if kind == "man1":
        return man_iservice(build_parser())
    if kind == "man5":
        return man_settings()
    if kind == "hook":
        return man_hook()
    if kind == "bash":
        return bash_completion(build_parser())
    if kind == "zsh":
        return zsh_completion(build_parser())
    raise ValueError(f"unknown output {kind!r}; valid: {', '.join(OUTPUTS.values())}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python3 -m iservice.docgen DIR  (writes " + ", ".join(OUTPUTS) + ")",
              file=sys.stderr)
        return 2
    os.makedirs(args[0], exist_ok=True)
    for name, kind in OUTPUTS.items():
        with open(os.path.join(args[0], name), "w", encoding="utf-8") as f:
            f.write(render(kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
