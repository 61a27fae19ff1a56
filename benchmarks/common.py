"""What every benchmark result records: the machine, the software, the command, and where the JSON goes."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLEANING_STAGES = ("ddae", "ae_clean")  # the feature-cleaning autoencoder stages a variant can swap or drop


def model_config(entry: str) -> tuple[str, dict[str, Any]]:
    """(row label, training config) for a benchmark's model entry.

    `MODEL` is the shipped `configs/MODEL.yaml`, or a named variant `configs/variants/MODEL.yaml`
    (`ensemble_fewshot`); the model's defaults when there is neither. `MODEL:ae_clean` /
    `MODEL:ddae` swap the config's feature-cleaning autoencoder stage for that one (its network settings kept), and
    `MODEL:none` drops it: the study's "with and without" comparison without a config file per variant.
    `MODEL:KEY=VALUE` (repeatable, `:`-separated) sets one hyper-parameter, VALUE read as YAML:
    `deep_svdd:objective=soft-boundary` is the row `deep_svdd+objective-soft-boundary`; `feature.KEY=VALUE` sets a
    feature setting instead (`modspec_graph:feature.log_envelope=true`).
    """
    from offline.train import find_config, load_config

    model, *variants = entry.split(":")
    found = find_config(model, CONFIGS)
    config = load_config(found) if found else {"model": model}  # an ensemble's member configs inlined
    path = found or CONFIGS / f"{model}.yaml"
    label = model
    for variant in variants:
        if "=" in variant:
            key, _, value = variant.partition("=")
            section, _, name = key.rpartition(".") if key.startswith("feature.") else ("params", "", key)
            config = {**config, section: {**(config.get(section) or {}), name: yaml.safe_load(value)}}
            label += f"+{key}-{value}"
        else:
            config, suffix = _swap_cleaning(config, variant, entry, path)
            label += suffix
    return label, config


def _swap_cleaning(config: dict[str, Any], cleaning: str, entry: str, path: Path) -> tuple[dict[str, Any], str]:
    stages = [s if isinstance(s, dict) else {"name": s} for s in config.get("stages") or []]
    at = [i for i, s in enumerate(stages) if s["name"] in CLEANING_STAGES]
    if not at or cleaning not in (*CLEANING_STAGES, "none"):
        raise SystemExit(f"{entry}: expected MODEL:{{{','.join(CLEANING_STAGES)},none}} for a model whose config has "
                         f"a cleaning stage ({path} has {[s['name'] for s in stages]}), or MODEL:KEY=VALUE")
    if cleaning == "none":
        del stages[at[0]]
        return {**config, "stages": stages}, "-noae"
    params = {k: v for k, v in stages[at[0]].get("params", {}).items() if k != "noise_factor"}
    stages[at[0]] = {"name": cleaning, "params": params}  # each stage's own noise default (0 for ae_clean)
    return {**config, "stages": stages}, f"+{cleaning}"


def machine_info() -> dict[str, Any]:
    """CPU/GPU, core count, memory and library versions, so a figure can be traced to where it was measured."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import librosa

        info["librosa"] = librosa.__version__
    except ImportError:  # pragma: no cover - librosa is a core dependency
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write `<name>.json` with the result, machine info, command line and date; returns the path."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        **result,
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
