"""Generate man pages (roff) for every console script in pyproject.toml from its click definition.

    python -m galtools.cli.manpage man        # rewrite man/*.1
    python -m galtools.cli.manpage --check man  # exit 1 if any page is stale (used by the tests)
"""
from __future__ import annotations

import importlib
import os
import re
import sys

import click

from galtools import __version__


def console_scripts(pyproject: str) -> dict[str, str]:
    """{tool: "module:attr"} from the [project.scripts] table."""
    import tomllib

    with open(pyproject, "rb") as handle:
        return dict(tomllib.load(handle)["project"]["scripts"])


def load_command(target: str) -> click.Command:
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def _escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def _paragraphs(text: str) -> str:
    """click help text to roff: '\\b' blocks stay verbatim, other paragraphs reflow."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if block.startswith("\b"):
            out.append(".nf\n" + _escape(block[1:].strip("\n")) + "\n.fi")
        else:
            out.append(".PP\n" + _escape(" ".join(block.split())))
    return "\n".join(out)


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    lines = []
    for param in command.get_params(ctx):
        record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines.append(f".TP\n.B {_escape(names)}\n{_escape(' '.join(help_text.split()))}")
    return lines


def render(tool: str, command: click.Command, parent: str | None = None) -> str:
    name = f"{parent} {tool}" if parent else tool
    # the command's own settings (-h/--help): click caches the help option per command, so use them always
    ctx = click.Context(command, info_name=name, **command.context_settings)
    usage = " ".join(command.collect_usage_pieces(ctx))
    summary = (command.get_short_help_str(limit=200) or "").rstrip(".")
    parts = [
        f'.TH "{name.upper().replace(" ", "-")}" "1" "" "galtools {__version__}" "galtools manual"',
        ".SH NAME", f"{_escape(name)} \\- {_escape(summary)}",
        ".SH SYNOPSIS", f".B {_escape(name)}\n{_escape(usage)}",
        ".SH DESCRIPTION", _paragraphs(command.help or ""),
    ]
    options = _options(command, ctx)
    if options:
        parts += [".SH OPTIONS", *options]
    if command.epilog:
        example = command.epilog.replace("\b", "").strip()
        example = "\n".join(line.strip() for line in example.splitlines() if line.strip() != "Example:")
        parts += [".SH EXAMPLE", ".nf", _escape(example), ".fi"]
    if isinstance(command, click.Group):
        for sub_name in sorted(command.commands):
            sub = command.commands[sub_name]
            parts += [f'.SH "COMMAND {_escape(sub_name.upper())}"', render(sub_name, sub, parent=name).split(".SH NAME", 1)[1]
                      .replace(".SH ", ".SS ")]
    parts += [".SH EXIT STATUS",
              "0 success; 1 failure; 2 usage error; 65 bad data; 66 input missing; 69 device unavailable; "
              "74 I/O error (a full disk included); 75 interrupted on purpose (checkpoint written, requeue); "
              "129, 130, 143 stopped by SIGHUP, SIGINT, SIGTERM (the partial output removed)."]
    if parent is None:
        variable = "_" + tool.upper().replace("-", "_") + "_COMPLETE"
        parts += [".SH SHELL COMPLETION", _escape(f'bash: eval "$({variable}=bash_source {tool})" in ~/.bashrc; '
                                                  f"zsh: {variable}=zsh_source; fish: {variable}=fish_source.")]
    parts += [".SH SEE ALSO", "The galtools README (table formats, pipes) and the other gal\\-* tools."]
    return "\n".join(parts) + "\n"


def pages(root: str) -> dict[str, str]:
    scripts = console_scripts(os.path.join(root, "pyproject.toml"))
    return {f"{tool}.1": render(tool, load_command(target)) for tool, target in sorted(scripts.items())}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in argv
    argv = [a for a in argv if a != "--check"]
    folder = argv[0] if argv else "man"
    root = os.path.dirname(os.path.abspath(folder)) if os.path.basename(os.path.abspath(folder)) == "man" else "."
    wanted = pages(root)
    stale = []
    os.makedirs(folder, exist_ok=True)
    for name, text in wanted.items():
        path = os.path.join(folder, name)
        current = open(path).read() if os.path.exists(path) else None
        if current != text:
            stale.append(name)
            if not check:
                with open(path, "w") as handle:
                    handle.write(text)
    if check and stale:
        print(f"stale man pages: {', '.join(stale)} (run: make man)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
