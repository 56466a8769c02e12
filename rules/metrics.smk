# Generation metrics (paper Table 1 plus three automated user-study stand-ins): FID,
# CLIP-score, CLIP-image, text adherence, attribute agreement and mask fidelity per
# generator, then the table. Text adherence draws its own images (pale vs red prompts on
# every training mask), so it is a job of its own.

METRICS = config["metrics"]
FIDELITY_SEGMENTER = METRICS["fidelity_segmenter"]  # a real-data Table 3 run
FIDELITY_RUN = expand(
    rules.train_segmenter.output[0],
    model=FIDELITY_SEGMENTER["model"],
    setting=FIDELITY_SEGMENTER["setting"],
    seed=FIDELITY_SEGMENTER["seed"],
)

# open_clip model of the CLIP scores, and its local checkpoint when configured.
CLIP_ARGS = quoted(
    ["--clip-model", METRICS["clip_model"]]
    + (["--clip-pretrained", METRICS["clip_pretrained"]] if METRICS["clip_pretrained"] else [])
)


rule text_adherence:
    input:
        triplets=TRIPLETS,
        branch=rules.train_generator.output[0],
        base=BASE_INPUTS,
    output:
        f"{RESULTS}/metrics/{{generator}}.text_adherence.parquet",
    params:
        base=base_path,
        args=SYNTHESIS_ARGS,
        model=MODEL_ARGS,
    log:
        f"{RESULTS}/logs/text_adherence/{{generator}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/text_adherence/{{generator}}.tsv"
    threads: MODEL["threads"]
    resources:
        mem_mb=4000 if MODEL["preset"] == "tiny" else 24000,
        runtime=30 if MODEL["preset"] == "tiny" else 720,
        gpu=min(1, TRAINING["gpus"]),
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis text-adherence --base {params.base} --branch {input.branch}"
        " --triplets {input.triplets} --out {output} {params.args} {params.model}"
        " --threads {threads} > {log} 2>&1"


rule metrics_generation:
    input:
        synthetic=rules.gather_synthetic.output[0],
        real=TRIPLETS,
        segmenter=FIDELITY_RUN,
        text=rules.text_adherence.output[0],
        clip=local_file(METRICS["clip_pretrained"]),
    output:
        json=f"{RESULTS}/metrics/{{generator}}.json",
        per_image=f"{RESULTS}/metrics/{{generator}}.per_image.parquet",
    params:
        clip=CLIP_ARGS,
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
        " --real {input.real} --segmenter {input.segmenter} --out {output.json}"
        " --per-image {output.per_image} --text-adherence {input.text} {params.clip}"
        " --fid-mode {params.fid_mode} --batch-size {params.batch} --threads {threads}"
        " > {log} 2>&1"


# An external set (external_synthetic) gets the same command on its imported manifest:
# FID and mask fidelity; the text metrics and CLIP-image need prompts and real source
# pairs, which a folder from another tool does not have (reported as not computed).
rule metrics_external:
    input:
        synthetic=rules.prepare_external.output.manifest,
        real=TRIPLETS,
        segmenter=FIDELITY_RUN,
        clip=local_file(METRICS["clip_pretrained"]),
    output:
        json=f"{RESULTS}/metrics/external/{{external}}.json",
        per_image=f"{RESULTS}/metrics/external/{{external}}.per_image.parquet",
    params:
        clip=CLIP_ARGS,
        batch=METRICS["batch_size"],
        fid_mode=METRICS["fid_mode"],
        label=lambda wildcards: quoted(
            [EXTERNAL[wildcards.external].get("label", wildcards.external)]
        ),
    log:
        f"{RESULTS}/logs/metrics/external/{{external}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/metrics/external/{{external}}.tsv"
    threads: METRICS["threads"]
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis metrics-generation --generator {wildcards.external} --external {params.label}"
        " --synthetic {input.synthetic} --real {input.real} --segmenter {input.segmenter}"
        " --out {output.json} --per-image {output.per_image} {params.clip}"
        " --fid-mode {params.fid_mode} --batch-size {params.batch} --threads {threads}"
        " > {log} 2>&1"


rule generation_table:
    input:
        metrics=expand(rules.metrics_generation.output.json, generator=GENERATORS)
        + expand(rules.metrics_external.output.json, external=EXTERNAL),
        # read through the paths the JSON files name (paired differences)
        per_image=expand(rules.metrics_generation.output.per_image, generator=GENERATORS)
        + expand(rules.metrics_external.output.per_image, external=EXTERNAL),
    output:
        csv=report(
            f"{RESULTS}/report/table1_generation.csv",
            caption="../workflow/report/table1.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/report/table1_generation.md",
    params:
        paper="--paper" if config["report"]["paper"] else "",
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
        " {input.metrics} > {log} 2>&1"
