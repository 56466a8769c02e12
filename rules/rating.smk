# The clinicians' rating study (paper Table 2). `rating_study` builds the study from the
# training triplets and the synthetic sets; raters answer through `ccis rating-serve`,
# outside the DAG; `rating_table` turns their answers into Table 2. The study file is
# deliberately no rule's output: Snakemake deletes outputs before re-running a job, and
# collected ratings must never go that way. `ccis rating-study` keeps an unchanged study
# (raters and ratings included) and refuses to replace a different one that has ratings.
from ccis.rating.store import StudyError, count_ratings

RATING = config["rating"]
RATING_DB = f"{RESULTS}/rating/study.sqlite"
RATING_GENERATORS = RATING["generators"] or GENERATORS
if set(RATING_GENERATORS) - set(GENERATORS):
    raise WorkflowError(
        f"rating.generators: {sorted(set(RATING_GENERATORS) - set(GENERATORS))} "
        f"not among the configured generators {GENERATORS}"
    )


# Table 2 once the study holds ratings (they are collected outside the DAG); the report
# then includes it.
try:
    RATED = count_ratings(RATING_DB) > 0
except StudyError as err:
    raise WorkflowError(str(err)) from None


rule rating_study:
    input:
        triplets=TRIPLETS,
        synthetic=expand(rules.gather_synthetic.output[0], generator=RATING_GENERATORS),
    output:
        f"{RESULTS}/rating/study.json",
    params:
        db=RATING_DB,
        synthetic=lambda wildcards, input: quoted(
            [arg for g, path in zip(RATING_GENERATORS, input.synthetic)
             for arg in ("--synthetic", f"{g}={path}")]
        ),
        args=quoted(
            [
                "--groups", RATING["groups"],
                "--repeats", RATING["repeats"],
                "--seed", RATING["seed"],
                "--title", RATING["title"],
            ]
        ),
    log:
        f"{RESULTS}/logs/rating/study.log",
    benchmark:
        f"{RESULTS}/benchmarks/rating/study.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis rating-study --triplets {input.triplets} {params.synthetic} --out {params.db}"
        " --spec {output} {params.args} > {log} 2>&1"


rule rating_table:
    input:
        # The study file itself: new ratings make it newer than the table, so the table is
        # rebuilt (a running server folds its WAL into the file when it stops).
        study=RATING_DB,
    output:
        csv=f"{RESULTS}/report/table2_user_study.csv",
        md=f"{RESULTS}/report/table2_user_study.md",
    params:
        paper="--paper" if config["report"]["paper"] else "",
    log:
        f"{RESULTS}/logs/report/table2.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/table2.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis rating-table --study {input.study} --out-csv {output.csv} --out-md {output.md}"
        " {params.paper} > {log} 2>&1"
