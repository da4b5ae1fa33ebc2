"""train() and evaluate() end to end on a synthetic stand-in DataModule: a short fit of every task with every
topology it supports, checkpoints that load with weights_only=True, exact resumption, eval reproducing val."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader, Sampler

import tfgraph
from tfgraph.data import Tokenizer, build_tokenizer
from tfgraph.evaluate import evaluate
from tfgraph.tasks import TASKS, load_checkpoint
from tfgraph.train import build_trainer, train

LETTERS = "abcdefghij"
TAGS = ["O", "B-X", "I-X"]


class EpochShuffle(Sampler[int]):
    """A shuffle seeded by seed and epoch (Lightning calls set_epoch), so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class TinyData(pl.LightningDataModule):
    """Synthetic examples for one task, batched in the format of the data contract.

    causal_lm/masked_lm: windows of a repeating letter stream; seq2seq: reverse a word; sequence_classification:
    does the word start with a vowel-ish letter; token_classification: letters a-c form an X entity.
    """

    def __init__(
        self,
        *,
        task: str,
        batch_size: int = 4,
        n_train: int = 16,
        n_val: int = 8,
        seed: int = 0,
        tokenizer_json: str | None = None,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.task, self.batch_size, self.seed = task, batch_size, seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_val}
        self.fits = (task,)
        self.name = f"tiny_{task}"
        self.tokenizer_json = tokenizer_json
        self.tokenizer: Tokenizer | None = None
        self.label_names = label_names
        self.splits: dict[str, list[dict[str, torch.Tensor]]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.tokenizer_json:
            self.tokenizer = Tokenizer.from_json(self.tokenizer_json)
        else:
            self.tokenizer = build_tokenizer("char", [LETTERS])
        if self.task == "sequence_classification":
            self.label_names = self.label_names or ["no", "yes"]
        elif self.task == "token_classification":
            self.label_names = self.label_names or TAGS
        gen = torch.Generator().manual_seed(self.seed)
        self.splits = {split: [self.example(gen) for _ in range(n)] for split, n in self.sizes.items()}

    def example(self, gen: torch.Generator) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        word = "".join(
            LETTERS[i]
            for i in torch.randint(0, len(LETTERS), (int(torch.randint(2, 7, (1,), generator=gen)),), generator=gen)
        )
        if self.task in ("causal_lm", "masked_lm"):
            start = int(torch.randint(0, len(LETTERS), (1,), generator=gen))
            ids = tok.encode((LETTERS * 3)[start : start + 12])
            return {"input_ids": torch.tensor(ids)}
        if self.task == "seq2seq":
            return {
                "input_ids": torch.tensor(tok.encode(word)),
                "labels": torch.tensor(tok.encode(word[::-1]) + [tok.eos_id]),
            }
        if self.task == "sequence_classification":
            return {
                "input_ids": torch.tensor([tok.bos_id, *tok.encode(word)]),
                "labels": torch.tensor(int(word[0] in "abc")),
            }
        tags, previous = [], False
        for ch in word:
            inside = ch in "abc"
            tags.append(TAGS.index("I-X" if inside and previous else "B-X" if inside else "O"))
            previous = inside
        return {"input_ids": torch.tensor([tok.bos_id, *tok.encode(word)]), "labels": torch.tensor([-100, *tags])}

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        batch = {
            "input_ids": torch.stack([_pad(i["input_ids"], length, self.tokenizer.pad_id) for i in items]),
            "attention_mask": torch.stack([_pad(torch.ones_like(i["input_ids"]), length, 0) for i in items]),
        }
        if "labels" in items[0]:
            labels = [i["labels"] for i in items]
            if labels[0].dim() == 0:
                batch["labels"] = torch.stack(labels)
            else:
                size = length if self.task == "token_classification" else max(len(t) for t in labels)
                batch["labels"] = torch.stack([_pad(t, size, -100) for t in labels])
        return batch

    def train_dataloader(self) -> DataLoader:
        data = self.splits["train"]
        return DataLoader(data, self.batch_size, sampler=EpochShuffle(len(data), self.seed), collate_fn=self.collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], self.batch_size, collate_fn=self.collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], self.batch_size, collate_fn=self.collate)


