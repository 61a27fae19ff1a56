"""Training, in two layers: `loop` (the mini-batch loop below the detectors) and `recipe` (clips or tensors in,
bundle out, above the bundle). Import the submodules directly; this package imports nothing so that detectors can
use the loop without pulling in the bundle."""
