"""Validate the workflow configuration against its schema before any job runs.

Snakemake merges ``--configfile`` files into ``config.yaml``; this module checks the
result, fills in defaults from the schema, and raises one :class:`ConfigError` naming
every bad key by its dotted path (``data.splits[0].phantom.count``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path("workflow") / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem."""


def key_path(parts: Any) -> str:
    """Dotted key path of a JSON-schema error location."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: jsonschema.ValidationError) -> Iterator[str]:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        for key in sorted(set(error.instance) - allowed):
            yield f"{where}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})"
    elif error.validator == "required":
        yield f"{where}: {error.message}"
    elif error.validator == "oneOf":
        yield f"{where}: give exactly one of 'phantom' or 'sources'"
    else:
        yield f"{where}: {error.message}"


def _fill_defaults(instance: Any, schema: dict) -> None:
    """Insert schema defaults for missing keys, recursively (in place)."""
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = yaml.safe_load(yaml.safe_dump(sub["default"]))
            if key in instance:
                _fill_defaults(instance[key], sub)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            _fill_defaults(item, schema["items"])


def load_schema(schema_path: str | os.PathLike) -> dict:
    """The config schema with the registries' names and defaults filled in.

    The YAML leaves the names of generators, segmenters and data-set layouts, and the
    per-segmenter settings, to the registries that own them, so that adding one is a
    single registry entry.
    """
    from ccis.data.layouts import LAYOUTS
    from ccis.generator.registry import GENERATORS
    from ccis.segmentation.registry import REGISTRY as SEGMENTERS

    schema = yaml.safe_load(Path(schema_path).read_text())
    defs = schema["$defs"]
    defs["generator"]["enum"] = list(GENERATORS)
    defs["segmenter"]["enum"] = list(SEGMENTERS)
    defs["format"]["enum"] = list(LAYOUTS)
    template = defs["segmenter_settings"]
    segmentation = schema["properties"]["segmentation"]["properties"]
    for name, entry in SEGMENTERS.items():
        settings = copy.deepcopy(template)
        for key in ("backbone", "epochs", "learning_rate", "weight_decay", "drop_path_rate"):
            settings["properties"][key]["default"] = getattr(entry, key)
        settings["description"] = f"{entry.label}: {template['description']}"
        segmentation[name] = settings
    return schema


def validate_config(
    config: dict, schema_path: str | os.PathLike, workdir: str | os.PathLike = "."
) -> dict:
    """Check ``config`` (filling defaults in place) and return it.

    Beyond the schema: split names are unique, exactly one split has role ``train``,
    and every data-set folder exists (relative paths are taken from ``workdir``).
    """
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        line
        for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        for line in _describe(error)
    ]
    if not problems:
        _fill_defaults(config, schema)
        problems += _semantic_problems(config, Path(workdir))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")
    return config


def _semantic_problems(config: dict, workdir: Path) -> list[str]:
    problems = []
    splits = config["data"]["splits"]
    names = [s["name"] for s in splits]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(f"data.splits[{i}].name: split {name!r} is defined twice")
    trains = [s["name"] for s in splits if s["role"] == "train"]
    if len(trains) != 1:
        problems.append(f"data.splits: exactly one split needs role 'train', found {len(trains)}")
    for i, split in enumerate(splits):
        for j, source in enumerate(split.get("sources", [])):
            root = Path(source["root"])
            root = root if root.is_absolute() else workdir / root
            if not root.is_dir():
                problems.append(
                    f"data.splits[{i}].sources[{j}].root: data-set folder {source['root']!r} "
                    f"({source['format']}) does not exist"
                )
    caption = config.get("caption", {})
    model = caption.get("llama", {}).get("model")
    if caption.get("captioner") == "llama" and not model:
        problems.append("caption.llama.model: the llama captioner needs a GGUF model file")
    for key, value in (
        ("caption.llama.model", model),
        ("caption.llama.mmproj", caption.get("llama", {}).get("mmproj")),
        ("caption.tokenizer", caption.get("tokenizer")),
    ):
        if value and not (Path(value) if Path(value).is_absolute() else workdir / value).exists():
            problems.append(f"{key}: {value!r} does not exist")
    model = config.get("model", {})
    if model.get("preset") == "sd15" and not model.get("sd15"):
        problems.append(
            "model.sd15: the sd15 preset needs a Stable Diffusion v1.5 folder, id or file"
        )
    problems += _external_problems(config, workdir)
    problems += _segmentation_problems(config, workdir)
    return problems


def _external_problems(config: dict, workdir: Path) -> list[str]:
    """External synthetic sets: unique names that no generator has, existing folders."""
    from ccis.generator.registry import GENERATORS

    problems = []
    names = []
    for i, entry in enumerate(config.get("external_synthetic") or []):
        name, where = entry["name"], f"external_synthetic[{i}]"
        if name in names:
            problems.append(f"{where}.name: external set {name!r} is defined twice")
        if name in GENERATORS:
            problems.append(f"{where}.name: {name!r} is a generator's name; choose another")
        names.append(name)
        root = Path(entry["root"])
        if not (root if root.is_absolute() else workdir / root).is_dir():
            problems.append(
                f"{where}.root: folder {entry['root']!r} ({entry['format']}) does not exist"
            )
    return problems


def _segmentation_problems(config: dict, workdir: Path) -> list[str]:
    problems = []
    seg = config.get("segmentation", {})
    generators = config.get("generators", [])
    known = [*generators, *external_names(config)]
    for gen in seg.get("synthetic") or []:
        if gen not in known:
            problems.append(
                f"segmentation.synthetic: {gen!r} is neither in generators nor an "
                f"external_synthetic set ({', '.join(known)})"
            )
    if seg.get("size", 32) % 32:
        problems.append(f"segmentation.size: {seg['size']} is not a multiple of 32")
    for name in seg.get("models", []):
        file = seg.get(name, {}).get("pretrained_file")
        if file and not (Path(file) if Path(file).is_absolute() else workdir / file).is_file():
            problems.append(f"segmentation.{name}.pretrained_file: {file!r} does not exist")
    judge = config.get("metrics", {}).get("fidelity_segmenter", {})
    if judge and judge.get("model") not in seg.get("models", []):
        problems.append(
            f"metrics.fidelity_segmenter.model: {judge.get('model')!r} is not trained "
            "(add it to segmentation.models)"
        )
    if judge and judge.get("seed") not in seg.get("seeds", []):
        problems.append(
            f"metrics.fidelity_segmenter.seed: {judge.get('seed')} is not in segmentation.seeds"
        )
    if judge.get("setting") == STEP_MATCHED and STEP_MATCHED not in segmentation_settings(config):
        problems.append(
            f"metrics.fidelity_segmenter.setting: {STEP_MATCHED} is not trained (it needs a "
            "synthetic setting and segmentation.step_matched)"
        )
    return problems


# The step-matched control: the real set twice per epoch, as many optimiser steps as
# real + one synthetic set (one synthetic image per training mask).
STEP_MATCHED = "real_x2"


def external_names(config: dict) -> list[str]:
    """Names of the configured external synthetic sets (``external_synthetic``)."""
    return [entry["name"] for entry in config.get("external_synthetic") or []]


def segmentation_settings(config: dict) -> list[str]:
    """Training-set settings of Table 3: ``real``, the step-matched ``real_x2`` (when there
    is a synthetic setting and ``segmentation.step_matched``) and ``real+<name>`` per
    synthetic set (a generator's or an external one)."""
    synthetic = config["segmentation"]["synthetic"]
    if synthetic is None:
        synthetic = [*config["generators"], *external_names(config)]
    matched = [STEP_MATCHED] if synthetic and config["segmentation"]["step_matched"] else []
    return ["real", *matched, *(f"real+{gen}" for gen in synthetic)]


def setting_repeat(setting: str) -> int:
    """How many times a setting lists the real pairs per epoch."""
    return 2 if setting == STEP_MATCHED else 1


def train_split(config: dict) -> str:
    """Name of the (single) training split."""
    return next(s["name"] for s in config["data"]["splits"] if s["role"] == "train")


def load_config(path: str | os.PathLike, schema_path: str | os.PathLike) -> dict:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    try:
        return validate_config(config, schema_path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
