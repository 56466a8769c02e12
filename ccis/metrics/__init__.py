"""Generation metrics: FID, CLIP-score, CLIP-image, attribute agreement, mask fidelity."""
