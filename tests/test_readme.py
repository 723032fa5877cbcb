"""The README's commands exist as written: every `veil ...` line parses, every make target is defined."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def veil_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip().rstrip("\\").strip()
            if line.startswith("veil "):
                lines.append(line)
    return lines


def test_readme_has_veil_commands() -> None:
    assert len(veil_lines()) >= 8


@pytest.mark.parametrize("line", veil_lines())
def test_each_veil_command_is_accepted(line: str) -> None:
    """The subcommand exists and its options parse (checked via --help on the same subcommand path)."""
    words = shlex.split(line)[1:]
    path = []
    for word in words:
        if word.startswith("-") or "/" in word or "." in word:
            break
        path.append(word)
    result = CliRunner(env={"COLUMNS": "200", "TERM": "dumb"}).invoke(app, [*path, "--help"])
    assert result.exit_code == 0, (line, result.output)
    for option in (w.split("=")[0] for w in words if w.startswith("--")):
        assert option in result.output, (line, option)


def test_make_targets_in_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    for target in set(re.findall(r"`make ([a-z-]+)", README)) | set(re.findall(r"^make ([a-z-]+)", README, re.M)):
        assert target in targets, target
