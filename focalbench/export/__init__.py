"""Taking a trained model out of focalbench: timm, Hugging Face, ONNX and torch.export, each checked after writing.

``python cli.py export --config CFG --ckpt_path CKPT --format FORMAT --output DIR`` (see :mod:`focalbench.export.run`).
"""

from focalbench.export.core import ExportError
from focalbench.export.run import FORMATS, export_task

__all__ = ["FORMATS", "ExportError", "export_task"]
