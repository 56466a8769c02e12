"""The clinicians' rating study: the paper's Table 2 ("User study"), run as a web app.

The paper (arXiv 2411.12198, §3.3) shows 15 clinical experts 30 groups of generated
images and has them rate each image from 1 to 5 on image fidelity, mask accuracy and text
accuracy; Table 2 averages the ratings per method. This sub-package runs that study with
your own clinicians and turns their answers into Table 2:

- :mod:`~ccis.rating.criteria`: the three criteria in the paper's wording, the 1–5 scale
  and the paper's published Table 2 values.
- :mod:`~ccis.rating.study`: build a study (SQLite + image copies) from the workflow's
  training triplets and synthetic manifests: N groups, each one training mask with its
  caption and one image per generator, plus optional repeated groups.
- :mod:`~ccis.rating.blinding`: the per-rater group order and per-(rater, group) image
  order, deterministic from the study seed, so a reload shows the same page.
- :mod:`~ccis.rating.store`: the SQLite store (WAL, one commit per answer), token hashing.
- :mod:`~ccis.rating.invite`: private links, one random token per rater (hash stored).
- :mod:`~ccis.rating.app`: the Starlette web app (templates/, static/) and its server.
- :mod:`~ccis.rating.agreement`: Krippendorff's α (nominal, ordinal, interval).
- :mod:`~ccis.rating.table`: ``table2_user_study.{csv,md}``.
- :mod:`~ccis.rating.commands`: ``ccis rating-study | rating-invite | rating-serve |
  rating-table``.
"""
