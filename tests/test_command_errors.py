"""Mistakes on the command line, through the real entry points: what Hydra cannot compose (an option a group does not
have, an unknown key, an override it cannot parse) is the short message ``tfgraph.compose`` gives, with exit code 2
and neither a traceback nor Hydra's boilerplate; a sweep with a bad value launches nothing; tfgraph-generate and
tfgraph-attention check every setting before a checkpoint is loaded; Hydra's own flags still work.

The commands run in this process (``tfgraph.cli.<name>.main()`` with ``sys.argv`` set, what the console scripts
call), and a few as ``python -m tfgraph.cli.<name>`` processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

import tfgraph
from tfgraph.cli import attention as attention_cli
from tfgraph.cli import check as check_cli
from tfgraph.cli import eval as eval_cli
from tfgraph.cli import generate as generate_cli
from tfgraph.cli import show as show_cli
from tfgraph.cli import train as train_cli
from tfgraph.cli.sweep import check_sweep, register_resolvers
from tfgraph.config import conf_dir
from tfgraph.registry import ConfigError
from tfgraph.train import TrainingDiverged, build_trainer

COMMANDS = {
    "train": train_cli,
    "eval": eval_cli,
    "generate": generate_cli,
    "show": show_cli,
    "attention": attention_cli,
    "check": check_cli,
}
BOILERPLATE = ("Traceback", "HYDRA_FULL_ERROR", "Config search path", "provider=")


def run_command(command: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str, str]:
    """``tfgraph-<command> args`` in this process: its exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", [f"tfgraph-{command}", *args])
    GlobalHydra.instance().clear()
    code = 0
    try:
        COMMANDS[command].main()
    except SystemExit as stop:
        code = 0 if stop.code is None else int(stop.code)
    out, err = capsys.readouterr()
    return code, out, err


