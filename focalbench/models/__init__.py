"""FocalNet models, checkpoint layouts, and the backbone factory shared by the tasks."""

from focalbench.models.checkpoints import CheckpointError, load_into, save_safetensors
from focalbench.models.factory import TimmBackbone, build_backbone, create_model
from focalbench.models.focalnet import FocalNet, FocalNetBackbone
from focalbench.models.focalnet_block import FocalModulation
from focalbench.models.variants import VARIANTS, get_variant, list_variants

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "FocalModulation",
    "FocalNet",
    "FocalNetBackbone",
    "TimmBackbone",
    "build_backbone",
    "create_model",
    "get_variant",
    "list_variants",
    "load_into",
    "save_safetensors",
]
