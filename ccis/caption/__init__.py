"""Captioning: measure polyp attributes from pixels, then phrase them as text.

``measure_attributes`` grounds every caption; ``TemplateCaptioner`` and
``LlamaCaptioner`` turn attributes into sentences behind one interface.
"""

from ccis.caption.attributes import Attributes, measure_attributes
from ccis.caption.base import Caption, Captioner

__all__ = ["Attributes", "Caption", "Captioner", "measure_attributes"]
