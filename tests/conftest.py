"""Shared test set-up: offline, quiet, and small generated data only."""

import os
import tempfile

# Set before huggingface_hub / datasets are imported anywhere: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded demo data is generated once per machine into a temporary cache, never into ~/.cache.
os.environ.setdefault("FOCALBENCH_CACHE", os.path.join(tempfile.gettempdir(), "focalbench-test-cache"))
