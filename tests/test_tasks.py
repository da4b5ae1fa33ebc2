"""Tasks in isolation: metrics against their references, BERT masking, generation, heads, pooling, options."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from omegaconf import OmegaConf
from seqeval.metrics import f1_score, precision_score, recall_score

import tfgraph
from tfgraph.data import build_tokenizer
from tfgraph.registry import names
from tfgraph.tasks import TASKS, build_task
from tfgraph.tasks.base import check_plain
from tfgraph.tasks.metrics import CorpusScore, EntityF1
from tfgraph.tasks.optim import build_optimizer, build_scheduler, cosine_schedule

TOKENIZER = build_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz "])
OPTIMIZER = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1}


def model_config(preset: str, *overrides: str) -> dict:
    cfg = tfgraph.compose([f"model={preset}", "model.n_layers=1", *overrides]).model
    cfg.vocab_size = TOKENIZER.vocab_size
    return OmegaConf.to_container(cfg, resolve=True)


def make_task(name: str, preset: str, *overrides: str, label_names: list[str] | None = None, **options):
    torch.manual_seed(0)
    return build_task(
        {"name": name, **options},
        model=model_config(preset, *overrides),
        tokenizer=TOKENIZER.to_json(),
        label_names=label_names,
        optimizer=OPTIMIZER,
        scheduler={"name": "cosine", "warmup_steps": 2},
    )


def ids(text: str) -> torch.Tensor:
    return torch.tensor([TOKENIZER.encode(text)])


# ------------------------------------------------------------------------------------------------ metrics


def random_tags(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) for _ in range(n)]


def test_entity_f1_matches_seqeval_on_any_batching() -> None:
    rng = random.Random(0)
    true = [random_tags(rng, rng.randint(1, 12)) for _ in range(50)]
    pred = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC"]) for t in row] for row in true]
    metric = EntityF1()
    for start in range(0, 50, 7):
        metric.update(pred[start : start + 7], true[start : start + 7])
    got = metric.compute()
    assert float(got["precision"]) == pytest.approx(precision_score(true, pred), abs=1e-6)
    assert float(got["recall"]) == pytest.approx(recall_score(true, pred), abs=1e-6)
    assert float(got["f1"]) == pytest.approx(f1_score(true, pred), abs=1e-6)


def test_entity_f1_counts_exact_spans_only() -> None:
    metric = EntityF1()
    # one exact PER; a LOC cut short (no credit); a spurious LOC
    metric.update([["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]])
    got = metric.compute()
    assert float(got["precision"]) == pytest.approx(1 / 3)
    assert float(got["recall"]) == pytest.approx(1 / 2)


@pytest.mark.parametrize("which", ["bleu", "chrf"])
def test_corpus_scores_match_sacrebleu_on_any_batching(which: str) -> None:
    rng = random.Random(1)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(40)]
    hyps = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()) for r in refs]
    metric = CorpusScore(which)
    for start in range(0, 40, 9):
        metric.update(hyps[start : start + 9], refs[start : start + 9])
    expected = (sacrebleu.corpus_bleu if which == "bleu" else sacrebleu.corpus_chrf)(hyps, [refs]).score
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------------------------- masked LM


def test_bert_masking_chooses_15_percent_and_replaces_80_10_10() -> None:
    task = make_task("masked_lm", "bert_tiny")
    input_ids = torch.randint(task.first_plain_id, TOKENIZER.vocab_size, (64, 128))
    input_ids[:, 0] = TOKENIZER.bos_id
    mask = torch.ones_like(input_ids)
    mask[:, 100:] = 0
    corrupted, labels = task.mask_tokens(input_ids, mask, task.masking_generator("train", 0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 100:].any()  # never specials or padding
    assert chosen.float().sum() / (64 * 99) == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[chosen], input_ids[chosen])
    masked = (corrupted == TOKENIZER.mask_id) & chosen
    kept = (corrupted == input_ids) & chosen
    n = chosen.sum()
    assert masked.sum() / n == pytest.approx(0.8, abs=0.03)
    assert kept.sum() / n == pytest.approx(0.1 + 0.1 / (TOKENIZER.vocab_size - task.first_plain_id), abs=0.03)
    assert torch.equal(corrupted[~chosen], input_ids[~chosen])
    assert not torch.isin(corrupted[chosen & ~masked], torch.tensor(sorted(TOKENIZER.special_ids))).any()


def test_bert_masking_is_a_function_of_stage_and_step() -> None:
    task = make_task("masked_lm", "bert_tiny")
    x = torch.randint(task.first_plain_id, TOKENIZER.vocab_size, (4, 32))
    same = [task.mask_tokens(x, None, task.masking_generator("val", 3))[1] for _ in range(2)]
    assert torch.equal(*same)
    assert not torch.equal(same[0], task.mask_tokens(x, None, task.masking_generator("val", 4))[1])


def test_masked_lm_head_is_a_registered_block_tied_to_the_embedding() -> None:
    task = make_task("masked_lm", "bert_tiny")
    assert type(task.head).block_name == "mlm_head"
    assert task.head.weight is task.model.embedding.weight
    untied = make_task("masked_lm", "bert_tiny", "model.tie_embeddings=false")
    assert untied.head.weight is not untied.model.embedding.weight
    assert {"mlm_head", "pooled_classifier", "linear_classifier"} <= set(names("head"))


# -------------------------------------------------------------------------------------------- generation


def greedy_loop(model, prompt: list[int], steps: int, window: int | None = None, keep: int = 0) -> list[int]:
    """The argmax of a full forward, token after token; once the sequence holds `window` tokens, it goes on from its
    last `keep` (what generate_windowed does)."""
    seq, new = list(prompt), []
    for _ in range(steps):
        if window is not None and len(seq) >= window:
            seq = seq[-keep:]
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        new.append(seq[-1])
    return new


def test_causal_lm_generates_greedily_by_default_and_slides_past_its_trained_context() -> None:
    task = make_task("causal_lm", "gpt2_tiny", "model.init_std=0.2")
    model = task.model.eval()
    prompt = TOKENIZER.encode("abc")
    expected = TOKENIZER.decode(greedy_loop(model, prompt, 6))
    assert task.generate("abc", max_new_tokens=6, eos_token_id=None) == "abc" + expected
    task.trained_context.fill_(7)  # trained on windows of 8 tokens: a sequence holds at most 8
    assert task.generation_context == 8
    expected = TOKENIZER.decode(greedy_loop(model, prompt, 20, window=8, keep=4))
    assert task.generate("abc", max_new_tokens=20, eos_token_id=None) == "abc" + expected
    drawn = [task.generate("abc", 20, strategy="sample", temperature=2.0, seed=s, eos_token_id=None) for s in (0, 0, 1)]
    assert drawn[0] == drawn[1] != drawn[2] and drawn[0].startswith("abc")


def test_causal_lm_stops_at_eos_and_starts_an_empty_prompt_from_bos() -> None:
    task = make_task("causal_lm", "gpt2_tiny", "model.init_std=0.2")
    first = greedy_loop(task.model.eval(), [TOKENIZER.bos_id], 1)[0]
    assert task.generate("", max_new_tokens=5, eos_token_id=None).startswith(TOKENIZER.decode([first]))
    assert task.generate("", max_new_tokens=5, eos_token_id=first) == TOKENIZER.decode([first])  # stopped there


@pytest.mark.parametrize("preset", ["transformer_tiny", "gpt2_tiny"])
def test_seq2seq_translates_greedily_up_to_eos(preset: str) -> None:
    task = make_task("seq2seq", preset, "model.n_decoder_layers=1", "model.init_std=0.2")
    model = task.model.eval()
    eos, pad = TOKENIZER.eos_id, TOKENIZER.pad_id
    sources = [TOKENIZER.encode(w) for w in ("hello", "ab", "world!")]
    length = max(map(len, sources))
    batch = {
        "input_ids": torch.tensor([s + [pad] * (length - len(s)) for s in sources]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sources]),
        "labels": torch.tensor([[7, eos]] * 3),  # 2 tokens: at most 2 * 2 + 8 = 12 decoded
    }
    expected = []
    for source in sources:
        if model.topology == "encoder_decoder":  # the decoder from <bos>, the source read once
            dec = [TOKENIZER.bos_id]
            for _ in range(12):
                dec.append(int(model(torch.tensor([source]), decoder_input_ids=torch.tensor([dec]))[0, -1].argmax()))
            new = dec[1:]
        else:  # a prefix LM continues `source <eos>`
            new = greedy_loop(model, source + [eos], 12)
        expected.append(TOKENIZER.decode(new[: new.index(eos)] if eos in new else new))
    assert task.translate(batch) == expected


# ------------------------------------------------------------------------------------------ the tasks' inputs


def test_seq2seq_encoder_decoder_reads_bos_and_the_shifted_target() -> None:
    task = make_task("seq2seq", "t5_tiny", "model.n_decoder_layers=1")
    seen = {}
    task.model.register_forward_hook(lambda m, args, kwargs, out: seen.update(kwargs), with_kwargs=True)
    labels = torch.tensor([[7, 8, TOKENIZER.eos_id, -100, -100]])
    task.compute(
        {"input_ids": ids("ab"), "attention_mask": torch.ones(1, 2, dtype=torch.long), "labels": labels}, "val", 0
    )
    assert seen["decoder_input_ids"].tolist() == [[TOKENIZER.bos_id, 7, 8, TOKENIZER.eos_id, TOKENIZER.pad_id]]
    assert seen["decoder_attention_mask"].tolist() == [[1, 1, 1, 1, 0]]


def test_prefix_lm_rows_are_source_eos_target_with_loss_on_the_target_only() -> None:
    task = make_task("seq2seq", "gpt2_tiny")
    eos, pad = TOKENIZER.eos_id, TOKENIZER.pad_id
    batch = {
        "input_ids": torch.tensor([[5, 6, 7], [8, pad, pad]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "labels": torch.tensor([[9, eos], [10, eos]]),
    }
    rows, mask, labels = task._prefix_lm_batch(batch)
    assert rows.tolist() == [[5, 6, 7, eos, 9, eos], [8, eos, 10, eos, pad, pad]]
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert labels.tolist() == [[-100, -100, -100, -100, 9, eos], [-100, -100, 10, eos, -100, -100]]


def test_decoder_classifier_pools_the_last_real_token() -> None:
    task = make_task("sequence_classification", "gpt2_tiny", label_names=["a", "b"]).eval()
    assert task.model.head is None  # the unused LM head is dropped
    x = ids("abcd")
    alone = task.compute({"input_ids": x, "labels": torch.tensor([0])}, "val", 0).logits
    padded = torch.cat([x, torch.full((1, 3), TOKENIZER.pad_id)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    batch = {"input_ids": padded, "attention_mask": mask, "labels": torch.tensor([0])}
    torch.testing.assert_close(task.compute(batch, "val", 0).logits, alone)


def test_classification_heads_default_by_topology_and_can_be_named() -> None:
    labels = ["neg", "pos"]
    assert (
        type(make_task("sequence_classification", "bert_tiny", label_names=labels).head).block_name
        == "pooled_classifier"
    )
    assert (
        type(make_task("sequence_classification", "llama_tiny", label_names=labels).head).block_name
        == "linear_classifier"
    )
    named = make_task("sequence_classification", "bert_tiny", label_names=labels, head={"block": "linear_classifier"})
    assert type(named.head).block_name == "linear_classifier"
    with pytest.raises(tfgraph.ConfigError, match=r"task.head.bais.*did you mean 'bias'"):
        make_task(
            "token_classification", "bert_tiny", label_names=labels, head={"block": "linear_classifier", "bais": False}
        )
    with pytest.raises(tfgraph.ConfigError, match="needs at least two label names"):
        make_task("sequence_classification", "bert_tiny", label_names=None)


# ------------------------------------------------------------------------------------- options and building


def test_unknown_tasks_and_options_are_config_errors_with_suggestions() -> None:
    with pytest.raises(tfgraph.ConfigError, match="unknown task 'casual_lm'.*did you mean 'causal_lm'"):
        make_task("casual_lm", "gpt2_tiny")
    with pytest.raises(tfgraph.ConfigError, match=r"task.mask_prb: unknown option \(did you mean 'mask_prob'"):
        make_task("masked_lm", "bert_tiny", mask_prb=0.2)
    common = {"model": model_config("gpt2_tiny"), "tokenizer": TOKENIZER.to_json()}
    with pytest.raises(tfgraph.ConfigError, match=r"optimizer.lr_: unknown option.*did you mean 'lr'"):
        build_task({"name": "causal_lm"}, **common, optimizer={"name": "adamw", "lr_": 1})
    with pytest.raises(tfgraph.ConfigError, match="scheduler.name: unknown scheduler 'cosin'"):
        build_task({"name": "causal_lm"}, **common, optimizer=OPTIMIZER, scheduler={"name": "cosin"})


def test_optimizer_and_schedule_values_the_optimizer_refuses_are_config_errors_naming_each_key() -> None:
    from tfgraph.tasks.optim import check_optimizer, check_scheduler

    with pytest.raises(tfgraph.ConfigError) as info:
        check_optimizer({"name": "adamw", "lr": -1, "betas": [0.9, 1.5], "weight_decay": 0.1})
    problems = dict(info.value.problems)
    assert problems.keys() == {"optimizer.lr", "optimizer.betas"}
    assert "Invalid learning rate: -1" in problems["optimizer.lr"]
    check_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True})  # valid together
    with pytest.raises(tfgraph.ConfigError, match=r"optimizer.nesterov: True is refused by SGD: Nesterov"):
        check_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": True})
    with pytest.raises(tfgraph.ConfigError) as info:
        check_scheduler({"name": "cosine", "warmup_steps": -5, "min_lr_ratio": 2})
    assert dict(info.value.problems).keys() == {"scheduler.warmup_steps", "scheduler.min_lr_ratio"}
    check_scheduler({"name": "linear", "warmup_steps": 0, "min_lr_ratio": 0})


def test_the_train_command_refuses_a_bad_learning_rate_before_training(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tfgraph.cli.train", "experiment=reverse", "optimizer.lr=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "optimizer.lr: -1 is refused by AdamW: Invalid learning rate: -1" in done.stderr
    assert "GPU available" not in done.stderr  # refused before the trainer is built


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_says_which_topologies_fit(name: str) -> None:
    fits = TASKS[name].topologies
    for topology in ("decoder_only", "encoder_only", "encoder_decoder"):
        if topology in fits:
            TASKS[name].check_topology(topology)
        else:
            with pytest.raises(tfgraph.ConfigError) as err:
                TASKS[name].check_topology(topology)
            assert all(f in str(err.value) for f in fits)


def test_tasks_take_plain_containers_only() -> None:
    check_plain({"a": [1, 2.0, "x", None, {"b": True}]}, "task")
    with pytest.raises(TypeError, match="plain containers only"):
        check_plain({"model": OmegaConf.create({"d_model": 8})}, "task")


def test_weight_decay_reaches_matrices_only_and_the_schedule_warms_up_then_decays() -> None:
    model = make_task("causal_lm", "gpt2_tiny").model
    optimizer = build_optimizer(model, OPTIMIZER)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_parameters()
    factors = [cosine_schedule(s, total_steps=110, warmup_steps=10, min_lr_ratio=0.1) for s in range(111)]
    assert factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10] == pytest.approx(1.0) and factors[110] == pytest.approx(0.1)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    scheduler = build_scheduler(optimizer, {"name": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0}, 4)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
