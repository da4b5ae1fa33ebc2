"""One exit wrapper for every command (``tfgraph.cli.exit_on_error``): what the user can mend is ``error: ...`` and
an exit code, in this process or raised in a spawned one; anything else keeps its traceback. And the modules
``train.py`` is made of: training needs neither the drawing code nor Graphviz."""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch.multiprocessing.spawn import ProcessRaisedException

from tfgraph.cli import exit_on_error, exit_status, spawned_error
from tfgraph.data import DataConfigError, DataError
from tfgraph.registry import ConfigError
from tfgraph.tasks.callbacks import TrainingDiverged


def spawned(last_lines: str) -> ProcessRaisedException:
    trace = f'Traceback (most recent call last):\n  File "train.py", line 1, in fit\n{last_lines}\n'
    return ProcessRaisedException(f"\n\n-- Process 1 terminated with the following error:\n{trace}", 1, 42)


@pytest.mark.parametrize(
    ("err", "code", "message"),
    [
        (ConfigError.at("model.n_heads", "not divisible"), 2, "invalid config:\n  - model.n_heads: not divisible"),
        (DataConfigError([("data.path", "no such file")]), 2, "invalid config:\n  - data.path: no such file"),
        (DataError("book.txt:3: not UTF-8"), 2, "book.txt:3: not UTF-8"),
        (TrainingDiverged("the loss is nan at step 3"), 3, "the loss is nan at step 3"),
        (spawned("tfgraph.data.errors.DataConfigError: data.path: no such file"), 2, "data.path: no such file"),
        (spawned("tfgraph.data.errors.DataError: book.txt: empty"), 2, "book.txt: empty"),
        (spawned("tfgraph.tasks.callbacks.TrainingDiverged: training diverged"), 3, "training diverged"),
    ],
)
def test_what_the_user_can_mend_is_a_message_and_an_exit_code(
    err: Exception, code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status(err) == (code, message)

    def job(value: int) -> int:
        assert value == 7
        raise err

    with pytest.raises(SystemExit) as stop:
        exit_on_error(job, 7)
    assert stop.value.code == code
    assert capsys.readouterr().err == f"error: {message}\n"


def test_anything_else_keeps_its_traceback_and_a_result_passes_through() -> None:
    assert exit_on_error(lambda a, b: a + b, 2, 3) == 5
    for err in (ValueError("a bug"), spawned("ValueError: a bug"), KeyError("x")):
        assert exit_status(err) is None
        with pytest.raises(type(err)):
            exit_on_error(lambda err=err: (_ for _ in ()).throw(err))
    assert spawned_error("no exception line here") is None


def test_a_command_adds_its_own_exit_codes() -> None:
    class Missing(RuntimeError):
        pass

    assert exit_status(Missing("dot")) is None
    assert exit_status(Missing("dot"), {Missing: 1}) == (1, "dot")
    assert exit_status(ConfigError.at("x", "y"), {ConfigError: 5}) == (2, "invalid config:\n  - x: y")


def test_training_imports_no_drawing_code() -> None:
    probe = (
        "import sys, tfgraph.train, tfgraph.evaluate; print('graphviz' in sys.modules, 'tfgraph.show' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["False", "False"]


def test_output_into_a_closed_pipe_ends_quietly_with_the_sigpipe_status() -> None:
    """``tfgraph-generate ... | head``: once head has read its lines, the next write fails; no traceback."""
    import subprocess
    import sys

    script = (
        "from tfgraph.cli import exit_on_error\n"
        "def stream():\n"
        "    while True:\n"
        "        print('line ' * 100, flush=True)\n"
        "exit_on_error(stream)\n"
    )
    command = f'{sys.executable} -c "{script}" | head -n 2'
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.stdout.count("\n") == 2
    assert result.stderr == "" and result.returncode == 141
