"""``test`` scores the data's own test split when it has one (COCO ``instances_test*.json``), else the validation
split, and says which in one line."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from focalbench.data.detection import DetectionDataModule


def _coco_writer():
    # The COCO-folder writer lives beside this file; tests are not a package (importlib import mode).
    path = Path(__file__).with_name("test_detection.py")
    spec = importlib.util.spec_from_file_location("detection_data_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_coco


@pytest.mark.parametrize("with_test", [True, False])
def test_detection_test_loader_is_the_coco_test_split_when_there_is_one(tmp_path, caplog, with_test):
    write_coco = _coco_writer()
    write_coco(tmp_path, "train", 4, seed=0, suffix="2017")
    write_coco(tmp_path, "val", 2, seed=1, suffix="2017")
    if with_test:
        write_coco(tmp_path, "test", 3, seed=2, suffix="2017")
    data = DetectionDataModule(root=str(tmp_path), num_workers=0)
    data.setup("test")
    with caplog.at_level(logging.INFO):
        loader = data.test_dataloader()
    if with_test:
        assert len(loader.dataset) == 3 and "test: scoring the 'test2017' split (3 samples)" in caplog.text
        assert {Path(r.source).parent.name for r in loader.dataset.records} == {"test2017"}
    else:
        assert len(loader.dataset) == 2
        assert "no test split: scoring the validation split 'val2017' (2 samples)" in caplog.text
