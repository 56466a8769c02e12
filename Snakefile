# CCIS: controlled colonoscopy image synthesis, end to end.
# `snakemake --cores all` runs the embedded phantom demo (config.yaml);
# `snakemake --cores all --configfile configs/paper.yaml` reproduces the paper;
# `snakemake --cores all --directory .test` runs the tests' micro configuration.
# The rule files below are the DAG in order: each stage's inputs are earlier outputs.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/caption.smk"
include: "rules/generator.smk"
include: "rules/segmentation.smk"
include: "rules/metrics.smk"
include: "rules/rating.smk"
include: "rules/report.smk"


rule all:
    input:
        manifests=expand(rules.prepare.output.manifest, split=sorted(SPLITS)),
        triplets=TRIPLETS,
        synthetic=expand(rules.gather_synthetic.output[0], generator=GENERATORS),
        report=rules.report.output[0],
        # Table 2 only once raters have answered (ccis rating-serve, outside the DAG).
        rating=rules.rating_table.output if RATED else [],
    default_target: True
