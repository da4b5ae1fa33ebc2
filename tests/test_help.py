"""Every command's ``--help``: what the command does, its most useful overrides and examples, then its config
groups (internal ones hidden), instead of Hydra's generic page (conf/hydra/help/tfgraph.yaml)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tfgraph.config import conf_dir

COMMANDS = ("train", "eval", "generate", "attention", "show", "prepare", "check", "convert")
GROUPS = {  # a group each command's page lists, and one it must not (a group of another command)
    "train": ("model/attention", "_base"),
    "eval": ("trainer", "model"),
    "generate": (None, "model"),
    "attention": ("model", "trainer"),
    "show": ("model/norm", "trainer"),
    "prepare": ("data", "model"),
    "check": ("task", "trainer"),
    "convert": (None, "model"),
}


def _help(command: str, cwd: Path) -> str:
    script = Path(sys.executable).parent / f"tfgraph-{command}"  # the console script, as a user runs it
    args = [str(script)] if script.exists() else [sys.executable, "-m", f"tfgraph.cli.{command}"]
    result = subprocess.run([*args, "--help"], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", [c for c in COMMANDS if (conf_dir() / f"{c}.yaml").is_file()])
def test_help_says_what_the_command_does_and_shows_examples(command: str, tmp_path: Path) -> None:
    text = _help(command, tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith(f"tfgraph-{command}: "), lines[0]  # what it does, first
    assert "Most useful overrides:" in lines
    examples = lines.index("Examples:")
    assert re.match(rf"  tfgraph-{command} \S+=", lines[examples + 1]), lines[examples + 1]
    groups = lines.index("== Configuration groups ==")
    assert examples < groups
    listed = {line.split(":")[0] for line in lines[groups + 1 :] if re.match(r"^[\w/]+: ", line)}
    shown, hidden = GROUPS[command]
    assert shown is None or shown in listed
    assert hidden not in listed and not any(group.startswith(("_", "hydra")) for group in listed)
    assert "powered by Hydra" not in text and "== Config ==" not in text  # not Hydra's page, nor the whole config
    assert "--cfg job" in text
    assert list(tmp_path.iterdir()) == []  # --help writes no run dir
