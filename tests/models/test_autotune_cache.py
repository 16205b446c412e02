"""The 1×1 layers' library choices kept on disk (``focalbench.models.autotune_cache``): a timed choice is written,
a later run on the same machine takes it without timing, and a missing, foreign, broken or unwritable file only
means timing again."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from focalbench.models import autotune_cache, pointwise
from focalbench.models.focalnet import FocalNet
from focalbench.models.pointwise import pointwise_conv2d


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    """A fresh process's state with the choices kept in ``tmp_path``; returns the file's path."""
    path = tmp_path / "choices.json"
    monkeypatch.setenv("FOCALBENCH_AUTOTUNE_CACHE", str(path))
    monkeypatch.setattr(pointwise, "_enabled", True)
    new_process(monkeypatch)
    return path


def new_process(monkeypatch) -> None:
    """Forgets what this process chose, timed and read, as a new run starts."""
    monkeypatch.setattr(pointwise, "choices", {})
    monkeypatch.setattr(pointwise, "trials", {})
    monkeypatch.setattr(autotune_cache, "_loaded", None)
    monkeypatch.setattr(autotune_cache, "_warned", set())


@pytest.fixture
def library_calls(monkeypatch, count_library_calls):
    """Counts each library's passes and how many were timed; MKL is made slow, so oneDNN is the timed choice."""
    calls = count_library_calls("mkl")
    calls["timed"] = 0
    timed = pointwise._timed

    def count_timed(fn, *args):
        calls["timed"] += 1
        return timed(fn, *args)

    monkeypatch.setattr(pointwise, "_timed", count_timed)
    return calls


