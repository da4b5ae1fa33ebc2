"""Every error path of the registry and of layer graphs: each names its config path and says what was expected."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest
import torch
from torch import nn

import tfgraph
from tfgraph import registry
from tfgraph.registry import ConfigError


def problems_of(overrides: list[str]) -> dict[str, str]:
    """Compose and build; return the ConfigError's problems as {config path: message}."""
    with pytest.raises(ConfigError) as info:
        with torch.device("meta"):
            tfgraph.build_model(tfgraph.compose(overrides).model)
    assert isinstance(info.value, ValueError)
    return dict(info.value.problems)


# ------------------------------------------------------------------------------------------------ composing


def test_compose_reports_an_unknown_option_key_or_override_as_a_config_error_at_its_path():
    def problems(overrides: list[str]) -> dict[str, str]:
        with pytest.raises(ConfigError) as info:
            tfgraph.compose(overrides)
        return dict(info.value.problems)

    message = problems(["model/norm=rmsnrom"])["model/norm"]
    assert message == "no option 'rmsnrom': did you mean 'rmsnorm'? options are layernorm, rmsnorm, scalenorm"
    assert "options are bert, bert_tiny, gpt2" in problems(["model=nosuch"])["model"]
    assert problems(["model.nosuchkey=1"]) == {
        "model.nosuchkey": "no such key to override (to add it: +model.nosuchkey=1)"
    }
    assert "cannot parse 'model.d_model=[1': no viable alternative" in problems(["model.d_model=[1"])["model.d_model"]
    # a group given a value that is not an option's name (Hydra's own error names no group)
    assert problems(["model=gpt2_tiny", "data=5"]) == {
        "data": "'data=5' gives 5, not an option's name: expected data=<option>; options are addition, bible_en_es, "
        "conll, copy, debian_descriptions, hf, labeled, pairs, ptb, reverse, shakespeare_char, sort, text, wnut16"
    }
    assert "(to leave the group out: ~optimizer)" in problems(["optimizer=null"])["optimizer"]


def test_an_interpolation_that_does_not_resolve_is_a_config_error_at_its_key(monkeypatch):
    from tfgraph.config import check_resolvable

    monkeypatch.delenv("TFGRAPH_UNSET_VAR_X", raising=False)
    cfg = tfgraph.compose(["trainer.max_steps=${oc.env:TFGRAPH_UNSET_VAR_X}", "sample.prompt=${nosuch.key}"])
    with pytest.raises(ConfigError) as info:
        check_resolvable(cfg)
    assert dict(info.value.problems) == {  # both, together
        "trainer.max_steps": "cannot resolve '${oc.env:TFGRAPH_UNSET_VAR_X}': Environment variable "
        "'TFGRAPH_UNSET_VAR_X' not found",
        "sample.prompt": "cannot resolve '${nosuch.key}': Interpolation key 'nosuch.key' not found",
    }
    monkeypatch.setenv("TFGRAPH_UNSET_VAR_X", "7")
    check_resolvable(tfgraph.compose(["trainer.max_steps=${oc.env:TFGRAPH_UNSET_VAR_X}"]))
    with pytest.raises(ConfigError, match=r"trainer.max_steps: cannot resolve '\$\{oc.env:TFGRAPH_UNSET_VAR_Y\}'"):
        tfgraph.train(tfgraph.compose(["trainer.max_steps=${oc.env:TFGRAPH_UNSET_VAR_Y}"]))  # before anything runs


def test_compose_works_inside_another_hydra_context_and_leaves_it_as_it_was():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(tfgraph.config.conf_dir()), version_base="1.3"):
        assert tfgraph.compose(["model=llama_tiny"]).model.topology == "decoder_only"
        assert compose("train", overrides=["model=t5_tiny"]).model.topology == "encoder_decoder"  # still usable
    assert not GlobalHydra.instance().is_initialized()


# ------------------------------------------------------------------------------------------------ registry


def test_unknown_block_name_suggests_close_matches_and_lists_the_registered_ones():
    problems = problems_of(["model=gpt2_tiny", "model.norm.block=rmsnrom"])
    message = problems["model.norm.block"]
    assert "unknown norm block 'rmsnrom'" in message and "did you mean 'rmsnorm'" in message
    assert "layernorm, rmsnorm, scalenorm" in message
    assert len(problems) == 1  # no follow-on noise from the layer graph


