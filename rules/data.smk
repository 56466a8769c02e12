# prepare: phantom frames or a real data set -> normalised pairs + manifest per split.


rule prepare:
    output:
        manifest=f"{RESULTS}/data/{{split}}.parquet",
        folder=directory(f"{RESULTS}/data/{{split}}"),
    params:
        args=lambda wildcards: prepare_args(wildcards.split),
        out=lambda wildcards, output: Path(output.manifest).parent,
    log:
        f"{RESULTS}/logs/prepare/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare/{{split}}.tsv"
    threads: config["resources"]["prepare_threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis prepare --split {wildcards.split} --out {params.out} {params.args}"
        " --workers {threads} > {log} 2>&1"
