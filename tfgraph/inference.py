"""Using a trained model: generate text (``tfgraph.generate`` and ``tfgraph-generate``) and look at its attention
(``tfgraph-attention``), from a checkpoint alone, a task or a model.

    import tfgraph
    tfgraph.generate("outputs/.../checkpoints/last.ckpt", "Romeo.", max_new_tokens=100, strategy="sample", seed=0)

:func:`generate_from_config` and :func:`attention_from_config` are the pure functions behind the commands.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from tfgraph import decoding
from tfgraph.attention_maps import attention_report
from tfgraph.config import plain
from tfgraph.data import DataError
from tfgraph.data.readers import read_utf8
from tfgraph.data.tokenizers import KINDS, Tokenizer, build_tokenizer
from tfgraph.decoding import Completion, generate_text
from tfgraph.decoding.options import COMMAND_OPTIONS, COUNT, STRATEGIES, DecodingOptions, Strategy
from tfgraph.decoding.text import token_defaults
from tfgraph.models import build_model
from tfgraph.registry import ConfigError, Problems, check_value, load_plugins, suggest
from tfgraph.tasks import CausalLM, Task, load_checkpoint, load_task, trust_options

GENERATIVE_TASKS = ("causal_lm", "seq2seq")
# the settings of tfgraph-attention that are a number, checked as the registry checks block arguments (the decoding
# keys of tfgraph-generate and their types are tfgraph.decoding's table: COMMAND_OPTIONS)
ATTENTION_TYPES: dict[str, Any] = {"top": COUNT, "seed": int}
DEVICES = "cpu, cuda, cuda:N, mps"


# ------------------------------------------------------------------------------------------------ the API


def generate(
    source: nn.Module | Task | str | Path,
    prompt: str | Sequence[str] | Tensor,
    *,
    tokenizer: Tokenizer | None = None,
    max_new_tokens: int = 64,
    strategy: Strategy = "greedy",
    stream: bool | Callable[[str], None] = False,
    trust_plugins: bool = False,
    **options: Any,
) -> str | list[str] | list[list[str]] | decoding.GenerateOutput:
    """Generate with a model, a task or a checkpoint: text in, text out (or token ids in, and out a
    :class:`~tfgraph.decoding.GenerateOutput` whose ``sequences`` are the new tokens, without the prompt).

    A ``causal_lm`` model continues a prompt (an empty one from ``<bos>``), and only the continuation is returned;
    a ``seq2seq`` model reads the prompt as its source and returns the output (an encoder-decoder decodes from
    ``<bos>``; a decoder-only one continues ``source <eos>``). Generation stops at ``<eos>``.

        tfgraph.generate(ckpt, "Romeo.", max_new_tokens=200, strategy="sample", top_p=0.9, seed=0)   # a str
        tfgraph.generate(ckpt, ["hello", "world"], strategy="beam", num_beams=4)                    # [str, str]
        tfgraph.generate(ckpt, "hello", strategy="beam", num_return_sequences=3)                    # [str] * 3
        tfgraph.generate(ckpt, "Romeo.", stream=True)     # prints the text as it comes (then a newline), returns it
        tfgraph.generate(model, input_ids, eos_token_id=3)  # a GenerateOutput, as tfgraph.decoding.generate's

    Args:
        source: a checkpoint path (the task, model and tokenizer are rebuilt from it), a ``causal_lm`` or
            ``seq2seq`` task, or a ``decoder_only`` / ``encoder_decoder`` model (with ``tokenizer`` for text).
        prompt: a text, a list of texts, or token ids ``[B, T]`` (decoder-only prompts left-padded, with an
            ``attention_mask`` among ``options``).
        tokenizer: the tokenizer of a bare model (a task's or checkpoint's own by default).
        max_new_tokens: the most tokens to generate per sequence. A causal LM given one prompt goes on past its
            context with a sliding window (:func:`tfgraph.decoding.generate_windowed`).
        strategy: ``"greedy"``, ``"sample"`` or ``"beam"``.
        stream: text only: ``True`` prints each piece of text to stdout as it is generated, and a newline after
            the last; a callable receives the pieces (one prompt, ``greedy`` or ``sample``, one sequence).
        trust_plugins: a checkpoint only: let it import the plugin modules its model config names (a checkpoint
            is data, never code; without this a checkpoint that names one is refused).
        **options: the other settings of :func:`tfgraph.decoding.generate`: ``use_cache``, ``temperature``,
            ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``num_beams``, ``length_penalty``,
            ``early_stopping``, ``num_return_sequences``, ``seed``, ``generator``, ``eos_token_id``, ...
            (stop, padding and start tokens default to the tokenizer's ``<eos>``, ``<pad>`` and ``<bos>``).

    Returns:
        For a text: its output, or with ``num_return_sequences`` n > 1 a list of n (beam search: best first).
        For a list of texts: a list of those. For token ids: a :class:`tfgraph.decoding.GenerateOutput`.

    Raises:
        tfgraph.ConfigError: no checkpoint at ``source``, or one that is not a readable tfgraph checkpoint or would
            run code (see :func:`tfgraph.tasks.load_checkpoint`).
        ValueError: a task or model that does not generate, text without a tokenizer, a setting that does not apply
            (see :func:`tfgraph.decoding.generate`).
    """
    model, tokenizer, settings = _generator(source, tokenizer, trust_plugins=trust_plugins)
    if isinstance(prompt, Tensor):
        if stream is not False:
            raise ValueError("stream is for text prompts; with token ids give a streamer= callback")
        defaults = {} if tokenizer is None else token_defaults(model, tokenizer)
        options = {**defaults, **options}
        return decoding.generate_windowed(
            model, prompt, max_new_tokens=max_new_tokens, strategy=strategy, context=settings["context"], **options
        )
    if tokenizer is None:
        raise ValueError("a text prompt needs a tokenizer: give tokenizer=, or a task or checkpoint (which have one)")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    write = _print_now if stream is True else stream or None
    completions = generate_text(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, strategy=strategy, stream=write, **settings, **options
    )
    if stream is True:
        _print_now("\n")  # the printed text ends its line
    texts = [[c.text for c in row] for row in completions]
    outputs = [row[0] for row in texts] if options.get("num_return_sequences", 1) == 1 else texts
    return outputs[0] if isinstance(prompt, str) else outputs


def _generator(
    source: nn.Module | Task | str | Path, tokenizer: Tokenizer | None, *, trust_plugins: bool = False
) -> tuple[nn.Module, Any, dict]:
    """The model, tokenizer and text settings (``prefix_lm``, ``context``) that ``source`` stands for."""
    if isinstance(source, (str, Path)):
        source = load_task(source, trust_plugins=trust_plugins)
    if isinstance(source, Task):
        if source.name not in GENERATIVE_TASKS:
            raise ValueError(
                f"a {source.name} task does not generate text; tasks that do: {', '.join(GENERATIVE_TASKS)}"
            )
        model = source.model
        settings = {
            "prefix_lm": source.name == "seq2seq" and model.topology == "decoder_only",
            "context": source.generation_context if isinstance(source, CausalLM) else None,
        }
        return model, tokenizer or source.tokenizer, settings
    if isinstance(source, nn.Module):
        return source, tokenizer, {"prefix_lm": False, "context": None}
    raise TypeError(f"generate from a checkpoint path, a task or a model, not a {type(source).__name__}")


def _print_now(text: str) -> None:
    print(text, end="", flush=True)


# ---------------------------------------------------------------------------------------- tfgraph-generate


def generate_from_config(cfg: DictConfig, out: TextIO | None = None) -> list[list[Completion]]:
    """Generate what a composed ``generate`` config asks for and write it to ``out`` (default stdout).

    One prompt with ``greedy`` or ``sample`` and one sequence streams: the text is written as it is generated (a
    causal LM's after its prompt). Otherwise, for each prompt (headed ``> prompt`` when there are several), its
    output, or its numbered sequences, with their scores for beam search.

    Returns:
        For each prompt, its completions.

    Raises:
        tfgraph.ConfigError: no ``ckpt_path`` or no checkpoint there, a checkpoint of a task that does not generate,
            an unknown ``strategy``, no prompt, a decoding setting that cannot apply (named by its key).
    """
    out = out or sys.stdout
    load_plugins(cfg.get("plugins"), "plugins")
    options = _decoding_options(cfg)  # every setting checked before the checkpoint is loaded
    prompts = _prompts(cfg)
    task = _load_for(cfg, generative=True)
    model, tokenizer, settings = _generator(task, None)
    continues = task.name == "causal_lm"
    streams = len(prompts) == 1 and cfg.strategy != "beam" and options.get("num_return_sequences", 1) == 1

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    head = prompts[0] if streams and continues else ""  # a causal LM's text follows its prompt

    def stream(piece: str) -> None:
        nonlocal head
        write(head + piece)
        head = ""

    try:
        completions = generate_text(
            model, tokenizer, prompts, stream=stream if streams else None, **settings, **options
        )
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError.at(_key_named_in(str(err)), str(err)) from err
    if streams:
        write(head + "\n")
        return completions
    for prompt, row in zip(prompts, completions, strict=True):
        if len(prompts) > 1:
            write(f"> {prompt}\n")
        for rank, completion in enumerate(row, start=1):
            text = prompt + completion.text if continues else completion.text
            if len(row) == 1 and completion.score is None:
                write(f"{text}\n")
            else:
                score = "" if completion.score is None else f"{completion.score:9.4f}  "
                write(f"{rank}. {score}{text}\n")
    return completions


def _prompts(cfg: DictConfig) -> list[str]:
    """The prompts of ``prompt`` (a text, or a list of them) or ``prompt_file`` (one a line), not both."""
    prompt, prompt_file = cfg.get("prompt"), cfg.get("prompt_file")
    if prompt is not None and prompt_file:
        raise ConfigError.at("prompt_file", "give either prompt or prompt_file, not both")
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise ConfigError.at("prompt_file", f"no such file: {path}")
        try:
            text = read_utf8(path)
        except DataError as err:  # the file, its line and the byte offset that is not UTF-8
            raise ConfigError.at("prompt_file", f"{err}: save the prompts as UTF-8") from None
        prompts = [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise ConfigError.at("prompt_file", f"{path} holds no prompt (one a line)")
        return prompts
    if isinstance(prompt, ListConfig):
        if not len(prompt):
            raise ConfigError.at("prompt", "an empty list of prompts")
        return [str(p) for p in prompt]
    return [str("" if prompt is None else prompt)]  # an empty prompt: a language model starts from <bos>


def _decoding_options(cfg: DictConfig) -> dict[str, Any]:
    """The decoding settings of a ``generate`` config that are set (not null), ``strategy`` among them, each checked
    before any model is loaded: its type, then its range and whether it applies to the strategy (the table of
    :mod:`tfgraph.decoding.options`, whose checks :func:`tfgraph.decoding.generate` makes too), and the device.

    Raises:
        tfgraph.ConfigError: every setting that cannot work, named by its key.
    """
    problems = Problems()
    strategy = cfg.get("strategy")
    if strategy not in STRATEGIES:
        known = f"expected one of {', '.join(STRATEGIES)}, got {strategy!r}{suggest(str(strategy), STRATEGIES)}"
        problems.add("strategy", known)
    types = {o.name: o.key for o in COMMAND_OPTIONS}
    _check_types(cfg, types, problems, required=[o.name for o in COMMAND_OPTIONS if o.required])
    problems.collect(_device, cfg)
    options = {
        o.name: plain(cfg[o.name])
        for o in COMMAND_OPTIONS
        if cfg.get(o.name) is not None and (strategy in o.applies or not o.quiet_elsewhere)
    }
    if not problems:
        for key, message in DecodingOptions(**options).problems():
            problems.add(key, message)
    problems.raise_if_any()
    return options


def _check_types(cfg: DictConfig, types: dict[str, Any], problems: Problems, *, required: Sequence[str] = ()) -> None:
    """Add to ``problems`` each key of ``types`` that is set (or ``required``) but not of its type there
    (``max_new_tokens=abc``: ``expected a positive integer, got 'abc'``)."""
    for key, hint in types.items():
        value = plain(cfg.get(key))
        wrong = check_value(value, hint) if value is not None or key in required else None
        if wrong:
            problems.add(key, wrong)


def _key_named_in(message: str) -> str:
    """The decoding key a message of :func:`tfgraph.decoding.generate` is about: the first one it names."""
    found = [(m.start(), o.name) for o in COMMAND_OPTIONS if (m := re.search(rf"\b{o.name}\b", message))]
    if found:
        return min(found)[1]
    return "prompt" if "prompt" in message else ""


# --------------------------------------------------------------------------------------- tfgraph-attention


def attention_from_config(cfg: DictConfig) -> str:
    """Draw the attention of the model of a composed ``attention`` config over ``cfg.text``: a PNG per layer in
    ``cfg.out_dir``, a panel per head (see :func:`tfgraph.attention_maps.attention_report`).

    The model is a checkpoint's (``ckpt_path``, any task, with its tokenizer), or a preset's with random weights
    (``model=<preset>``, seeded by ``seed``, with a ``tokenizer`` of that kind built from the text itself).

    Returns:
        The report: the files written, then for each layer and token the tokens it attends to most.

    Raises:
        tfgraph.ConfigError: neither or both of ``ckpt_path`` and ``model``, no checkpoint there, an empty text or one
            longer than the model's ``max_len``, a layer the model does not have.
    """
    load_plugins(cfg.get("plugins"), "plugins")
    problems = Problems()  # every setting checked before a model is loaded or built
    if not _given(cfg, "text"):
        problems.add("text", "give the text to look at: text='time flies like an arrow'")
    _check_types(cfg, ATTENTION_TYPES, problems, required=list(ATTENTION_TYPES))
    layers = problems.collect(_layers, cfg.layers)
    problems.collect(_device, cfg)
    problems.raise_if_any()
    text = str(cfg.text)
    bos_first = False
    if cfg.get("model") is not None:
        if _given(cfg, "ckpt_path"):
            raise ConfigError.at("model", "give either ckpt_path (a trained model) or model (random weights), not both")
        model, tokenizer = _random_model(cfg, text)
    else:
        task = _load_for(cfg, generative=False)
        model, tokenizer = task.model, task.tokenizer
        bos_first = task.name == "sequence_classification"  # its inputs start with <bos>, the pooled position
    ids = [tokenizer.bos_id] * bos_first + tokenizer.encode(text)
    if len(ids) > model.max_len:
        raise ConfigError.at("text", f"{len(ids)} tokens, more than the model's max_len ({model.max_len})")
    tokens = [tokenizer.decode([i], skip_special=False) for i in ids]
    device = next(model.parameters()).device
    try:
        return attention_report(
            model,
            tokens,
            torch.tensor(ids, device=device),
            cfg.out_dir,
            top=cfg.top,
            layers=layers,
        )
    except ValueError as err:
        raise ConfigError.at("layers", str(err)) from err


def _random_model(cfg: DictConfig, text: str) -> tuple[nn.Module, Tokenizer]:
    """A preset's model with seeded random weights, and a tokenizer built from the text."""
    if cfg.tokenizer not in KINDS:
        raise ConfigError.at("tokenizer", f"expected one of {', '.join(KINDS)}, got {cfg.tokenizer!r}")
    tokenizer = build_tokenizer(cfg.tokenizer, [text])
    vocab_size = cfg.model.vocab_size
    if tokenizer.vocab_size > vocab_size:
        message = f"{vocab_size} ids, fewer than the {cfg.tokenizer} tokenizer's {tokenizer.vocab_size}"
        raise ConfigError.at("model.vocab_size", message)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(_device(cfg))
    return model, tokenizer


def _layers(layers: Any) -> list[int] | None:
    """``all`` -> None; an index or a list of them -> the list."""
    if layers == "all":
        return None
    chosen = [layers] if isinstance(layers, int) else plain(layers)
    if not isinstance(chosen, list) or not chosen or not all(isinstance(i, int) for i in chosen):
        raise ConfigError.at("layers", f"expected all, a layer index or a list of them ([0,2]), got {layers!r}")
    return chosen


# ------------------------------------------------------------------------------------------------ shared


def _load_for(cfg: DictConfig, *, generative: bool) -> Task:
    """The task of ``cfg.ckpt_path`` on ``cfg.device``; ``generative``: only a task that generates text."""
    if not _given(cfg, "ckpt_path"):
        how = "tfgraph-generate ckpt_path=<run dir>/checkpoints/last.ckpt prompt=..."
        if not generative:
            how = "ckpt_path=<run dir>/checkpoints/last.ckpt, or model=<preset> for random weights"
        raise ConfigError.at("ckpt_path", f"which checkpoint? {how}")
    trust = trust_options(cfg)
    checkpoint = load_checkpoint(cfg.ckpt_path, **trust)
    name = checkpoint["tfgraph"]["task"]
    if generative and name not in GENERATIVE_TASKS:
        takes = " and ".join(GENERATIVE_TASKS)
        message = (
            f"{cfg.ckpt_path} is a {name} checkpoint, which does not generate text; tfgraph-generate takes {takes}"
        )
        raise ConfigError.at("ckpt_path", message)
    return load_task(checkpoint, **trust, where=str(cfg.ckpt_path)).to(_device(cfg)).eval()


def _given(cfg: DictConfig, key: str) -> bool:
    return not OmegaConf.is_missing(cfg, key) and bool(cfg.get(key))


def _device(cfg: DictConfig) -> torch.device:
    """``cfg.device``, or the GPU where there is one.

    Raises:
        tfgraph.ConfigError: a device PyTorch does not know (``cpux``) or this machine does not have (``cuda``
            without a GPU, ``cuda:3`` on a machine with two).
    """
    name = cfg.get("device")
    if name is None or name == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        device = None
    backend = getattr(torch, device.type, None) if device is not None else None  # torch.cpu, torch.cuda, torch.mps
    if device is None or not hasattr(backend, "device_count"):
        raise ConfigError.at("device", f"unknown device {name!r}: expected {DEVICES}")
    if device.type == "cpu":
        return device
    count = backend.device_count()
    if not count:
        how = "use device=cpu, or leave device unset (the GPU where there is one, else the CPU)"
        raise ConfigError.at("device", f"{name}, but PyTorch finds no {device.type} device here: {how}")
    if device.index is not None and device.index >= count:
        have = f"{device.type}:0" + (f" to {device.type}:{count - 1}" if count > 1 else "")
        raise ConfigError.at("device", f"{name}, but this machine has {count} {device.type} device(s): {have}")
    return device