def test_block_of_another_kind_says_so():
    message = problems_of(["model=gpt2_tiny", "model.norm.block=multihead"])["model.norm.block"]
    assert "'multihead' is a registered attention block" in message


def test_unknown_argument_names_class_key_and_suggestion():
    message = problems_of(["model=gpt2_tiny", "+model.attention.biass=false"])["model.attention.biass"]
    assert "MultiHeadAttention" in message and "'biass'" in message and "did you mean 'bias'" in message
    assert "~model.attention.biass" in message


def test_model_level_size_set_on_a_block_points_to_the_model():
    message = problems_of(["model=gpt2_tiny", "+model.attention.n_kv_head=2"])["model.attention.n_kv_head"]
    assert "model.n_kv_heads" in message


def test_wrong_types_say_what_was_expected():
    problems = problems_of(["model=gpt2_tiny", "+model.norm.eps=tiny", "model/ffn=moe", "model.ffn.expert=dense"])
    assert "expects a number, got 'tiny'" in problems["model.norm.eps"]
    assert "one of 'mlp', 'gated'" in problems["model.ffn.expert"]


def test_all_problems_are_reported_together():
    problems = problems_of(
        [
            "model=gpt2_tiny",
            "model.n_heads=5",
            "model.attention.block=multihed",
            "model.topology=decoder",
            "model.d_ff=0",
        ]
    )
    assert {"model.n_heads", "model.attention.block", "model.topology", "model.d_ff"} <= set(problems)


def test_heads_that_do_not_divide_d_model_name_both_keys():
    message = problems_of(["model=gpt2_tiny", "model.n_heads=5"])["model.n_heads"]
    assert "model.d_model (64)" in message and "model.n_heads (5)" in message and "divisible" in message


def test_kv_heads_must_divide_query_heads():
    message = problems_of(["model=llama_tiny", "model.n_kv_heads=3"])["model.n_kv_heads"]
    assert "model.n_heads (4)" in message and "model.n_kv_heads (3)" in message


def test_unknown_model_key_and_unknown_topology():
    problems = problems_of(["model=gpt2_tiny", "+model.n_layer=3", "model.topology=encoder_decodr"])
    assert "did you mean 'n_layers'" in problems["model.n_layer"]
    assert "did you mean 'encoder_decoder'" in problems["model.topology"]


def test_block_constructor_refusal_is_reported_at_the_part():
    problems = problems_of(["model=gpt2_tiny", "+model.attention.n_heads=3"])  # window=0 is refused by bind now
    assert "model.attention" in problems and "not divisible by n_heads=3" in problems["model.attention"]


def test_untieable_head_is_reported():
    problems = problems_of(["model=gpt2_tiny", "model.head.block=pooler"])
    assert "cannot tie Pooler.weight (none)" in problems["model.tie_embeddings"]


def test_register_refuses_unknown_kinds_and_duplicate_names():
    with pytest.raises(ValueError, match="unknown block kind 'nrom'.*did you mean 'norm'"):
        registry.register("nrom", "x")
    with pytest.raises(ValueError, match="already registered"):

        @registry.register("norm", "layernorm")
        class Impostor(nn.Module):
            pass


def test_missing_required_argument_is_reported():
    @registry.register("op", "needs_value_test_only")
    class NeedsValue(nn.Module):
        def __init__(self, *, value: float) -> None:
            super().__init__()

        def forward(self, x):
            return x

    problems = problems_of(
        [
            "model=gpt2_tiny",
            "+model.layer.nodes.extra={block: needs_value_test_only, in: res1}",
            "model.layer.nodes.norm2.in=extra",
        ]
    )
    assert "needs a value for 'value'" in problems["model.layer.nodes.extra.value"]


# ------------------------------------------------------------------------------------------------ layer graphs


def test_unknown_input_suggests_the_node():
    problems = problems_of(["model=gpt2_tiny", "model.layer.nodes.attn.in=nrom1"])
    assert "unknown input 'nrom1'" in problems["model.layer.nodes.attn.in"]
    assert "did you mean 'norm1'" in problems["model.layer.nodes.attn.in"]


