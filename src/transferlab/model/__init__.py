"""A run's final model as one ``nn.Module`` (normalized image batch → class probabilities), rebuilt from its files."""

from transferlab.model.load import LoadedModel, load_run_model

__all__ = ["LoadedModel", "load_run_model"]
