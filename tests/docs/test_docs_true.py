"""Docs that stay true: every flag a page shows with a `pneumoscope` command is a flag of
that command (its --help, read in process from the Typer app), every flag a page names on
its own is a flag of some command, and docs/architecture.md's layout names every module of
src/pneumoscope and no module that is gone.

A flag that the docs still show after the command lost it fails here; the settings test
(tests/cli/test_help_from_settings.py) cannot see that, since a config field without a
flag is skipped there (how `--fit-to-time` stayed in docs/commands.md after its flag went).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import typer

from pneumoscope.cli import app
from tests.helpers import REPO

SRC = REPO / "src" / "pneumoscope"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")

# Flags of other programs that a page names in passing.
OTHER_PROGRAMS = {"--src": "bench/hostile.py (docs/security.md)"}



# --- flags -------------------------------------------------------------------------------


@functools.cache
def _root():
    return typer.main.get_command(app)


def _commands(command=None, path=()):
    command = command or _root()
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


@functools.cache
def _every_flag() -> frozenset[str]:
    return frozenset().union(*(_flags(c) for _, c in _commands()))


def _flags(command) -> set[str]:
    names = {"--help"}
    for p in command.params:
        names.update(o for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
    return names


def _usages(page: Path):
    """(line, words after `pneumoscope`) for each command line in a code block (a trailing
    backslash joins lines; a `#` comment may hold one) or in an inline code span, and
    (line, [flag]) for each inline code span that starts with a flag."""
    in_code, held = False, ""
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            in_code, held = not in_code, ""
            continue
        if in_code:
            if line.rstrip().endswith("\\"):
                held += line.rstrip()[:-1] + " "
                continue
            text, held = held + line, ""
            for m in re.finditer(r"(?:^|[\s#(])pneumoscope((?:\s+[^\s|;&#]+)+)", text):
                yield n, "command", m.group(1).split()
            continue
        for span in re.findall(r"`([^`]+)`", line):
            m = re.match(r"(?:.*\s)?pneumoscope((?:\s+\S+)+)$", span)
            if m:
                yield n, "command", m.group(1).split()
            elif FLAG.match(span):
                yield n, "flag", [FLAG.match(span).group(0)]


def _documented_flags():
    """(page:line, command path or None, flag) for every flag the docs show."""
    root = _root()
    for page in DOCS:
        for n, kind, words in _usages(page):
            where = f"{page.relative_to(REPO)}:{n}"
            if kind == "flag":
                yield where, None, words[0]
                continue
            command, path = root, []
            while words and words[0] in getattr(command, "commands", {}):
                command = command.commands[words[0]]
                path.append(words.pop(0))
            if not path:  # `pneumoscope COMMAND --help` and the like: no command named
                continue
            for w in words:
                if FLAG.match(w):
                    yield where, tuple(path), FLAG.match(w).group(0)


def _flag_cases():
    cases = []
    for where, path, flag in _documented_flags():
        name = f"{where} {' '.join(path) if path else '*'} {flag}"
        cases.append(pytest.param(path, flag, id=name))
    return cases


FLAG_CASES = _flag_cases()


def test_the_docs_show_flags():
    """The parser finds what the pages show (a parser that finds nothing passes nothing)."""
    shown = {(p, f) for p, f in ((c.values[0], c.values[1]) for c in FLAG_CASES)}
    assert len(FLAG_CASES) > 300
    assert (("train",), "--config") in shown
    assert (("data", "prepare"), "--no-clahe") in shown
    assert (None, "--max-upload-memory-mb") in shown


@pytest.mark.parametrize("path, flag", FLAG_CASES)
def test_a_documented_flag_exists(path, flag):
    if path is None:
        assert flag in _every_flag() or flag in OTHER_PROGRAMS, f"{flag} is no flag of any command"
    else:
        command = _root()
        for name in path:
            command = command.commands[name]
        assert flag in _flags(command), f"pneumoscope {' '.join(path)} has no {flag}"


def test_a_removed_flag_is_caught(tmp_path, monkeypatch):
    """The check fails on the mistake it is for: a page showing a flag the command lacks."""
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\npneumoscope train --data d \\\n  --out r --fit-to-timer\n```\n"
        "Use `--no-such-flag` or `pneumoscope data prepare --img-sise 3`.\n"
    )
    monkeypatch.setattr(f"{__name__}.DOCS", [page])
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    found = list(_documented_flags())
    assert [(p, f) for _, p, f in found] == [
        (("train",), "--data"),
        (("train",), "--out"),
        (("train",), "--fit-to-timer"),
        (None, "--no-such-flag"),
        (("data", "prepare"), "--img-sise"),
    ]
    assert "--fit-to-timer" not in _flags(_root().commands["train"])


# --- modules -----------------------------------------------------------------------------


def _layout() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    return text.split("## Layout", 1)[1].split("```", 2)[1].splitlines()


def _section(lines: list[str], name: str) -> list[str] | None:
    """The line that names folder ``name`` and the lines indented below it."""
    for i, line in enumerate(lines):
        m = re.match(rf"^(\s*){re.escape(name)}/(\s|$)", line)
        if m:
            out = [line]
            for nxt in lines[i + 1 :]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= len(m.group(1)):
                    break
                out.append(nxt)
            return out
    return None


def _documented(rel: Path) -> bool:
    lines = _section(_layout(), "src/pneumoscope")
    for part in rel.parts[:-1]:
        lines = _section(lines[1:], part) if lines else None
    if lines is None:
        return False
    own = lines[:1]  # the folder's line, then its lines outside its subfolders' sections
    sub = None
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip())
        if sub is not None and (not line.strip() or indent > sub):
            continue
        sub = None
        m = re.match(r"^(\s*)[\w.]+/(\s|$)", line)
        if m:
            sub = len(m.group(1))
            continue
        own.append(line)
    text = "\n".join(own)
    return re.search(rf"(?<![\w/.]){re.escape(rel.name)}\b", text) is not None


def _modules() -> list[Path]:
    return sorted(p.relative_to(SRC) for p in SRC.rglob("*.py") if p.name != "__init__.py")


def _module_cases():
    cases = []
    for rel in _modules():
        cases.append(pytest.param(rel, id=rel.as_posix()))
    return cases


def test_every_package_has_modules():
    assert len(_modules()) > 90
    assert _documented(Path("data/layouts/rsna.py"))  # in the layouts/ folder's line
    assert not _documented(Path("data/rsna.py"))  # in that folder only


@pytest.mark.parametrize("rel", _module_cases())
def test_architecture_names_every_module(rel):
    assert _documented(rel), f"docs/architecture.md's layout does not name {rel}"


def test_architecture_names_no_module_that_is_gone():
    """Each `NAME.py` entry of the layout's package tree is a file in that folder."""
    lines = _section(_layout(), "src/pneumoscope")
    stack: list[tuple[int, str]] = []
    gone = []
    for line in lines[1:]:
        m = re.match(r"^(\s*)([\w.]+/|[\w.]+\.py)(\s{2,}|$)", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m.group(2).endswith("/"):
            stack.append((indent, m.group(2).rstrip("/")))
            continue
        rel = Path(*(d for _, d in stack), m.group(2))
        if not (SRC / rel).is_file():
            gone.append(rel.as_posix())
    assert stack or lines, "the layout was not parsed"
    assert gone == []


def test_the_readme_is_a_guide_not_a_log():
    """Tables of measurements and machine notes belong in docs/; the README stays short."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
