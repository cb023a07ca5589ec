"""The version of resnet-lab: one place, read by the packaging, resnet --version and the exports."""

__version__ = "0.1.0"