def test_cycle_is_named():
    problems = problems_of(["model=gpt2_tiny", "model.layer.nodes.norm1.in=res1"])
    ((path, message),) = [(p, m) for p, m in problems.items() if "cycle" in m]
    assert "norm1 -> attn -> drop1 -> res1 -> norm1" in message


def test_unused_node_is_named():
    problems = problems_of(["model=gpt2_tiny", "model.layer.nodes.out.in=[res1,ffn]"])
    assert "'drop2' is unused" in problems["model.layer.nodes.drop2"]


def test_missing_output_is_reported():
    problems = problems_of(["model=gpt2_tiny", "model.layer.output=result"])
    assert "no output" in problems["model.layer.output"] and "'result'" in problems["model.layer.output"]


def test_wrong_number_of_inputs_is_reported():
    problems = problems_of(["model=gpt2_tiny", "model.layer.nodes.ffn.in=[norm2,res1]"])
    assert "takes 1 input(s), the node gives 2" in problems["model.layer.nodes.ffn.in"]


def test_unknown_slot_and_node_without_slot_or_block():
    problems = problems_of(["model=gpt2_tiny", "model.layer.nodes.norm1.slot=nrom", "~model.layer.nodes.attn.slot"])
    assert "did you mean 'norm'" in problems["model.layer.nodes.norm1.slot"]
    assert "exactly one of `slot`" in problems["model.layer.nodes.attn"]


def test_decoder_layer_must_read_memory():
    problems = problems_of(["model=t5_tiny", "model.layer.cross_nodes.cross.in=[norm2,norm2]"])
    assert any("'memory' is never read" in m for m in problems.values())


def test_shape_mismatch_found_by_the_dry_run_names_the_node():
    @registry.register("op", "widen_test_only")
    class Widen(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=-1)

    problems = problems_of(
        [
            "model=gpt2_tiny",
            "+model.layer.nodes.wide={block: widen_test_only, in: drop1}",
            "model.layer.nodes.res1.in=[x,wide]",
        ]
    )
    message = problems["model.layer.nodes.res1"]
    assert "Add failed on inputs x [2, 8, 64], wide [2, 8, 128]" in message


