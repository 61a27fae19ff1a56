"""Signal-health levels, one definition shared by training (which names such clips in a warning) and the monitor
(which reports such sources). Import-free, so that the monitor's configuration stays quick to load."""

SILENCE_DBFS = -70.0  # below this RMS level a recording is silence, not machine sound
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped
CLIPPED_FRACTION = 0.01  # more than this share of clipped samples: the input is clipping
# Float audio is in [-1, 1]; a sample this far outside is no recording (a corrupt file, a wrong format). Its square
# overflows float32 in the features, so it is refused where audio comes in: files (`models.audio`) and live blocks.
MAX_SAMPLE = 1e3
