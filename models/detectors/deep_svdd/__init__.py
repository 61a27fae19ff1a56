"""Deep SVDD (Ruff et al. 2018): the bias-free networks (`network`) apart from the detector glue (`detector`:
`deep_svdd`, one-class and soft-boundary, optional autoencoder pre-training). Importing the package registers it."""

from models.detectors.deep_svdd.detector import DeepSvdd

__all__ = ["DeepSvdd"]
