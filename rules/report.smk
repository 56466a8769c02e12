# Figures (paper Fig. 3 and Fig. 4 grids, loss curves, segmentation bars) and the one-page
# HTML report that gathers them with the tables, the config used and software versions.


# Fig. 3 (every generator) and Fig. 4 (CCIS-Diff and its ablations): one rule each, so
# that each output has its own report caption.
for figure, grid_generators in (("fig3", GENERATORS), ("fig4", ablation_generators())):

    rule:
        name:
            f"figure_{figure}"
        input:
            triplets=f"{RESULTS}/captions/{TRAIN}.parquet",
            base=base_inputs(),
            branches=expand(f"{RESULTS}/models/{{generator}}", generator=grid_generators),
        output:
            report(
                f"{RESULTS}/report/figures/{figure}.png",
                caption=f"../workflow/report/{figure}.rst",
                category="Figures",
            ),
        params:
            base=base_path,
            branches=lambda wildcards, input: branch_args(input.branches),
            args=quoted(
                [
                    "--masks", REPORT["grid_masks"],
                    "--prompts-per-mask", REPORT["grid_prompts"],
                    "--steps", config["synthesis"]["steps"],
                    "--guidance-scale", config["synthesis"]["guidance_scale"],
                    "--seed", config["synthesis"]["seed"],
                ]
            ),
            model=model_args(),
        log:
            f"{RESULTS}/logs/report/{figure}.log",
        benchmark:
            f"{RESULTS}/benchmarks/report/{figure}.tsv"
        threads: MODEL["threads"]
        resources:
            mem_mb=4000 if MODEL["preset"] == "tiny" else 24000,
            runtime=30,
            gpu=min(1, config["train"]["gpus"]),
        conda:
            "../envs/ccis.yaml"
        shell:
            "ccis figure-grid --base {params.base} {params.branches} --triplets {input.triplets}"
            " --out {output} {params.args} {params.model} --threads {threads} > {log} 2>&1"


rule figure_losses:
    input:
        expand(f"{RESULTS}/models/{{generator}}", generator=GENERATORS),
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
        expand(f"{RESULTS}/models/{{generator}}", generator=taam_generators()),
    output:
        f"{RESULTS}/report/taam_lambda.md",
    params:
        branches=lambda wildcards, input: branch_args(input),
        start=config["train"]["taam_lambda"],
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
        segmentation_runs("per_image.parquet"),
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
        table1=f"{RESULTS}/report/table1_generation.md",
        table3=f"{RESULTS}/report/table3_segmentation.md",
        taam=f"{RESULTS}/report/taam_lambda.md" if taam_generators() else [],
        fig3=f"{RESULTS}/report/figures/fig3.png",
        fig4=f"{RESULTS}/report/figures/fig4.png" if len(ablation_generators()) > 1 else [],
        losses=f"{RESULTS}/report/figures/losses.png",
        segmentation=f"{RESULTS}/report/figures/segmentation.png",
        config=f"{RESULTS}/report/config.yaml",
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
                    "--caption", f"{title}={report_caption(caption)}",
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
