"""RG-Flow (Hu et al. 2022): a hierarchical flow model with a sparse prior.

Public entry points: :class:`rgflow.model.RGFlowModel`, :func:`rgflow.config.model_preset`,
:class:`rgflow.config.PriorConfig`. See ``docs/ARCHITECTURE.md`` for the module map.
"""
from rgflow.config import ModelConfig, PriorConfig, model_preset
from rgflow.model import RGFlowModel, bits_per_dim

__all__ = ["ModelConfig", "PriorConfig", "model_preset", "RGFlowModel", "bits_per_dim"]
