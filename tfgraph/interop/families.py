"""The Hugging Face architectures tfgraph maps: for each, its config both ways and where its checkpoint keeps each
location's tensors (the pieces themselves are declared by the blocks, see :mod:`tfgraph.interop.mapping`).

A family's config import (:attr:`Family.to_tfgraph`) is the one definition of what an HF config means: it picks the
tfgraph preset and the parts (``model=llama``, ``model/layer=parallel_neox``) and sets their values, refusing every
setting it cannot express with a message naming the key and what is supported. Export (:attr:`Family.to_hf`) writes
the HF config, and :func:`export_problems` imports that config again and compares: whatever of the tfgraph config
did not survive the round trip is a problem naming its config path, so an export never drops a setting silently.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tfgraph.blocks.position import scaling_problem
from tfgraph.interop.mapping import HF, Layers
from tfgraph.registry import ConfigError, Problems, lookup
from tfgraph.spec import PART_KINDS, SIZE_KEYS

# HF activation names -> tfgraph's (tfgraph.blocks.ffn.ACTIVATIONS); the first name of each is the one exported
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": None,  # a different approximation: refused
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
EXPORTED_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


class HFConfig:
    """An HF ``config.json`` being read: values with their defaults, and every setting refused, together."""

    def __init__(self, config: Mapping[str, Any], *, key: str, family: str) -> None:
        self.config = dict(config)
        self.key = key
        self.family = family
        self.problems = Problems()

    def get(self, name: str, default: Any = None) -> Any:
        value = self.config.get(name)
        return default if value is None else value

    def require(self, name: str) -> Any:
        value = self.config.get(name)
        if value is None:
            self.refuse(name, "is missing")
        return value

    def refuse(self, name: str, message: str) -> None:
        self.problems.add(self.key, f"config.json {name}: {message} ({self.family})")

    def expect(self, name: str, supported: Any, default: Any = None) -> None:
        """Refuse ``name`` unless it is ``supported`` (a value, or a tuple of values)."""
        value = self.get(name, default)
        allowed = supported if isinstance(supported, tuple) else (supported,)
        if value not in allowed:
            self.refuse(name, f"{value!r} is not supported; tfgraph maps {' or '.join(repr(a) for a in allowed)}")

    def activation(self, name: str, default: str) -> str:
        value = self.get(name, default)
        ours = ACTIVATIONS.get(value)
        if ours is None:
            supported = ", ".join(k for k, v in ACTIVATIONS.items() if v)
            self.refuse(name, f"activation {value!r} is not supported; supported: {supported}")
            return "gelu"
        return ours


@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture.

    Attributes:
        model_type: ``config.json``'s ``model_type``.
        architecture: the class ``to_hf`` names in ``architectures`` (what ``AutoModel...`` loads).
        topology: the tfgraph topology it maps to.
        prefix: the base model's prefix in the checkpoint (``transformer.`` for GPT-2), which a checkpoint of the
            bare base model (``GPT2Model``) lacks; added on import when missing.
        outer: the parts outside the layers (tfgraph module path -> HF tensors, from the checkpoint's root).
        stacks: ``encoder`` / ``decoder`` -> where their layers' nodes are kept.
        to_tfgraph: HF config -> ``(groups, values)``: the config groups to compose and the model values to set.
        to_hf: a tfgraph model config -> the HF config (checked by the round trip, :func:`export_problems`).
        ignored: checkpoint keys (regular expressions) that hold no weight of ours: buffers, tied copies, heads of
            other tasks; each with the reason.
        renames: older checkpoint key names (regex) -> the current one.
        export_prefix: whether the exported checkpoint keeps ``prefix`` (the architecture is the base model's
            head-wrapped class) or drops it (the architecture is the base model).
        not_expressed: tfgraph config keys the HF config does not hold (taken as they are on export).
    """

    model_type: str
    architecture: str
    topology: str
    prefix: str
    outer: Mapping[str, Any]
    stacks: Mapping[str, Layers]
    to_tfgraph: Callable[[HFConfig], tuple[list[str], dict[str, Any]]]
    to_hf: Callable[[Mapping[str, Any]], dict[str, Any]]
    ignored: Mapping[str, str] = field(default_factory=dict)
    renames: Mapping[str, str] = field(default_factory=dict)
    export_prefix: bool = True
    not_expressed: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ shared pieces


