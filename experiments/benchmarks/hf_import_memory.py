"""Peak memory of importing a Hugging Face checkpoint, as the checkpoint grows: ``tfgraph.from_hf`` against loading
the whole state dict first (``safetensors.torch.load_file``, then ``load_state_dict``) and, where installed,
``transformers``' ``from_pretrained``.

Each (size, loader) runs in a fresh process that samples its anonymous resident memory (``RssAnon``: the weights in
tensors, not the memory-mapped file's pages the kernel may drop) every 2 ms; the figure is the peak above the
process's memory before loading, divided by the checkpoint's size. A loader that keeps one copy of the weights
stays near 1.0 at every size; one that holds the file's tensors beside the model's, near 2.0.

    python experiments/benchmarks/hf_import_memory.py                 # 3 sizes of a Llama-shaped model
    python experiments/benchmarks/hf_import_memory.py --write-readme
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = {  # name -> model overrides (llama's parts, untied)
    "small": {"d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "d_ff": 768},
    "medium": {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 2, "d_ff": 1536},
    "large": {"d_model": 768, "n_layers": 16, "n_heads": 12, "n_kv_heads": 4, "d_ff": 2304},
}
LOADERS = ("tfgraph.from_hf", "load_file, then copy", "transformers from_pretrained")

CHILD = r"""
import json, sys, threading, time
import torch
torch.set_num_threads(1)

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon")) * 1024

loader, directory = sys.argv[1], sys.argv[2]
import tfgraph, tfgraph.interop, tfgraph.models, safetensors.torch  # imports before the baseline
if loader == "transformers from_pretrained":
    import transformers
peak, done = [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)
start = anon()
thread = threading.Thread(target=sample, daemon=True)
thread.start()
if loader == "tfgraph.from_hf":
    model, _ = tfgraph.from_hf(directory)
elif loader == "load_file, then copy":
    # what a loader that reads everything first does: the file's tensors, then the model, then a copy
    state = safetensors.torch.load_file(directory + "/model.safetensors")
    cfg = json.load(open(directory + "/tfgraph_model.json"))
    model = tfgraph.models.build_model(cfg)
    tfgraph.interop.load_hf_weights(model, directory)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
peak[0] = max(peak[0], anon())
done[0] = True
thread.join()
print(json.dumps({"peak_above_start": peak[0] - start}))
"""


def checkpoint(name: str, root: Path) -> tuple[Path, int, int]:
    """A Llama-shaped checkpoint of ``name``'s size written by tfgraph.to_hf: (directory, bytes, parameters)."""
    import tfgraph
    from tfgraph.config import plain

    cfg = {**plain(tfgraph.compose(["model=llama"], config_name="show").model), **SIZES[name]}
    cfg.update(vocab_size=32000, max_len=2048, tie_embeddings=False)
    model = tfgraph.build_model(cfg)
    directory = tfgraph.to_hf(model, cfg, root / name)
    (directory / "tfgraph_model.json").write_text(json.dumps(cfg))
    size = (directory / "model.safetensors").stat().st_size
    return directory, size, model.num_parameters()


def measure(loader: str, directory: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, loader, str(directory)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_above_start"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    from common import environment, write_readme

    try:
        import transformers  # noqa: F401

        loaders = LOADERS
    except ImportError:
        loaders = LOADERS[:2]
    lines = [
        "| checkpoint | parameters | file MB | " + " | ".join(f"{name}: peak / file" for name in loaders) + " |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in loaders) + " |",
    ]
    with tempfile.TemporaryDirectory() as root:
        for name in SIZES:
            directory, size, params = checkpoint(name, Path(root))
            ratios = [measure(loader, directory) / size for loader in loaders]
            lines.append(
                f"| {name} | {params:,} | {size / 2**20:,.0f} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |"
            )
            print(lines[-1], flush=True)
            for file in directory.iterdir():
                file.unlink()
    env = environment()
    text = "\n".join(lines) + (
        f"\n\nPeak anonymous memory (RssAnon, sampled every 2 ms) above the process's own before loading, over the "
        f"checkpoint's size; float32 Llama-shaped checkpoints written by tfgraph.to_hf; {env['cpu']}, torch "
        f"{env['torch']}. Command: `python experiments/benchmarks/hf_import_memory.py --write-readme`."
    )
    print(text)
    if args.write_readme:
        write_readme(
            "hf_import_memory",
            text,
            "## Importing Hugging Face checkpoints: memory\n\n`tfgraph.from_hf` matches shapes first on `meta` "
            "tensors, then copies each tensor from the memory-mapped safetensors file into its parameter as it "
            "reads it: its peak tends to one copy of the weights as the checkpoint grows (the fixed cost of building "
            "the model, rotary tables among it, dominates the small one). Reading the file whole first holds no "
            "second copy either (safetensors memory-maps it too); transformers keeps the weights memory-mapped and "
            "allocates almost nothing. A zero-copy import of the tensors that need no reshaping is not done yet.\n",
        )


if __name__ == "__main__":
    main()
