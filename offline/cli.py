"""`asd-offline`: one subcommand per module. Each module exposes `configure_parser(parser)` and `run(args) -> int`.

Subcommand modules keep heavy imports (torch, matplotlib, librosa) inside `run`, so building the parser is cheap.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from models.runtime import keep_freed_memory, own_version, setup_logging

DESCRIPTION = ("Prepare machine-sound data, train anomalous-sound detectors on normal recordings, evaluate them "
               "and score recordings. `asd-offline COMMAND --help` explains each command.")

# subcommand -> (module, one-line help). The order is the order `--help` shows.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("offline.synth", "write a synthetic machine-sound dataset in DCASE 2020 layout"),
    "download": ("offline.datasets.download", "download and extract a public dataset (DCASE 2020 Task 2, MIMII)"),
    "train": ("offline.train", "train a detector on normal clips and write a bundle"),
    "select": ("offline.select", "choose a detector for a machine from its normal clips alone, and train it"),
    "evaluate": ("offline.evaluate", "AUC/pAUC, confusion matrices, DCASE CSVs and plots for one or more bundles"),
    "score": ("offline.score", "score wav files with a bundle (one JSON line per file)"),
    "denoise": ("offline.denoise", "denoise mel .npy or .wav files with an lstm_denoiser bundle (+ PNG)"),
    "models": ("offline.models_cmd", "list the registered detectors"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asd-offline", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: info)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {own_version()}")
    # -v also after the command (`asd-offline train -v ...`); SUPPRESS keeps it from resetting a -v given before
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[verbose])
        p.set_defaults(_module=module)
        importlib.import_module(module).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` relaunches the same command
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    keep_freed_memory()
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError) as exc:  # user-fixable (an unwritable --out too): a message, exit 2
        logging.getLogger("asd-offline").debug("details", exc_info=True)
        print(f"asd-offline {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