def _part(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name)
    return dict(value) if isinstance(value, Mapping) else {}


def _heads(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, head_dim)`` of a tfgraph model config."""
    n_heads = cfg["n_heads"]
    return n_heads, cfg.get("n_kv_heads") or n_heads, cfg.get("head_dim") or cfg["d_model"] // n_heads


def _rope_in(hf: HFConfig, *, fraction_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The rope part of an HF config: ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling``."""
    params = dict(hf.get("rope_parameters", {}))
    base = params.pop("rope_theta", None) or hf.get("rope_theta") or hf.get("rotary_emb_base") or 10000.0
    fraction = params.pop("partial_rotary_factor", None)
    for key in fraction_keys:
        fraction = fraction or hf.get(key)
    scaling = params if params.get("rope_type", params.get("type", "default")) != "default" else None
    legacy = hf.get("rope_scaling")
    if scaling is None and legacy and legacy.get("rope_type", legacy.get("type")) != "default":
        scaling = dict(legacy)
    if scaling is not None:
        scaling.pop("type", None) if "rope_type" in scaling else None
        problem = scaling_problem(scaling)
        if problem:
            hf.refuse("rope_parameters", problem)
            scaling = None
    position: dict[str, Any] = {"block": "rope", "base": float(base), "scaling": scaling}
    if fraction is not None:
        position["fraction"] = float(fraction)
    return position


def _rope_out(position: Mapping[str, Any], *, with_fraction: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(position.get("base", 10000.0))}
    scaling = position.get("scaling")
    if scaling:
        params.update({k: v for k, v in scaling.items() if k != "type"})
        params.setdefault("rope_type", scaling.get("type"))
    if with_fraction:
        params["partial_rotary_factor"] = float(position.get("fraction", 1.0))
    return {"rope_parameters": params, "rope_theta": params["rope_theta"]}


# the sizes that Llama's, GPT-NeoX's and BERT's configs name alike: tfgraph key -> config.json key
HF_SIZES = {
    "d_model": "hidden_size",
    "n_heads": "num_attention_heads",
    "n_layers": "num_hidden_layers",
    "d_ff": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_len": "max_position_embeddings",
}


def _sizes_in(hf: HFConfig, names: Mapping[str, str] = HF_SIZES) -> dict[str, Any]:
    """The model sizes of an HF config, each required (``names``: tfgraph key -> config.json key)."""
    return {ours: hf.require(theirs) for ours, theirs in names.items()}


def _sizes_out(cfg: Mapping[str, Any], names: Mapping[str, str] = HF_SIZES) -> dict[str, Any]:
    """The model sizes of a tfgraph model config under their HF names (``names`` as for :func:`_sizes_in`)."""
    return {theirs: cfg[ours] for ours, theirs in names.items()}


def _exported_activation(ffn: Mapping[str, Any], default: str) -> str:
    """The HF name of an ffn part's activation (``?``, which no HF config holds, for one HF has no name for)."""
    return EXPORTED_ACTIVATIONS.get(ffn.get("activation", default), "?")


def _tied_keys(prefixless: str) -> dict[str, str]:
    return {prefixless: "the head's weight, tied to the embedding (tie_word_embeddings)"}


# ------------------------------------------------------------------------------------------------------ GPT-2


GPT2_SIZES = {
    "d_model": "n_embd",
    "n_heads": "n_head",
    "n_layers": "n_layer",
    "vocab_size": "vocab_size",
    "max_len": "n_positions",
}


def _gpt2_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    hf.expect("scale_attn_weights", True, True)
    hf.expect("scale_attn_by_inverse_layer_idx", False, False)
    hf.expect("add_cross_attention", False, False)
    sizes = _sizes_in(hf, GPT2_SIZES)
    return ["model=gpt2"], {
        **sizes,
        "d_ff": hf.get("n_inner") or 4 * (sizes["d_model"] or 0),
        "dropout": float(hf.get("resid_pdrop", 0.1)),
        "norm": {"block": "layernorm", "eps": float(hf.get("layer_norm_epsilon", 1e-5))},
        "ffn": {"block": "mlp", "activation": hf.activation("activation_function", "gelu_new")},
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
    }


