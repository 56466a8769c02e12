# Figures (paper Fig. 3 and Fig. 4 grids, loss curves, segmentation bars) and the one-page
# HTML report that gathers them with the tables, the config used and software versions.
import json

from ccis.generator import ABLATIONS, REGISTRY

REPORT = config["report"]
# Generators whose branch has TAAM (they log λ per block), and the Fig. 4 ablation grid:
# CCIS-Diff and those of its ablations that are configured.
TAAM_GENERATORS = [g for g in GENERATORS if REGISTRY[g].switches.get("taam")]
ABLATION_GRID = [g for g in ("ccis", *ABLATIONS) if g in GENERATORS]
# Each figure's caption (shared with `snakemake --report`) as one paragraph.
FIGURE_CAPTIONS = {
    name: " ".join(
        (Path(workflow.basedir) / "workflow" / "report" / f"{name}.rst").read_text().split()
    ).replace("**", "")
    for name in ("fig3", "fig4", "losses", "segmentation")
}
# `ccis figure-grid` options: masks × prompts per grid, sampled as in synthesis.
GRID_ARGS = quoted(
    [
        "--masks", REPORT["grid_masks"],
        "--prompts-per-mask", REPORT["grid_prompts"],
        "--steps", SYNTHESIS["steps"],
        "--guidance-scale", SYNTHESIS["guidance_scale"],
        "--seed", SYNTHESIS["seed"],
    ]
)


# Fig. 3 (every generator) and Fig. 4 (CCIS-Diff and its ablations): one rule each, so
# that each output has its own report caption.
for figure, grid_generators in (("fig3", GENERATORS), ("fig4", ABLATION_GRID)):

    rule:
        name:
            f"figure_{figure}"
        input:
            triplets=TRIPLETS,
            base=BASE_INPUTS,
            branches=expand(rules.train_generator.output[0], generator=grid_generators),
        output:
            report(
                f"{RESULTS}/report/figures/{figure}.png",
                caption=f"../workflow/report/{figure}.rst",
                category="Figures",
            ),
        params:
            base=base_path,
            branches=lambda wildcards, input: branch_args(input.branches),
            args=GRID_ARGS,
            model=MODEL_ARGS,
        log:
            f"{RESULTS}/logs/report/{figure}.log",
        benchmark:
            f"{RESULTS}/benchmarks/report/{figure}.tsv"
        threads: MODEL["threads"]
        resources:
            mem_mb=4000 if MODEL["preset"] == "tiny" else 24000,
            runtime=30,
            gpu=min(1, TRAINING["gpus"]),
        conda:
            "../envs/ccis.yaml"
        shell:
            "ccis figure-grid --base {params.base} {params.branches} --triplets {input.triplets}"
            " --out {output} {params.args} {params.model} --threads {threads} > {log} 2>&1"


rule figure_losses:
    input:
        expand(rules.train_generator.output[0], generator=GENERATORS),
    output:
        report(
            f"{RESULTS}/report/figures/losses.png",
            caption="../workflow/report/losses.rst",
            category="Figures",
        ),
    params:
        branches=lambda wildcards, input: branch_args(input),
    log:
        f"{RESULTS}/logs/report/losses.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/losses.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis figure-losses {params.branches} --out {output} > {log} 2>&1"


rule taam_lambda_table:
    input:
        expand(rules.train_generator.output[0], generator=TAAM_GENERATORS),
    output:
        f"{RESULTS}/report/taam_lambda.md",
    params:
        branches=lambda wildcards, input: branch_args(input),
        start=TRAINING["taam_lambda"],
    log:
        f"{RESULTS}/logs/report/taam_lambda.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/taam_lambda.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis taam-lambda-table {params.branches} --start {params.start} --out-md {output}"
        " > {log} 2>&1"


rule figure_segmentation:
    input:
        SEGMENTATION_RUNS,
    output:
        report(
            f"{RESULTS}/report/figures/segmentation.png",
            caption="../workflow/report/segmentation.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/report/segmentation.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/segmentation.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis figure-segmentation --out {output} {input} > {log} 2>&1"


rule effective_config:
    output:
        f"{RESULTS}/report/config.yaml",
    params:
        config=json.dumps(config),
    log:
        f"{RESULTS}/logs/report/config.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/config.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis effective-config --json {params.config:q} --out {output} > {log} 2>&1"


rule report:
    input:
        table1=rules.generation_table.output.md,
        table3=rules.segmentation_table.output.md,
        table2=rules.rating_table.output.md if RATED else [],
        taam=rules.taam_lambda_table.output[0] if TAAM_GENERATORS else [],
        fig3=rules.figure_fig3.output[0],
        fig4=rules.figure_fig4.output[0] if len(ABLATION_GRID) > 1 else [],
        losses=rules.figure_losses.output[0],
        segmentation=rules.figure_segmentation.output[0],
        config=rules.effective_config.output[0],
    output:
        report(
            f"{RESULTS}/report/index.html",
            caption="../workflow/report/index.rst",
            category="Report",
        ),
    params:
        folder=lambda wildcards, output: str(Path(output[0]).parent),
        tables=lambda wildcards, input: quoted(
            [
                "--table", f"Table 1 – generation metrics={input.table1}",
                "--table", f"Table 3 – segmentation (mDice / mIoU)={input.table3}",
            ]
            + (["--table", f"Table 2 – user study, clinician ratings={input.table2}"]
               if input.table2 else [])
            + (["--table", f"TAAM λ per block, start and end of training={input.taam}"]
               if input.taam else [])
        ),
        figures=lambda wildcards, input: quoted(
            [
                arg
                for title, path, caption in (
                    ("Fig. 3 – masks × prompts × generators", input.fig3, "fig3"),
                    ("Fig. 4 – ablations", input.fig4, "fig4"),
                    ("Generator training loss and TAAM λ", input.losses, "losses"),
                    ("Segmentation, mean ± std over seeds", input.segmentation, "segmentation"),
                )
                if path
                for arg in (
                    "--figure", f"{title}={path}",
                    "--caption", f"{title}={FIGURE_CAPTIONS[caption]}",
                )
            ]
        ),
    log:
        f"{RESULTS}/logs/report/index.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/index.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis report --out {params.folder} {params.tables} {params.figures}"
        " --config {input.config} > {log} 2>&1"
