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
    assert "no viable alternative" in problems(["model.d_model=[1"])[""]


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
    problems = problems_of(["model=gpt2_tiny", "model/attention=sliding_window", "model.attention.window=0"])
    assert "model.attention" in problems and "window" in problems["model.attention"]


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