def _gpt2_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    dropout = float(cfg.get("dropout", 0.0))
    return {
        **_sizes_out(cfg, GPT2_SIZES),
        "n_inner": cfg["d_ff"],
        "activation_function": _exported_activation(_part(cfg, "ffn"), "gelu"),
        "layer_norm_epsilon": float(_part(cfg, "norm").get("eps", 1e-5)),
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", True)),
    }


GPT2 = Family(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    topology="decoder_only",
    prefix="transformer",
    outer={
        "embedding": "transformer.wte",
        "decoder.position": "transformer.wpe",
        "decoder.final_norm": "transformer.ln_f",
        "head": "lm_head",
    },
    stacks={
        "decoder": Layers(
            "transformer.h.{i}",
            {
                "norm1": "ln_1",
                "attn": (HF("attn.c_attn", ("q", "k", "v"), conv1d=True), HF("attn.c_proj", ("o",), conv1d=True)),
                "norm2": "ln_2",
                "ffn": (HF("mlp.c_fc", ("up",), conv1d=True), HF("mlp.c_proj", ("down",), conv1d=True)),
            },
        )
    },
    to_tfgraph=_gpt2_in,
    to_hf=_gpt2_out,
    ignored={r"transformer\.h\.\d+\.attn\.(masked_)?bias": "the causal-mask buffers of older checkpoints"},
)


# ------------------------------------------------------------------------------------ Llama, Mistral and Qwen2

