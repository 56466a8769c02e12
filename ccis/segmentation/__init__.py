"""Downstream segmentation: PraNet and Polyp-PVT trained on real and real+synthetic data."""
