"""Grounding models: ``create_model(ModelConfig(...))`` builds one by name from ``MODELS``."""

from .grounding import MODELS, ModelConfig, R2Grounder, create_model, register_model

__all__ = ["MODELS", "ModelConfig", "R2Grounder", "create_model", "register_model"]
