"""The two noise models of the seeds (LSTMs on 80-band log-mel frames): a noisy/clean classifier and a mel
denoiser. The network is in `network`, the training and scoring glue in `detector`."""

from models.detectors.lstm_noise.detector import LstmClassifier, LstmDenoiser

__all__ = ["LstmClassifier", "LstmDenoiser"]
