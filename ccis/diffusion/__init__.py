"""CCIS-Diff on diffusers (paper §2.2): the trainable branches and how they are sampled.

``model.py`` is CCIS-Diff's branch (ControlNet with BMWS, ``bmws.py``, and TAAM,
``taam.py``, behind switches); ``unicontrolnet.py`` and ``siamese.py`` are the peers
Uni-ControlNet and Siamese-Diffusion; ``branch.py`` holds what every branch shares (the
UNet-encoder copy, loading); ``objective.py`` what a branch trains to minimise (the
ε-MSE, or a class's own ``training_loss``);
``mask_init.py`` initialises the mask encoders; ``pipeline.py`` samples with DDIM and
classifier-free guidance; ``presets.py`` builds the tiny base and loads SD v1.5.
"""

from ccis.diffusion.model import CCISControlNetModel
from ccis.diffusion.taam import content_token_mask, text_scores

__all__ = ["CCISControlNetModel", "content_token_mask", "text_scores"]
