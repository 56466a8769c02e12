# Generators: bootstrap the tiny base (tiny preset only), train each generator's branch,
# synthesize one image per training mask (sharded, resumable), gather the manifest.
# Checkpoints and half-finished image folders live under undeclared work folders, so a
# killed job resumes instead of restarting; the declared outputs are the final results.


rule bootstrap:
    input:
        triplets=f"{RESULTS}/captions/{TRAIN}.parquet",
    output:
        directory(f"{RESULTS}/models/base"),
    params:
        work=f"{RESULTS}/work/bootstrap",
        steps=lambda wildcards: " ".join(
            f"--{key.replace('_', '-')} {value}"
            for key, value in config["bootstrap"].items()
            if key != "threads"
        ),
        model=model_args(),
    log:
        f"{RESULTS}/logs/bootstrap.log",
    benchmark:
        f"{RESULTS}/benchmarks/bootstrap.tsv"
    threads: config["bootstrap"]["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis bootstrap --triplets {input.triplets} --out {output} --work {params.work}"
        " {params.steps} {params.model} --threads {threads} > {log} 2>&1"


rule train_generator:
    input:
        triplets=f"{RESULTS}/captions/{TRAIN}.parquet",
        base=base_inputs(),
    output:
        directory(f"{RESULTS}/models/{{generator}}"),
    params:
        base=base_path,
        work=lambda wildcards: f"{RESULTS}/work/train/{wildcards.generator}",
        args=train_args(),
        model=model_args(),
        # Several GPUs: one process each through `accelerate launch` (same code path).
        command=launcher("train-generator", config["train"]["gpus"]),
    log:
        f"{RESULTS}/logs/train_generator/{{generator}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_generator/{{generator}}.tsv"
    threads: MODEL["threads"]
    resources:
        mem_mb=8000 if MODEL["preset"] == "tiny" else 40000,
        runtime=60 if MODEL["preset"] == "tiny" else 2880,
        gpu=config["train"]["gpus"],
    conda:
        "../envs/ccis.yaml"
    shell:
        "{params.command} --generator {wildcards.generator} --triplets {input.triplets}"
        " --base {params.base} --out {output} --work {params.work} {params.args} {params.model}"
        " --threads {threads} > {log} 2>&1"


rule synthesize:
    input:
        triplets=f"{RESULTS}/captions/{TRAIN}.parquet",
        branch=f"{RESULTS}/models/{{generator}}",
        base=base_inputs(),
    output:
        temp(f"{RESULTS}/synthetic/{{generator}}.part{{shard}}.parquet"),
    params:
        base=base_path,
        images=lambda wildcards: f"{RESULTS}/synthetic/{wildcards.generator}/shard{wildcards.shard}",
        shards=config["synthesis"]["shards"],
        args=synthesis_args(),
        model=model_args(),
    log:
        f"{RESULTS}/logs/synthesize/{{generator}}.part{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize/{{generator}}.part{{shard}}.tsv"
    threads: MODEL["threads"]
    resources:
        mem_mb=4000 if MODEL["preset"] == "tiny" else 24000,
        runtime=60 if MODEL["preset"] == "tiny" else 720,
        gpu=min(1, config["train"]["gpus"]),
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis synthesize --generator {wildcards.generator} --base {params.base}"
        " --branch {input.branch} --triplets {input.triplets} --out {output}"
        " --images {params.images} --shard {wildcards.shard}/{params.shards}"
        " {params.args} {params.model} --threads {threads} > {log} 2>&1"


rule gather_synthetic:
    input:
        expand(
            f"{RESULTS}/synthetic/{{{{generator}}}}.part{{shard}}.parquet",
            shard=range(config["synthesis"]["shards"]),
        ),
    output:
        f"{RESULTS}/synthetic/{{generator}}.parquet",
    log:
        f"{RESULTS}/logs/synthesize/{{generator}}.gather.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize/{{generator}}.gather.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis gather --out {output} {input} > {log} 2>&1"
