"""The data: datasets and label files, decoding and the decoded cache, augmentation and the
pipelines that feed a run."""
