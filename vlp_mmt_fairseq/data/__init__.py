"""Datasets and the image-feature store."""
