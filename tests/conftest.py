"""Shared test set-up: offline, quiet, and small generated data only."""

import os
import tempfile

import pytest
import torch

# Set before huggingface_hub / datasets are imported anywhere: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded demo data is generated once per machine into a temporary cache, never into ~/.cache.
os.environ.setdefault("FOCALBENCH_CACHE", os.path.join(tempfile.gettempdir(), "focalbench-test-cache"))
# The 1×1 layers time their libraries afresh in every test: no choices kept on disk from an earlier test or run
# (forced, not a default: a developer's own cache file would make the timing tests depend on it).
os.environ["FOCALBENCH_AUTOTUNE_CACHE"] = "0"


@pytest.fixture(autouse=True)
def restore_deterministic_algorithms():
    """Lightning's ``deterministic=True`` turns ``torch.use_deterministic_algorithms`` on for the process and leaves
    it on; a test that trains with it must not change what later tests run (e.g. the 1×1 layers' autotuning)."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: the test models are tiny, and on a busy 2-core machine two OpenMP threads
    wait on each other (a 64 px FocalNet forward took 700 ms instead of 2 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _ForcedChoices(dict):
    """``focalbench.models.pointwise.choices`` that answer ``library`` for every key, recording the keys asked for."""

    def __init__(self, library: str) -> None:
        super().__init__()
        self.library, self.keys = library, []

    def get(self, key, default=None):
        self.keys.append(key)
        return self.library


@pytest.fixture
def force_pointwise_library(monkeypatch):
    """``force(library)``: every pass of the autotuned 1×1 layers on ``library`` for the test; returns the list of
    the keys the layers ask for."""
    from focalbench.models import pointwise

    def force(library: str) -> list[tuple]:
        forced = _ForcedChoices(library)
        monkeypatch.setattr(pointwise, "choices", forced)
        return forced.keys

    return force


@pytest.fixture
def count_library_calls(monkeypatch):
    """``count(slow_library=None)``: wraps every pass of the autotuned 1×1 layers' libraries for the test so that
    each call is counted per library, and ``slow_library``'s calls take 20 ms longer; returns the live counts."""
    import time

    from focalbench.models import pointwise

    def count(slow_library: str | None = None) -> dict[str, int]:
        calls = {name: 0 for name in pointwise.LIBRARIES}

        def counted(name, fn):
            def run(*args):
                calls[name] += 1
                if name == slow_library:
                    time.sleep(0.02)
                return fn(*args)

            return run

        for kind, fns in pointwise._PASSES.items():
            monkeypatch.setitem(pointwise._PASSES, kind, {name: counted(name, fn) for name, fn in fns.items()})
        return calls

    return count
