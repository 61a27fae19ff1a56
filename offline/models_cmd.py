"""`asd-offline models`: the registered detector names, one per line (the values `--model` accepts)."""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """No options: the output is meant for scripts (`for m in $(asd-offline models)`)."""


def run(args: argparse.Namespace) -> int:
    from models.detectors import REGISTRY

    for name in sorted(REGISTRY):
        print(name)
    return 0
