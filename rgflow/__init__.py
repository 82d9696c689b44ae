"""RG-Flow (Hu et al. 2022): a hierarchical flow model with a sparse prior.

Public entry points: :class:`rgflow.model.RGFlowModel`, :func:`rgflow.config.model_preset`,
:class:`rgflow.config.PriorConfig`. See ``docs/ARCHITECTURE.md`` for the module map.

The model names are imported lazily, so that ``import rgflow.config`` (every command line's
config handling, ``--dry-run``, ``status``) does not pay for importing torch.
"""
from rgflow.config import ModelConfig, PriorConfig, model_preset

__all__ = ["ModelConfig", "PriorConfig", "model_preset", "RGFlowModel", "bits_per_dim"]


def __getattr__(name: str):
    if name in ("RGFlowModel", "bits_per_dim"):
        from rgflow import model

        return getattr(model, name)
    raise AttributeError(f"module 'rgflow' has no attribute {name!r}")
