# Generation metrics (paper Table 1 plus two automated user-study stand-ins): FID, CLIP-score,
# CLIP-image, attribute agreement and mask fidelity per generator, then the table.


rule metrics_generation:
    input:
        synthetic=f"{RESULTS}/synthetic/{{generator}}.parquet",
        real=f"{RESULTS}/captions/{TRAIN}.parquet",
        segmenter=fidelity_segmenter(),
        clip=local_file(METRICS["clip_pretrained"]),
    output:
        f"{RESULTS}/metrics/{{generator}}.json",
    params:
        clip=lambda wildcards: quoted(
            ["--clip-model", METRICS["clip_model"]]
            + (["--clip-pretrained", METRICS["clip_pretrained"]] if METRICS["clip_pretrained"] else [])
        ),
        batch=METRICS["batch_size"],
        fid_mode=METRICS["fid_mode"],
    log:
        f"{RESULTS}/logs/metrics/{{generator}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/metrics/{{generator}}.tsv"
    threads: METRICS["threads"]
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis metrics-generation --generator {wildcards.generator} --synthetic {input.synthetic}"
        " --real {input.real} --segmenter {input.segmenter} --out {output} {params.clip}"
        " --fid-mode {params.fid_mode} --batch-size {params.batch} --threads {threads}"
        " > {log} 2>&1"


rule generation_table:
    input:
        expand(f"{RESULTS}/metrics/{{generator}}.json", generator=GENERATORS),
    output:
        csv=report(
            f"{RESULTS}/report/table1_generation.csv",
            caption="../workflow/report/table1.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/report/table1_generation.md",
    params:
        paper="--paper" if REPORT["paper"] else "",
    log:
        f"{RESULTS}/logs/report/table1.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/table1.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis generation-table --out-csv {output.csv} --out-md {output.md} {params.paper}"
        " {input} > {log} 2>&1"
