"""Models: backbones, the classifier wrapper and fine-tuning strategies."""
