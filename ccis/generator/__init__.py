"""Generator stages: bootstrap the tiny base, train branches, synthesize data sets.

The generators are named here, without importing torch or diffusers, so the command line,
the rules and the tables know them cheaply. The CCIS-Diff family is one class with three
switches; each ablation turns exactly one of them off (a test compares their configs):

- ``bmws``: the blur-mask encoder and its gate (Fb). Without it there is no Fb, so the
  re-injection, which adds Fb after cross-attention, has nothing to add and is inert.
- ``taam``: the text-aware key bias ``log(1 + λ·S)`` in the branch's self-attention.
- ``reinject``: ``+ ZeroConv(resize(Fb))`` after each cross-attention of the branch.

ControlNet is the same class with all three off (numerically diffusers' model).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Generator:
    """One generator: how it is built and how tables and figures name it."""

    label: str  # Table 1 and the report
    short: str  # figure columns and Table 3 rows
    switches: dict[str, bool] = field(default_factory=dict)  # CCIS-family model switches
    family: str = "ccis"  # "ccis" (CCISControlNetModel) or "unicontrolnet"
    removes: str = ""  # for an ablation: what it removes from CCIS-Diff


def _ccis(bmws: bool, taam: bool, reinject: bool) -> dict[str, bool]:
    return {"bmws": bmws, "taam": taam, "reinject": reinject}


REGISTRY: dict[str, Generator] = {
    "ccis": Generator("CCIS-Diff (ours)", "CCIS-Diff (ours)", _ccis(True, True, True)),
    "controlnet": Generator("ControlNet", "ControlNet", _ccis(False, False, False)),
    "unicontrolnet": Generator("Uni-ControlNet", "Uni-ControlNet", family="unicontrolnet"),
    "ccis_no_bmws": Generator(
        "CCIS-Diff w/o BMWS", "w/o BMWS", _ccis(False, True, True),
        removes="the blur-mask encoder and gate (Fb; the re-injection then has nothing to add)",
    ),
    "ccis_no_taam": Generator(
        "CCIS-Diff w/o TAAM", "w/o TAAM", _ccis(True, False, True),
        removes="TAAM's text-aware bias log(1 + λ·S) in self-attention (re-injection kept)",
    ),
    "ccis_no_reinject": Generator(
        "CCIS-Diff w/o re-injection", "w/o re-inject", _ccis(True, True, False),
        removes="the re-injection of Fb after cross-attention (TAAM's bias kept)",
    ),
}  # fmt: skip
GENERATORS = tuple(REGISTRY)
ABLATIONS = tuple(name for name, g in REGISTRY.items() if g.removes)
