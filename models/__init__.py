"""Shared library: features, detectors, bundles, device selection."""
