# caption: measure attributes and caption the training pairs -> image–mask–text triplets.
# Sharded: `caption.shards` jobs each take every N-th pair; gather_captions joins them.


rule caption:
    input:
        manifest=f"{RESULTS}/data/{{split}}.parquet",
        folder=f"{RESULTS}/data/{{split}}",
        models=caption_model_inputs(),
    output:
        temp(f"{RESULTS}/captions/{{split}}.part{{shard}}.parquet"),
    params:
        args=caption_args(),
        shards=CAPTION["shards"],
    log:
        f"{RESULTS}/logs/caption/{{split}}.part{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption/{{split}}.part{{shard}}.tsv"
    threads: CAPTION["threads"]
    resources:
        mem_mb=4000 if CAPTION["captioner"] == "template" else 16000,
        runtime=60 if CAPTION["captioner"] == "template" else 600,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis caption --manifest {input.manifest} --out {output}"
        " --shard {wildcards.shard}/{params.shards} --threads {threads} {params.args}"
        " > {log} 2>&1"


rule gather_captions:
    input:
        expand(
            f"{RESULTS}/captions/{{{{split}}}}.part{{shard}}.parquet",
            shard=range(CAPTION["shards"]),
        ),
    output:
        f"{RESULTS}/captions/{{split}}.parquet",
    log:
        f"{RESULTS}/logs/caption/{{split}}.gather.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption/{{split}}.gather.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis gather --out {output} {input} > {log} 2>&1"