def _pad(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.cat([t, t.new_full((length - len(t),), value)])


class StopAt(pl.Callback):
    """Interrupt a run after `step` optimizer steps (its schedule still planned for max_steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


# Every (task, tiny preset) pair that fits, and the pairs that do not.
FITS = {
    "causal_lm": ["gpt2_tiny", "llama_tiny"],
    "masked_lm": ["bert_tiny"],
    "seq2seq": ["transformer_tiny", "t5_tiny", "gpt2_tiny"],
    "sequence_classification": ["bert_tiny", "gpt2_tiny"],
    "token_classification": ["bert_tiny", "llama_tiny"],
}
PRESET_TOPOLOGY = {
    "gpt2_tiny": "decoder_only",
    "llama_tiny": "decoder_only",
    "bert_tiny": "encoder_only",
    "transformer_tiny": "encoder_decoder",
    "t5_tiny": "encoder_decoder",
}
QUIET = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "scheduler.warmup_steps=2",
    "sample.max_new_tokens=4",
]


def run_config(tmp_path: Path, task: str, model: str, *overrides: str, data: dict[str, Any] | None = None) -> Any:
    """A composed train config for a tiny run of `task` on TinyData, writing under tmp_path."""
    layers = ["model.n_layers=1"] + (
        ["model.n_decoder_layers=1"] if PRESET_TOPOLOGY[model] == "encoder_decoder" else []
    )
    cfg = tfgraph.compose(
        [
            f"model={model}",
            f"task={task}",
            *layers,
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2",
            f"paths.output_dir={tmp_path}",
            *QUIET,
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.data = OmegaConf.create({"_target_": f"{__name__}.TinyData", "task": task, **(data or {})})
    return cfg


# ------------------------------------------------------------------------------------------------ fits


@pytest.mark.parametrize(("task", "model"), [(t, m) for t, models in FITS.items() for m in models])
def test_short_fit_of_every_task_and_topology(tmp_path: Path, task: str, model: str) -> None:
    metrics = train(run_config(tmp_path, task, model, "~logger", "callbacks=checkpoints"))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert {"val/loss", "test/loss"} <= set(metrics)
    expected = {
        "causal_lm": ["val/perplexity", "val/accuracy"],
        "masked_lm": ["val/perplexity", "val/accuracy"],
        "seq2seq": ["val/bleu", "val/chrf", "val/exact_match", "val/accuracy", "test/bleu"],
        "sequence_classification": ["val/accuracy", "val/macro_f1"],
        "token_classification": ["val/accuracy", "val/f1", "val/precision", "val/recall", "test/f1"],
    }[task]
    assert set(expected) <= set(metrics), sorted(metrics)
    assert (tmp_path / "tokenizer.json").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "metrics.json").is_file()


MISFITS = [
    (task, model)
    for task, models in FITS.items()
    for model in ("gpt2_tiny", "bert_tiny", "transformer_tiny")  # one of each topology
    if PRESET_TOPOLOGY[model] not in {PRESET_TOPOLOGY[m] for m in models}
]


@pytest.mark.parametrize(("task", "model"), MISFITS)
def test_a_task_refuses_a_topology_that_does_not_fit_and_says_which_fit(tmp_path: Path, task: str, model: str) -> None:
    with pytest.raises(tfgraph.ConfigError) as err:
        train(run_config(tmp_path, task, model))
    message = str(err.value)
    assert f"task {task} does not fit" in message and PRESET_TOPOLOGY[model] in message
    for topology in TASKS[task].topologies:
        assert topology in message


def test_the_config_mistakes_found_before_any_data_are_reported_together(tmp_path: Path) -> None:
    cfg = tfgraph.compose(
        [
            "model=transformer_tiny",
            "task=causal_lm",
            "model.n_heads=5",
            "optimizer.lr=-1",
            "optimized_mode=maximum",
            "data=text",
            f"data.path={tmp_path / 'no_such_file.txt'}",  # reading it would be a DataError
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    with pytest.raises(tfgraph.ConfigError) as err:
        train(cfg)
    paths = [path for path, _ in err.value.problems]
    assert paths[:3] == ["optimized_mode", "optimizer.lr", "model.topology"] and "model.n_heads" in paths


def test_data_that_does_not_feed_the_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(tfgraph.ConfigError, match="feeds seq2seq, not task causal_lm"):
        train(run_config(tmp_path, "causal_lm", "gpt2_tiny", data={"task": "seq2seq"}))


class TinyDataWithMaxLen(TinyData):
    """TinyData that takes (and ignores) a max_len, as the pairs data does; train() checks it against the model."""

    def __init__(self, *, max_len: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)


def test_a_prefix_lm_must_reach_source_and_target(tmp_path: Path) -> None:
    data = {"_target_": f"{__name__}.TinyDataWithMaxLen", "max_len": 12}
    cfg = run_config(tmp_path, "seq2seq", "gpt2_tiny", "model.max_len=16", data=data)
    with pytest.raises(tfgraph.ConfigError, match=r"model.max_len: 16 positions, but a prefix LM .* = 24 tokens"):
        train(cfg)


def test_moe_load_balancing_loss_is_logged_and_added(tmp_path: Path) -> None:
    overrides = ["model/ffn=moe", "model.d_ff=32", "~logger", "callbacks=none", "test=false", "trainer.max_steps=2"]
    metrics = train(run_config(tmp_path, "causal_lm", "gpt2_tiny", *overrides))
    assert metrics["train/aux_loss"] > 0


def test_mlflow_missing_is_a_config_error_naming_the_package() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mlflow is installed")
    cfg = tfgraph.compose(["logger=mlflow", "paths.output_dir=/tmp/unused"])
    with pytest.raises(tfgraph.ConfigError, match=r"logger.mlflow: needs a package that is not installed.*pip install"):
        build_trainer(cfg)


# ----------------------------------------------------------------------------------------- checkpoints


def _plain_only(value: Any, path: str = "") -> list[str]:
    """Paths of anything in a checkpoint that is not a plain container, number, string or tensor."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _plain_only(v, f"{path}/{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _plain_only(v, f"{path}[{i}]")]
    ok = value is None or isinstance(value, (str, int, float, bool, torch.Tensor))
    return [] if ok else [f"{path}: {type(value).__name__}"]


def test_checkpoints_hold_plain_containers_and_load_with_weights_only(tmp_path: Path) -> None:
    train(run_config(tmp_path, "token_classification", "bert_tiny"))
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert _plain_only(checkpoint) == []
        assert checkpoint["tfgraph"] == {"task": "token_classification", "format": 1}
        assert checkpoint["hyper_parameters"]["label_names"] == TAGS
        assert (
            checkpoint["hyper_parameters"]["model"]["vocab_size"]
            == Tokenizer.from_json(checkpoint["hyper_parameters"]["tokenizer"]).vocab_size
        )


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}


