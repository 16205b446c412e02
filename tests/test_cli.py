"""The entry point: config name resolution, --help, and every shipped config parsing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from focalbench.cli import CONFIG_DIR, available_configs, main, resolve_config_args
from focalbench.data.images import ImageDecodeError
from focalbench.errors import ConfigError, FocalbenchError, user_message


def test_bare_config_name_resolves_to_configs_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_args(["fit", "--config", "demo_cls.yaml"]) == [
        "fit",
        "--config",
        str(CONFIG_DIR / "demo_cls.yaml"),
    ]
    assert resolve_config_args(["fit", "-c", "demo_cls"]) == ["fit", "-c", str(CONFIG_DIR / "demo_cls.yaml")]
    assert resolve_config_args(["fit", "--config=demo_cls.yaml"]) == ["fit", f"--config={CONFIG_DIR / 'demo_cls.yaml'}"]


def test_config_file_in_working_directory_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo_cls.yaml").write_text("trainer: {}\n")
    assert resolve_config_args(["fit", "--config", "demo_cls.yaml"]) == ["fit", "--config", "demo_cls.yaml"]


def test_unknown_config_lists_the_available_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config 'nope.yaml' not found.*available: .*demo_cls.yaml"):
        resolve_config_args(["fit", "--config", "nope.yaml"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "nope.yaml"], r"error: config 'nope.yaml' not found"),
        (["--config", "demo_cls.yaml", "--model.backbone", "focalnet_tiny_srff"],
         r"error: Unknown FocalNet variant 'focalnet_tiny_srff'\. Did you mean 'focalnet_tiny_srf'"),
        (["--config", "demo_cls.yaml", "--model.backbone_kwargs.focal_windows", "[3, 9]"],
         r"error: focal_windows has 2 entries, expected one per stage \(4\)"),
        (["--config", "demo_seg.yaml", "--model.frozen_stages", "9"],
         r"error: model.frozen_stages=9: the backbone has"),
        (["--config", "demo_det.yaml", "--model.detector_kwargs.box_batch_size_per_imag", "32"],
         r"error: model.detector_kwargs: 'box_batch_size_per_imag' is not a MaskRCNN argument; did you mean "
         r"'box_batch_size_per_image'\?$"),
    ],
)  # fmt: skip
def test_config_mistakes_are_one_line_with_exit_2(args, message, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("FOCALBENCH_TRACEBACK", raising=False)
    monkeypatch.chdir(tmp_path)
    code, lines = command_line(monkeypatch, capfd, "fit", *args, "--data.num_workers", "0")
    assert code == 2 and len(lines) == 1 and re.match(message, lines[0]), lines


def test_help_works(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "fit" in capsys.readouterr().out


@pytest.mark.parametrize("config", available_configs())
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: focalbench.tasks." in printed and "seed_everything: 0" in printed


# ------------------------------------------------------------------------------ errors a user reads
OFFLINE_CONFIGS = {
    "cls_imagenet1k.yaml": r"error: could not load the data set 'ILSVRC/imagenet-1k' .*set data.root to the local",
    "seg_ade20k.yaml": r"error: could not load the hub data set 'zhoubolei/scene_parse_150'.*ADEChallengeData2016",
    "det_coco.yaml": r"error: no data: .*--data.root .*annotations/instances_\{train,val\}2017\.json",
}


def command_line(monkeypatch, capfd, *args: str) -> tuple[int, list[str]]:
    """``python cli.py ARGS`` in this process (the command-line path: ``main()`` reads ``sys.argv``): the exit code
    and the non-empty lines written to stderr."""
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, [line for line in capfd.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("config", list(OFFLINE_CONFIGS))
def test_offline_paper_config_prints_one_error_line_and_exits_2(config, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("FOCALBENCH_TRACEBACK", raising=False)
    monkeypatch.chdir(tmp_path)  # the configs' runs/ folders are relative
    code, lines = command_line(monkeypatch, capfd, "fit", "--config", config)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert re.match(OFFLINE_CONFIGS[config], lines[0]), lines[0]
    # A run that cannot open its data stops before the logger makes runs/NAME/lightning_logs/version_N: no empty
    # version folder is left behind for every failed start.
    assert list(tmp_path.iterdir()) == []


def test_traceback_is_shown_with_the_opt_in(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FOCALBENCH_TRACEBACK", "1")
    monkeypatch.chdir(tmp_path)
    code, lines = command_line(monkeypatch, capfd, "fit", "--config", "cls_imagenet1k.yaml")
    assert code == 2
    assert "Traceback (most recent call last):" in lines
    assert any(line.startswith("focalbench.data.sources.DataSourceError: could not load") for line in lines)
    assert lines[-1].startswith("error: could not load the data set 'ILSVRC/imagenet-1k'")


def test_error_raised_in_a_model_constructor_is_one_line(tmp_path, monkeypatch, capfd):
    """jsonargparse re-raises a constructor's error as a ValueError listing the Union's subtypes; the project error
    it was raised from is what the user reads."""
    monkeypatch.chdir(tmp_path)
    code, lines = command_line(
        monkeypatch, capfd, "fit", "--config", "demo_cls.yaml", "--model.pretrained", str(tmp_path / "nope.pth")
    )
    assert code == 2
    assert lines == [f"error: pretrained weights file '{tmp_path / 'nope.pth'}' does not exist"]


def test_a_bug_keeps_its_traceback(monkeypatch, capfd):
    """Only the project's own errors are shortened: anything else is a bug and shows where it happened."""

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("focalbench.cli.FocalbenchCLI", broken)
    monkeypatch.setattr(sys, "argv", ["cli.py", "fit", "--config", "demo_cls.yaml"])
    with pytest.raises(KeyError, match="a bug"):
        main()


