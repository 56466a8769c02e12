"""The segmenters Table 3 trains, named without importing torch.

Each entry says where the network class lives (``module:Class``, built on a four-level
timm backbone by :func:`ccis.segmentation.models.build_segmenter`), how its reference
script optimises it, which backbones the paper and the CPU demo use, and the paper's
Table 3 row for it trained on real data only. The command line, the config schema's
enums and per-model defaults, the rules' wildcards and the tables all read this mapping:
adding a segmenter is one module with its network plus one entry here (README, "How to
add a segmenter").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ccis.common.dotted import import_target


@dataclass(frozen=True)
class Segmenter:
    """One segmenter: its network, its reference training recipe and its labels."""

    label: str  # Table 3 rows and figures
    network: str  # "module:Class"; the class takes a ccis.segmentation.backbones.Backbone
    optimizer: str  # "adam" or "adamw", as the reference script
    weight_decay: float
    drop_path_rate: float  # stochastic depth of the backbone
    backbone: str  # timm name of the paper's backbone
    demo_backbone: str  # a small timm model of the same family for the CPU demo
    epochs: int  # the reference loop's epoch count
    learning_rate: float = 1e-4
    # Published values on real data only: test set -> (mDice, mIoU) in %, shown in Table 3
    # with ``report.paper``; ``paper_source`` says where they come from.
    paper_real: dict[str, tuple[float, float]] = field(default_factory=dict)
    paper_source: str = "the CCIS-Diff paper's Table 3"


REGISTRY: dict[str, Segmenter] = {
    # PraNet (DengPingFan/PraNet, MyTrain.py): Adam, no weight decay; its loop
    # range(1, 20) trains 19 epochs. Res2Net-50 v1b 26w4s = timm res2net50d's keys.
    "pranet": Segmenter(
        "PraNet", "ccis.segmentation.pranet:PraNet", "adam", 0.0, 0.0,
        backbone="res2net50d", demo_backbone="resnet10t", epochs=19,
        paper_real={"cvc300": (86.1, 79.1), "clinicdb": (90.8, 86.1), "kvasir": (89.2, 84.0)},
    ),
    # Polyp-PVT (DengPingFan/Polyp-PVT, Train.py): AdamW, weight decay 1e-4, PVTv2-b2
    # with stochastic depth 0.1; its loop range(1, 100) trains 99 epochs.
    "polyp_pvt": Segmenter(
        "PVT", "ccis.segmentation.polyp_pvt:PolypPVT", "adamw", 1e-4, 0.1,
        backbone="pvt_v2_b2", demo_backbone="pvt_v2_b0", epochs=99,
        paper_real={"cvc300": (88.2, 81.2), "clinicdb": (92.8, 87.6), "kvasir": (91.5, 86.8)},
    ),
    # PVT-CASCADE (SLDGroup/CASCADE, train_polyp.py): AdamW lr 1e-4, weight decay 1e-4,
    # PVTv2-b2 with stochastic depth 0.1 (its lib/pvtv2.py); range(1, 100) trains 99 epochs.
    # Batch 16, 352², scales 0.75/1/1.25, clamp 0.5 and the structure loss with the same
    # reduce='none' quirk: the PraNet protocol as it stands. The CCIS-Diff paper did not run
    # it, so its values are the CASCADE paper's own (Kvasir, CVC-ClinicDB; as listed by Papers
    # with Code's "results from the paper"); its test script scores Dice at 0.5, not mDice.
    # Its CVC-300 (EndoScene) value is left out: no copy of the paper's table was at hand.
    "pvt_cascade": Segmenter(
        "PVT-CASCADE", "ccis.segmentation.cascade:PVTCascade", "adamw", 1e-4, 0.1,
        backbone="pvt_v2_b2", demo_backbone="pvt_v2_b0", epochs=99,
        paper_real={"clinicdb": (94.34, 89.98), "kvasir": (92.58, 87.76)},
        paper_source="the CASCADE paper (Rahman & Marculescu, WACV 2023), real data only, "
        "its test script's mean Dice at threshold 0.5",
    ),
}  # fmt: skip
SEGMENTERS = tuple(REGISTRY)
# Forms of the structure loss (ccis.segmentation.loss): the released code's, or both terms
# boundary-weighted as the papers write it.
LOSSES = ("reference", "weighted")


def segmenter(name: str) -> Segmenter:
    """The registry entry of segmenter ``name`` (a clear error for unknown names)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def resolve_network(entry: Segmenter) -> type:
    """The network class an entry names as ``module:Class`` (imports the module)."""
    return import_target(entry.network)
