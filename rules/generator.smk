# Generators: bootstrap the tiny base (tiny preset only), train each generator's branch,
# synthesize one image per training mask (sharded, resumable), gather the manifest.
# Checkpoints and half-finished image folders live under undeclared work folders, so a
# killed job resumes instead of restarting; the declared outputs are the final results.

TRAINING = config["train"]
SYNTHESIS = config["synthesis"]
MODEL_ARGS = f"--resolution {MODEL['resolution']}"


rule bootstrap:
    input:
        triplets=TRIPLETS,
    output:
        directory(f"{RESULTS}/models/base"),
    params:
        work=f"{RESULTS}/work/bootstrap",
        steps=lambda wildcards: " ".join(
            f"--{key.replace('_', '-')} {value}"
            for key, value in config["bootstrap"].items()
            if key != "threads"
        ),
        model=MODEL_ARGS,
    log:
        f"{RESULTS}/logs/bootstrap.log",
    benchmark:
        f"{RESULTS}/benchmarks/bootstrap.tsv"
    priority: CHAIN
    threads: config["bootstrap"]["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/ccis.yaml"
    shell:
        "exec ccis bootstrap --triplets {input.triplets} --out {output} --work {params.work}"
        " {params.steps} {params.model} --threads {threads} > {log} 2>&1"


# The frozen base every branch trains on and samples with: the bootstrap output (tiny
# preset) or your SD v1.5 (sd15: a diffusers folder, one .safetensors file or a hub id in
# the local cache). It is a DAG input unless it is a hub id (see base_path).
if MODEL["preset"] == "tiny":
    BASE_INPUTS = [rules.bootstrap.output[0]]
else:
    BASE_INPUTS = local_file(MODEL["sd15"])

# `ccis train-generator` options: the training recipe and the branches' channel widths.
TRAIN_ARGS = [
    "--steps", TRAINING["steps"],
    "--batch-size", TRAINING["batch_size"],
    "--learning-rate", TRAINING["learning_rate"],
    "--gradient-accumulation", TRAINING["gradient_accumulation"],
    "--checkpoint-every", TRAINING["checkpoint_every"],
    "--validate-every", TRAINING["validate_every"],
    "--empty-prompt-probability", TRAINING["empty_prompt_probability"],
    "--mixed-precision", TRAINING["mixed_precision"],
    "--blur-sigma", TRAINING["blur_sigma"],
    "--taam-lambda", TRAINING["taam_lambda"],
    "--lambda-learning-rate", TRAINING["lambda_learning_rate"],
    "--max-grad-norm", TRAINING["max_grad_norm"],
    "--seed", TRAINING["seed"],
    "--conditioning-channels", ",".join(str(c) for c in MODEL["conditioning_channels"]),
    "--extractor-channels",
    ",".join(str(c) for c in MODEL["unicontrolnet"]["extractor_channels"]),
    "--inject-channels", ",".join(str(c) for c in MODEL["unicontrolnet"]["inject_channels"]),
]
if TRAINING["gradient_checkpointing"]:
    TRAIN_ARGS.append("--gradient-checkpointing")


rule train_generator:
    input:
        triplets=TRIPLETS,
        base=BASE_INPUTS,
    output:
        directory(f"{RESULTS}/models/{{generator}}"),
    params:
        base=base_path,
        work=lambda wildcards: f"{RESULTS}/work/train/{wildcards.generator}",
        args=quoted(TRAIN_ARGS),
        model=MODEL_ARGS,
        # Several GPUs: one process each through `accelerate launch` (same code path).
        command=launcher("train-generator", TRAINING["gpus"]),
    log:
        f"{RESULTS}/logs/train_generator/{{generator}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_generator/{{generator}}.tsv"
    priority: generator_priority
    threads: MODEL["threads"]
    resources:
        mem_mb=8000 if MODEL["preset"] == "tiny" else 40000,
        runtime=60 if MODEL["preset"] == "tiny" else 2880,
        gpu=TRAINING["gpus"],
    conda:
        "../envs/ccis.yaml"
    shell:
        "{params.command} --generator {wildcards.generator} --triplets {input.triplets}"
        " --base {params.base} --out {output} --work {params.work} {params.args} {params.model}"
        " --threads {threads} > {log} 2>&1"


# `ccis synthesize` sampling options (also those of the text-adherence test).
SYNTHESIS_ARGS = quoted(
    [
        "--steps", SYNTHESIS["steps"],
        "--guidance-scale", SYNTHESIS["guidance_scale"],
        "--batch-size", SYNTHESIS["batch_size"],
        "--seed", SYNTHESIS["seed"],
    ]
)


rule synthesize:
    input:
        triplets=TRIPLETS,
        branch=rules.train_generator.output[0],
        base=BASE_INPUTS,
    output:
        temp(f"{RESULTS}/synthetic/{{generator}}.part{{shard}}.parquet"),
    params:
        base=base_path,
        images=lambda wildcards: f"{RESULTS}/synthetic/{wildcards.generator}/shard{wildcards.shard}",
        shards=SYNTHESIS["shards"],
        args=SYNTHESIS_ARGS,
        model=MODEL_ARGS,
    log:
        f"{RESULTS}/logs/synthesize/{{generator}}.part{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize/{{generator}}.part{{shard}}.tsv"
    priority: generator_priority
    threads: MODEL["threads"]
    resources:
        mem_mb=4000 if MODEL["preset"] == "tiny" else 24000,
        runtime=60 if MODEL["preset"] == "tiny" else 720,
        gpu=min(1, TRAINING["gpus"]),
    conda:
        "../envs/ccis.yaml"
    shell:
        "exec ccis synthesize --generator {wildcards.generator} --base {params.base}"
        " --branch {input.branch} --triplets {input.triplets} --out {output}"
        " --images {params.images} --shard {wildcards.shard}/{params.shards}"
        " {params.args} {params.model} --threads {threads} > {log} 2>&1"


rule gather_synthetic:
    input:
        expand(rules.synthesize.output[0], shard=range(SYNTHESIS["shards"]), allow_missing=True),
    output:
        f"{RESULTS}/synthetic/{{generator}}.parquet",
    log:
        f"{RESULTS}/logs/synthesize/{{generator}}.gather.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize/{{generator}}.gather.tsv"
    priority: generator_priority
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis gather --out {output} {input} > {log} 2>&1"
