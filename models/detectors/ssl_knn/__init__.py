"""Self-supervised segment embeddings + nearest neighbours (`ssl_knn`): the encoder and the contrastive loss
(`network`) apart from the augmentations, the training step and the detector glue (`detector`). Importing the
package registers it."""

from models.detectors.ssl_knn.detector import SslKnn

__all__ = ["SslKnn"]