def _operands():
    x = torch.randn(2, 5, 3, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    return x, torch.randn(7, 5, 1, 1, requires_grad=True), torch.randn(7, requires_grad=True)


def _step(x, w, b) -> None:
    pointwise_conv2d(x, w, b).sum().backward()


def _time_both_keys(x, w, b) -> None:
    for _ in range(2 * (1 + pointwise.TIMED_ROUNDS)):
        _step(x, w, b)


def test_a_timed_choice_is_written_and_a_later_run_takes_it_without_timing(cache_file, library_calls, monkeypatch):
    x, w, b = _operands()
    _time_both_keys(x, w, b)
    assert library_calls["timed"] == 4 * (1 + pointwise.TIMED_ROUNDS)  # 2 keys x 2 libraries x 3 calls
    content = json.loads(cache_file.read_text())
    assert list(content) == [autotune_cache.machine()]
    assert content[autotune_cache.machine()] == {autotune_cache.encode(k): "onednn" for k in pointwise.choices}
    assert len(pointwise.choices) == 2  # the forward key and the backward key

    new_process(monkeypatch)
    before = dict(library_calls)
    _step(x, w, b)
    assert library_calls["timed"] == before["timed"]  # no timing: both keys came from the file
    assert library_calls["mkl"] == before["mkl"] and library_calls["onednn"] == before["onednn"] + 2
    assert set(pointwise.choices.values()) == {"onednn"}


def test_the_stored_library_is_the_one_that_runs(cache_file, library_calls):
    x, w, b = _operands()
    keys = [pointwise._key(kind, x, w) for kind in ("forward", "backward")]
    cache_file.write_text(json.dumps({autotune_cache.machine(): {autotune_cache.encode(k): "mkl" for k in keys}}))
    _step(x, w, b)
    assert library_calls == {"onednn": 0, "mkl": 2, "timed": 0}


def test_another_machines_choices_and_unknown_libraries_are_not_taken(cache_file, library_calls):
    assert autotune_cache.machine().endswith(f") | torch {torch.__version__}")  # "model (flags' digest) | torch"
    x, w, b = _operands()
    forward, backward = (autotune_cache.encode(pointwise._key(kind, x, w)) for kind in ("forward", "backward"))
    other = "Another CPU | torch 0.0"
    cache_file.write_text(
        json.dumps({other: {forward: "mkl", backward: "mkl"}, autotune_cache.machine(): {forward: "cudnn"}})
    )
    _step(x, w, b)
    assert library_calls["timed"] == 2  # both keys are timed
    _time_both_keys(x, w, b)
    content = json.loads(cache_file.read_text())
    assert content[other] == {forward: "mkl", backward: "mkl"}  # kept as it was
    assert content[autotune_cache.machine()] == {forward: "onednn", backward: "onednn"}


def test_turned_off_or_deterministic_runs_ignore_the_file(cache_file, library_calls):
    x, w, b = _operands()
    keys = [pointwise._key(kind, x, w) for kind in ("forward", "backward")]
    cache_file.write_text(json.dumps({autotune_cache.machine(): {autotune_cache.encode(k): "mkl" for k in keys}}))
    pointwise.set_autotune(False)
    try:
        _step(x, w, b)
    finally:
        pointwise.set_autotune(True)
    assert library_calls == {"onednn": 2, "mkl": 0, "timed": 0}


def test_cache_0_keeps_choices_in_memory_only(tmp_path, monkeypatch, library_calls):
    monkeypatch.setenv("FOCALBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("FOCALBENCH_AUTOTUNE_CACHE", "0")
    new_process(monkeypatch)
    assert autotune_cache.cache_path() is None
    _time_both_keys(*_operands())
    assert len(pointwise.choices) == 2 and list(tmp_path.iterdir()) == []
    monkeypatch.delenv("FOCALBENCH_AUTOTUNE_CACHE")
    assert autotune_cache.cache_path() == tmp_path / "pointwise-autotune.json"  # the default: beside the demo data


def test_a_broken_file_is_named_once_then_replaced(cache_file, library_calls, caplog):
    cache_file.write_text("{not json")
    x, w, b = _operands()
    with caplog.at_level(logging.WARNING, logger=autotune_cache.__name__):
        _time_both_keys(x, w, b)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(cache_file) in warnings[0] and "timed again" in warnings[0]
    assert library_calls["timed"] == 4 * (1 + pointwise.TIMED_ROUNDS)
    assert len(json.loads(cache_file.read_text())[autotune_cache.machine()]) == 2


def test_an_unwritable_location_is_named_once_and_training_goes_on(tmp_path, monkeypatch, library_calls, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FOCALBENCH_AUTOTUNE_CACHE", str(blocker / "choices.json"))  # its folder is a file
    new_process(monkeypatch)
    torch.manual_seed(0)
    model = FocalNet(embed_dim=8, depths=(1, 1), focal_levels=(2, 2), num_classes=3, drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    with caplog.at_level(logging.WARNING, logger=autotune_cache.__name__):
        for _ in range(2 * (1 + pointwise.TIMED_ROUNDS)):
            model(x).sum().backward()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "not written" in warnings[0] and "FOCALBENCH_AUTOTUNE_CACHE" in warnings[0]
    assert len(pointwise.choices) == 16 and pointwise.trials == {}  # 4 shapes a stage (h, proj alike) x 2 passes
    assert blocker.read_text() == ""


WRITER = """
import sys
from focalbench.models import autotune_cache
for i in range(200):
    autotune_cache.store(("forward", int(sys.argv[1]), i, 10, "torch.float32", 2), "onednn")
"""


def test_processes_storing_at_once_leave_a_whole_file(cache_file):
    """DDP ranks time and store their keys at the same moment: every write replaces the file whole, so at the end
    it parses and holds the keys of some process's complete final write (keys a race dropped are timed again)."""
    env = {**os.environ, "FOCALBENCH_AUTOTUNE_CACHE": str(cache_file)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(rank)], env=env) for rank in (1, 2)]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    stored = json.loads(cache_file.read_text())[autotune_cache.machine()]
    assert all(value == "onednn" for value in stored.values())
    last = {autotune_cache.encode(("forward", rank, 199, 10, "torch.float32", 2)) for rank in (1, 2)}
    assert last & stored.keys()  # the file's final content came from a complete write of one of them
    assert not [p for p in cache_file.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind
