"""The training engine: a run assembled once (``assembly``), its loop (``training``), step,
optimizer and schedule, sampling, mixing, checkpoints, run directories and trackers."""
