"""LightningModules: the base task and the classification, segmentation and detection tasks."""
