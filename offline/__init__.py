"""Offline side: datasets, synthesis, training, evaluation, the asd-offline CLI."""
