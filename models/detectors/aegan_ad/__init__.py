"""AEGAN-AD (Jiang et al. 2023): the networks (`network`: the autoencoder generator and the discriminator with an
embedding head) apart from the detector glue (`detector`: `aegan_ad`). Importing the package registers it."""

from models.detectors.aegan_ad.detector import AeganAd

__all__ = ["AeganAd"]
