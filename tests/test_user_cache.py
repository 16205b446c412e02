"""``focalbench.user_cache``: one place decides where the demo data and the 1×1 layers' choices are kept."""

from pathlib import Path

from focalbench.data.demo import VERSION, default_root
from focalbench.models import autotune_cache
from focalbench.user_cache import cache_root


def test_the_cache_root_follows_focalbench_cache_with_home_expanded(monkeypatch):
    monkeypatch.setenv("FOCALBENCH_CACHE", "~/elsewhere")
    assert cache_root() == Path.home() / "elsewhere"
    monkeypatch.delenv("FOCALBENCH_CACHE")
    assert cache_root() == Path.home() / ".cache" / "focalbench"
    monkeypatch.delenv("FOCALBENCH_AUTOTUNE_CACHE")
    assert default_root() == cache_root() / VERSION
    assert autotune_cache.cache_path() == cache_root() / "pointwise-autotune.json"
