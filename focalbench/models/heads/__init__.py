"""Dense-prediction heads built from a backbone's ``out_channels``."""

from focalbench.models.heads.uper import PPM, FCNHead, UPerHead, UPerNet

__all__ = ["PPM", "FCNHead", "UPerHead", "UPerNet"]
