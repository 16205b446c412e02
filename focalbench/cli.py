"""``python cli.py {fit,validate,test,predict,export} --config NAME.yaml``: LightningCLI over the tasks and data.

A bare config name that is not a file in the working directory resolves to ``configs/NAME``; an unknown one
stops with one line listing the available configs. Installed (``pip install .``), the ``focalbench`` command is the
same CLI and finds the configs shipped in the package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from focalbench import __version__
from focalbench.data.base import BaseDataModule
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
    raise SystemExit(
        f"error: config '{name}' not found here or in {CONFIG_DIR}; available: {', '.join(available_configs())}"
    )


class FocalbenchCLI(LightningCLI):
    """Links what the data knows (class count and names) to the model, so configs state them once; adds the
    ``export`` subcommand (a method of our Trainer, so it gets the same config, checkpoint and link handling)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("trainer_class", Trainer)
        kwargs["parser_kwargs"] = {"version": __version__, **(kwargs.get("parser_kwargs") or {})}
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")


def main(args: Sequence[str] | None = None) -> LightningCLI:
    """Run the CLI; ``args`` (a list) lets tests run it in-process."""
    if args is None:  # rewritten in place: LightningCLI warns when given args beside a command line
        sys.argv[1:] = resolve_config_args(sys.argv[1:])
    else:
        args = resolve_config_args(args)
    return FocalbenchCLI(
        BaseTask,
        BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def run() -> None:
    """The ``focalbench`` console script: :func:`main` on the command line (its return value is for tests only;
    a console script would turn it into an exit status)."""
    main()
