"""One place that decides where tensors live, so every model and the monitor agree."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA when a GPU is visible, else CPU; an explicit `cuda` without a GPU is an error, not a fallback."""
    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(pref)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available on this machine")
    return device


def describe(device: torch.device) -> str:
    """Human-readable device name for logs, the TUI header and benchmark JSON."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"
