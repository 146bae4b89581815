"""Every ``search-e1`` command written in the README, the docs and the configs' comments parses:
each runs here in its ``--print_config`` form (or as written when it asks for ``--help``), so a
renamed flag or a stale example fails this test instead of a user."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from search_e1.cli import main

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "conf").rglob("*.yaml"))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv after search-e1)`` of each command line: in Markdown code blocks, in YAML
    comments (backslash continuations joined, trailing comments dropped)."""
    found = []
    for path in SOURCES:
        lines = path.read_text().splitlines()
        i, in_code = 0, path.suffix != ".md"
        while i < len(lines):
            raw, where = lines[i].strip(), f"{path.relative_to(ROOT)}:{i + 1}"
            in_code = in_code != raw.startswith("```") if path.suffix == ".md" else True
            text = raw.lstrip("#").strip() if path.suffix == ".yaml" else raw
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            i += 1
            if in_code and text.startswith("search-e1 "):
                argv = shlex.split(text, comments=True)[1:]
                found.append((where, argv))
    return found


COMMANDS = documented_commands()


def test_the_docs_name_the_commands_users_run():
    names = {argv[0] for _, argv in COMMANDS}
    assert {"fit", "evaluate", "index", "serve", "demo-data"} <= names, names


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS], ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(argv, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the commands are written for the repository root
    form = argv if "--help" in argv or "--print_config" in argv else [*argv, "--print_config"]
    with pytest.raises(SystemExit) as exc:
        main(form)
    assert exc.value.code in (0, None), capsys.readouterr()
    assert capsys.readouterr().out.strip()  # the help or the merged configuration was printed
