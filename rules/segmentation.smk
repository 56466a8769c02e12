# Downstream segmentation (paper Table 3): PraNet and Polyp-PVT trained on the real
# training set and on real + each generator's synthetic set, several seeds, evaluated on
# every test split. Checkpoints live in an undeclared work folder: a killed run resumes.


rule train_segmenter:
    input:
        real=f"{RESULTS}/data/{TRAIN}.parquet",
        synthetic=lambda wildcards: (
            [f"{RESULTS}/synthetic/{wildcards.setting.split('+', 1)[1]}.parquet"]
            if "+" in wildcards.setting
            else []
        ),
        weights=lambda wildcards: local_file(SEGMENTATION[wildcards.model]["pretrained_file"]),
    output:
        directory(f"{RESULTS}/segmentation/{{model}}/{{setting}}/seed{{seed}}/model"),
    params:
        train=lambda wildcards, input: " ".join(
            f"--train {path}" for path in [input.real, *input.synthetic]
        ),
        work=lambda wildcards: (
            f"{RESULTS}/work/segmentation/{wildcards.model}/{wildcards.setting}/seed{wildcards.seed}"
        ),
        args=lambda wildcards: segmentation_args(wildcards.model, wildcards.setting),
        # Several GPUs: one process each through `accelerate launch` (same code path).
        command=launcher("train-segmenter", SEGMENTATION["gpus"]),
    log:
        f"{RESULTS}/logs/train_segmenter/{{model}}/{{setting}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_segmenter/{{model}}/{{setting}}/seed{{seed}}.tsv"
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


rule evaluate_segmenter:
    input:
        model=f"{RESULTS}/segmentation/{{model}}/{{setting}}/seed{{seed}}/model",
        tests=expand(f"{RESULTS}/data/{{split}}.parquet", split=TESTS),
    output:
        f"{RESULTS}/segmentation/{{model}}/{{setting}}/seed{{seed}}/per_image.parquet",
    params:
        tests=" ".join(f"--test {name}={RESULTS}/data/{name}.parquet" for name in TESTS),
    log:
        f"{RESULTS}/logs/evaluate_segmenter/{{model}}/{{setting}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_segmenter/{{model}}/{{setting}}/seed{{seed}}.tsv"
    threads: SEGMENTATION["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=min(1, SEGMENTATION["gpus"]),
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis evaluate-segmenter --model-dir {input.model} {params.tests} --out {output}"
        " --model {wildcards.model} --setting {wildcards.setting} --seed {wildcards.seed}"
        " --threads {threads} > {log} 2>&1"


rule segmentation_table:
    input:
        segmentation_runs("per_image.parquet"),
    output:
        csv=report(
            f"{RESULTS}/report/table3_segmentation.csv",
            caption="../workflow/report/table3.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/report/table3_segmentation.md",
    params:
        paper="--paper" if REPORT["paper"] else "",
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
        " {input} > {log} 2>&1"
