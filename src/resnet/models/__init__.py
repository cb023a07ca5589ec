"""The model library: ResNet networks as pure ``nn.Module``s (torch only)."""
