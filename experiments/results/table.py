"""Print the README's table rows for the issue-3 experiments from their runs' metrics.json and csv files.

    python experiments/results/table.py
"""

import csv
import json
import math
from pathlib import Path

RUNS = Path(__file__).parent / "runs"
ORDER = ["reverse", "shakespeare_char", "wnut16_ner", "ptb_word", "bible_en_es"]
EXTRA = {"bible_en_es": " trainer.enable_progress_bar=false"}  # overrides a run had beyond its experiment


def fmt(metrics, key, scale=1.0, digits=3):
    return f"{metrics[key] * scale:.{digits}f}" if key in metrics else "-"


def measured(name, m):
    if name == "reverse":
        return (f"test exact match {fmt(m, 'test/exact_match', 100, 1)}% (val {fmt(m, 'val/exact_match', 100, 1)}%), "
                f"test chrF {fmt(m, 'test/chrf', 1, 1)}")
    if name == "shakespeare_char":
        def bpc(k):
            return f"{m[k] / math.log(2):.3f}" if k in m else "-"

        return (f"val loss {fmt(m, 'val/loss')} nats/char = {bpc('val/loss')} bits/char; "
                f"test loss {fmt(m, 'test/loss')} = {bpc('test/loss')} bits/char")
    if name == "ptb_word":
        return f"test perplexity {fmt(m, 'test/perplexity', 1, 1)} (val {fmt(m, 'val/perplexity', 1, 1)})"
    if name == "wnut16_ner":
        return (f"test entity F1 {fmt(m, 'test/f1', 100, 1)} (P {fmt(m, 'test/precision', 100, 1)}, "
                f"R {fmt(m, 'test/recall', 100, 1)}); val F1 {fmt(m, 'val/f1', 100, 1)}")
    if name == "bible_en_es":
        out = f"test (622 held-out verses) BLEU {fmt(m, 'test/bleu', 1, 1)}, chrF {fmt(m, 'test/chrf', 1, 1)}"
        return out + f"; val BLEU {fmt(m, 'val/bleu', 1, 1)}, chrF {fmt(m, 'val/chrf', 1, 1)}"
    return ", ".join(f"{k} {v:.4g}" for k, v in m.items())


def last_step(run):
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return max(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss"))


for name in ORDER:
    run = RUNS / name
    if not (run / "metrics.json").exists():
        continue
    m = json.loads((run / "metrics.json").read_text())
    wall = float((RUNS / f"{name}_time.txt").read_text().split()[-1])
    cmd = f"`tfgraph-train experiment={name}{EXTRA.get(name, '')} hydra.run.dir=experiments/results/runs/{name}`"
    print(f"| `{name}` | {cmd} | {last_step(run) + 1} | {wall:.0f} s | {measured(name, m)} | "
          f"[loss curve](results/{name}_loss.png) |")