def test_resuming_continues_at_the_right_step_with_the_same_optimizer_state_and_losses(tmp_path: Path) -> None:
    # 4 batches an epoch, last.ckpt every 2 steps. 8 steps straight; or a run that dies after step 5 (its
    # schedule planned for 8), resumed from its last.ckpt (step 4, an epoch's end) for the rest.
    common = [
        "trainer.max_steps=8",
        "trainer.val_check_interval=100",
        "callbacks=checkpoints",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    ]
    straight = train(run_config(tmp_path / "straight", "causal_lm", "gpt2_tiny", *common))
    first = run_config(tmp_path / "first", "causal_lm", "gpt2_tiny", *common)
    with open_dict(first):
        first.callbacks.stop = {"_target_": f"{__name__}.StopAt", "step": 5}
    train(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4
    resumed = train(run_config(tmp_path / "resumed", "causal_lm", "gpt2_tiny", *common, f"ckpt_path={last}"))

    end_straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    end_resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert end_straight["global_step"] == end_resumed["global_step"] == 8
    steps = _losses(tmp_path / "straight")
    assert sorted(steps) == list(range(8))
    assert {**_losses(tmp_path / "first"), **_losses(tmp_path / "resumed")} == pytest.approx(steps, abs=1e-6)
    for a, b in zip(end_straight["optimizer_states"], end_resumed["optimizer_states"], strict=True):
        assert a["param_groups"] == b["param_groups"]
        for key, state in a["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(value, b["state"][key][name], msg=f"optimizer state {key}.{name}")
    for name, value in end_straight["state_dict"].items():
        torch.testing.assert_close(value, end_resumed["state_dict"][name], msg=name)
    assert resumed["val/loss"] == pytest.approx(straight["val/loss"], abs=1e-6)


@pytest.mark.parametrize(("task", "model"), [("masked_lm", "bert_tiny"), ("seq2seq", "transformer_tiny")])
def test_eval_from_a_checkpoint_reproduces_the_val_metrics(tmp_path: Path, task: str, model: str) -> None:
    metrics = train(run_config(tmp_path / "run", task, model, "callbacks=checkpoints", "~logger", "test=false"))
    cfg = tfgraph.compose(
        [
            f"ckpt_path={tmp_path}/run/checkpoints/last.ckpt",
            "split=val",
            f"paths.output_dir={tmp_path}/eval",
            *QUIET[:3],
        ],
        config_name="eval",
    )
    evaluated = evaluate(cfg)
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    assert evaluated == pytest.approx(val, abs=1e-5)
    assert (tmp_path / "eval" / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------------- commands


def command(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"tfgraph.cli.{module}", *args, f"hydra.run.dir={cwd}/run"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_train_command_prints_a_config_error_and_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = command("train", "task=masked_lm", "model=gpt2_tiny", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "error: invalid config" in done.stderr and "task masked_lm does not fit" in done.stderr
    assert "encoder_only" in done.stderr and "Traceback" not in done.stderr


def test_eval_command_without_a_checkpoint_exits_2(tmp_path: Path) -> None:
    done = command("eval", f"ckpt_path={tmp_path}/missing.ckpt", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr and "no checkpoint at" in done.stderr and "Traceback" not in done.stderr


def test_eval_command_with_no_ckpt_path_says_which_key_is_missing(tmp_path: Path) -> None:
    done = command("eval", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "ckpt_path: which checkpoint?" in done.stderr and "Traceback" not in done.stderr
