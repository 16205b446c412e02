"""Two CPU processes (DDP over gloo) validate to the same metrics as one: no sample counted twice."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_two_process_validation_equals_one_process(tmp_path, tiny_args, make_class_folders, cli_validate):
    root = tmp_path / "data"
    make_class_folders(root / "train", per_class=4, seed=0)
    make_class_folders(root / "val", per_class=5, seed=1)  # 15 images: not divisible by 2 ranks x batch 4
    extra = ["--data.root", str(root), "--model.pretrained", "null", "--trainer.precision", "32", *tiny_args]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = cli_validate("cls_custom.yaml", 1, tmp_path / "one", extra)
    double = cli_validate("cls_custom.yaml", 2, tmp_path / "two", extra)
    assert {"val_acc1", "val_acc5", "val_loss", "val_acc_class/red"} <= set(single)
    assert single["val_acc5"] == 1.0  # top-3 of 3 classes: a merged top-1/top-5 state would show here
    for name, value in single.items():
        assert double[name] == pytest.approx(value, abs=1e-6), name
