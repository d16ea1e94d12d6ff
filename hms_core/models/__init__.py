"""Model families behind one registry: ``create_model(name, **kwargs)``, ``list_models()``."""
from hms_core.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
