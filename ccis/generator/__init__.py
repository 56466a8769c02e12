"""Generator stages: bootstrap the tiny base, train branches, synthesize data sets.

The generators themselves are listed in :mod:`ccis.generator.registry` (torch-free);
``REGISTRY``, ``GENERATORS`` and ``ABLATIONS`` are re-exported here.
"""

from ccis.generator.registry import ABLATIONS, GENERATORS, REGISTRY, Generator

__all__ = ["ABLATIONS", "GENERATORS", "REGISTRY", "Generator"]
