"""``python cli.py {fit,validate,test,predict,export} --config NAME.yaml``: LightningCLI over the tasks and data.

A bare config name that is not a file in the working directory resolves to ``configs/NAME``; an unknown one
stops with one line listing the available configs. Installed (``pip install .``), the ``focalbench`` command is the
same CLI and finds the configs shipped in the package.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from focalbench import __version__
from focalbench.callbacks.defaults import add_default_callbacks
from focalbench.data.base import BaseDataModule
from focalbench.errors import ConfigError, project_error, user_message
from focalbench.export.trainer import Trainer
from focalbench.tasks.base import BaseTask

# Inside the package when installed from a wheel (setup.py maps configs/ there); at the root of a checkout.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _PACKAGED_CONFIGS if _PACKAGED_CONFIGS.is_dir() else Path(__file__).resolve().parent.parent / "configs"


def available_configs() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """Rewrite ``--config NAME`` (or ``-c NAME``, ``--config=NAME``) to ``configs/NAME`` when NAME is not a file."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("--config", "-c") and i + 1 < len(out):
            out[i + 1] = _resolve(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + _resolve(arg.split("=", 1)[1])
    return out


def _resolve(name: str) -> str:
    if Path(name).is_file() or name.lstrip().startswith(("{", "[")):  # a file, or an inline YAML/JSON config
        return name
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"config '{name}' not found here or in {CONFIG_DIR}; available: {', '.join(available_configs())}")


class FocalbenchCLI(LightningCLI):
    """Links what the data knows (class count and names) to the model, so configs state them once; gives the
    trainer the default callbacks (:func:`~focalbench.callbacks.defaults.add_default_callbacks`); adds the ``export``
    subcommand (a method of our Trainer, so it gets the same config, checkpoint and link handling)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("trainer_class", Trainer)
        kwargs["parser_kwargs"] = {"version": __version__, **(kwargs.get("parser_kwargs") or {})}
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        add_default_callbacks(trainer, self.model)
        return trainer

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")


def main(args: Sequence[str] | None = None) -> LightningCLI:
    """Run the CLI; ``args`` (a list) lets tests run it in-process, where errors propagate as exceptions.

    From the command line (``args`` None), an error in what the user gave (a :class:`FocalbenchError`: data,
    weights, images, config) prints ``error: <message>`` on one line and exits 2; ``FOCALBENCH_TRACEBACK=1`` shows
    the traceback too.
    """
    if args is not None:
        try:
            return _cli(resolve_config_args(args))
        finally:
            _close_process_group()
    held = _HeldLogs()
    try:
        sys.argv[1:] = resolve_config_args(sys.argv[1:])  # rewritten in place: LightningCLI warns when given args
        return _cli(None, trainer_defaults={"callbacks": [_ReleaseLogsAtSetup(held)]})
    except Exception as err:
        ours = project_error(err)
        if ours is None:  # a bug: Lightning's lines and the whole traceback
            raise
        show_traceback = os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
        held.finish(show=show_traceback)
        if show_traceback:
            traceback.print_exc()
        print(f"error: {user_message(ours)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        held.finish()
        _close_process_group()


def _close_process_group() -> None:
    """Close the run's process group while the interpreter is whole. Lightning closes an NCCL group itself (at
    exit) but leaves a gloo one (CPU DDP) to the interpreter's teardown, where gloo's threads sometimes abort a
    finished run: ``terminate called without an active exception``, exit status -6."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


TRACEBACK_ENV = "FOCALBENCH_TRACEBACK"


def _cli(args: Sequence[str] | None, **kwargs) -> LightningCLI:
    return FocalbenchCLI(
        BaseTask,
        BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        **kwargs,
    )


class _HeldLogs(logging.Handler):
    """Lightning's start-up lines (seed, devices, precision, tips) held back until the data is open, so that a data
    error is the only line a user reads; printed as they came once the data is set up (or at exit)."""

    LOGGERS = ("lightning.pytorch", "lightning.fabric")

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.saved = {name: logging.getLogger(name).handlers for name in self.LOGGERS}
        for name in self.LOGGERS:
            logging.getLogger(name).handlers = [self]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def finish(self, show: bool = True) -> None:
        if self.saved is None:
            return
        for name, handlers in self.saved.items():
            logging.getLogger(name).handlers = handlers
        self.saved = None
        for record in self.records if show else ():
            logging.getLogger(record.name).handle(record)


class _ReleaseLogsAtSetup(Callback):
    def __init__(self, held: _HeldLogs) -> None:
        self.held = held

    def setup(self, trainer, pl_module, stage: str) -> None:  # runs after the data module's setup
        self.held.finish()


def run() -> None:
    """The ``focalbench`` console script: :func:`main` on the command line (its return value is for tests only;
    a console script would turn it into an exit status)."""
    main()
