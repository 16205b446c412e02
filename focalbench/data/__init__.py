"""Data modules over Hugging Face datasets, albumentations transforms, data set formats and the demo data."""
