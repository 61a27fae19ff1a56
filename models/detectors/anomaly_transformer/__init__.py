"""Anomaly Transformer (Xu et al., ICLR 2022): the network (`network`: anomaly attention, the encoder, the
association discrepancy) apart from the detector glue (`detector`: `anomaly_transformer`, its minimax training
step and scoring). Importing the package registers it."""

from models.detectors.anomaly_transformer.detector import AnomalyTransformer

__all__ = ["AnomalyTransformer"]