def config_error(command: str, args: list[str], monkeypatch, capsys) -> str:
    """The stderr of a command that must stop with a config error: exit code 2, ``error: ...``, no boilerplate."""
    code, out, err = run_command(command, args, monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: invalid config"), err
    assert not any(text in err for text in BOILERPLATE), err
    assert out == ""
    return err


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working dir, which a command that fails while composing must leave empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return tmp_path


# ---------------------------------------------------------------------------------- what Hydra cannot compose

UNKNOWN_OPTION = "no option 'lama_tiny': did you mean 'llama_tiny'? options are bert, bert_tiny, gpt2, gpt2_tiny"
COMPOSITION = [  # (command, argument, text the message holds)
    ("train", "model/norm=rmsnrom", "model/norm: no option 'rmsnrom': did you mean 'rmsnorm'? options are layernorm"),
    ("train", "logger=comet", "logger: no option 'comet': options are csv, many_loggers, mlflow, tensorboard, wandb"),
    ("train", "trainer.max_step=100", "trainer.max_step: no such key to override: did you mean trainer.max_steps? "),
    ("train", "model.d_model=[1", "model.d_model: cannot parse 'model.d_model=[1': no viable alternative"),
    ("eval", "trainer=gpuu", "trainer: no option 'gpuu': did you mean 'gpu'?"),
    ("eval", "ckpt_pth=last.ckpt", "ckpt_pth: no such key to override: did you mean ckpt_path? (to add it: +ckpt_pth"),
    ("eval", "split=[val", "split: cannot parse 'split=[val'"),
    ("generate", "+model=lama_tiny", f"model: {UNKNOWN_OPTION}"),
    ("generate", "max_new_token=5", "max_new_token: no such key to override: did you mean max_new_tokens?"),
    ("generate", "prompt=[a", "prompt: cannot parse 'prompt=[a'"),
    ("show", "model=lama_tiny", f"model: {UNKNOWN_OPTION}"),
    ("show", "model.n_head=3", "model.n_head: no such key to override: did you mean model.n_heads? "),
    ("show", "model.d_model={a", "model.d_model: cannot parse 'model.d_model={a'"),
    ("attention", "model=lama_tiny", f"model: {UNKNOWN_OPTION}"),
    ("attention", "txt=hello", "txt: no such key to override: did you mean text? (to add it: +txt=hello)"),
    ("attention", "layers=[0,", "layers: cannot parse 'layers=[0,'"),
    ("check", "model=lama_tiny", f"model: {UNKNOWN_OPTION}"),
    ("check", "check.n_layer=1", "check.n_layer: no such key to override: did you mean check.n_layers? "),
]


@pytest.mark.parametrize(("command", "arg", "says"), COMPOSITION, ids=[f"{c}:{a}" for c, a, _ in COMPOSITION])
def test_what_hydra_cannot_compose_is_a_config_error_of_every_command(
    command: str, arg: str, says: str, here: Path, monkeypatch, capsys
) -> None:
    err = config_error(command, [arg], monkeypatch, capsys)
    assert says in err
    assert list(here.iterdir()) == []  # no run dir, no log: nothing ran
    assert "HYDRA_FULL_ERROR" not in os.environ  # the command leaves the environment as it found it


def test_a_config_dir_that_is_not_there_is_a_config_error(here: Path, monkeypatch, capsys) -> None:
    err = config_error("show", ["-cd", str(here / "nowhere")], monkeypatch, capsys)
    assert f"{here / 'nowhere'}' not found" in err


def test_a_run_dir_that_cannot_be_created_is_a_config_error(here: Path, monkeypatch, capsys) -> None:
    (here / "a_file").write_text("")
    err = config_error("train", [f"hydra.run.dir={here}/a_file/run"], monkeypatch, capsys)
    assert f"hydra.run.dir: cannot create or write the run's output dir ({here}/a_file/run: Not a directory)" in err
    err = config_error("train", ["-m", "seed=1,2", f"hydra.sweep.dir={here}/a_file/sweep"], monkeypatch, capsys)
    assert f"hydra.sweep.dir: cannot create or write the run's output dir ({here}/a_file/sweep: " in err
    assert list(here.iterdir()) == [here / "a_file"]


def test_the_unknown_key_suggests_the_close_existing_key_from_python_too() -> None:
    def problems(overrides: list[str], config_name: str = "train") -> dict[str, str]:
        with pytest.raises(ConfigError) as info:
            tfgraph.compose(overrides, config_name=config_name)
        return dict(info.value.problems)

    assert problems(["trainer.max_step=100"]) == {
        "trainer.max_step": "no such key to override: did you mean trainer.max_steps? (to add it: +trainer.max_step=100)"
    }
    assert problems(["trainer.max_step=1"], "show") == {  # show has no trainer: nothing close to suggest
        "trainer.max_step": "no such key to override (to add it: +trainer.max_step=1)"
    }
    assert problems(["~model.nosuch"]) == {"model.nosuch": "no such key to delete"}


def test_a_trainer_argument_added_with_plus_that_the_trainer_does_not_take_names_its_key() -> None:
    cfg = tfgraph.compose(["+trainer.max_step=100", "+trainer.acelerator=cpu", "~logger"])
    with pytest.raises(ConfigError) as info:
        build_trainer(cfg)
    problems = dict(info.value.problems)
    assert problems.keys() == {"trainer.max_step", "trainer.acelerator"}
    assert "Trainer takes no argument 'max_step' (did you mean 'max_steps'" in problems["trainer.max_step"]
    assert "(did you mean 'accelerator'?)" in problems["trainer.acelerator"]


def test_the_real_processes_exit_2_with_the_message_alone(tmp_path: Path) -> None:
    cases = {  # run at once: each process spends its time importing torch
        "train": (["model/norm=rmsnrom"], "model/norm: no option 'rmsnrom': did you mean 'rmsnorm'?"),
        "generate": (["max_new_tokens=abc"], "max_new_tokens: expected a positive integer, got 'abc'"),
        "show": (["model.d_model=[1"], "model.d_model: cannot parse 'model.d_model=[1'"),
    }
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"tfgraph.cli.{name}", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in cases.items()
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=180)
        assert process.returncode == 2, (name, err)
        assert err.startswith("error: invalid config") and cases[name][1] in err, (name, err)
        assert not any(text in err for text in BOILERPLATE), (name, err)
        assert out == ""
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ what the job raises


