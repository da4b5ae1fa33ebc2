"""Data at scale: time and peak memory of preparing, reopening and training on `data=text data.tokenizer=bpe`.

    python experiments/benchmarks/data_scaling.py --sizes 10 40 160 --compare-storage 40 --write-readme

For each size a corpus of that many MB of real text on this machine is built (Python's standard library sources,
then /usr/share/doc's plain-text files, repeated when they run out), and each step runs in a process of its own
so that its peak RSS is its own. Every step composes the same data config (``data=text data.tokenizer=bpe
data.vocab_size=8000 data.path=<corpus> data.cache_dir=<cache>``), as ``tfgraph-train`` would:

- ``prepare``: ``prepare_data()`` into an empty cache: the tokenizer trained from the stream and every split
  encoded (the first run's cost);
- ``reopen``: a new process's ``setup()`` of the same settings (the second run's cost);
- ``train``: ``tfgraph.train.train`` of ``model=gpt2_tiny`` for :data:`TRAIN_STEPS` steps on the prepared cache
  (found, not prepared again), batches of random windows drawn from the whole training split; its peak RSS, and
  that peak above the RSS when training starts (imports made, data mapped, model and optimizer built);
- ``encode``: the same preparation with the tokenizer given (``data.tokenizer_path``), so encoding alone, beside
- ``baseline``: the minimal streaming encoder with the same tokenizer: 20k-line batches, ``encode_batch``,
  uint16 ids appended to a file.

``encode`` and ``baseline`` run ``--repeats`` times, interleaved, and each keeps its faster run.

``--compare-storage MB`` (one of the sizes) also stores that size's training ids a second way in one process
(``storage``): the numpy memory map of :mod:`tfgraph.data.store` against Hugging Face ``datasets`` (Arrow rows of
256 tokens, as its ``run_clm`` example groups text), written, reopened and read in random windows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_readme  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "data_scaling.json"
MB = 10**6
DATA = ["data=text", "data.tokenizer=bpe", "data.vocab_size=8000"]
TRAIN_STEPS = 8
TRAIN = [  # a short run (its steps apart): no checkpoint, log, sample or test; one validation batch at the end
    "model=gpt2_tiny",
    "task=causal_lm",
    "data.batch_size=8",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "+trainer.enable_checkpointing=false",
    "callbacks=none",
    "~logger",
    "test=false",
    "sample.max_new_tokens=0",
]
WINDOW = 256  # tokens per window read in the storage comparison (data=text's block_size)
STORAGE_READS = 20_000


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


def rss_mb() -> float:
    """The RSS now (Linux: /proc/self/status)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def data_overrides(corpus: str | Path, cache: str | Path, tokenizer: str | Path | None = None) -> list[str]:
    """The data config every step composes (with ``tokenizer``: that tokenizer reused, encoding only)."""
    given = [f"data.tokenizer_path={tokenizer}"] if tokenizer else []
    return [*DATA, f"data.path={corpus}", f"data.cache_dir={cache}", *given]


def datamodule(corpus: str | Path, cache: str | Path, tokenizer: str | Path | None = None) -> Any:
    """The DataModule of :func:`data_overrides`, built as ``tfgraph-train`` builds it."""
    import tfgraph
    from tfgraph.config import plain
    from tfgraph.run_data import absolute_paths, build_datamodule

    return build_datamodule(absolute_paths(plain(tfgraph.compose(data_overrides(corpus, cache, tokenizer)).data)))


def baseline(corpus: str, out: Path, tokenizer: str) -> int:
    """The minimal streaming encoder: ``corpus`` in 20k-line batches, ``encode_batch``, uint16 ids appended to
    ``out``; the number of tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))  # a run's tokenizer.json is a file of the tokenizers library
    tokens = 0

    def flush(batch: list[str], file: Any) -> int:
        ids = np.concatenate([np.asarray(e.ids, np.uint16) for e in tok.encode_batch(batch)])
        ids.tofile(file)
        return len(ids)

    with open(corpus, encoding="utf-8") as lines, out.open("wb") as file:
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            if len(batch) == 20_000:
                tokens += flush(batch, file)
                batch = []
        if batch:
            tokens += flush(batch, file)
    return tokens


def __getattr__(name: str) -> Any:
    """``RssProbe``, made on first use: its base class imports Lightning, which the baseline's process must not."""
    if name != "RssProbe":
        raise AttributeError(name)
    from pytorch_lightning import Callback

    class RssProbe(Callback):
        """Writes to ``out`` (JSON) the RSS when training starts, the peak when it ends, and which windows of the
        training split the run's batches hold (the loader's own sampler, drawn again)."""

        def __init__(self, out: str) -> None:
            self.out, self.record = Path(out), {}

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            data = trainer.datamodule
            drawn = list(itertools.islice(data.train_dataloader().sampler, trainer.max_steps * data.batch_size))
            self.record = {
                "rss_start_mb": rss_mb(),
                "windows": len(data.datasets["train"]),
                "read": len(drawn),
                "lowest": min(drawn),
                "highest": max(drawn),
                "prepared_dir": str(data.prepared_dir),
            }

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.record["steps"] = trainer.global_step
            self.out.write_text(json.dumps({**self.record, "peak_rss_mb": peak_rss_mb()}))

    return RssProbe


