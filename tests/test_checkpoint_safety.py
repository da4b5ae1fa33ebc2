"""A checkpoint is data, never code: crafted checkpoints through the real commands (tfgraph-eval, tfgraph-train
ckpt_path=, tfgraph-generate, tfgraph-attention, tfgraph.generate) import and run nothing they name, and every file
that is not a readable tfgraph checkpoint is one ConfigError naming it (exit 2, no traceback, as a command).

Every attack writes a marker file if it works: the first tests show that it does, unguarded (hydra instantiate, a
pickle load, an import); the others that through tfgraph the marker never appears.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import tfgraph
from tfgraph.cli import eval as eval_cli
from tfgraph.cli import train as train_cli
from tfgraph.config import conf_dir
from tfgraph.evaluate import evaluate
from tfgraph.inference import attention_from_config, generate_from_config
from tfgraph.tasks import DATA_MODULES, FORMAT, load_checkpoint, load_task
from tfgraph.train import train

BOOK = "ROMEO: But soft, what light through yonder window breaks?\n" * 40
QUIET = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "sample.max_new_tokens=0",
    "~logger",
    "callbacks=checkpoints",
]
RESOLVER = "tfgraph_test_marker"  # an OmegaConf resolver that writes the marker it is given, if ever resolved


class Payload:
    """A pickled object whose loading writes a marker file (``weights_only=True`` must refuse to build it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real checkpoint of 2 training steps (gpt2_tiny, one layer, TextDataModule over a small text file), and
    its contents for the crafted ones."""
    root = tmp_path_factory.mktemp("ckpt_safety")
    book = root / "book.txt"
    book.write_text(BOOK)
    overrides = ["model=gpt2_tiny", "model.n_layers=1", "data=text", f"data.path={book}", "data.block_size=16"]
    train(tfgraph.compose([*overrides, "trainer.max_steps=2", "test=false", f"paths.output_dir={root}/run", *QUIET]))
    path = root / "run" / "checkpoints" / "last.ckpt"
    OmegaConf.register_new_resolver(RESOLVER, lambda marker: Path(marker).write_text("pwned"), replace=True)
    return {"path": path, "checkpoint": torch.load(path, weights_only=True)}


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of this test's own (a fresh name: imported at most once) that writes ``tmp_path/marker`` when
    imported and defines a DataModule, on sys.path and PYTHONPATH."""
    name = f"tfgraph_test_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        "from tfgraph.data import TextDataModule\n"
        f"Path({str(tmp_path / 'marker')!r}).write_text('pwned')\n"
        "class BookData(TextDataModule):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return name


def crafted(base: dict[str, Any], path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The base checkpoint with ``change`` applied, saved at ``path``."""
    checkpoint = copy.deepcopy(base["checkpoint"])
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


def write_text_call(marker: Path) -> dict[str, Any]:
    """A config that hydra instantiate turns into ``Path(marker).write_text("pwned")``."""
    return {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]}}


def _target(c: dict, marker: Path, module: str) -> None:
    c["hyper_parameters"]["data"] = {**write_text_call(marker), "data": "pwned"}


def _nested(c: dict, marker: Path, module: str) -> None:
    c["hyper_parameters"]["data"]["source_options"] = {**write_text_call(marker), "data": "pwned"}


def _interpolation(c: dict, marker: Path, module: str) -> None:
    c["hyper_parameters"]["data"]["name"] = "${oc.env:HOME}"
    c["hyper_parameters"]["label_names"] = ["${" + RESOLVER + ":" + str(marker) + "}"]


def _plugin(c: dict, marker: Path, module: str) -> None:
    c["hyper_parameters"]["model"]["plugins"] = [module]


def _data_module(c: dict, marker: Path, module: str) -> None:
    c["hyper_parameters"]["data"]["_target_"] = f"{module}.BookData"


# attack: (how the checkpoint is changed, what the error must name)
ATTACKS: dict[str, tuple[Callable[[dict, Path, str], None], tuple[str, ...]]] = {
    "target": (_target, ("data._target_ 'pathlib.Path.write_text' is not a tfgraph data module", "data.self._target_")),
    "nested_target": (_nested, ("data.source_options._target_ 'pathlib.Path.write_text'",)),
    "interpolation": (_interpolation, ("data.name '${oc.env:HOME}'", "label_names[0]", "interpolation")),
    "plugin": (_plugin, ("model.plugins[0]", "trust_plugins=true", "plugins=[{module}]")),
    "data_module": (_data_module, ("data._target_ '{module}.BookData'", "plugins=[<its module>]")),
}


def eval_cfg(ckpt: Path, out: Path, *overrides: str) -> Any:
    return tfgraph.compose([f"ckpt_path={ckpt}", f"paths.output_dir={out}", *QUIET[:6], *overrides], "eval")


def run_command(command: str, ckpt: Path, out: Path, *overrides: str) -> Any:
    """``command`` on the checkpoint ``ckpt``, in this process, as the console script would run it."""
    if command == "eval":
        return evaluate(eval_cfg(ckpt, out, *overrides))
    if command == "train":
        cfg = tfgraph.compose(
            [f"ckpt_path={ckpt}", "trainer.max_steps=3", f"paths.output_dir={out}", *QUIET, *overrides]
        )
        return train(cfg)
    if command == "generate":
        cfg = tfgraph.compose(
            [f"ckpt_path={ckpt}", "prompt=RO", "max_new_tokens=3", "device=cpu", *overrides], "generate"
        )
        text = io.StringIO()
        generate_from_config(cfg, text)
        return text.getvalue()
    if command == "attention":
        cfg = tfgraph.compose(
            [f"ckpt_path={ckpt}", "text=ROMEO", f"out_dir={out}/maps", "device=cpu", *overrides], "attention"
        )
        return attention_from_config(cfg)
    assert command == "api" and not overrides
    return tfgraph.generate(ckpt, "RO", max_new_tokens=3)


COMMANDS = ("eval", "train", "generate", "attention", "api")


def command_line(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"tfgraph.cli.{module}", *args, f"hydra.run.dir={cwd}/run", *QUIET[:6]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def console(module: Any, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> tuple[int, str]:
    """The console script ``module.main()`` run in this process with ``args``: its exit code and stderr."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *args])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as stop:
        module.main()
    return int(stop.value.code or 0), capsys.readouterr().err


# --------------------------------------------------------------------------------- the attacks are real


def test_each_attack_works_when_nothing_guards_against_it(base, tmp_path: Path, plugin: str) -> None:
    markers = [tmp_path / f"marker_{i}" for i in range(4)]
    instantiate({**write_text_call(markers[0]), "data": "pwned"})  # what build_datamodule used to do
    OmegaConf.to_container(OmegaConf.create({"name": "${" + RESOLVER + ":" + str(markers[1]) + "}"}), resolve=True)
    pickle.loads(pickle.dumps(Payload(markers[2])))
    assert all(marker.read_text() == "pwned" for marker in markers[:3])
    __import__(plugin)
    assert (tmp_path / "marker").is_file()


# ------------------------------------------------------------------------------- refused by every command


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_an_attack_in_a_checkpoint_is_refused_naming_its_key(
    base, tmp_path: Path, plugin: str, attack: str, command: str
) -> None:
    change, says = ATTACKS[attack]
    marker = tmp_path / "marker"
    ckpt = crafted(base, tmp_path / f"{attack}.ckpt", lambda c: change(c, marker, plugin))
    with pytest.raises(tfgraph.ConfigError) as raised:
        run_command(command, ckpt, tmp_path / "out")
    message = str(raised.value)
    assert f"ckpt_path: {ckpt}: " in message
    for text in says:
        assert text.replace("{module}", plugin) in message, message
    assert not marker.exists()
    assert plugin not in sys.modules


def test_the_eval_command_refuses_a_target_with_exit_2_and_no_traceback(base, tmp_path: Path, plugin: str) -> None:
    marker = tmp_path / "marker"
    ckpt = crafted(base, tmp_path / "target.ckpt", lambda c: _target(c, marker, plugin))
    done = command_line("eval", f"ckpt_path={ckpt}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.lstrip().startswith("error: invalid config") and "Traceback" not in done.stderr
    assert f"ckpt_path: {ckpt}: data._target_ 'pathlib.Path.write_text'" in done.stderr
    assert not marker.exists()


def test_the_train_command_refuses_a_plugin_with_exit_2_and_no_traceback(
    base, tmp_path: Path, plugin: str, monkeypatch, capsys
) -> None:
    ckpt = crafted(base, tmp_path / "plugin.ckpt", lambda c: _plugin(c, tmp_path, plugin))
    args = [f"ckpt_path={ckpt}", "trainer.max_steps=3", f"hydra.run.dir={tmp_path}/run", *QUIET]
    code, err = console(train_cli, args, monkeypatch, capsys)
    assert code == 2, err
    assert "error: invalid config" in err and "Traceback" not in err
    assert f"model.plugins[0] '{plugin}'" in err and "trust_plugins=true" in err
    assert not (tmp_path / "marker").exists() and plugin not in sys.modules


# ------------------------------------------------------------------------------------- the user's opt-in


def test_trust_plugins_loads_a_plugin_checkpoint(base, tmp_path: Path, plugin: str) -> None:
    ckpt = crafted(base, tmp_path / "plugin.ckpt", lambda c: _plugin(c, tmp_path, plugin))
    text = run_command("generate", ckpt, tmp_path, "trust_plugins=true")
    assert text.startswith("RO") and len(text) > len("RO\n")
    assert (tmp_path / "marker").is_file()  # the checkpoint's plugin was imported: the user trusted it


def test_the_command_s_own_plugins_load_a_plugin_checkpoint(base, tmp_path: Path, plugin: str) -> None:
    ckpt = crafted(base, tmp_path / "plugin.ckpt", lambda c: _plugin(c, tmp_path, plugin))
    report = run_command("attention", ckpt, tmp_path, f"plugins=[{plugin}]")
    assert "wrote " in report and any((tmp_path / "maps").glob("*.png"))


def test_tfgraph_generate_takes_trust_plugins(base, tmp_path: Path, plugin: str) -> None:
    ckpt = crafted(base, tmp_path / "plugin.ckpt", lambda c: _plugin(c, tmp_path, plugin))
    with pytest.raises(tfgraph.ConfigError, match="trust_plugins"):
        tfgraph.generate(ckpt, "RO", max_new_tokens=2)
    assert isinstance(tfgraph.generate(ckpt, "RO", max_new_tokens=2, trust_plugins=True), str)


def test_eval_of_a_trusted_plugin_checkpoint_rebuilds_its_data_without_hydra(base, tmp_path: Path, plugin) -> None:
    ckpt = crafted(base, tmp_path / "plugin.ckpt", lambda c: _plugin(c, tmp_path, plugin))
    metrics = evaluate(eval_cfg(ckpt, tmp_path / "eval", "trust_plugins=true"))
    assert set(metrics) >= {"test/loss", "test/perplexity"}
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


def test_a_data_module_of_a_plugin_the_command_imports_resumes(base, tmp_path: Path, plugin: str) -> None:
    ckpt = crafted(base, tmp_path / "data_module.ckpt", lambda c: _data_module(c, tmp_path, plugin))
    metrics = run_command("train", ckpt, tmp_path / "resumed", f"plugins=[{plugin}]")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_only_the_data_modules_of_conf_data_are_allowlisted() -> None:
    targets = set()
    for path in (conf_dir() / "data").glob("*.yaml"):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if target:
            targets.add(target)
    assert targets == set(DATA_MODULES)
    for target, cls in DATA_MODULES.items():
        assert instantiate({"_target_": target, "_partial_": True}).func is cls


# ------------------------------------------------------------------------------------------ unreadable files


def _weights_only(c: dict) -> None:
    for key in ("optimizer_states", "lr_schedulers"):
        del c[key]


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def saved(path: Path, obj: Any) -> Path:
    torch.save(obj, path)
    return path


def changed(change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any], Path], Path]:
    return lambda base, tmp: crafted(base, tmp / "bad.ckpt", change)


# kind: (how the file is made from the base checkpoint and the test's dir, what the error must say)
UNREADABLE: dict[str, tuple[Callable[[dict[str, Any], Path], Path], str]] = {
    "directory": (lambda base, tmp: tmp, "is a directory, not a checkpoint file"),
    "missing": (lambda base, tmp: tmp / "none.ckpt", "no checkpoint at"),
    "empty": (lambda base, tmp: written(tmp / "empty.ckpt", b""), "an empty file"),
    "text": (
        lambda base, tmp: written(tmp / "text.ckpt", b"this is not a checkpoint\n"),
        "not a readable torch checkpoint",
    ),
    "truncated": (
        lambda base, tmp: written(tmp / "cut.ckpt", base["path"].read_bytes()[:2000]),
        "not a readable torch checkpoint (truncated",
    ),
    "other_torch_file": (
        lambda base, tmp: saved(tmp / "other.ckpt", {"a": 1}),
        "not a tfgraph checkpoint (no 'tfgraph' entry",
    ),
    "code_pickle": (
        lambda base, tmp: written(tmp / "evil.ckpt", pickle.dumps({"state_dict": Payload(tmp / "marker")})),
        "torch.load(weights_only=True) refuses it",
    ),
    "code_in_torch_save": (
        lambda base, tmp: saved(tmp / "evil.ckpt", {**base["checkpoint"], "rng_state": Payload(tmp / "marker")}),
        "torch.load(weights_only=True) refuses it",
    ),
    "newer_format": (
        changed(lambda c: c["tfgraph"].update(format=FORMAT + 1)),
        f"written by a newer tfgraph (format {FORMAT + 1}; this one reads up to {FORMAT}): upgrade tfgraph",
    ),
    "tfgraph_not_a_dict": (changed(lambda c: c.update(tfgraph="causal_lm")), "tfgraph: expected {task: ..., format"),
    "unknown_task": (changed(lambda c: c["tfgraph"].update(task="poetry")), "tfgraph.task: unknown task 'poetry'"),
    "hyper_parameters_not_a_dict": (
        changed(lambda c: c.update(hyper_parameters=[1, 2])),
        "hyper_parameters: expected the task's arguments as a dict, got list",
    ),
    "unknown_argument": (
        changed(lambda c: c["hyper_parameters"].update(colour="red")),
        "hyper_parameters.colour: not an argument of task causal_lm",
    ),
    "no_model_config": (
        changed(lambda c: c["hyper_parameters"].pop("model")),
        "hyper_parameters.model: expected the model config as a dict",
    ),
    "a_tensor_argument": (
        changed(lambda c: c["hyper_parameters"].update(label_names=torch.zeros(2))),
        "hyper_parameters.label_names: a task takes plain containers only",
    ),
    "state_dict_not_tensors": (
        changed(lambda c: c["state_dict"].update(extra=[1])),
        "state_dict: expected tensors by name, got list at 'extra'",
    ),
    "weights_that_do_not_fit": (
        changed(lambda c: c["state_dict"].update({"model.embedding.weight": torch.zeros(3, 3)})),
        "its weights do not fit its model config",
    ),
    "a_broken_model_config": (
        changed(lambda c: c["hyper_parameters"]["model"].update(d_model=-1)),
        ": model.d_model: ",
    ),
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_a_file_that_is_not_a_readable_tfgraph_checkpoint_is_one_config_error(base, tmp_path: Path, kind: str) -> None:
    make, says = UNREADABLE[kind]
    ckpt = make(base, tmp_path)
    with pytest.raises(tfgraph.ConfigError) as raised:
        run_command("eval", ckpt, tmp_path / "eval")
    message = str(raised.value)
    assert message.startswith("invalid config:\n  - ckpt_path: "), message  # one problem, the file's
    assert str(ckpt) in message and says in message, message
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("command", ["train", "generate", "attention", "api"])
@pytest.mark.parametrize("kind", ["text", "code_pickle", "newer_format"])
def test_every_command_gives_the_config_error(base, tmp_path: Path, kind: str, command: str) -> None:
    make, says = UNREADABLE[kind]
    ckpt = make(base, tmp_path)
    with pytest.raises(tfgraph.ConfigError, match="ckpt_path: ") as raised:
        run_command(command, ckpt, tmp_path / "out")
    assert str(ckpt) in str(raised.value) and says in str(raised.value)
    assert not (tmp_path / "marker").exists()


def test_a_code_pickle_exits_2_with_no_traceback_and_never_runs(base, tmp_path: Path, monkeypatch, capsys) -> None:
    ckpt = UNREADABLE["code_in_torch_save"][0](base, tmp_path)
    code, err = console(
        eval_cli, [f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/run", *QUIET[:6]], monkeypatch, capsys
    )
    assert code == 2, err
    assert err.lstrip().startswith("error: invalid config") and "Traceback" not in err
    assert f"ckpt_path: {ckpt} is not a checkpoint tfgraph reads" in err
    assert not (tmp_path / "marker").exists()


def test_resuming_refuses_a_checkpoint_without_training_state_before_lightning_reads_it(base, tmp_path: Path) -> None:
    ckpt = crafted(base, tmp_path / "weights.ckpt", _weights_only)
    with pytest.raises(tfgraph.ConfigError, match=r"holds no training state to resume from \(optimizer_states"):
        run_command("train", ckpt, tmp_path / "out")
    assert "test/loss" in run_command("eval", ckpt, tmp_path / "eval")  # evaluating it is fine


# ------------------------------------------------------------------------------------------------- format


def test_a_checkpoint_records_its_format_and_one_without_a_format_still_loads(base, tmp_path: Path) -> None:
    assert base["checkpoint"]["tfgraph"] == {"task": "causal_lm", "format": FORMAT}
    older = crafted(base, tmp_path / "older.ckpt", lambda c: c["tfgraph"].pop("format"))
    task = load_task(older)
    expected = load_task(base["path"])
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(task.state_dict()[name], value)


# ------------------------------------------------------------------------------- found by the adversarial review


def test_a_checkpoint_may_not_choose_where_files_are_written(base, tmp_path: Path) -> None:
    def cache(c: dict) -> None:
        c["hyper_parameters"]["data"]["source_options"] = {"cache_root": str(tmp_path / "exfil")}

    ckpt = crafted(base, tmp_path / "cache.ckpt", cache)
    with pytest.raises(tfgraph.ConfigError, match=r"data.source_options.cache_root is set in the checkpoint"):
        evaluate(eval_cfg(ckpt, tmp_path / "eval"))
    with pytest.raises(tfgraph.ConfigError, match=r"data.source_options.cache_root is set in the checkpoint"):
        train(tfgraph.compose([f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path}/run", *QUIET]))
    assert not (tmp_path / "exfil").exists()
    metrics = evaluate(eval_cfg(ckpt, tmp_path / "eval2", "+data.source_options={}"))  # the user restates it
    assert "test/loss" in metrics and not (tmp_path / "exfil").exists()


@pytest.mark.parametrize("shape", ["shared", "deep"])
def test_a_checkpoint_too_deep_or_too_large_to_walk_is_refused_at_once(base, tmp_path: Path, shape: str) -> None:
    nested: Any = ["a"]
    for _ in range(40 if shape == "shared" else 5000):
        nested = [nested, nested] if shape == "shared" else [nested]

    def bomb(c: dict) -> None:
        c["hyper_parameters"]["label_names"] = nested

    with pytest.raises(tfgraph.ConfigError, match=r"hyper_parameters: (nested more than|more than 1,000,000)"):
        checkpoint = copy.deepcopy(base["checkpoint"])
        bomb(checkpoint)
        load_task(checkpoint, where="bomb.ckpt")


def test_a_crafted_tokenizer_is_a_config_error(base, tmp_path: Path) -> None:
    def tokenizer(c: dict) -> None:
        c["hyper_parameters"]["tokenizer"] = '{"kind": "char"}'

    with pytest.raises(tfgraph.ConfigError, match=r"its task does not rebuild: KeyError"):
        load_task(crafted(base, tmp_path / "tokenizer.ckpt", tokenizer))


def test_a_best_checkpoint_a_resumed_checkpoint_names_outside_the_run_is_not_loaded(tmp_path: Path) -> None:
    from tfgraph.train import own_checkpoint

    run, old = tmp_path / "run", tmp_path / "old" / "checkpoints"
    assert own_checkpoint(str(run / "checkpoints" / "step000010.ckpt"), run, None)
    assert own_checkpoint(str(old / "step000010.ckpt"), run, str(old / "last.ckpt"))
    assert own_checkpoint("/etc/passwd", run, str(old / "last.ckpt")) == ""


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pytorch-lightning_version", "banana"),
        ("pytorch-lightning_version", "0.1.0"),
        ("rng_state", {"cpu": torch.zeros(3)}),
        ("callbacks", "x"),
        ("loops", {"fit_loop": "x"}),
        ("optimizer_states", [{"state": {}, "param_groups": []}]),
        ("lr_schedulers", [{"base_lrs": "x"}]),
    ],
)
def test_resuming_from_malformed_training_state_is_a_config_error(base, tmp_path: Path, key: str, value: Any) -> None:
    def change(c: dict) -> None:
        c[key] = value

    ckpt = crafted(base, tmp_path / "state.ckpt", change)
    with pytest.raises(tfgraph.ConfigError, match=rf"ckpt_path: .*state.ckpt: {key}"):
        train(tfgraph.compose([f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path}/run", *QUIET]))
