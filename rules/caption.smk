# caption: measure attributes and caption the training pairs -> image–mask–text triplets.
# Sharded: `caption.shards` jobs each take every N-th pair; gather_captions joins them.

CAPTION = config["caption"]

# `ccis caption` options (all but manifest, output and shard). The LLaMA captioner's
# model files are inputs of the rule as well: a new model means new captions.
CAPTION_ARGS = [
    "--captioner", CAPTION["captioner"],
    "--seed", CAPTION["seed"],
    "--max-tokens", CAPTION["max_tokens"],
]
CAPTION_MODELS = []
if CAPTION["tokenizer"]:
    CAPTION_ARGS += ["--tokenizer", CAPTION["tokenizer"]]
if CAPTION["captioner"] == "llama":
    LLAMA = CAPTION["llama"]
    CAPTION_ARGS += [
        "--llama-model", LLAMA["model"],
        "--llama-prompt", LLAMA["prompt"],
        "--llama-n-ctx", LLAMA["n_ctx"],
        "--llama-max-new-tokens", LLAMA["max_new_tokens"],
        "--llama-temperature", LLAMA["temperature"],
        "--llama-retries", LLAMA["retries"],
        "--llama-cache", f"{RESULTS}/cache/llama",
    ]
    if LLAMA["mmproj"]:
        CAPTION_ARGS += ["--llama-mmproj", LLAMA["mmproj"]]
    CAPTION_MODELS = [path for path in (LLAMA["model"], LLAMA["mmproj"]) if path]
# The tokenizer and the LLM files by name, size and mtime (ccis.data.listing): replacing
# one re-runs the captions even when the new file is older than them (a copy that keeps
# its mtime), which the inputs' mtime trigger alone would miss.
CAPTION_LISTING = listing_fingerprint(
    [path for path in (CAPTION["tokenizer"], *CAPTION_MODELS) if path]
)


rule caption:
    input:
        manifest=rules.prepare.output.manifest,
        folder=rules.prepare.output.folder,
        models=CAPTION_MODELS,
    output:
        temp(f"{RESULTS}/captions/{{split}}.part{{shard}}.parquet"),
    params:
        args=quoted(CAPTION_ARGS),
        shards=CAPTION["shards"],
        listing=CAPTION_LISTING,
    log:
        f"{RESULTS}/logs/caption/{{split}}.part{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption/{{split}}.part{{shard}}.tsv"
    priority: CHAIN
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
        expand(rules.caption.output[0], shard=range(CAPTION["shards"]), allow_missing=True),
    output:
        f"{RESULTS}/captions/{{split}}.parquet",
    log:
        f"{RESULTS}/logs/caption/{{split}}.gather.log",
    benchmark:
        f"{RESULTS}/benchmarks/caption/{{split}}.gather.tsv"
    priority: CHAIN
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/ccis.yaml"
    shell:
        "ccis gather --out {output} {input} > {log} 2>&1"


# The training split's triplets: what the generator stages and the metrics read.
TRIPLETS = expand(rules.gather_captions.output[0], split=TRAIN)[0]