def train_step(corpus: str, cache: str, steps: int = TRAIN_STEPS) -> dict:
    """A few training steps on the prepared cache of ``corpus``, in this process; refuses to prepare it again."""
    import tfgraph
    from tfgraph.train import train

    imported = rss_mb()
    probe = Path(cache) / "train_probe.json"
    prepared = {str(p) for p in (Path(cache) / "prepared").iterdir()}
    overrides = [
        *data_overrides(corpus, cache),
        *TRAIN,
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"paths.output_dir={Path(cache) / 'run'}",
        "+callbacks.rss._target_=data_scaling.RssProbe",
        f"+callbacks.rss.out={probe}",
    ]
    start = time.perf_counter()
    train(tfgraph.compose(overrides))
    record = json.loads(probe.read_text())
    if record["prepared_dir"] not in prepared:
        raise RuntimeError(f"training prepared {record['prepared_dir']} instead of opening one of {sorted(prepared)}")
    return {"seconds": time.perf_counter() - start, "rss_imports_mb": imported, **record}


def storage_step(cache: str, reads: int = STORAGE_READS) -> dict:
    """The training ids of the prepared ``cache`` stored again, in this process, as a numpy memory map (the
    store's) and as Hugging Face ``datasets`` Arrow rows of :data:`WINDOW` tokens: write, reopen, random reads
    (one window at a time as a DataLoader without batch fetching asks, and 32 at a time), size on disk."""
    import datasets
    import pyarrow as pa
    import torch

    from tfgraph.data import store

    datasets.disable_progress_bars()
    source = next(Path(cache).glob("prepared/*/train.ids.bin"))
    ids = store.open_array(source, np.uint16)
    rows = len(ids) // WINDOW
    work = Path(cache) / "storage"
    work.mkdir()
    chunk = 4096 * WINDOW  # tokens per write
    rng = np.random.default_rng(0)
    result: dict[str, dict[str, float]] = {}

    def timed(make: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        made = make()
        return made, time.perf_counter() - start

    def read_rate(get_one: Any, get_many: Any, count: int) -> tuple[float, float]:
        picks = rng.integers(0, count, reads)
        _, one = timed(lambda: [torch.from_numpy(np.asarray(get_one(int(i)), np.int64)) for i in picks])
        groups = picks[: len(picks) // 32 * 32].reshape(-1, 32)
        _, many = timed(lambda: [torch.from_numpy(np.asarray(get_many(g), np.int64)) for g in groups])
        return reads / one, groups.size / many

    def write_memmap() -> Path:
        out = store.ArrayWriter(work / "train.ids.bin", np.uint16)
        for at in range(0, len(ids), chunk):
            out.append(ids[at : at + chunk])
        out.close()
        return out.path

    path, write = timed(write_memmap)
    mapped, reopen = timed(lambda: store.open_array(path, np.uint16))
    one, many = read_rate(
        lambda s: mapped[s : s + WINDOW], lambda g: np.stack([mapped[s : s + WINDOW] for s in g]), len(ids) - WINDOW
    )
    result["numpy memmap"] = {"write_s": write, "reopen_s": reopen, "one_per_s": one, "batch_per_s": many}
    result["numpy memmap"]["bytes"] = path.stat().st_size

    def generate() -> Any:
        for at in range(0, rows * WINDOW, chunk):
            yield from (
                {"input_ids": row} for row in np.asarray(ids[at : min(at + chunk, rows * WINDOW)]).reshape(-1, WINDOW)
            )

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("uint16"))})
    written, write = timed(lambda: datasets.Dataset.from_generator(generate, features=features, cache_dir=str(work)))
    arrow = Path(written.cache_files[0]["filename"])
    table, reopen = timed(lambda: datasets.Dataset.from_file(str(arrow)).with_format("numpy"))
    one, many = read_rate(lambda r: table[r]["input_ids"], lambda g: table[g.tolist()]["input_ids"], rows)
    result["datasets Arrow"] = {"write_s": write, "reopen_s": reopen, "one_per_s": one, "batch_per_s": many}
    result["datasets Arrow"]["bytes"] = sum(Path(f["filename"]).stat().st_size for f in written.cache_files)

    def write_ipc() -> None:  # Arrow's own writer in record batches: the fastest way to the same file
        schema = pa.schema([("input_ids", pa.list_(pa.uint16()))])
        with pa.OSFile(str(work / "ipc.arrow"), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for at in range(0, rows * WINDOW, chunk):
                block = np.asarray(ids[at : min(at + chunk, rows * WINDOW)])
                offsets = pa.array(np.arange(0, len(block) + 1, WINDOW, dtype=np.int32))
                writer.write_batch(pa.record_batch([pa.ListArray.from_arrays(offsets, pa.array(block))], schema))

    _, result["datasets Arrow"]["ipc_write_s"] = timed(write_ipc)
    return {"tokens": int(len(ids)), "rows": rows, "reads": reads, "stores": result}


def step(kind: str, corpus: str, cache: str, tokenizer: str) -> dict:
    """One measured step, in this process (run by :func:`measure` in a fresh one)."""
    if kind == "train":
        return train_step(corpus, cache)
    if kind == "storage":
        return storage_step(cache)
    start = time.perf_counter()
    if kind == "baseline":
        tokens = baseline(corpus, Path(cache) / "baseline.bin", tokenizer)
        return {"seconds": time.perf_counter() - start, "tokens": tokens, "peak_rss_mb": peak_rss_mb()}
    dm = datamodule(corpus, cache, tokenizer if kind == "encode" else None)
    start = time.perf_counter()  # after the imports (torch, Lightning) and the config, which the baseline lacks
    if kind == "reopen":
        dm.setup()
    else:
        dm.prepare_data()
    seconds = time.perf_counter() - start
    folder, meta = dm.prepare_and_open()
    if kind == "prepare":  # the tokenizer file and its kind beside it, as a run dir holds them
        from tfgraph.data.tokenizers import load_tokenizer

        load_tokenizer(folder / "tokenizer.json").save(tokenizer)
    return {"seconds": seconds, "tokens": sum(meta["tokens"].values()), "peak_rss_mb": peak_rss_mb()}


def measure(kind: str, corpus: Path, cache: Path, tokenizer: Path) -> dict:
    command = [sys.executable, __file__, "--step", kind, str(corpus), str(cache), str(tokenizer)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: list[float], work: Path, repeats: int = 1, compare_storage: float | None = None) -> dict:
    """Every step at every size (``repeats`` runs of encode and baseline, interleaved, each kept at its faster
    one: other processes of a shared machine then slow both alike), the storage comparison at one size."""
    rows, storage = [], None
    for size in sizes:
        corpus = work / f"corpus_{size:g}mb.txt"
        built = build_corpus(corpus, int(size * MB))
        tokenizer = work / f"tokenizer_{size:g}.json"
        row: dict = {"mb": size, "corpus": built}
        steps = [("prepare", "a"), ("reopen", "a"), ("train", "a")]
        steps += [(kind, f"{kind[0]}{i}") for i in range(repeats) for kind in ("encode", "baseline")]
        if size == compare_storage:
            steps.append(("storage", "a"))
        for kind, cache in steps:
            (work / f"{cache}-{size:g}").mkdir(exist_ok=True)
            measured = measure(kind, corpus, work / f"{cache}-{size:g}", tokenizer)
            print(size, kind, measured, file=sys.stderr, flush=True)
            if kind == "storage":
                storage = {"mb": size, **measured}
            elif kind not in row or measured["seconds"] < row[kind]["seconds"]:
                row[kind] = measured
        row["prepared_bytes"] = sum(
            p.stat().st_size for p in (work / f"a-{size:g}" / "prepared").rglob("*") if p.is_file()
        )
        rows.append(row)
        corpus.unlink()
        for cache in {c for _, c in steps}:
            shutil.rmtree(work / f"{cache}-{size:g}", ignore_errors=True)
    return {"environment": environment(), "rows": rows, "storage": storage}


def table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"Measured on {env['cpu']} ({env['cpus']} cores), Python {env['python']}.",
        "",
        "Encode only and baseline: MB of text per second and peak RSS; the ratio is of text throughput (the baseline "
        "encodes each line apart, which makes more tokens of the same text). Train: peak RSS of "
        f"{TRAIN_STEPS} steps of gpt2_tiny on the prepared data, and that peak above the RSS when training started "
        "(data mapped, model built); the windows its batches read lie between the two shares of the split shown.",
        "",
        "| corpus | tokens | on disk | prepare (first run) | peak RSS | reopen | train: peak RSS (above start) | "
        "encode only | baseline | encode / baseline |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        prep, reopen, train, enc, base = (row[k] for k in ("prepare", "reopen", "train", "encode", "baseline"))
        enc_rate, base_rate = row["mb"] / enc["seconds"], row["mb"] / base["seconds"]
        spread = f"{train['lowest'] / train['windows']:.0%}-{train['highest'] / train['windows']:.0%}"
        lines.append(
            f"| {row['mb']:g} MB | {prep['tokens'] / 1e6:.1f} M | {row['prepared_bytes'] / 1e6:.0f} MB "
            f"| {prep['seconds']:.1f} s | {prep['peak_rss_mb']:.0f} MB "
            f"| {reopen['seconds']:.2f} s ({reopen['peak_rss_mb']:.0f} MB) "
            f"| {train['peak_rss_mb']:.0f} MB (+{train['peak_rss_mb'] - train['rss_start_mb']:.0f} MB; "
            f"{train['read']} of {train['windows']:,} windows, {spread}) "
            f"| {enc_rate:.2f} MB/s, {enc['tokens'] / enc['seconds'] / 1e6:.2f} M tok/s ({enc['peak_rss_mb']:.0f} MB) "
            f"| {base_rate:.2f} MB/s, {base['tokens'] / base['seconds'] / 1e6:.2f} M tok/s "
            f"({base['peak_rss_mb']:.0f} MB) | {enc_rate / base_rate:.2f}x |"
        )
    storage = result.get("storage")
    if storage:
        lines += [
            "",
            f"Storage, the {storage['mb']:g} MB corpus's {storage['tokens'] / 1e6:.1f} M training ids in one process "
            f"(windows of {WINDOW} tokens as int64 tensors, {storage['reads']:,} reads at random; the files are in "
            "the page cache, as a training run's become):",
            "",
            "| storage | write | reopen | read one window at a time | 32 at a time | on disk |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, kept in storage["stores"].items():
            write = f"{kept['write_s']:.2f} s"
            if "ipc_write_s" in kept:
                write += f" ({kept['ipc_write_s']:.2f} s with pyarrow's writer)"
            lines.append(
                f"| {name} | {write} | {kept['reopen_s'] * 1000:.1f} ms | {kept['one_per_s']:,.0f} /s "
                f"| {kept['batch_per_s']:,.0f} /s | {kept['bytes'] / 1e6:.1f} MB |"
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        print(json.dumps(step(*sys.argv[2:6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[10, 40, 160], help="corpus sizes in MB")
    parser.add_argument("--repeats", type=int, default=1, help="runs of encode and baseline, each kept at its fastest")
    parser.add_argument("--compare-storage", type=float, metavar="MB", help="compare storages at this size")
    parser.add_argument("--write-readme", action="store_true", help="write the table into experiments/README.md")
    args = parser.parse_args()
    if args.compare_storage is not None and args.compare_storage not in args.sizes:
        parser.error(f"--compare-storage {args.compare_storage:g} is none of the --sizes")
    with tempfile.TemporaryDirectory(prefix="data_scaling-") as work:
        result = run(args.sizes, Path(work), args.repeats, args.compare_storage)
    result["command"] = "python experiments/benchmarks/data_scaling.py " + " ".join(sys.argv[1:])
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    if args.write_readme:
        heading = (
            "## Data at scale (issue 13): prepare once, stream from disk, bounded memory\n\n"
            f"`{result['command']}` (see its docstring for the steps)."
        )
        write_readme("data_scaling", f"Command: `{result['command']}`\n\n{table(result)}", heading)


if __name__ == "__main__":
    main()
