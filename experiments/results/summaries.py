"""The summarization results of experiments/README.md: the `debian_summaries` models beside two baselines, all
scored on the same held-out test split by the same metric code (tfgraph.tasks.metrics: torchmetrics' ROUGE,
sacrebleu's BLEU and chrF, as `tfgraph-train` logs them).

    python experiments/results/summaries.py --decode        # decode the test split with each run's best checkpoint
    python experiments/results/summaries.py                 # the table and examples, from the saved predictions
    python experiments/results/summaries.py --write-readme  # ... and write them into experiments/README.md

It logs the corpus's counts (entries read, dropped, kept, groups, per split) on stderr as it reads the split.

Baselines, from the description alone:

- lead: the description's first sentence, cut to the median synopsis length of the training split (in words);
- first-N words: the description's first N words, N that median length, and N chosen on the val split by
  ROUGE-L (the best of 1-30).

A model's predictions come from its run's best checkpoint (``checkpoints/step*.ckpt``), decoded as the run's test
stage decodes (the checkpoint's own data config and tokenizer, ``task.test_num_beams`` beams), and are saved as
``test_predictions.jsonl`` in the run dir, so that the table is printed again without the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import sys
from pathlib import Path

import torch

import tfgraph
from tfgraph.data import debian
from tfgraph.tasks.metrics import CorpusScore, Rouge

ROOT = Path(__file__).resolve().parents[2]
RUNS = Path(__file__).parent / "runs"
README = ROOT / "experiments" / "README.md"
MODELS = {  # run dir name -> what the table calls it
    "debian_summaries": "encoder-decoder (`debian_summaries`), beam 4",
    "debian_summaries_prefix_lm": "decoder-only prefix LM (`debian_summaries_prefix_lm`), beam 4",
}
KEYS = ("rouge1", "rouge2", "rougeL")
BEGIN, END = (
    "<!-- summaries:begin (written by experiments/results/summaries.py --write-readme) -->",
    "<!-- summaries:end -->",
)
# the end of a sentence: . ! or ? before a space or the end, not after e.g / i.e / etc / vs
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s|$)")


def splits() -> dict[str, list[tuple[str, str]]]:
    """The experiment's splits, as its data config makes them (``data.seed``, the fractions, the lists)."""
    data = tfgraph.compose(["experiment=debian_summaries"]).data
    options = dict(data.source_options)
    return debian.debian_descriptions(
        **options, seed=data.seed, val_fraction=data.val_fraction, test_fraction=data.test_fraction
    )


def first_words(document: str, n: int) -> str:
    return " ".join(document.split()[:n])


def lead(document: str, n: int) -> str:
    """The first sentence, cut to ``n`` words."""
    end = SENTENCE_END.search(document)
    return first_words(document[: end.end()] if end else document, n)


def scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L, BLEU and chrF (0-100) with the metric objects seq2seq logs."""
    rouge = Rouge(KEYS)
    rouge.update(predictions, references)
    out = {key: float(value) for key, value in rouge.compute().items()}
    for name in ("bleu", "chrf"):
        metric = CorpusScore(name)
        metric.update(predictions, references)
        out[name] = float(metric.compute())
    out["words"] = statistics.mean(len(p.split()) for p in predictions)
    return out


def decode(run: Path) -> list[dict[str, str]]:
    """The test split decoded by the run's best checkpoint, as its test stage decodes it."""
    from tfgraph.tasks import load_checkpoint, load_task
    from tfgraph.train import checkpoint_datamodule

    (path,) = sorted((run / "checkpoints").glob("step*.ckpt"))
    checkpoint = load_checkpoint(path)
    task = load_task(checkpoint, where=str(path)).eval()
    datamodule = checkpoint_datamodule(checkpoint, where=str(path))
    datamodule.setup("test")
    beams = task.hparams.get("test_num_beams") or task.hparams.get("num_beams", 1)
    rows = []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            references = [task.tokenizer.decode(t.tolist()) for t in task._targets(batch)]
            predictions = task.translate(batch, num_beams=beams)
            rows += [{"reference": r, "prediction": p} for r, p in zip(references, predictions, strict=True)]
            print(f"{run.name}: {len(rows)} of {len(datamodule.splits['test'])} decoded", file=sys.stderr)
    return rows


def report(data: dict[str, list[tuple[str, str]]]) -> str:
    """The table and a handful of examples, as Markdown."""
    test_docs, test_refs = [d for d, _ in data["test"]], [s for _, s in data["test"]]
    median = int(statistics.median(len(s.split()) for _, s in data["train"]))
    val_docs, val_refs = [d for d, _ in data["val"]], [s for _, s in data["val"]]
    best_n = max(range(1, 31), key=lambda n: scores([first_words(d, n) for d in val_docs], val_refs)["rougeL"])
    systems: dict[str, list[str]] = {}
    for name, title in MODELS.items():
        saved = RUNS / name / "test_predictions.jsonl"
        if saved.is_file():
            rows = [json.loads(line) for line in saved.read_text().splitlines()]
            decoded_refs = [r["reference"] for r in rows]
            if decoded_refs != test_refs:  # the same split, and the tokenizer gave the synopses back
                raise SystemExit(f"{saved}: its references are not this test split's synopses")
            systems[title] = [r["prediction"] for r in rows]
    systems[f"lead: first sentence, cut to {median} words (median synopsis)"] = [lead(d, median) for d in test_docs]
    systems[f"first {median} words (N = median synopsis)"] = [first_words(d, median) for d in test_docs]
    systems[f"first {best_n} words (N best on val by ROUGE-L)"] = [first_words(d, best_n) for d in test_docs]

    lines = [
        f"Test split: {len(test_refs):,} descriptions (val {len(val_refs):,}, train {len(data['train']):,}); "
        f"median synopsis {median} words, mean {statistics.mean(len(s.split()) for s in test_refs):.1f} on test.",
        "",
        "| system | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU | chrF | mean words |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for title, predictions in systems.items():
        s = scores(predictions, test_refs)
        lines.append(
            f"| {title} | {s['rouge1']:.1f} | {s['rouge2']:.1f} | {s['rougeL']:.1f} | {s['bleu']:.1f} | "
            f"{s['chrf']:.1f} | {s['words']:.1f} |"
        )
    lines += [
        "",
        "Examples (test descriptions drawn with `random.Random(0)`; the description cut at 300 characters):",
        "",
    ]
    for i in sorted(random.Random(0).sample(range(len(test_refs)), 5)):
        document = test_docs[i] if len(test_docs[i]) <= 300 else test_docs[i][:300] + " ..."
        lines += [f"- **description**: {document}", f"  - **synopsis** (reference): {test_refs[i]}"]
        for title, predictions in systems.items():
            if title in MODELS.values() or title.startswith("lead"):
                lines.append(f"  - **{title.split(' (')[0].split(':')[0]}**: {predictions[i]}")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # the corpus's counts
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode", action="store_true", help="decode the test split with each run's checkpoint")
    parser.add_argument("--write-readme", action="store_true", help="write the report into experiments/README.md")
    args = parser.parse_args()
    if args.decode:
        for name in MODELS:
            run = RUNS / name
            if list((run / "checkpoints").glob("step*.ckpt")):
                rows = decode(run)
                (run / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = report(splits())
    print(text)
    if args.write_readme:
        readme = README.read_text()
        start, stop = readme.index(BEGIN) + len(BEGIN), readme.index(END)
        README.write_text(readme[:start] + "\n" + text + "\n" + readme[stop:])


if __name__ == "__main__":
    main()
