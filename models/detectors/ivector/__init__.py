"""MFCC i-vectors + GMM: the maths (`maths`: GMM EM, Baum-Welch statistics, total variability, extraction) apart
from the detector glue (`detector`: `ivector_gmm`). Importing the package registers the detector."""

from models.detectors.ivector.detector import IvectorGmm

__all__ = ["IvectorGmm"]
