"""The README's commands exist as written: every `veil ...` line parses, every make target is defined."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
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


def test_readme_session_waits_like_the_printed_one() -> None:
    """The README's service session and the one `make run` prints (scripts/run_stack.py, run by
    tests/worker/test_worker_stack.py) wait for jobs with the same bounded long-poll loop."""
    spec = importlib.util.spec_from_file_location("veil_run_stack_readme", ROOT / "scripts" / "run_stack.py")
    assert spec is not None and spec.loader is not None
    run_stack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run_stack  # its dataclasses look their module up
    spec.loader.exec_module(run_stack)
    function = run_stack.wait_job_function()
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "export VEIL=" in b]
    assert function in block
    session = run_stack.curl_session("http://a", "k", Path("/d/face.png"), Path("/d/faces.zip"), "http://h")
    assert function in session
    for text in (block, session):  # every job is waited for with it, never with a single Prefer: wait
        assert text.count("wait_job $JOB") >= 2
        assert "Prefer: wait=30" not in text.replace(function, "")
