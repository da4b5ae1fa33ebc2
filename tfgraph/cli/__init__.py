"""Command-line entry points: thin ``@hydra.main`` wrappers over pure functions (``tfgraph.show.show``, ...).

Each command is a job function made a console script by :func:`command`, which composes the package's config from
the command line with everything Hydra offers there (overrides, ``-m``, ``--cfg job``, ``--help``, ``-cd <dir>``,
``hydra.searchpath=[...]``) and reports a mistake Hydra finds in it as ``tfgraph.compose`` does: ``error: ...`` and
exit code 2.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tfgraph.config import conf_dir, hydra_error
from tfgraph.registry import ConfigError

T = TypeVar("T")

FULL_ERROR = "HYDRA_FULL_ERROR"  # set, Hydra raises what it would print with its search path and exit 1 for


def exit_on_config_error(function: Callable[[], T]) -> T:
    """``function()``; a :class:`tfgraph.ConfigError` becomes ``error: ...`` on stderr and exit code 2 (no traceback)."""
    try:
        return function()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def command(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Decorator: the console script that composes the package's ``config_name`` config from the command line and
    calls the decorated job function with it (``@hydra.main``, so every Hydra flag works).

    A mistake Hydra finds in the command line before the job runs (an option a group does not have, an unknown
    key, an override it cannot parse, a config dir that is not there) is reported as :func:`tfgraph.compose`
    reports it: ``error: ...`` on stderr, the config path and the closest names, exit code 2, and neither a
    traceback nor Hydra's search path. What the job function raises is left as it is: the commands turn a
    ConfigError into exit code 2 themselves, and anything else keeps its traceback.

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
                    return job(cfg)
            except BaseException as err:
                raised.append(err)
                raise

        app = hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(task)

        @functools.wraps(job)
        def main() -> Any:
            raised.clear()
            try:
                with _environment(FULL_ERROR, "1"):  # Hydra raises what it cannot compose instead of printing it
                    return app()
            except (HydraException, OmegaConfBaseException) as err:
                if any(err is error for error in raised):
                    raise
                print(f"error: {hydra_error(err)}", file=sys.stderr)
                sys.exit(2)

        return main

    return decorate


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
