"""Command-line entry points: thin ``@hydra.main`` wrappers over pure functions (``tfgraph.show.show``, ...).

Each command is a job function made a console script by :func:`command`, which composes the package's config from
the command line with everything Hydra offers there (overrides, ``-m``, ``--cfg job``, ``--help``, ``-cd <dir>``,
``hydra.searchpath=[...]``), reports a mistake Hydra finds in it as ``tfgraph.compose`` does (``error: ...`` and
exit code 2; a run dir Hydra cannot create or write too) and runs the job under :func:`exit_on_error`, the one
place that turns what the job raises into an exit code: 2 for a :class:`tfgraph.ConfigError` (a
:class:`tfgraph.data.DataConfigError` among them), a :class:`tfgraph.data.DataError` or an interpolation that does
not resolve (``${oc.env:UNSET}``), 3 for a diverged training, the same for those raised in a spawned process.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from tfgraph.config import conf_dir, group_value_error, hydra_error, interpolation_error, output_dir_error
from tfgraph.registry import ConfigError

T = TypeVar("T")

FULL_ERROR = "HYDRA_FULL_ERROR"  # set, Hydra raises what it would print with its search path and exit 1 for


def exit_on_error(function: Callable[..., T], *args: Any, exit_codes: Mapping[type[BaseException], int] = {}) -> T:
    """``function(*args)``; what is the user's to mend becomes ``error: <message>`` on stderr and an exit code
    instead of a traceback (:func:`exit_status`: a ConfigError, a DataError, a diverged training, one of those
    raised in a spawned process, or an exception of ``exit_codes``), and output into a closed pipe ends quietly
    with status 141. Anything else keeps its traceback."""
    try:
        return function(*args)
    except BrokenPipeError:  # the reader went away (`tfgraph-generate ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush goes nowhere
        sys.exit(128 + 13)  # the shell's status for a process ended by SIGPIPE
    except Exception as err:
        status = exit_status(err, exit_codes)
        if status is None:
            raise
        code, message = status
        print(f"error: {message}", file=sys.stderr)
        sys.exit(code)


def exit_status(err: BaseException, exit_codes: Mapping[type[BaseException], int] = {}) -> tuple[int, str] | None:
    """The exit code and message of an error the user can mend (None for any other): 2 for a
    :class:`tfgraph.ConfigError` or a :class:`tfgraph.data.DataError`, 3 for
    :class:`tfgraph.tasks.callbacks.TrainingDiverged`, the code ``exit_codes`` gives its class, and the same for
    one of these that a spawned DDP process raised (``trainer=ddp_sim``, :func:`spawned_error`)."""
    if isinstance(err, ConfigError):
        return 2, str(err)
    if isinstance(err, InterpolationResolutionError):  # a value of the config: ${oc.env:UNSET}
        return 2, str(interpolation_error(err))
    for cls, code in exit_codes.items():
        if isinstance(err, cls):
            return code, str(err)
    # imported only now: a command that raised neither need not load the data layer, Lightning or spawn
    from torch.multiprocessing.spawn import ProcessRaisedException

    from tfgraph.data import DataError
    from tfgraph.tasks.callbacks import TrainingDiverged

    if isinstance(err, DataError):
        return 2, str(err)
    if isinstance(err, TrainingDiverged):
        return 3, str(err)
    if isinstance(err, ProcessRaisedException):  # raised in a spawned DDP process (trainer=ddp_sim, ddp_spawn)
        return spawned_error(str(err))
    return None


SPAWNED_ERRORS = {"ConfigError": 2, "DataConfigError": 2, "DataError": 2, "TrainingDiverged": 3}  # as in one process
SPAWNED_ERROR = re.compile(r"(?:[\w.]+\.)?(" + "|".join(SPAWNED_ERRORS) + r"): (.*)")


def spawned_error(traceback: str) -> tuple[int, str] | None:
    """The exit code and message of a ConfigError, DataError or TrainingDiverged that another process raised,
    from the traceback it passed on (the exception's line and any lines of its message after it)."""
    lines = traceback.splitlines()
    for i in reversed(range(len(lines))):
        match = SPAWNED_ERROR.fullmatch(lines[i].strip())
        if match:
            return SPAWNED_ERRORS[match[1]], "\n".join([match[2], *lines[i + 1 :]]).rstrip()
    return None


def command(
    config_name: str, *, exit_codes: Mapping[type[BaseException], int] = {}
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorator: the console script that composes the package's ``config_name`` config from the command line and
    calls the decorated job function with it (``@hydra.main``, so every Hydra flag works).

    A mistake Hydra finds in the command line before the job runs (an option a group does not have, an unknown
    key, an override it cannot parse, a config dir that is not there) is reported as :func:`tfgraph.compose`
    reports it: ``error: ...`` on stderr, the config path and the closest names, exit code 2, and neither a
    traceback nor Hydra's search path. The job runs under :func:`exit_on_error` (``exit_codes``: the command's
    own errors, e.g. ``{GraphvizMissing: 1}``): a ConfigError or DataError it raises is exit code 2, a diverged
    training 3, and anything else (a Hydra error of the job's own included) keeps its traceback.

    Example::

        def main() -> None:
            @command("show")
            def run(cfg: DictConfig) -> None:
                print(show(cfg))

            run()
    """

    def decorate(job: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        raised: list[BaseException] = []  # what the job raised, which Hydra passes on and is not the command line's
        users_setting = os.environ.get(FULL_ERROR)

        @functools.wraps(job)  # Hydra names the job (and its log file) after the wrapped function's module
        def task(cfg: DictConfig) -> Any:
            try:
                with _environment(FULL_ERROR, users_setting):  # the job sees the environment it was started in
                    return exit_on_error(job, cfg, exit_codes=exit_codes)
            except BaseException as err:
                raised.append(err)
                raise

        app = hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(task)

        @functools.wraps(job)
        def main() -> Any:
            raised.clear()
            try:
                with _environment(FULL_ERROR, "1"), _internal_groups_hidden():  # Hydra raises what it cannot
                    return app()  # compose instead of printing it; --help lists the groups a user chooses from
            except (HydraException, OmegaConfBaseException, ValueError, OSError) as err:
                if any(err is error for error in raised):
                    raise
                problem = command_line_error(err, sys.argv[1:])
                if problem is None:
                    raise
                print(f"error: {problem}", file=sys.stderr)
                sys.exit(2)

        return main

    return decorate


def command_line_error(err: Exception, args: list[str]) -> ConfigError | None:
    """What Hydra raised before the job ran, as the ConfigError a user can mend (None for anything else): a config
    it cannot compose (:func:`tfgraph.config.hydra_error`), a group given a value that names no option
    (``data=5``), a run dir it cannot create or write (at ``hydra.run.dir``, or ``hydra.sweep.dir`` with ``-m``)."""
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return hydra_error(err)
    if isinstance(err, OSError):
        multirun = any(arg in ("-m", "--multirun") for arg in args)
        return output_dir_error(err, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    return group_value_error(err, args) if isinstance(err, ValueError) else None


@contextmanager
def _internal_groups_hidden() -> Iterator[None]:
    """Hydra's ``$APP_CONFIG_GROUPS`` (the groups a command's ``--help`` lists) limited to the groups the command's
    own config chooses from (its defaults list, ``hydra.runtime.choices``: ``tfgraph-prepare`` lists ``data`` only),
    internal ones left out (a part named ``_...``: ``_base``, the presets' shared base). Composing is unchanged."""
    from hydra._internal.hydra import Hydra

    get_help = Hydra.get_help

    def help_of_the_command(self: Hydra, help_cfg: DictConfig, *args: Any, **kwargs: Any) -> str:
        hydra_cfg = help_cfg._get_parent()  # the composed config's hydra node, which holds the choices
        choices = set(OmegaConf.select(hydra_cfg, "runtime.choices", default={}) or {})
        listed = self.format_config_groups

        def format_config_groups(predicate: Callable[[str], bool], compact: bool = True) -> str:
            def chosen(group: str) -> bool:
                internal = any(part.startswith("_") for part in group.split("/"))
                return predicate(group) and not internal and (not choices or group in choices)

            return listed(chosen, compact)

        self.format_config_groups = format_config_groups  # type: ignore[method-assign]
        try:
            return get_help(self, help_cfg, *args, **kwargs)
        finally:
            del self.format_config_groups

    Hydra.get_help = help_of_the_command  # type: ignore[method-assign]
    try:
        yield
    finally:
        Hydra.get_help = get_help  # type: ignore[method-assign]


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """The environment variable ``name`` set to ``value`` (unset for None), as it was after."""
    before = os.environ.get(name)
    _set(name, value)
    try:
        yield
    finally:
        _set(name, before)


def _set(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
