# CCIS: controlled colonoscopy image synthesis, end to end.
# `snakemake --cores all` runs the embedded phantom demo (config.yaml);
# `snakemake --cores all --configfile configs/paper.yaml` reproduces the paper.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/caption.smk"
include: "rules/generator.smk"
include: "rules/segmentation.smk"
include: "rules/metrics.smk"
include: "rules/report.smk"


rule all:
    input:
        manifests=all_manifests(),
        triplets=f"{RESULTS}/captions/{TRAIN}.parquet",
        synthetic=expand(f"{RESULTS}/synthetic/{{generator}}.parquet", generator=GENERATORS),
        report=f"{RESULTS}/report/index.html",
    default_target: True
