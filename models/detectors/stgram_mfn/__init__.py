"""STgram-MFN (Liu et al. 2022): the network (`network`: Tgram, MobileFaceNet, ArcFace) apart from the detector
glue (`detector`: `stgram_mfn`). Importing the package registers it."""

from models.detectors.stgram_mfn.detector import StgramMfn

__all__ = ["StgramMfn"]
