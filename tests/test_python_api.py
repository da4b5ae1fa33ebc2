"""``tfgraph.train(cfg)`` from Python: the package's lazy export, logging as ``tfgraph-train`` does (train.log in
the run dir, lines on stderr where nothing else is set up) and returning the metrics with the run dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tfgraph
from tests.conftest import tiny_text_run

SCRIPT = """
import json, sys
import tfgraph

cfg = tfgraph.compose(sys.argv[1:])
metrics = tfgraph.train(cfg)
print(json.dumps({"metrics": metrics, "run_dir": str(metrics.run_dir), "type": type(metrics).__mro__[1].__name__}))
"""


def test_train_is_the_module_callable_as_its_function() -> None:
    import tfgraph.train

    assert tfgraph.train is sys.modules["tfgraph.train"] and callable(tfgraph.train)
    assert "train" in tfgraph.__all__ and "train" in dir(tfgraph)
    assert not {"Any", "import_module", "tfgraph"} & set(dir(tfgraph))  # no stray names


def test_train_from_python_logs_to_train_log_and_returns_the_run_dir(tmp_path: Path) -> None:
    overrides = [
        *tiny_text_run(tmp_path),
        "trainer.max_steps=2",
    ]  # paths.output_dir left unset: outputs/<date>/<time> under the working dir, as the command makes
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run_dir = Path(result["run_dir"])
    assert run_dir.parent.parent == tmp_path / "outputs" and result["type"] == "dict"
    assert set(result["metrics"]) >= {"train/loss", "val/loss"}
    assert all(isinstance(value, float) for value in result["metrics"].values())
    log = (run_dir / "train.log").read_text()
    assert "decoder_only model" in log and "data book: char tokenizer" in log
    assert f"run dir {run_dir}" in log  # the command's closing line, in the file
    assert "decoder_only model" in done.stderr  # and on stderr, where the script set no logging up
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "metrics.json").read_text()) == result["metrics"]


def test_the_lazy_export_is_not_imported_with_the_package() -> None:
    probe = "import sys, tfgraph; print('tfgraph.train' in sys.modules, 'pytorch_lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["False", "False"]
    assert tfgraph.__name__ == "tfgraph"