LLAMA_LAYERS = Layers(
    "model.layers.{i}",
    {
        "norm1": "input_layernorm",
        "attn": {
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "q_norm": "self_attn.q_norm",
            "k_norm": "self_attn.k_norm",
        },
        "norm2": "post_attention_layernorm",
        "ffn": {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
    },
)
LLAMA_OUTER = {"embedding": "model.embed_tokens", "decoder.final_norm": "model.norm", "head": "lm_head"}
ROTARY_BUFFERS = {r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq": "rotary buffers of older checkpoints"}


def _llama_like_in(hf: HFConfig, attention: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    sizes = _sizes_in(hf)
    d_model, n_heads = sizes["d_model"], sizes["n_heads"]
    head_dim = hf.get("head_dim")
    if d_model and n_heads and head_dim == d_model // n_heads:
        head_dim = None
    mlp_bias = bool(hf.get("mlp_bias", False))
    return ["model=llama"], {
        **sizes,
        "n_kv_heads": hf.get("num_key_value_heads", n_heads),
        "head_dim": head_dim,
        "dropout": float(hf.get("attention_dropout", 0.0)),
        "norm": {"block": "rmsnorm", "eps": float(hf.get("rms_norm_eps", 1e-6))},
        "ffn": {"block": "gated", "activation": hf.activation("hidden_act", "silu"), "bias": mlp_bias},
        "attention": attention,
        "position": _rope_in(hf),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def _llama_like_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    _, n_kv, head_dim = _heads(cfg)
    ffn, norm = _part(cfg, "ffn"), _part(cfg, "norm")
    return {
        **_sizes_out(cfg),
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "attention_dropout": float(cfg.get("dropout", 0.0)),
        "rms_norm_eps": float(norm.get("eps", 1e-6)),
        "hidden_act": _exported_activation(ffn, "silu"),
        "mlp_bias": bool(ffn.get("bias", False)),
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", False)),
        **_rope_out(_part(cfg, "position")),
    }


def _llama_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    return _llama_like_in(hf, {"block": "multihead", "bias": bool(hf.get("attention_bias", False))})


def _llama_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_llama_like_out(cfg), "attention_bias": bool(_part(cfg, "attention").get("bias", True))}


def _mistral_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    window = hf.get("sliding_window")
    attention = {"block": "multihead", "bias": False}
    if window is not None:
        attention = {"block": "sliding_window", "bias": False, "window": int(window)}
    return _llama_like_in(hf, attention)


def _mistral_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    attention = _part(cfg, "attention")
    window = attention.get("window", 4096) if attention.get("block") == "sliding_window" else None
    return {**_llama_like_out(cfg), "sliding_window": window}


def _qwen_in(hf: HFConfig, attention: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Qwen2's and Qwen3's config: Llama's, with every layer attending in full (sliding-window layers refused)."""
    hf.expect("use_sliding_window", False, False)
    layer_types = hf.get("layer_types", [])
    if any(t != "full_attention" for t in layer_types):
        hf.refuse("layer_types", f"only full_attention layers are supported, got {sorted(set(layer_types))}")
    return _llama_like_in(hf, attention)


def _qwen2_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    return _qwen_in(hf, {"block": "multihead", "qkv_bias": True, "out_bias": False})


def _qwen2_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_llama_like_out(cfg), "use_sliding_window": False, "layer_types": ["full_attention"] * cfg["n_layers"]}


def _qwen3_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    attention = {
        "block": "multihead",
        "bias": bool(hf.get("attention_bias", False)),
        "qk_norm": True,  # RMS-normalised queries and keys per head, before rotary
        "qk_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
    }
    return _qwen_in(hf, attention)


def _qwen3_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**_qwen2_out(cfg), "attention_bias": bool(_part(cfg, "attention").get("bias", True))}


def _llama_family(model_type: str, architecture: str, to_tfgraph: Callable, to_hf: Callable) -> Family:
    return Family(
        model_type=model_type,
        architecture=architecture,
        topology="decoder_only",
        prefix="model",
        outer=LLAMA_OUTER,
        stacks={"decoder": LLAMA_LAYERS},
        to_tfgraph=to_tfgraph,
        to_hf=to_hf,
        ignored=ROTARY_BUFFERS,
    )


LLAMA = _llama_family("llama", "LlamaForCausalLM", _llama_in, _llama_out)
MISTRAL = _llama_family("mistral", "MistralForCausalLM", _mistral_in, _mistral_out)
QWEN2 = _llama_family("qwen2", "Qwen2ForCausalLM", _qwen2_in, _qwen2_out)
QWEN3 = _llama_family("qwen3", "Qwen3ForCausalLM", _qwen3_in, _qwen3_out)


# -------------------------------------------------------------------------------------------- GPT-NeoX, Pythia


def _neox_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    layer = "parallel_neox" if hf.get("use_parallel_residual", True) else "prenorm"
    bias = bool(hf.get("attention_bias", True))
    position = _rope_in(hf, fraction_keys=("rotary_pct",))
    d_model, n_heads = hf.get("hidden_size", 0), hf.get("num_attention_heads", 1)
    rotated = int(d_model // n_heads * position.get("fraction", 1.0))
    if rotated % 2:
        hf.refuse(
            "rope_parameters",
            f"partial_rotary_factor {position['fraction']} rotates {rotated} of each head's {d_model // n_heads} "
            "dimensions, an odd number; tfgraph rotates dimensions in pairs",
        )
    return ["model=gpt2", f"model/layer={layer}"], {
        **_sizes_in(hf),
        "dropout": float(hf.get("hidden_dropout", 0.0)),
        "attention": {"block": "multihead", "bias": bias},
        "position": position,
        "norm": {"block": "layernorm", "eps": float(hf.get("layer_norm_eps", 1e-5))},
        "ffn": {"block": "mlp", "activation": hf.activation("hidden_act", "gelu")},
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def _neox_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    nodes = _part(_part(cfg, "layer"), "nodes")
    return {
        **_sizes_out(cfg),
        "hidden_dropout": float(cfg.get("dropout", 0.0)),
        "attention_dropout": float(cfg.get("dropout", 0.0)),
        "attention_bias": bool(_part(cfg, "attention").get("bias", True)),
        "layer_norm_eps": float(_part(cfg, "norm").get("eps", 1e-5)),
        "hidden_act": _exported_activation(_part(cfg, "ffn"), "gelu"),
        "use_parallel_residual": "res1" not in nodes,  # the parallel graph adds both branches at once
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", False)),
        **_rope_out(_part(cfg, "position"), with_fraction=True),
    }


NEOX = Family(
    model_type="gpt_neox",
    architecture="GPTNeoXForCausalLM",
    topology="decoder_only",
    prefix="gpt_neox",
    outer={"embedding": "gpt_neox.embed_in", "decoder.final_norm": "gpt_neox.final_layer_norm", "head": "lm_head"},
    stacks={
        "decoder": Layers(
            "gpt_neox.layers.{i}",
            {
                "norm1": "input_layernorm",
                "norm2": "post_attention_layernorm",
                "attn": (
                    HF("attention.query_key_value", ("q", "k", "v"), per_head=True),
                    HF("attention.dense", ("o",)),
                ),
                "ffn": {"up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"},
            },
        )
    },
    to_tfgraph=_neox_in,
    to_hf=_neox_out,
    ignored={
        r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)": "buffers of older checkpoints"
    },
    renames={r"embed_out\.(.*)": r"lm_head.\1"},
)


# ------------------------------------------------------------------------------------------------------- BERT


def _bert_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    hf.expect("position_embedding_type", "absolute", "absolute")
    hf.expect("is_decoder", False, False)
    hf.expect("add_cross_attention", False, False)
    return ["model=bert"], {
        **_sizes_in(hf),
        "token_types": hf.get("type_vocab_size", 2),
        "dropout": float(hf.get("hidden_dropout_prob", 0.1)),
        "norm": {"block": "layernorm", "eps": float(hf.get("layer_norm_eps", 1e-12))},
        "ffn": {"block": "mlp", "activation": hf.activation("hidden_act", "gelu")},
        "attention": {"block": "multihead"},
    }


def _bert_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    dropout = float(cfg.get("dropout", 0.0))
    return {
        **_sizes_out(cfg),
        "type_vocab_size": cfg.get("token_types", 0),
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "layer_norm_eps": float(_part(cfg, "norm").get("eps", 1e-5)),
        "hidden_act": _exported_activation(_part(cfg, "ffn"), "gelu"),
        "position_embedding_type": "absolute",
    }


BERT = Family(
    model_type="bert",
    architecture="BertModel",
    topology="encoder_only",
    prefix="bert",
    outer={
        "embedding": "bert.embeddings.word_embeddings",
        "token_type": "bert.embeddings.token_type_embeddings",
        "encoder.position": "bert.embeddings.position_embeddings",
        "encoder.embed_norm": "bert.embeddings.LayerNorm",
    },
    stacks={
        "encoder": Layers(
            "bert.encoder.layer.{i}",
            {
                "attn": {
                    "q": "attention.self.query",
                    "k": "attention.self.key",
                    "v": "attention.self.value",
                    "o": "attention.output.dense",
                },
                "norm1": "attention.output.LayerNorm",
                "ffn": {"up": "intermediate.dense", "down": "output.dense"},
                "out": "output.LayerNorm",
            },
        )
    },
    to_tfgraph=_bert_in,
    to_hf=_bert_out,
    ignored={
        r"bert\.embeddings\.position_ids": "a buffer of position indices",
        r"bert\.pooler\..*": "the pooler (the sequence_classification task adds its own head)",
        r"cls\..*": "the pretraining heads (the masked_lm task adds its own head)",
    },
    export_prefix=False,
)


# --------------------------------------------------------------------------------------------------------- T5


def _t5_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    proj = str(hf.get("feed_forward_proj", "relu"))
    gated = proj.startswith("gated-")
    act = proj.removeprefix("gated-")
    act = "gelu_new" if proj == "gated-gelu" else act  # transformers' own special case
    activation = ACTIVATIONS.get(act)
    if activation is None or len(proj.split("-")) > 2:
        hf.refuse(
            "feed_forward_proj", f"{proj!r} is not supported; supported: relu, gated-gelu, gated-relu, gated-silu"
        )
        activation = "relu"
    dropout = float(hf.get("dropout_rate", 0.1))
    d_model, n_heads, d_kv = hf.require("d_model"), hf.require("num_heads"), hf.require("d_kv")
    tied = bool(hf.get("tie_word_embeddings", True))
    # T5 v1.0 scales the decoder's output by d_model^-0.5 before its tied head, v1.1 does not; transformers 5 says
    # so in scale_decoder_outputs (and ties the head always), older configs only by tie_word_embeddings
    rescale = bool(hf.get("scale_decoder_outputs", tied))
    return ["model=t5"], {
        "d_model": d_model,
        "n_heads": n_heads,
        "head_dim": None if d_model and n_heads and d_kv == d_model // n_heads else d_kv,
        "n_layers": hf.require("num_layers"),
        "n_decoder_layers": hf.get("num_decoder_layers", hf.get("num_layers")),
        "d_ff": hf.require("d_ff"),
        "vocab_size": hf.require("vocab_size"),
        "max_len": hf.get("n_positions", 512),
        "dropout": dropout,
        "norm": {"block": "rmsnorm", "eps": float(hf.get("layer_norm_epsilon", 1e-6))},
        "ffn": {
            "block": "gated" if gated else "mlp",
            "activation": activation,
            "bias": False,
            "activation_dropout": dropout,
        },
        "attention": {"block": "multihead", "bias": False, "softmax_scale": 1.0},
        "cross_attention": {"block": "cross", "bias": False, "softmax_scale": 1.0},
        "position": {
            "block": "t5_bias",
            "num_buckets": hf.get("relative_attention_num_buckets", 32),
            "max_distance": hf.get("relative_attention_max_distance", 128),
        },
        "tie_embeddings": tied,
        "head": {"block": "lm_head", "rescale": rescale},
    }


def _t5_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    ffn = _part(cfg, "ffn")
    activation = _exported_activation(ffn, "relu")
    if ffn.get("block") == "gated":
        proj = "gated-gelu" if activation == "gelu_new" else f"gated-{activation}"
    else:
        proj = activation
    position = _part(cfg, "position")
    n_heads, _, head_dim = _heads(cfg)
    return {
        "d_model": cfg["d_model"],
        "num_heads": n_heads,
        "d_kv": head_dim,
        "num_layers": cfg["n_layers"],
        "num_decoder_layers": cfg.get("n_decoder_layers") or cfg["n_layers"],
        "d_ff": cfg["d_ff"],
        "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["max_len"],
        "dropout_rate": float(cfg.get("dropout", 0.0)),
        "layer_norm_epsilon": float(_part(cfg, "norm").get("eps", 1e-6)),
        "feed_forward_proj": proj,
        "relative_attention_num_buckets": position.get("num_buckets", 32),
        "relative_attention_max_distance": position.get("max_distance", 128),
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", True)),
        "scale_decoder_outputs": bool(_part(cfg, "head").get("rescale", False)),
        "is_encoder_decoder": True,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
    }


def _t5_ffn(where: str) -> Callable[[Any], Mapping[str, str]]:
    def spec(block: Any) -> Mapping[str, str]:
        if "gate_up" in getattr(type(block), "hf_layout", {}):
            return {"gate": f"{where}.wi_0", "up": f"{where}.wi_1", "down": f"{where}.wo"}
        return {"up": f"{where}.wi", "down": f"{where}.wo"}

    return spec


def _t5_attention(where: str) -> dict[str, str]:
    return {piece: f"{where}.{piece}" for piece in ("q", "k", "v", "o")}


T5 = Family(
    model_type="t5",
    architecture="T5ForConditionalGeneration",
    topology="encoder_decoder",
    prefix="",
    outer={
        "embedding": "shared",
        "encoder.position": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
        "decoder.position": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias",
        "encoder.final_norm": "encoder.final_layer_norm",
        "decoder.final_norm": "decoder.final_layer_norm",
        "head": "lm_head",
    },
    stacks={
        "encoder": Layers(
            "encoder.block.{i}",
            {
                "norm1": "layer.0.layer_norm",
                "attn": _t5_attention("layer.0.SelfAttention"),
                "norm2": "layer.1.layer_norm",
                "ffn": _t5_ffn("layer.1.DenseReluDense"),
            },
        ),
        "decoder": Layers(
            "decoder.block.{i}",
            {
                "norm1": "layer.0.layer_norm",
                "attn": _t5_attention("layer.0.SelfAttention"),
                "norm2": "layer.1.layer_norm",
                "cross": _t5_attention("layer.1.EncDecAttention"),
                "norm3": "layer.2.layer_norm",
                "ffn": _t5_ffn("layer.2.DenseReluDense"),
            },
        ),
    },
    to_tfgraph=_t5_in,
    to_hf=_t5_out,
    ignored={r"(encoder|decoder)\.embed_tokens\.weight": "copies of the shared embedding"},
)


# ------------------------------------------------------------------------------------------------------- BART


def _bart_in(hf: HFConfig) -> tuple[list[str], dict[str, Any]]:
    for ours, theirs in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if hf.get(ours) != hf.get(theirs):
            hf.refuse(theirs, f"{hf.get(theirs)} differs from {ours}={hf.get(ours)}; tfgraph's stacks share sizes")
    hf.expect("normalize_before", False, False)
    hf.expect("add_final_layer_norm", False, False)
    hf.expect("normalize_embedding", True, True)
    return ["model=transformer"], {
        "d_model": hf.require("d_model"),
        "n_heads": hf.require("encoder_attention_heads"),
        "n_layers": hf.require("encoder_layers"),
        "n_decoder_layers": hf.require("decoder_layers"),
        "d_ff": hf.require("encoder_ffn_dim"),
        "vocab_size": hf.require("vocab_size"),
        "max_len": hf.require("max_position_embeddings"),
        "dropout": float(hf.get("dropout", 0.1)),
        "embedding": {"block": "token", "scale": bool(hf.get("scale_embedding", False))},
        "position": {"block": "learned"},
        "norm": {"block": "layernorm", "eps": 1e-5},
        "ffn": {
            "block": "mlp",
            "activation": hf.activation("activation_function", "gelu"),
            "activation_dropout": float(hf.get("activation_dropout", 0.0)),
        },
        "attention": {"block": "multihead"},
        "cross_attention": {"block": "cross"},
        "embed_norm": True,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "head": {"block": "lm_head", "bias": True},
    }


def _bart_out(cfg: Mapping[str, Any]) -> dict[str, Any]:
    ffn = _part(cfg, "ffn")
    return {
        "d_model": cfg["d_model"],
        "encoder_attention_heads": cfg["n_heads"],
        "decoder_attention_heads": cfg["n_heads"],
        "encoder_layers": cfg["n_layers"],
        "decoder_layers": cfg.get("n_decoder_layers") or cfg["n_layers"],
        "encoder_ffn_dim": cfg["d_ff"],
        "decoder_ffn_dim": cfg["d_ff"],
        "vocab_size": cfg["vocab_size"],
        "max_position_embeddings": cfg["max_len"],
        "dropout": float(cfg.get("dropout", 0.0)),
        "attention_dropout": float(cfg.get("dropout", 0.0)),
        "activation_dropout": float(ffn.get("activation_dropout", 0.0)),
        "activation_function": _exported_activation(ffn, "gelu"),
        "scale_embedding": bool(_part(cfg, "embedding").get("scale", False)),
        "tie_word_embeddings": bool(cfg.get("tie_embeddings", True)),
        "is_encoder_decoder": True,
    }


def _bart_attention(where: str) -> dict[str, str]:
    return {"q": f"{where}.q_proj", "k": f"{where}.k_proj", "v": f"{where}.v_proj", "o": f"{where}.out_proj"}


BART = Family(
    model_type="bart",
    architecture="BartForConditionalGeneration",
    topology="encoder_decoder",
    prefix="model",
    outer={
        "embedding": "model.shared",
        "encoder.position": HF("model.encoder.embed_positions", skip_rows=2),
        "decoder.position": HF("model.decoder.embed_positions", skip_rows=2),
        "encoder.embed_norm": "model.encoder.layernorm_embedding",
        "decoder.embed_norm": "model.decoder.layernorm_embedding",
        "head": HF("lm_head", bias_key="final_logits_bias"),
    },
    stacks={
        "encoder": Layers(
            "model.encoder.layers.{i}",
            {
                "attn": _bart_attention("self_attn"),
                "norm1": "self_attn_layer_norm",
                "ffn": {"up": "fc1", "down": "fc2"},
                "out": "final_layer_norm",
            },
        ),
        "decoder": Layers(
            "model.decoder.layers.{i}",
            {
                "attn": _bart_attention("self_attn"),
                "norm1": "self_attn_layer_norm",
                "cross": _bart_attention("encoder_attn"),
                "norm2": "encoder_attn_layer_norm",
                "ffn": {"up": "fc1", "down": "fc2"},
                "out": "final_layer_norm",
            },
        ),
    },
    to_tfgraph=_bart_in,
    to_hf=_bart_out,
    ignored={r"model\.(encoder|decoder)\.embed_tokens\.weight": "copies of the shared embedding"},
)

FAMILIES: dict[str, Family] = {f.model_type: f for f in (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, NEOX, BERT, T5, BART)}


# ------------------------------------------------------------------------------------------- config both ways


@lru_cache(maxsize=32)
def _composed(groups: tuple[str, ...]) -> dict[str, Any]:
    from tfgraph.config import compose, plain

    return plain(compose(list(groups), config_name="show").model)


def model_config(family: Family, hf_config: Mapping[str, Any], *, key: str) -> dict[str, Any]:
    """The tfgraph model config of an HF config (every setting it cannot express refused together)."""
    hf = HFConfig(hf_config, key=key, family=f"{family.model_type}, {family.architecture}")
    groups, values = family.to_tfgraph(hf)
    hf.problems.raise_if_any()
    cfg = dict(_composed(tuple(groups)))
    cfg.update(values)
    return cfg


def hf_config(family: Family, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The HF config of a tfgraph model config (unchecked: see :func:`export_problems`)."""
    return {
        "model_type": family.model_type,
        "architectures": [family.architecture],
        **family.to_hf(cfg),
    }


def export_problems(family: Family, cfg: Mapping[str, Any], *, path: str = "model") -> list[tuple[str, str]]:
    """What of the tfgraph config ``cfg`` the family's HF config does not express: ``(config path, message)`` each.

    The HF config :func:`hf_config` writes is imported again (:func:`model_config`) and both tfgraph configs are
    compared part by part, each part with its block's defaults filled in; dropout rates and ``init_std`` do not
    change the weights' meaning and are not compared.
    """
    if cfg.get("topology") != family.topology:
        return [(f"{path}.topology", f"{family.model_type} is {family.topology}, this model {cfg.get('topology')}")]
    try:
        written = hf_config(family, cfg)
        again = model_config(family, written, key="to_hf")
    except ConfigError as err:
        return [(f"{path}", f"{family.model_type}: {message}") for _, message in err.problems]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        return [(path, f"{family.model_type} cannot express this config ({type(err).__name__}: {err})")]
    ours, theirs = normalized(cfg), normalized(again)
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        if key in family.not_expressed:
            continue
        if ours.get(key) != theirs.get(key):
            problems.append(
                (f"{path}.{key}", f"{_show(ours.get(key))} here; {family.architecture} holds {_show(theirs.get(key))}")
            )
    return problems


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 160 else text[:157] + "..."


IGNORED_KEYS = ("init_std", "plugins", "dropout")  # not part of what the weights mean
IGNORED_ARGUMENTS = ("dropout", "activation_dropout")


def normalized(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A model config in one canonical form: parts with their blocks' defaults filled in, sizes resolved."""
    topology = cfg.get("topology")
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in IGNORED_KEYS or key in PART_KINDS:
            continue
        out[key] = value
    n_heads = cfg.get("n_heads")
    out["n_kv_heads"] = cfg.get("n_kv_heads") or n_heads
    if cfg.get("head_dim") is None and n_heads and cfg.get("d_model"):
        out["head_dim"] = cfg["d_model"] // n_heads
    if topology == "encoder_decoder":
        out["n_decoder_layers"] = cfg.get("n_decoder_layers") or cfg.get("n_layers")
    else:
        out.pop("n_decoder_layers", None)
    if topology == "encoder_only":
        out.pop("tie_embeddings", None)
    out.setdefault("token_types", 0)
    out.setdefault("embed_norm", False)
    out.setdefault("pattern", None)
    for name, kind in PART_KINDS.items():
        if name == "cross_attention" and topology != "encoder_decoder":
            continue
        if name == "head" and topology == "encoder_only":
            continue
        out[name] = _normalized_part(kind, cfg.get(name))
    layer = cfg.get("layer")
    if isinstance(layer, Mapping):
        keep = ("nodes", "cross_nodes") if topology == "encoder_decoder" else ("nodes",)
        out["layer"] = {k: layer.get(k) for k in keep} | {"final_norm": layer.get("final_norm", True)}
    return out


def _normalized_part(kind: str, value: Any) -> Any:
    if not isinstance(value, Mapping) or "block" not in value:
        return value
    cls = lookup(kind, value["block"], "", Problems())
    if cls is None:
        return dict(value)
    defaults = {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty and name not in SIZE_KEYS and name not in IGNORED_ARGUMENTS
    }
    given = {k: v for k, v in value.items() if k not in IGNORED_ARGUMENTS and k not in SIZE_KEYS}
    merged = {**defaults, **given}
    for key, val in merged.items():
        if isinstance(val, int) and not isinstance(val, bool):
            merged[key] = float(val) if isinstance(defaults.get(key), float) else val
    return merged


__all__ = ["FAMILIES", "Family", "HFConfig", "export_problems", "hf_config", "model_config", "normalized"]
