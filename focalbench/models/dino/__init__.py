"""DINO (DETR with Improved DeNoising Anchor Boxes) on a dense backbone: Hugging Face's Deformable DETR parts plus
DINO's contrastive denoising, mixed query selection and look-forward-twice (see :mod:`.detector`)."""

from focalbench.models.dino.criterion import DINOCriterion
from focalbench.models.dino.decoder import DINODecoder, look_forward_twice
from focalbench.models.dino.denoising import DenoisingQueries, contrastive_denoising
from focalbench.models.dino.detector import DINO
from focalbench.models.dino.query_selection import MixedQuerySelection, SelectedQueries

__all__ = [
    "DINO",
    "DINOCriterion",
    "DINODecoder",
    "DenoisingQueries",
    "MixedQuerySelection",
    "SelectedQueries",
    "contrastive_denoising",
    "look_forward_twice",
]
