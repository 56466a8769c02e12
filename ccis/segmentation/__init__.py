"""Downstream segmentation (paper Table 3): PraNet, Polyp-PVT and PVT-CASCADE trained on
real and on real + synthetic pairs, evaluated per image on the test sets.

The segmenters are listed in :mod:`ccis.segmentation.registry` (torch-free); the
networks live in ``pranet.py``, ``polyp_pvt.py`` and ``cascade.py`` on ``backbones.py``'s
timm feature extractors; ``train.py`` follows the reference training scripts,
``evaluate.py`` and ``metrics.py`` score test sets, ``table.py`` writes Table 3,
``commands.py`` the ``ccis`` sub-commands.
"""

from ccis.segmentation.registry import REGISTRY, SEGMENTERS, Segmenter

__all__ = ["REGISTRY", "SEGMENTERS", "Segmenter"]
