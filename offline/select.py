"""`asd-offline select`: choose a detector for one machine from its normal clips alone, then train it.

For a new machine with a handful of normal recordings and no faults: every candidate is cross-fitted on the normal
training clips and scored on held-out clips with and without synthetic faults added (`models.training.selection`
says how, and why no anomaly label is read); the one with the highest pseudo-AUC among those whose held-out scores do
not move with a 3 dB gain change (the gain gate) is trained on all the clips as `asd-offline train` would, and its
bundle records the selection (`training.selection` in bundle.json).

Candidates: by default the one-pass detectors whose scores ignore the microphone gain (`GAIN_INDEPENDENT`:
`embed_knn` and the level-normalised and modulation-depth variants of `modspec_graph`); `--candidates all` for
every one-pass detector (`default_candidates`), or `--candidates a,b`. A candidate is a config name:
`CONFIGS/<name>.yaml` or `CONFIGS/variants/<name>.yaml` (`--configs`, default the repository's `configs/`; the
config's `model` is the detector), or a registered detector's name alone, which then trains with its defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from offline.train import CONFIGS

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="ROOT_OR_MANIFEST",
                        help="dataset root (DCASE 2020 or MIMII layout) or manifest CSV")
    parser.add_argument("--machine", required=True, metavar="TYPE", help="machine type, e.g. fan")
    parser.add_argument("--id", dest="ids", action="append", metavar="ID",
                        help="use this machine id's clips only (repeatable); default: all ids of the type")
    parser.add_argument("--candidates", metavar="A,B",
                        help="comma-separated configs or detectors to choose from, or 'all' (every one-pass "
                             "detector); default: the gain-independent ones")
    parser.add_argument("--configs", type=Path, default=CONFIGS, metavar="DIR",
                        help="folder of <detector>.yaml configs (default: the repository's configs/; a detector "
                             "without one uses its defaults)")
    parser.add_argument("--out", type=Path, metavar="BUNDLE_DIR",
                        help="train the chosen detector on all the clips and write its bundle here")
    parser.add_argument("--report", type=Path, metavar="JSON", help="write every candidate's pseudo-AUC here")
    parser.add_argument("--holdout", type=float, help="for the chosen detector's threshold (as in train)")
    parser.add_argument("--threshold", metavar="SPEC", help="for the chosen detector (as in train)")
    parser.add_argument("--seed", type=int, help="folds, pseudo-faults and training (default 0)")


def candidate_configs(names: list[str], folder: Path) -> dict[str, dict[str, Any]]:
    """name -> training config: `folder/<name>.yaml` or `folder/variants/<name>.yaml` when one exists, else the
    defaults of the detector called `name`."""
    from models.detectors import get_detector
    from offline.train import find_config, load_config

    out = {}
    for name in names:
        path = find_config(name, folder)
        if path is not None:
            out[name] = {"model": name, **load_config(path)}
        else:
            get_detector(name)  # neither a config nor a detector: the registry's error, listing the detectors
            log.info("%s: no %s, its default settings are used", name, folder / f"{name}.yaml")
            out[name] = {"model": name}
    return out


def run(args: argparse.Namespace) -> int:
    from models.training.recipe import train_bundle
    from models.training.selection import GAIN_INDEPENDENT, default_candidates, select_detector
    from offline.datasets.index import load_clips
    from offline.train import apply_flags

    if args.candidates == "all":
        names = default_candidates()
    elif args.candidates:
        names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    else:
        names = list(GAIN_INDEPENDENT)
    configs = {name: apply_flags(cfg, args) for name, cfg in candidate_configs(names, args.configs).items()}
    clips = load_clips(args.data, machine=args.machine, lenient=False)
    choice = select_detector(clips, args.machine, configs, ids=args.ids, seed=args.seed or 0)
    follows = set(choice.follows_gain)
    for name in configs:
        if name in choice.pseudo_auc:
            gains = " / ".join(f"{v:.2f}" for v in choice.gain_auc[name].values())
            shown = (f"{choice.pseudo_auc[name]:.3f}  gain AUC {gains}"
                     f"{'  (follows the input gain)' if name in follows else ''}")
        else:
            shown = f"not measured: {choice.failed[name]}"
        print(f"{'*' if name == choice.chosen else ' '} {name:<16} pseudo-AUC {shown}")
    report = {**choice.to_dict(), "data": str(args.data), "machine": args.machine, "ids": args.ids}
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    if args.out:
        config = configs[choice.chosen]
        train_bundle(clips, config["model"], args.machine, args.out, config, ids=args.ids,
                     data_source=str(args.data), progress=False, extra_summary={"selection": report})
        print(f"wrote {args.out}: {choice.chosen} (chosen on {choice.n_clips} normal clips, {choice.folds} folds)")
    return 0
