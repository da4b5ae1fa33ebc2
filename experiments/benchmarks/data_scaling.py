"""Data preparation at scale: time, peak memory and reopening of `data=text data.tokenizer=bpe` by corpus size.

    python experiments/benchmarks/data_scaling.py --sizes 10 40 160 --write-readme

For each size a corpus of that many MB of real text on this machine is built (Python's standard library sources,
then /usr/share/doc's plain-text files, repeated when they run out), and each step runs in a process of its own
so that its peak RSS is its own:

- ``prepare``: TextDataModule(tokenizer=bpe, vocab_size=8000).prepare_data() into an empty cache: the tokenizer
  trained from the stream and every split encoded (the first run's cost);
- ``reopen``: a new process's setup() of the same settings (the second run's cost);
- ``encode``: the same preparation with the tokenizer given (tokenizer_path), so encoding alone, beside
- ``baseline``: the minimal streaming encoder with the same tokenizer: 20k-line batches, ``encode_batch``,
  uint16 ids appended to a file.

``encode`` and ``baseline`` run twice, interleaved, and each keeps its faster run.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_readme  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "data_scaling.json"
MB = 10**6


def real_text_files() -> list[Path]:
    """Plain UTF-8 text of this machine: the standard library's sources, then /usr/share/doc's text files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
    files += sorted(p for p in Path("/usr/share/doc").rglob("*") if p.is_file() and p.suffix in ("", ".txt"))
    return files


def build_corpus(path: Path, size: int) -> dict:
    """Write ``size`` bytes of real text to ``path`` (whole files, repeated from the start when they run out)."""
    written, used, rounds = 0, 0, 0
    files = real_text_files()
    with path.open("wb") as out:
        while written < size:
            rounds += 1
            for file in files:
                try:
                    data = file.read_bytes()
                    data.decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                out.write(data[: size - written])
                written += min(len(data), size - written)
                used += rounds == 1
                if written >= size:
                    break
    return {"bytes": written, "files": used, "rounds": rounds}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(kind: str, corpus: str, cache: str, tokenizer: str) -> dict:
    """One measured step, in this process (run by :func:`measure` in a fresh one)."""
    start = time.perf_counter()
    if kind == "baseline":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(json.dumps(json.loads(Path(tokenizer).read_text())["tokenizer"]))
        tokens = 0
        with open(corpus, encoding="utf-8") as lines, open(Path(cache) / "baseline.bin", "wb") as out:
            batch: list[str] = []
            for line in lines:
                batch.append(line)
                if len(batch) == 20_000:
                    ids = np.concatenate([np.asarray(e.ids, np.uint16) for e in tok.encode_batch(batch)])
                    ids.tofile(out)
                    tokens += len(ids)
                    batch = []
            if batch:
                ids = np.concatenate([np.asarray(e.ids, np.uint16) for e in tok.encode_batch(batch)])
                ids.tofile(out)
                tokens += len(ids)
        return {"seconds": time.perf_counter() - start, "tokens": tokens, "peak_rss_mb": peak_rss_mb()}
    from tfgraph.data import TextDataModule

    start = time.perf_counter()  # after the imports (torch, Lightning), which the baseline does not make
    options = {"path": corpus, "tokenizer": "bpe", "vocab_size": 8000, "cache_dir": cache}
    if kind == "encode":
        options["tokenizer_path"] = tokenizer
    dm = TextDataModule(**options)
    if kind == "reopen":
        dm.setup()
    else:
        dm.prepare_data()
    seconds = time.perf_counter() - start
    folder, meta = dm.prepare_and_open()
    if kind == "prepare":
        shutil.copy(folder / "tokenizer.json", tokenizer)
    return {"seconds": seconds, "tokens": sum(meta["tokens"].values()), "peak_rss_mb": peak_rss_mb()}


def measure(kind: str, corpus: Path, cache: Path, tokenizer: Path) -> dict:
    command = [sys.executable, __file__, "--step", kind, str(corpus), str(cache), str(tokenizer)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: list[int], work: Path) -> dict:
    rows = []
    for size in sizes:
        corpus = work / f"corpus_{size}mb.txt"
        built = build_corpus(corpus, size * MB)
        tokenizer = work / f"tokenizer_{size}.json"
        row: dict = {"mb": size, "corpus": built}
        # encode and baseline twice, interleaved, each kept at its faster run: other processes of a shared
        # machine then slow both alike
        steps = [
            ("prepare", "a"),
            ("reopen", "a"),
            ("encode", "b"),
            ("baseline", "c"),
            ("encode", "d"),
            ("baseline", "e"),
        ]
        for kind, cache in steps:
            (work / f"{cache}{size}").mkdir(exist_ok=True)
            measured = measure(kind, corpus, work / f"{cache}{size}", tokenizer)
            print(size, kind, measured, file=sys.stderr, flush=True)
            if kind not in row or measured["seconds"] < row[kind]["seconds"]:
                row[kind] = measured
        row["prepared_bytes"] = sum(p.stat().st_size for p in (work / f"a{size}").rglob("*") if p.is_file())
        rows.append(row)
        corpus.unlink()
        for cache in "abcde":
            shutil.rmtree(work / f"{cache}{size}", ignore_errors=True)
    return {"environment": environment(), "rows": rows}


def table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"Measured on {env['cpu']} ({env['cpus']} cores), Python {env['python']}.",
        "",
        "Encode only and baseline: MB of text per second and peak RSS; the ratio is of text throughput (the baseline "
        "encodes each line apart, which makes more tokens of the same text).",
        "",
        "| corpus | tokens | on disk | prepare (first run) | peak RSS | reopen | encode only | baseline | "
        "encode / baseline |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        prep, reopen, enc, base = row["prepare"], row["reopen"], row["encode"], row["baseline"]
        enc_rate, base_rate = row["mb"] / enc["seconds"], row["mb"] / base["seconds"]
        lines.append(
            f"| {row['mb']} MB | {prep['tokens'] / 1e6:.1f} M | {row['prepared_bytes'] / 1e6:.0f} MB "
            f"| {prep['seconds']:.1f} s | {prep['peak_rss_mb']:.0f} MB "
            f"| {reopen['seconds']:.2f} s ({reopen['peak_rss_mb']:.0f} MB) | {enc_rate:.2f} MB/s, "
            f"{enc['tokens'] / enc['seconds'] / 1e6:.2f} M tok/s ({enc['peak_rss_mb']:.0f} MB) | {base_rate:.2f} MB/s, "
            f"{base['tokens'] / base['seconds'] / 1e6:.2f} M tok/s ({base['peak_rss_mb']:.0f} MB) "
            f"| {enc_rate / base_rate:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        print(json.dumps(step(*sys.argv[2:6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 160], help="corpus sizes in MB")
    parser.add_argument("--write-readme", action="store_true", help="write the table into experiments/README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="data_scaling-") as work:
        result = run(args.sizes, Path(work))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    if args.write_readme:
        heading = (
            "## Data at scale (issue 13): prepare once, stream from disk, bounded memory\n\n"
            "`python experiments/benchmarks/data_scaling.py --sizes 10 40 160 --write-readme` "
            "(see its docstring for the steps)."
        )
        write_readme("data_scaling", table(result), heading)


if __name__ == "__main__":
    main()
