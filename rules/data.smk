# prepare: phantom frames or a real data set -> normalised pairs + manifest per split;
# prepare_external: another tool's synthetic set, imported the same way.

DATA = config["data"]

# What a real folder's bad pairs, empty or suspicious masks and huge frames do (README,
# "Bad input"): the same for real splits and external synthetic sets.
BAD_INPUT_ARGS = [
    "--on-bad-pair", DATA["on_bad_pair"],
    "--empty-masks", DATA["empty_masks"],
    "--suspicious-masks", DATA["suspicious_masks"],
    "--max-pixels", DATA["max_pixels"],
]
# `ccis prepare` options of each split, spelled out (the command reads no config): a
# phantom split's count, centre and frame size, or a real split's source folders
# (`<format>[:<name>]=<root>`) and what to do with bad pairs, empty masks, huge frames.
PREPARE_ARGS = {}
for split, spec in SPLITS.items():
    if "phantom" in spec:
        args = [
            "--phantom-count", spec["phantom"]["count"],
            "--centre", spec["phantom"]["centre"],
            "--seed", DATA["phantom"]["seed"],
            "--width", DATA["phantom"]["width"],
            "--height", DATA["phantom"]["height"],
        ]
    else:
        args = []
        for source in spec["sources"]:
            head = source["format"] + (f":{source['name']}" if "name" in source else "")
            args += ["--source", f"{head}={source['root']}"]
        args += BAD_INPUT_ARGS
    PREPARE_ARGS[split] = quoted(args)


rule prepare:
    output:
        manifest=f"{RESULTS}/data/{{split}}.parquet",
        folder=directory(f"{RESULTS}/data/{{split}}"),
    params:
        args=lambda wildcards: PREPARE_ARGS[wildcards.split],
        out=lambda wildcards, output: Path(output.manifest).parent,
        listing=source_listing,
    log:
        f"{RESULTS}/logs/prepare/{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare/{{split}}.tsv"
    priority: lambda wildcards: CHAIN if wildcards.split == TRAIN else 0
    threads: config["resources"]["prepare_threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis prepare --split {wildcards.split} --out {params.out} {params.args}"
        " --workers {threads} > {log} 2>&1"


# External synthetic sets (config external_synthetic): another tool's image–mask folder,
# imported by the same importers and bad-input rules as a real split, ids <name>-<stem>.
rule prepare_external:
    output:
        manifest=f"{RESULTS}/external/{{external}}.parquet",
        folder=directory(f"{RESULTS}/external/{{external}}"),
    params:
        args=lambda wildcards: quoted(
            [
                "--source",
                f"{EXTERNAL[wildcards.external]['format']}:{wildcards.external}"
                f"={EXTERNAL[wildcards.external]['root']}",
                *BAD_INPUT_ARGS,
            ]
        ),
        out=lambda wildcards, output: Path(output.manifest).parent,
        listing=lambda wildcards: listing_fingerprint([EXTERNAL[wildcards.external]["root"]]),
    log:
        f"{RESULTS}/logs/prepare_external/{{external}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_external/{{external}}.tsv"
    threads: config["resources"]["prepare_threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis prepare --split {wildcards.external} --out {params.out} {params.args}"
        " --workers {threads} > {log} 2>&1"
