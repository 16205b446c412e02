"""The entry point: config name resolution, --help, and every shipped config parsing."""

from __future__ import annotations

import pytest

from focalbench.cli import CONFIG_DIR, available_configs, main, resolve_config_args


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
    with pytest.raises(SystemExit, match=r"config 'nope.yaml' not found.*available: .*demo_cls.yaml"):
        resolve_config_args(["fit", "--config", "nope.yaml"])


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
