"""The paper's three rating criteria, its 1–5 scale and its published Table 2.

Wording from arXiv 2411.12198: "Participants were required to rate the synthesized
images based on three criteria: image fidelity, mask accuracy, and text accuracy", and
Table 2's caption: "The rating scale ranges from 1 to 5, with higher numbers indicating
better performance." The one-line questions under each criterion are ours (the paper
gives none); they say what each criterion compares the image with.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    """One rating scale: its key (database, API, CSV), the paper's name and our prompt."""

    key: str
    label: str
    question: str


CRITERIA: tuple[Criterion, ...] = (
    Criterion("fidelity", "Image Fidelity", "How realistic is the image as a colonoscopy frame?"),
    Criterion(
        "mask", "Mask Accuracy", "How well do the polyp's position, size and shape follow the mask?"
    ),
    Criterion(
        "text", "Text Accuracy", "How well does the polyp (and background) match the caption?"
    ),
)
CRITERION_KEYS = tuple(c.key for c in CRITERIA)
SCALE = (1, 2, 3, 4, 5)
SCALE_NOTE = (
    "The rating scale ranges from 1 to 5, with higher numbers indicating better performance."
)

# Table 2 of the paper ("User study"; 30 groups, 15 clinical experts, means only): each
# generator's values are in its ccis.generator.registry entry (paper_table2).
PAPER_GROUPS = 30
PAPER_RATERS = 15
