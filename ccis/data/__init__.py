"""Data stage (paper §3.1): colonoscopy image–mask pairs in one normalised layout.

``prepare.py`` renders phantom frames (``phantom.py``, the CPU demo's stand-in for real
colonoscopy) or imports real data sets through the importers of ``layouts.py``
(Kvasir-SEG, CVC-ClinicDB, CVC-300/EndoScene, ...) and ``readers.py``; every split gets
``<split>/{images,masks}/<id>.png`` and a Parquet manifest (``manifest.py``).
``sheet.py`` draws contact sheets; ``commands.py`` holds the ``ccis`` sub-commands.
Adding an importer is one entry in ``layouts.LAYOUTS``.
"""
