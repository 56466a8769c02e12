"""Helpers shared by every stage: atomic writes, hashing, logging."""
