"""The generators, named without importing torch or diffusers.

Each entry says which branch class builds the generator (``module:Class``, a diffusers
``ModelMixin`` with a ``from_unet(unet, **options)`` class method), the switches it is
built with, how tables and figures name it, what an ablation removes, and the paper's
published values for it. The command line, the config schema's enums, the rules'
wildcards, branch building and loading, Table 1, Table 3 and the figure grids all read
this mapping: adding a generator is one module with its branch class plus one entry
here (README, "How to add a generator").

The CCIS-Diff family is one class with three switches; each ablation turns exactly one
of them off (a test compares their configs):

- ``bmws``: the blur-mask encoder and its gate (Fb). Without it there is no Fb, so the
  re-injection, which adds Fb after cross-attention, has nothing to add and is inert.
- ``taam``: the text-aware key bias ``log(1 + λ·S)`` in the branch's self-attention.
- ``reinject``: ``+ ZeroConv(resize(Fb))`` after each cross-attention of the branch.

ControlNet is the same class with all three off (numerically diffusers' model). The peers
have their own classes: Uni-ControlNet's adapter, and Siamese-Diffusion's ControlNet,
whose class also brings its own training objective (``training_loss``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from ccis.common.dotted import import_target

CCIS_BRANCH = "ccis.diffusion.model:CCISControlNetModel"


@dataclass(frozen=True)
class Generator:
    """One generator: how it is built and how tables and figures name it."""

    label: str  # Table 1 and the report
    short: str  # figure columns
    network: str = CCIS_BRANCH  # "module:Class" of the branch
    switches: dict[str, bool] = field(default_factory=dict)  # options of from_unet
    removes: str = ""  # for an ablation: what it removes from CCIS-Diff
    row: str = ""  # Table 3's row name after "+" (default: short)
    # The paper's Table 1 (fid, clip_score, clip_image), Table 2 (mean clinician rating
    # 1-5 per criterion: fidelity, mask, text) and Table 3 (segmenter -> test set ->
    # (mDice, mIoU) in %, that segmenter trained on real + this generator's data).
    paper_table1: dict[str, float] = field(default_factory=dict)
    paper_table2: dict[str, float] = field(default_factory=dict)  # fidelity, mask, text
    paper_table3: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

    @property
    def table3_row(self) -> str:
        return self.row or self.short


def _ccis(bmws: bool, taam: bool, reinject: bool) -> dict[str, bool]:
    return {"bmws": bmws, "taam": taam, "reinject": reinject}


# Paper values: arXiv 2411.12198, Table 1 ("The quantitative results of the colonoscopy
# image synthesis"), Table 2 ("User study") and Table 3 ("Comparisons of different
# settings applied on two polyp segmentation baselines across three public datasets").
# The ablations have none; a later peer carries its own paper's values (sources beside it).
REGISTRY: dict[str, Generator] = {
    "ccis": Generator(
        "CCIS-Diff (ours)", "CCIS-Diff (ours)", switches=_ccis(True, True, True), row="Ours",
        paper_table1={"fid": 71.73, "clip_score": 31.96, "clip_image": 88.70},
        paper_table2={"fidelity": 4.266, "mask": 4.466, "text": 4.518},
        paper_table3={
            "pranet": {"cvc300": (88.5, 81.0), "clinicdb": (92.8, 88.0), "kvasir": (92.8, 87.1)},
            "polyp_pvt": {
                "cvc300": (89.3, 82.1), "clinicdb": (93.5, 88.4), "kvasir": (92.4, 87.0)},
        },
    ),
    "controlnet": Generator(
        "ControlNet", "ControlNet", switches=_ccis(False, False, False),
        paper_table1={"fid": 87.32, "clip_score": 30.78, "clip_image": 87.09},
        paper_table2={"fidelity": 3.852, "mask": 3.962, "text": 3.918},
        paper_table3={
            "pranet": {"cvc300": (85.4, 77.7), "clinicdb": (90.1, 85.1), "kvasir": (90.6, 85.2)},
            "polyp_pvt": {
                "cvc300": (88.3, 81.4), "clinicdb": (92.7, 88.2), "kvasir": (90.3, 84.8)},
        },
    ),
    "unicontrolnet": Generator(
        "Uni-ControlNet", "Uni-ControlNet",
        network="ccis.diffusion.unicontrolnet:UniControlNetAdapter",
        paper_table1={"fid": 92.74, "clip_score": 30.57, "clip_image": 86.46},
        paper_table2={"fidelity": 2.904, "mask": 2.966, "text": 3.392},
        paper_table3={
            "pranet": {"cvc300": (85.9, 78.2), "clinicdb": (89.5, 85.1), "kvasir": (87.9, 82.5)},
            "polyp_pvt": {
                "cvc300": (85.8, 79.6), "clinicdb": (89.3, 83.8), "kvasir": (86.5, 80.7)},
        },
    ),
    # Siamese-Diffusion (Qiu et al., CVPR 2025, arXiv 2505.06068): FID 62.706 on Polyps
    # (PraNet's training set) under its own protocol, from alphaXiv's overview of the
    # paper ("to 62.706"); CLIP scores are not reported. Its abstract's gain, SANet +3.6
    # mDice / +4.4 mIoU on Polyps, is for a segmenter we do not train: no Table 3 values.
    "siamese": Generator(
        "Siamese-Diffusion", "Siamese-Diffusion",
        network="ccis.diffusion.siamese:SiameseControlNetModel",
        paper_table1={"fid": 62.706},
    ),
    "ccis_no_bmws": Generator(
        "CCIS-Diff w/o BMWS", "w/o BMWS", switches=_ccis(False, True, True),
        removes="the blur-mask encoder and gate (Fb; the re-injection then has nothing to add)",
    ),
    "ccis_no_taam": Generator(
        "CCIS-Diff w/o TAAM", "w/o TAAM", switches=_ccis(True, False, True),
        removes="TAAM's text-aware bias log(1 + λ·S) in self-attention (re-injection kept)",
    ),
    "ccis_no_reinject": Generator(
        "CCIS-Diff w/o re-injection", "w/o re-inject", switches=_ccis(True, True, False),
        removes="the re-injection of Fb after cross-attention (TAAM's bias kept)",
    ),
}  # fmt: skip
GENERATORS = tuple(REGISTRY)
ABLATIONS = tuple(name for name, g in REGISTRY.items() if g.removes)


def spec(name: str) -> Generator:
    """The registry entry of generator ``name`` (a clear error for unknown names)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def label(name: str) -> str:
    """Table 1's name of a generator (its own name when it is not registered)."""
    return REGISTRY[name].label if name in REGISTRY else name


def short_label(name: str) -> str:
    """A generator's figure-column name (its own name when it is not registered)."""
    return REGISTRY[name].short if name in REGISTRY else name


resolve = import_target  # the class an entry's ``network`` names


def build_branch(name: str, unet, **options):
    """Generator ``name``'s trainable branch for ``unet``: its class's ``from_unet`` with the
    entry's switches and whichever of ``options`` (shapes, σ, λ) that method accepts."""
    entry = spec(name)
    cls = resolve(entry.network)
    accepted = inspect.signature(cls.from_unet).parameters
    kwargs = {key: value for key, value in options.items() if key in accepted}
    return cls.from_unet(unet, **entry.switches, **kwargs)


def load_branch(folder):
    """A trained branch folder, loaded with the registered class that wrote it."""
    from ccis.diffusion.branch import load_branch as load

    classes = {resolve(entry.network) for entry in REGISTRY.values()}
    return load(folder, sorted(classes, key=lambda c: c.__name__))
