# Downstream segmentation (paper Table 3): PraNet, Polyp-PVT and PVT-CASCADE trained on the
# real training set and on real + each synthetic set (a generator's or an external one),
# several seeds, evaluated on every test split. Checkpoints live in an undeclared work folder: a killed run resumes.
from ccis.config import segmentation_settings, setting_repeat

SEGMENTATION = config["segmentation"]
SETTINGS = segmentation_settings(config)  # real, real_x2 (step-matched), real+<name>

# `ccis train-segmenter` options of each model, spelled out (the command reads no
# config); the setting adds --repeat in front (2 for real_x2: the real set twice).
SEGMENTER_ARGS = {
    model: [
        "--loss", SEGMENTATION["loss"],
        "--backbone", SEGMENTATION[model]["backbone"],
        "--epochs", SEGMENTATION[model]["epochs"],
        "--learning-rate", SEGMENTATION[model]["learning_rate"],
        "--weight-decay", SEGMENTATION[model]["weight_decay"],
        "--drop-path-rate", SEGMENTATION[model]["drop_path_rate"],
        "--batch-size", SEGMENTATION["batch_size"],
        "--size", SEGMENTATION["size"],
        "--scales", ",".join(str(s) for s in SEGMENTATION["scales"]),
        "--clip", SEGMENTATION["clip"],
    ]
    + (
        ["--pretrained-file", SEGMENTATION[model]["pretrained_file"]]
        if SEGMENTATION[model]["pretrained_file"]
        else []
    )
    + ([] if SEGMENTATION["soft_masks"] else ["--binary-masks"])
    for model in SEGMENTERS
}


rule train_segmenter:
    input:
        real=expand(rules.prepare.output.manifest, split=TRAIN),
        # real+<name>: that generator's or external set's synthetic set (none for real, real_x2)
        synthetic=synthetic_manifest,
        weights=lambda wildcards: local_file(SEGMENTATION[wildcards.model]["pretrained_file"]),
    output:
        directory(f"{RESULTS}/segmentation/{{model}}/{{setting}}/seed{{seed}}/model"),
    params:
        train=lambda wildcards, input: " ".join(
            f"--train {path}" for path in [*input.real, *input.synthetic]
        ),
        work=lambda wildcards: (
            f"{RESULTS}/work/segmentation/{wildcards.model}/{wildcards.setting}/seed{wildcards.seed}"
        ),
        args=lambda wildcards: quoted(
            ["--repeat", setting_repeat(wildcards.setting), *SEGMENTER_ARGS[wildcards.model]]
        ),
        # Several GPUs: one process each through `accelerate launch` (same code path).
        command=launcher("train-segmenter", SEGMENTATION["gpus"]),
    log:
        f"{RESULTS}/logs/train_segmenter/{{model}}/{{setting}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_segmenter/{{model}}/{{setting}}/seed{{seed}}.tsv"
    priority: segmenter_priority
    threads: SEGMENTATION["threads"]
    resources:
        mem_mb=4000 if SEGMENTATION["gpus"] == 0 else 24000,
        runtime=30 if SEGMENTATION["gpus"] == 0 else 720,
        gpu=SEGMENTATION["gpus"],
    conda:
        "../envs/ccis.yaml"
    shell:
        "{params.command} --model {wildcards.model} {params.train} --out {output}"
        " --work {params.work} --seed {wildcards.seed} {params.args} --threads {threads}"
        " > {log} 2>&1"


# One job per model scores all its runs (settings × seeds): the process start (torch, timm)
# costs more than scoring a run of the demo. RUNS orders the inputs, outputs and labels.
RUNS = [(setting, seed) for setting in SETTINGS for seed in SEGMENTATION["seeds"]]
RUN_SETTINGS, RUN_SEEDS = (list(column) for column in zip(*RUNS))


rule evaluate_segmenter:
    input:
        models=expand(
            rules.train_segmenter.output[0],
            zip,
            setting=RUN_SETTINGS,
            seed=RUN_SEEDS,
            allow_missing=True,
        ),
        tests=expand(rules.prepare.output.manifest, split=TESTS),
    output:
        expand(
            f"{RESULTS}/segmentation/{{model}}/{{setting}}/seed{{seed}}/per_image.parquet",
            zip,
            setting=RUN_SETTINGS,
            seed=RUN_SEEDS,
            allow_missing=True,
        ),
    params:
        tests=lambda wildcards, input: " ".join(
            f"--test {name}={path}" for name, path in zip(TESTS, input.tests)
        ),
        runs=lambda wildcards, input, output: " ".join(
            f"--model-dir {folder} --out {out} --setting {setting} --seed {seed}"
            for folder, out, (setting, seed) in zip(input.models, output, RUNS, strict=True)
        ),
    log:
        f"{RESULTS}/logs/evaluate_segmenter/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_segmenter/{{model}}.tsv"
    priority: CHAIN
    threads: SEGMENTATION["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=min(1, SEGMENTATION["gpus"]),
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis evaluate-segmenter {params.runs} {params.tests} --model {wildcards.model}"
        " --threads {threads} > {log} 2>&1"


# Every Table 3 run's per-image scores: model × setting × seed.
SEGMENTATION_RUNS = expand(rules.evaluate_segmenter.output, model=SEGMENTATION["models"])


rule segmentation_table:
    input:
        SEGMENTATION_RUNS,
    output:
        csv=report(
            f"{RESULTS}/report/table3_segmentation.csv",
            caption="../workflow/report/table3.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/report/table3_segmentation.md",
    params:
        paper="--paper" if config["report"]["paper"] else "",
        external=external_labels(),
    log:
        f"{RESULTS}/logs/report/table3.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/table3.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis segmentation-table --out-csv {output.csv} --out-md {output.md} {params.paper}"
        " {params.external} {input} > {log} 2>&1"
