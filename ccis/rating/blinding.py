"""What order a rater sees: groups shuffled per rater, images shuffled per rater and group.

Both orders are pure functions of (study seed, rater, group), so a reload, a resumed
session or another server process shows the same page, while two raters (or two groups)
see the generators in independent orders. Repeated groups come after their original,
at least ``MIN_GAP`` groups later where the study is long enough, so that a rater meets
them as new groups rather than as an immediate echo.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

MIN_GAP = 5


def _rng(*parts: object) -> random.Random:
    """A random generator seeded by a hash of ``parts`` (stable across processes)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def group_sequence(seed: int, rater_id: int, groups: Sequence[tuple[int, int | None]]) -> list[int]:
    """Group ids in the order rater ``rater_id`` sees them.

    ``groups``: (group id, id of the group it repeats or None). Originals are shuffled;
    each repeat is then inserted at a random place after its original.
    """
    rng = _rng(seed, "groups", rater_id)
    order = sorted(g for g, repeat_of in groups if repeat_of is None)
    rng.shuffle(order)
    repeats = sorted((g, repeat_of) for g, repeat_of in groups if repeat_of is not None)
    rng.shuffle(repeats)
    for group, original in repeats:
        if original not in order:
            raise ValueError(f"group {group} repeats group {original}, which is not a group")
        low = min(len(order), order.index(original) + 1 + MIN_GAP)
        order.insert(rng.randint(low, len(order)), group)
    return order


def image_sequence(seed: int, rater_id: int, group_id: int, image_ids: Sequence[str]) -> list[str]:
    """The images of a group in the order rater ``rater_id`` sees them."""
    order = sorted(image_ids)
    _rng(seed, "images", rater_id, group_id).shuffle(order)
    return order
