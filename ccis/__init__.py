"""CCIS: controlled colonoscopy image synthesis (CCIS-Diff) as a reproducible workflow."""

__version__ = "0.1.0"
