"""``focalbench.atomic``: the target is replaced whole once the block succeeds, untouched when it fails."""

import os

import pytest

from focalbench.atomic import atomic_path


def test_the_file_appears_whole_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "new" / "file.txt"
    with atomic_path(target) as temporary:
        assert os.path.dirname(temporary) == str(target.parent) and not target.exists()
        with open(temporary, "w") as handle:
            handle.write("whole")
    assert target.read_text() == "whole" and os.listdir(target.parent) == ["file.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        with open(temporary, "w") as handle:
            handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["file.txt"]