def test_error_from_a_loader_worker_prints_the_original_message(tmp_path, monkeypatch, capfd):
    images = tmp_path / "images"
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (images / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), colour).save(images / name / f"{i:03d}.png")
    (images / "red" / "000.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    code, lines = command_line(
        monkeypatch, capfd,
        "fit", "--config", "cls_custom.yaml", "--data.root", str(images), "--data.num_workers", "1",
        "--data.val_fraction", "0.5", "--data.image_size", "32", "--data.batch_size", "2",
        "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu", "--trainer.precision", "32",
        "--model.pretrained", "null",
        "--model.backbone_kwargs.embed_dim", "8", "--model.backbone_kwargs.depths", "[1, 1, 1, 1]",
    )  # fmt: skip
    assert code == 2, lines
    assert not any("Traceback" in line or "DataLoader worker" in line for line in lines), lines
    assert re.fullmatch(rf"error: cannot read image {re.escape(str(images))}/red/000\.png: .*", lines[-1]), lines


@pytest.mark.slow
@pytest.mark.parametrize("config", list(OFFLINE_CONFIGS))
def test_offline_paper_config_from_a_shell(config):
    """The same as a user runs it, in a fresh interpreter: ``python cli.py fit --config CONFIG`` offline."""
    environment = {k: v for k, v in os.environ.items() if k != "FOCALBENCH_TRACEBACK"}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "cli.py", "fit", "--config", config],
        cwd=CONFIG_DIR.parent, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert re.match(OFFLINE_CONFIGS[config], lines[0]), lines[0]


@pytest.mark.parametrize("where", ["nothing", "empty folder", "image folder", "hub id offline"])
def test_detection_without_data_says_what_to_download_and_the_layout(where, tmp_path):
    from focalbench.data.detection import DetectionDataModule
    from focalbench.data.sources import DataSourceError

    (tmp_path / "coco").mkdir()
    (tmp_path / "train2017").mkdir()  # the image folder alone, without annotations/
    Image.new("RGB", (8, 8)).save(tmp_path / "train2017" / "000.jpg")
    given = {
        "nothing": {},
        "empty folder": {"root": str(tmp_path / "coco")},
        "image folder": {"root": str(tmp_path / "train2017")},
        "hub id offline": {"dataset": "no-such-user/coco-like"},
    }[where]
    with pytest.raises(DataSourceError) as info:
        _ = DetectionDataModule(**given).num_classes
    message = str(info.value)
    assert "\n" not in message
    assert "cocodataset.org" in message and "annotations_trainval2017.zip" in message
    assert "--data.root" in message and "annotations/instances_{train,val}2017.json" in message
    assert "train2017/" in message and "val2017/" in message
    if where == "empty folder":
        assert str(tmp_path / "coco") in message
    if where == "image folder":
        assert "column 'objects' (data.objects_column) not found" in message
    if where == "hub id offline":
        assert "no-such-user/coco-like" in message


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise ImageDecodeError("cannot read image /data/x.png: truncated")


def test_user_message_unwraps_a_worker_exception():
    loader = torch.utils.data.DataLoader(_Unreadable(), num_workers=1)
    with pytest.raises(ImageDecodeError) as info:
        next(iter(loader))
    # torch rebuilt it in the main process from the worker's formatted traceback: the original message survives
    assert str(info.value) == "cannot read image /data/x.png: truncated"
    assert user_message(info.value) == "cannot read image /data/x.png: truncated"
    assert user_message(ImageDecodeError("a\n  b")) == "a b"


def test_the_projects_errors_share_one_base():
    from focalbench.data.sources import DataSourceError
    from focalbench.errors import ConfigError
    from focalbench.models.checkpoints import CheckpointError, WeightsNotFoundError

    for error in (DataSourceError, CheckpointError, ImageDecodeError, ConfigError, WeightsNotFoundError):
        assert issubclass(error, FocalbenchError)
    # and keep the builtin they refine, for callers that catch those
    assert issubclass(DataSourceError, ValueError) and issubclass(WeightsNotFoundError, FileNotFoundError)
