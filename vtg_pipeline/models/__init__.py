"""Grounding models: ``create_model(ModelConfig(...))`` builds one by name from ``MODELS``."""

from .grounding import MODELS, ModelConfig, R2Grounder, create_model, model_class, register_model
from .rgnet import RGNetGrounder

__all__ = ["MODELS", "ModelConfig", "R2Grounder", "RGNetGrounder", "create_model", "model_class", "register_model"]
