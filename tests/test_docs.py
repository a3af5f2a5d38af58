"""The documentation says only what the CLI does.

Every `segplank …` command in a fenced bash block of the README and of the docs site must name
a real command and only options that command has (checked against the typer app, nothing is
run), and docs/cli.md must be what tools/gen_cli_docs.py writes from the app today.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer

from segplank.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^```bash[^\n]*\n(.*?)^```", re.M | re.S)


def _gen_cli_docs():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shell_lines(markdown: str) -> list[str]:
    """The command lines of a page's ```bash blocks: continuations joined, comments dropped."""
    lines = []
    for block in FENCE.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                lines.append(shlex.join(tokens))
    return lines


def segplank_commands(line: str) -> list[list[str]]:
    """The argument lists of each `segplank` (or `.venv/bin/segplank`) call in one shell line."""
    calls, current = [], None
    for token in shlex.split(line):
        if token in ("&&", "||", ";", "|"):
            current = None
            continue
        if current is None:
            if re.fullmatch(r"\w+=\S*", token):  # VAR=value before the command
                continue
            current = []
            if token == "segplank" or token.endswith("/segplank"):
                calls.append(current)
            continue
        current.append(token.strip("[]"))  # [--option value] marks an optional part
    return [c for c in calls if c is not None]


def check_call(args: list[str]) -> list[str]:
    """What is wrong with one `segplank ARGS` call (empty: nothing)."""
    cmd, path = typer.main.get_command(app), ["segplank"]
    while hasattr(cmd, "commands"):
        if not args or args[0] not in cmd.commands:
            name = args[0] if args else "(none)"
            return [f"{' '.join(path)}: no command {name!r}"]
        path.append(args[0])
        cmd, args = cmd.commands[args[0]], args[1:]
    takes_value = {}
    for p in cmd.params:
        if p.param_type_name == "option":
            for name in p.opts:
                takes_value[name] = not (p.is_flag or getattr(p, "count", False))
            for name in p.secondary_opts:
                takes_value[name] = False
    takes_value["--help"] = False
    arguments = [p for p in cmd.params if p.param_type_name == "argument"]
    errors, positional, k = [], 0, 0
    while k < len(args):
        token = args[k]
        if token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-\d.*", token):
            name = token.split("=", 1)[0]
            if name not in takes_value:
                errors.append(f"{' '.join(path)}: no option {name!r}")
            elif takes_value[name] and "=" not in token:
                k += 1  # its value
        else:
            positional += 1
        k += 1
    if not any(p.nargs == -1 for p in arguments):
        if positional > len(arguments):
            errors.append(f"{' '.join(path)}: {positional} arguments, it takes {len(arguments)}")
    required = sum(1 for p in arguments if p.required)
    if positional < required and "--help" not in args:
        errors.append(f"{' '.join(path)}: {positional} arguments, it needs {required}")
    return errors


def test_shell_lines_and_calls_are_parsed():
    page = "```bash\n.venv/bin/segplank infer A -o B \\\n    --stream   # a comment\nmake test\n```\n"
    assert shell_lines(page) == [".venv/bin/segplank infer A -o B --stream", "make test"]
    assert segplank_commands("STAGE=x .venv/bin/segplank eval a.json [--iou 0.5] && segplank demo") == [
        ["eval", "a.json", "--iou", "0.5"], ["demo"]]
    assert segplank_commands("pip install 'segplank[ray]'") == []


def test_check_call_finds_what_the_cli_lacks():
    assert check_call(["infer", "CRUISE", "-o", "OUT", "--no-stream", "--engine", "ray"]) == []
    assert check_call(["export", "ecotaxa", "OUT", "--sample-by", "cast"]) == []
    assert check_call(["infer", "CRUISE", "--no-such-option"]) == ["segplank infer: no option '--no-such-option'"]
    assert check_call(["no-such-command"]) == ["segplank: no command 'no-such-command'"]
    assert check_call(["export", "nothing"]) == ["segplank export: no command 'nothing'"]
    assert check_call(["join-ctd", "OUT"]) == ["segplank join-ctd: 1 arguments, it needs 2"]
    assert check_call(["profile", "OUT", "EXTRA"]) == ["segplank profile: 2 arguments, it takes 1"]


def test_readme_commands_exist():
    calls = [c for line in shell_lines(README.read_text(encoding="utf-8")) for c in segplank_commands(line)]
    assert len(calls) >= 15, "the README's walkthroughs hold the segplank commands"
    commands = {c[0] for c in calls}
    assert {"infer", "join-ctd", "profile", "export", "synth", "train", "train-classifier", "eval"} <= commands
    errors = [e for c in calls for e in check_call(c)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_commands_exist(page):
    errors = [f"{page.name}: {e}" for line in shell_lines(page.read_text(encoding="utf-8"))
              for c in segplank_commands(line) for e in check_call(c)]
    assert not errors, "\n".join(errors)


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 150
    assert text.startswith("# segplank\n\n```bash\nmake demo ")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"


def test_cli_reference_is_up_to_date():
    expected = _gen_cli_docs().render(app)
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == expected, "docs/cli.md is behind the CLI: run .venv/bin/python tools/gen_cli_docs.py"


def test_cli_reference_has_every_command_and_option():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    for path, cmd in walk(typer.main.get_command(app), []):
        section = text.split(f"`segplank {' '.join(path)}`\n", 1)
        assert len(section) == 2, f"docs/cli.md has no section for segplank {' '.join(path)}"
        body = section[1].split("\n#", 1)[0]
        for p in cmd.params:
            if p.param_type_name == "option" and not p.hidden:
                assert p.opts[-1] in body, f"docs/cli.md: segplank {' '.join(path)} lacks {p.opts[-1]}"