def test_errors_raised_by_the_job_keep_their_meaning(here: Path, monkeypatch, capsys) -> None:
    import tfgraph.train

    err = config_error("show", ["model=gpt2_tiny", "model.n_heads=5"], monkeypatch, capsys)  # a ConfigError: 2
    assert "model.n_heads" in err

    def diverge(cfg, overrides=()):
        raise TrainingDiverged("the training loss is nan at step 3")

    monkeypatch.setattr(tfgraph.train, "train", diverge)
    code, _, err = run_command("train", [f"hydra.run.dir={here}/run"], monkeypatch, capsys)
    assert code == 3 and err.endswith("error: the training loss is nan at step 3\n"), err

    seen = {}

    def broken(cfg, name=None):
        seen["HYDRA_FULL_ERROR"] = os.environ.get("HYDRA_FULL_ERROR")
        raise ConfigCompositionException("a Hydra error of the job's own")

    monkeypatch.setattr(show_cli, "show", broken)
    monkeypatch.setattr(sys, "argv", ["tfgraph-show"])
    with pytest.raises(ConfigCompositionException, match="of the job's own"):  # not a command-line mistake
        show_cli.main()
    assert seen == {"HYDRA_FULL_ERROR": None}  # the job runs in the environment the command was started in
    monkeypatch.setattr(show_cli, "show", lambda cfg, name=None: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # anything else: its traceback
        show_cli.main()


# -------------------------------------------------------------------------------------- Hydra's own flags


def test_hydra_flags_config_dirs_and_search_paths_still_work(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "mine.yaml").write_text("defaults:\n  - gpt2_tiny\n  - _self_\n\nn_layers: 1\n")
    one_layer = tfgraph.compose(["model=gpt2_tiny", "model.n_layers=1"], config_name="show").model
    params = sum(p.numel() for p in tfgraph.build_model(one_layer).parameters())

    code, out, _ = run_command("show", ["--help"], monkeypatch, capsys)
    assert code == 0 and "== Configuration groups ==" in out
    code, out, _ = run_command("show", ["--cfg", "job", "model=gpt2_tiny"], monkeypatch, capsys)
    assert code == 0 and "topology: decoder_only" in out
    for args in (["-cd", str(conf), "model=mine"], [f"hydra.searchpath=[file://{conf}]", "model=mine"]):
        code, out, err = run_command("show", args, monkeypatch, capsys)
        assert code == 0, err
        assert f"params: {params}\n" in out
    err = config_error("show", ["-cd", str(conf), "model=mien"], monkeypatch, capsys)
    assert "model: no option 'mien': did you mean 'mine'?" in err  # the options of every config dir


# -------------------------------------------------------------------------------------------------- sweeps


def test_a_sweep_with_bad_values_lists_them_all_and_launches_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    composed = []
    load_sweep_config = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        composed.append(list(sweep_overrides))
        return load_sweep_config(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    sweep = ["model/norm=layernorm,rmsnrom,scalenorm", "model=gpt2_tiny,lama_tiny", "seed=range(0,50)"]
    err = config_error("train", ["-m", *sweep, f"hydra.sweep.dir={tmp_path}/sweep"], monkeypatch, capsys)
    assert "(2 problems)" in err
    assert "model/norm: no option 'rmsnrom'" in err and "(in the sweep's jobs with model/norm=rmsnrom)" in err
    assert "model: no option 'lama_tiny'" in err and "(in the sweep's jobs with model=lama_tiny)" in err
    assert "stopped before its end" not in err  # no summary of no job
    assert list(tmp_path.iterdir()) == []  # no sweep dir, no job dir
    # each value once, with the first of the others (a range by its first), not the 300 jobs
    assert [overrides[:2] for overrides in composed] == [
        ["model/norm=layernorm", "model=gpt2_tiny"],
        ["model/norm=rmsnrom", "model=gpt2_tiny"],
        ["model/norm=scalenorm", "model=gpt2_tiny"],
        ["model/norm=layernorm", "model=lama_tiny"],
    ]
    assert all(overrides[2] == "seed=0" for overrides in composed)


def sweep_problems(overrides: list[str], params: dict[str, str] | None = None) -> dict[str, str]:
    """The problems :func:`check_sweep` finds in the multirun of ``overrides`` (and basic sweeper ``params``), given
    its config as Hydra's ``multirun`` hands it to the callbacks, with Hydra initialised as then."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN)
        if params:
            with read_write(config), open_dict(config):
                OmegaConf.update(config, "hydra.sweeper.params", params, merge=True)
        try:
            check_sweep(config)
        except ConfigError as err:
            return dict(err.problems)
    return {}


def test_the_sweep_check_passes_what_composes_and_reads_the_sweepers_params() -> None:
    # each value is tried with the first value of the other sweeps: n_decoder_layers is there for transformer_tiny
    assert sweep_problems(["model=transformer_tiny,t5_tiny", "model.n_decoder_layers=1,2", "task=seq2seq"]) == {}
    assert sweep_problems(["model/norm=glob(*)", "model/position=choice(rope,alibi)"]) == {}
    assert sweep_problems(["model/layer=glob(pre*)", "optimizer.lr=range(0.001,0.01,0.001)"]) == {}
    # the basic sweeper's params are swept values too (experiment=ablation_shakespeare declares three)
    assert sweep_problems(["experiment=ablation_shakespeare", "seed=0,1"]) == {}
    problems = sweep_problems(["experiment=ablation_shakespeare"], {"model/layer": "prenorm,paralel"})
    assert (
        list(problems) == ["model/layer"] and "no option 'paralel': did you mean 'parallel'?" in problems["model/layer"]
    )
    problems = sweep_problems(["model.n_layer=1,2"])  # a key no value of which composes
    assert "did you mean model.n_layers?" in problems["model.n_layer"]


def test_the_sweep_check_leaves_what_a_sweeper_samples_itself_to_it() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    assert sweep_problems(["hparams_search=optuna", "optimizer.lr=interval(0.0001,0.01)", "seed=0,1"]) == {}
    problems = sweep_problems(["hparams_search=optuna", "model=gpt2_tiny,lama_tiny"])
    assert list(problems) == ["model"]


# ---------------------------------------------------------------------- generate and attention settings

GENERATE = [  # (arguments, the one problem they make): all found before the checkpoint is looked at
    (["max_new_tokens=abc"], "max_new_tokens: expected a positive integer, got 'abc'"),
    (["max_new_tokens=0"], "max_new_tokens: expected a positive integer, got 0"),
    (["max_new_tokens=null"], "max_new_tokens: expected a positive integer, got None"),
    (["num_return_sequences=0"], "num_return_sequences: expected a positive integer, got 0"),
    (["num_return_sequences=2.5", "strategy=sample"], "num_return_sequences: expected a positive integer"),
    (["num_return_sequences=5", "strategy=beam", "num_beams=2"], "num_return_sequences: num_return_sequences must be"),
    (["num_return_sequences=2"], "num_return_sequences: num_return_sequences > 1 needs strategy 'sample' or 'beam'"),
    (["strategy=beam", "num_beams=0"], "num_beams: expected a positive integer, got 0"),
    (["strategy=beam", "num_beams=many"], "num_beams: expected a positive integer, got 'many'"),
    (["strategy=sample", "top_k=0"], "top_k: expected a positive integer, got 0"),
    (["strategy=sample", "top_k=true"], "top_k: expected a positive integer, got True"),
    (["strategy=sample", "temperature=-1"], "temperature: temperature must be positive"),
    (["strategy=sample", "temperature=hot"], "temperature: expected a finite number, got 'hot'"),
    (["strategy=sample", "temperature=nan"], "temperature: expected a finite number, got nan"),
    (["temperature=0.5"], "temperature: temperature applies only to strategy='sample', not 'greedy'"),
    (["strategy=sample", "top_p=0"], "top_p: top_p must be in (0, 1], got 0"),
    (["strategy=sample", "top_p=1.5"], "top_p: top_p must be in (0, 1], got 1.5"),
    (["strategy=sample", "min_p=2"], "min_p: min_p must be in [0, 1], got 2"),
    (["strategy=sample", "min_p=x"], "min_p: expected a finite number, got 'x'"),
    (["repetition_penalty=0"], "repetition_penalty: repetition_penalty must be positive, got 0"),
    (["repetition_penalty=[1]"], "repetition_penalty: expected a finite number, got [1]"),
    (["strategy=beam", "length_penalty=long"], "length_penalty: expected a finite number, got 'long'"),
    (["strategy=sample", "seed=abc"], "seed: expected an integer, got 'abc'"),
    (["seed=1.5"], "seed: expected an integer, got 1.5"),
    (["use_cache=maybe"], "use_cache: expected true or false, got 'maybe'"),
    (["use_cache=1"], "use_cache: expected true or false, got 1"),
    (["strategy=beam", "early_stopping=yes"], "early_stopping: early_stopping must be True, False or 'never'"),
    (["early_stopping=true"], "early_stopping: early_stopping applies only to strategy='beam', not 'greedy'"),
    (["strategy=beams"], "strategy: expected one of greedy, sample, beam, got 'beams' (did you mean 'beam'?)"),
    (["device=cpux"], "device: unknown device 'cpux': expected cpu, cuda, cuda:N, mps"),
    (["device=meta"], "device: unknown device 'meta': expected cpu, cuda, cuda:N, mps"),
    (["device=0"], "device: unknown device 0: expected cpu, cuda, cuda:N, mps"),
    ([f"device=cuda:{torch.cuda.device_count()}"], f"device: cuda:{torch.cuda.device_count()}, but "),
]


@pytest.mark.parametrize(("args", "says"), GENERATE, ids=[" ".join(args) for args, _ in GENERATE])
def test_generate_checks_each_setting_before_loading_the_checkpoint(
    args: list[str], says: str, here: Path, monkeypatch, capsys
) -> None:
    err = config_error("generate", [f"ckpt_path={here}/none.ckpt", "prompt=hi", *args], monkeypatch, capsys)
    assert says in err
    assert err.count("\n  - ") == 1 and "ckpt_path" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_generate_on_cuda_without_a_gpu_says_so(here: Path, monkeypatch, capsys) -> None:
    err = config_error("generate", [f"ckpt_path={here}/none.ckpt", "device=cuda"], monkeypatch, capsys)
    assert "device: cuda, but PyTorch finds no cuda device here: use device=cpu" in err


def test_generate_lists_every_bad_setting_and_loads_only_with_good_ones(here: Path, monkeypatch, capsys) -> None:
    bad = ["strategy=beams", "max_new_tokens=abc", "device=cpux", "use_cache=2"]
    err = config_error("generate", [f"ckpt_path={here}/none.ckpt", *bad], monkeypatch, capsys)
    assert "(4 problems)" in err
    for key in ("strategy", "max_new_tokens", "device", "use_cache"):
        assert f"\n  - {key}: " in err
    good = ["strategy=sample", "temperature=0.7", "top_k=5", "top_p=1", "min_p=0", "seed=3", "device=cpu"]
    err = config_error("generate", [f"ckpt_path={here}/none.ckpt", *good], monkeypatch, capsys)
    assert err.count("\n  - ") == 1 and f"\n  - ckpt_path: no checkpoint at {here}/none.ckpt" in err  # they pass


ATTENTION = [
    (["top=0"], "top: expected a positive integer, got 0"),
    (["top=abc"], "top: expected a positive integer, got 'abc'"),
    (["top=null"], "top: expected a positive integer, got None"),
    (["seed=1.5"], "seed: expected an integer, got 1.5"),
    (["layers=x"], "layers: expected all, a layer index or a list of them ([0,2]), got 'x'"),
    (["layers=[]"], "layers: expected all, a layer index or a list of them"),
    (["device=cpux"], "device: unknown device 'cpux': expected cpu, cuda, cuda:N, mps"),
]


@pytest.mark.parametrize(("args", "says"), ATTENTION, ids=[" ".join(args) for args, _ in ATTENTION])
def test_attention_checks_each_setting_before_loading_a_model(
    args: list[str], says: str, here: Path, monkeypatch, capsys
) -> None:
    for source in (f"ckpt_path={here}/none.ckpt", "model=gpt2_tiny"):
        err = config_error("attention", [source, "text=hello", *args], monkeypatch, capsys)
        assert says in err
        assert err.count("\n  - ") == 1 and "ckpt_path" not in err
    assert list(here.iterdir()) == []


def test_attention_lists_every_bad_setting(here: Path, monkeypatch, capsys) -> None:
    err = config_error("attention", ["model=gpt2_tiny", "top=0", "layers=x", "device=cpux"], monkeypatch, capsys)
    assert "(4 problems)" in err and "\n  - text: give the text" in err
