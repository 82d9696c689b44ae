"""The trained RG-Flow as an MLflow pyfunc model (MLflow's "models from code": this file is copied
to the root of every model folder and executed there when the model loads; it is never imported
by the project).

Loading needs the ``rgflow`` package (``pip install`` of this repository, a documented requirement
of the model: ``requirements.txt``) besides torch, torchvision, numpy and mlflow — not the ``jobs``
package, the run folder nor the training node. The weights are ``weights.pt`` beside this file
(``torch.load(weights_only=True)``); the model's structure and the bits/dim protocol are the
MLmodel's ``model_config`` (``model``, ``prior``: the trial's resolved sections; ``draws``,
``noise_seed``, ``batch_size``: the defaults of ``predict``'s params).

* ``predict(images, params={"draws": …, "noise_seed": …, "batch_size": …})``: uint8 images
  ``(N, C, L, L)`` → float64 ``(N,)``, each image's bits/dim averaged over ``draws``
  dequantisation draws, image ``i``'s noise in draw ``d`` depending on ``(noise_seed, d, i)`` only
  — ``jobs.evaluate``'s test-BPD protocol, so the test set in its order gives its per-image values
  and their mean is ``test_bpd``.
* ``unwrap_python_model().sample(n, temperature=1.0, seed=0)``: ``n`` samples as uint8
  ``(n, C, L, L)``, quantised as a PNG stores them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

WEIGHTS_FILE = "weights.pt"


class RGFlowPyfunc(PythonModel):
    """Per-image bits/dim of 8-bit images, and samples (see the module docstring)."""

    def load_context(self, context) -> None:
        import torch

        from rgflow.config import ModelConfig, PriorConfig
        from rgflow.model import RGFlowModel

        conf = context.model_config
        self.defaults = {key: int(conf[key]) for key in ("draws", "noise_seed", "batch_size")}
        self.model = RGFlowModel(ModelConfig(**conf["model"]), PriorConfig(**conf["prior"]))
        weights = torch.load(Path(__file__).resolve().parent / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        self.model.load_state_dict(weights, strict=True)
        self.model.eval()

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        from rgflow.data.batching import EpochBatcher
        from rgflow.train import validation_bpd

        p = {**self.defaults, **{k: int(v) for k, v in (params or {}).items() if v is not None}}
        images = torch.as_tensor(np.ascontiguousarray(model_input, dtype=np.uint8))
        if len(images) == 0:
            return np.zeros(0, dtype=np.float64)
        with torch.no_grad():
            batcher = EpochBatcher(images, p["batch_size"], p["noise_seed"], "cpu", drop_last=False)
            return validation_bpd(self.model, batcher, p["draws"], p["batch_size"]).per_image.astype(np.float64)

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
        """``n`` samples at ``temperature`` from latents drawn with ``seed``: uint8 ``(n, C, L, L)``."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            x = self.model.sample(n, temperature, generator).float()
        return x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()


set_model(RGFlowPyfunc())