def test_layer_returning_the_wrong_shape_is_reported():
    @registry.register("op", "first_half_test_only")
    class FirstHalf(nn.Module):
        def forward(self, x):
            return x[..., : x.shape[-1] // 2]

    problems = problems_of(
        [
            "model=gpt2_tiny",
            "+model.layer.nodes.narrow={block: first_half_test_only, in: out}",
            "model.layer.output=narrow",
        ]
    )
    assert (
        "must return its input's shape [2, 8, 64] but node 'narrow' gives [2, 8, 32]" in problems["model.layer.output"]
    )


def test_pattern_problems_name_their_entry():
    problems = problems_of(["model=gpt2_tiny", "model.pattern=[{attention: {block: slidng}}, {nrm: {}}]"])
    assert "did you mean 'sliding_window'" in problems["model.pattern[0].attention.block"]
    assert "model.pattern[1].nrm" in problems


# ------------------------------------------------------------------------------------------------ plugins

PLUGIN = '''
import torch
from torch import nn
import tfgraph


@tfgraph.register("norm", "{name}")
class CentreNorm(nn.Module):
    """Subtract the mean, nothing else. x: [..., d_model] -> same."""

    def __init__(self, *, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def forward(self, x):
        return x - x.mean(-1, keepdim=True)
'''


def write_plugin(folder, module: str, name: str) -> None:
    (folder / f"{module}.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))


def test_plugin_from_the_config_is_imported_and_used(tmp_path, monkeypatch):
    write_plugin(tmp_path, "my_blocks_cfg", "centre_cfg")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tfgraph.compose(["model=gpt2_tiny", "plugins=[my_blocks_cfg]", "model.norm.block=centre_cfg"])
    model = tfgraph.build_model(cfg.model)
    assert type(model.decoder.layers[0].norm1).__name__ == "CentreNorm"
    model(torch.randint(0, 512, (1, 5)))


def test_plugin_listed_in_the_model_config_is_imported_by_build_model(tmp_path, monkeypatch):
    write_plugin(tmp_path, "my_blocks_model", "centre_model")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tfgraph.compose(
        ["model=llama_tiny", "model.plugins=[my_blocks_model]", "model.norm.block=centre_model", "~model.norm.eps"]
    )
    assert "my_blocks_model" not in sys.modules
    model = tfgraph.build_model(cfg.model)
    assert type(model.decoder.final_norm).__name__ == "CentreNorm"


def test_missing_plugin_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"plugins\[0\]: plugin module 'no_such_plugin_mod' was not found"):
        tfgraph.compose(["model=gpt2_tiny", "plugins=[no_such_plugin_mod]"])


def test_entry_point_plugins_are_imported(tmp_path, monkeypatch):
    write_plugin(tmp_path, "my_blocks_ep", "centre_ep")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="mine", value="my_blocks_ep", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    registry.load_entry_point_plugins()
    assert "centre_ep" in registry.names("norm")


def test_broken_entry_point_names_itself(monkeypatch):
    ep = EntryPoint(name="broken", value="no_such_module_ep", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    with pytest.raises(ConfigError, match="plugin entry point 'broken'"):
        registry.load_entry_point_plugins()


def test_node_named_like_a_module_attribute_is_refused():
    problems = problems_of(
        ["model=gpt2_tiny", "+model.layer.nodes.half={block: scale, in: out}", "model.layer.output=half"]
    )
    assert "must be a Python identifier, not an nn.Module attribute" in problems["model.layer.nodes.half"]


def test_plugin_block_chosen_on_the_command_line(tmp_path):
    """As a user types it: a module outside the package, named in `plugins`, its block picked by override."""
    import os
    import subprocess

    write_plugin(tmp_path, "my_blocks_cli", "centre_cli")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-m", "tfgraph.cli.show", "model=gpt2_tiny", "plugins=[my_blocks_cli]"]
    done = subprocess.run(
        [*command, "model.norm.block=centre_cli"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "norm1: centre_cli (norm) <- x" in done.stdout
    assert "params: 148608" in done.stdout  # gpt2_tiny's 149,248 less five LayerNorms of 128 parameters

    typo = subprocess.run(
        [*command, "model.norm.block=centre_clj"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "did you mean 'centre_cli'" in typo.stderr


# ------------------------------------------------------------------------------------------------ value domains


@pytest.mark.parametrize(
    ("overrides", "path", "message"),
    [
        (["+model.norm.eps=-1"], "model.norm.eps", "expected a positive number, got -1"),
        (["+model.norm.eps=0"], "model.norm.eps", "expected a positive number, got 0"),
        (["model/norm=scalenorm", "+model.norm.eps=inf"], "model.norm.eps", "expected a positive number, got inf"),
        (["+model.attention.softmax_scale=0"], "model.attention.softmax_scale", "expected a positive number, got 0"),
        (["+model.attention.softmax_scale=-1"], "model.attention.softmax_scale", "expected a positive number, got -1"),
        (["+model.attention.dropout=1.5"], "model.attention.dropout", "expected a probability in [0, 1), got 1.5"),
        (
            ["model/attention=sliding_window", "model.attention.window=0"],
            "model.attention.window",
            "expected an integer >= 1, got 0",
        ),
        (
            ["model/position=rope", "model.position.base=-1"],
            "model.position.base",
            "expected a positive number, got -1",
        ),
        (
            ["model/position=rope", "+model.position.fraction=0"],
            "model.position.fraction",
            "expected a number in (0, 1], got 0",
        ),
        (
            ["model/position=rope", "+model.position.fraction=0.1"],
            "model.position.fraction",
            "fraction=0.1 of head_dim=16 (model.d_model / model.n_heads) leaves no pair of dimensions to rotate; "
            "raise fraction or the head size",
        ),
        (
            ["model/position=t5_bias", "+model.position.num_buckets=1"],
            "model.position.num_buckets",
            "expected an integer >= 2, got 1",
        ),
        (
            ["model/position=t5_bias", "+model.position.max_distance=16"],
            "model.position.max_distance",
            "expected more than num_buckets // 2 (16), the distance where the logarithmic buckets begin; got 16",
        ),
        (["model/ffn=moe", "model.ffn.n_experts=0"], "model.ffn.n_experts", "expected an integer >= 1, got 0"),
        (
            ["model/ffn=moe", "model.ffn.n_experts=2", "model.ffn.top_k=3"],
            "model.ffn.top_k",
            "expected at most n_experts (2) experts per token, got 3",
        ),
        (
            ["+model.layer.nodes.scaled={block: scale, in: out, value: inf}", "model.layer.output=scaled"],
            "model.layer.nodes.scaled.value",
            "expected a finite number, got inf",
        ),
    ],
)
def test_restricted_block_arguments_are_refused_at_their_path(overrides, path, message):
    problems = problems_of(["model=gpt2_tiny", *overrides])
    assert problems[path] == message
    assert len(problems) == 1  # refused when bound: nothing is built, so no follow-on problem


@pytest.mark.parametrize(
    ("override", "path", "message"),
    [
        ("model.d_model=0", "model.d_model", "expected a positive integer, got 0"),
        ("model.n_layers=-1", "model.n_layers", "expected a positive integer, got -1"),
        ("model.max_len=0", "model.max_len", "expected a positive integer, got 0"),
        ("model.d_ff=2.5", "model.d_ff", "expected a positive integer, got 2.5"),
        ("model.dropout=1.5", "model.dropout", "expected a probability in [0, 1), got 1.5"),
        ("model.dropout=-0.1", "model.dropout", "expected a probability in [0, 1), got -0.1"),
        ("model.init_std=inf", "model.init_std", "expected a positive number, got inf"),
    ],
)
def test_model_level_values_are_refused_at_their_path(override, path, message):
    assert problems_of(["model=gpt2_tiny", override])[path] == message


def test_a_size_problem_does_not_break_the_checks_of_blocks_that_read_it():
    problems = problems_of(["model=gpt2_tiny", "model.d_model=0", "model/position=rope", "model/ffn=moe"])
    assert problems == {"model.d_model": "expected a positive integer, got 0"}


def test_a_plugin_states_the_domains_of_its_arguments(tmp_path, monkeypatch):
    (tmp_path / "my_domain_blocks.py").write_text(
        textwrap.dedent(
            """
            from typing import Annotated, Any

            from torch import nn

            import tfgraph
            from tfgraph.registry import AtLeast, Constraint, Positive


            @tfgraph.register("op", "clip_test_only")
            class Clip(nn.Module):
                def __init__(
                    self,
                    *,
                    low: Annotated[float, Positive] = 1.0,
                    high: Annotated[float, Positive] = 2.0,
                    every: Annotated[int, AtLeast(1), Constraint(lambda v: v % 2 == 0, "an even {noun}")] = 2,
                ) -> None:
                    super().__init__()
                    self.low, self.high = low, high

                @staticmethod
                def check_args(*, low: float, high: float, **_: Any) -> dict[str, str]:
                    return {"high": f"expected more than low ({low}), got {high}"} if high <= low else {}

                def forward(self, x):
                    return x.clamp(-self.high, self.high)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["model=gpt2_tiny", "plugins=[my_domain_blocks]", "model.layer.output=clip"]
    node = "+model.layer.nodes.clip={block: clip_test_only, in: out, %s}"
    assert problems_of([*base, node % "low: -1, every: 3"]) == {
        "model.layer.nodes.clip.low": "expected a positive number, got -1",
        "model.layer.nodes.clip.every": "expected an even integer, got 3",
    }
    assert problems_of([*base, node % "low: 3"]) == {
        "model.layer.nodes.clip.high": "expected more than low (3), got 2.0"
    }
    tfgraph.build_model(tfgraph.compose([*base, node % "low: 1.5"]).model)


# ------------------------------------------------------------------------------------------------ graph nodes


@pytest.mark.parametrize(("kind", "block"), [("position", "learned"), ("embedding", "token"), ("head", "lm_head")])
def test_a_node_of_a_kind_that_cannot_be_a_node_is_refused_by_name(kind, block):
    problems = problems_of(
        ["model=gpt2_tiny", f"+model.layer.nodes.p={{block: {block}, kind: {kind}, in: out}}", "model.layer.output=p"]
    )
    message = problems["model.layer.nodes.p.kind"]
    assert f"a {kind} block cannot be a graph node: it is a model part (model.{kind})" in message
    assert "a node's kind is one of attention, ffn, norm, op" in message


def test_a_plugin_block_without_forward_is_refused_at_its_node():
    @registry.register("op", "no_forward_test_only")
    class NoForward(nn.Module):
        pass

    problems = problems_of(
        ["model=gpt2_tiny", "+model.layer.nodes.nf={block: no_forward_test_only, in: out}", "model.layer.output=nf"]
    )
    assert problems == {
        "model.layer.nodes.nf.block": "NoForward defines no forward(), so it cannot be a node of a layer graph"
    }


def test_problems_found_again_in_a_second_pattern_entry_still_stop_that_graph():
    problems = problems_of(["model=gpt2_tiny", "model.pattern=[{}, {}]", "model.layer.nodes.attn.in=nrom1"])
    assert list(problems) == ["model.layer.nodes.attn.in"]
    assert "unknown input 'nrom1'" in problems["model.layer.nodes.attn.in"]


def test_problems_list_a_repeat_once_but_count_it():
    problems = registry.Problems()
    mark = problems.mark()
    problems.add("model.norm.eps", "expected a positive number, got -1")
    again = problems.mark()
    problems.add("model.norm.eps", "expected a positive number, got -1")
    assert problems.items == [("model.norm.eps", "expected a positive number, got -1")]
    assert problems.since(mark) and problems.since(again) and not problems.since(problems.mark())


# ------------------------------------------------------------------------------------------------ patterns

README_PATTERN = "model.pattern=[{attention: {block: sliding_window, window: 128}}, {}]"


def test_a_pattern_entry_that_swaps_a_block_keeps_the_arguments_of_the_part():
    cfg = tfgraph.compose(["model=llama_tiny", "model.n_layers=4", README_PATTERN])
    layers = tfgraph.build_model(cfg.model).decoder.layers
    assert [type(layer.attn).__name__ for layer in layers] == ["SlidingWindowAttention", "MultiHeadAttention"] * 2
    assert [layer.attn.window for layer in layers] == [128, None, 128, None]
    assert all(layer.attn.qkv.bias is None and layer.attn.out.bias is None for layer in layers)  # llama: bias off


def test_a_pattern_entry_with_inherit_false_starts_from_the_block_defaults():
    pattern = "model.pattern=[{attention: {block: sliding_window, window: 4, inherit: false}}, {}]"
    layers = tfgraph.build_model(tfgraph.compose(["model=llama_tiny", pattern]).model).decoder.layers
    assert layers[0].attn.qkv.bias is not None and layers[1].attn.qkv.bias is None


def test_a_pattern_entry_whose_block_cannot_take_an_argument_of_the_part_names_it():
    problems = problems_of(
        ["model=gpt2_tiny", "+model.norm.bias=false", "model.pattern=[{norm: {block: rmsnorm}}, {}]"]
    )
    assert problems == {
        "model.pattern[0].norm.bias": (
            "norm block 'rmsnorm' (RMSNorm) takes no argument 'bias' (set by model.norm.bias); drop it with "
            "~model.norm.bias (from every layer) or give this entry `inherit: false` (to start from 'rmsnorm''s "
            "defaults)"
        )
    }
    cfg = tfgraph.compose(
        ["model=gpt2_tiny", "+model.norm.bias=false", "model.pattern=[{norm: {block: rmsnorm, inherit: false}}, {}]"]
    )
    layers = tfgraph.build_model(cfg.model).decoder.layers
    assert type(layers[0].norm1).__name__ == "RMSNorm" and layers[1].norm1.bias is None


def test_an_inherited_argument_is_reported_where_it_is_set():
    problems = problems_of(["model=gpt2_tiny", "+model.attention.softmax_scale=-1", README_PATTERN])
    assert problems == {"model.attention.softmax_scale": "expected a positive number, got -1"}
