"""focalbench: FocalNet for classification, detection and segmentation on PyTorch Lightning."""

__version__ = "0.1.0"
