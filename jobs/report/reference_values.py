"""Published numbers the report compares a sweep with.

Source: the 2025 reproduction of RG-Flow (I. Faisal, "RG and Sampling", Department of Physics,
Cambridge, 2025), Table 1 ("Comparison of bits per dimension (BPD) and Fréchet Inception
Distance (FID) across different datasets using Laplacian and Gaussian priors"); the text is in
``shared/seed/000_a187af6d1920a533.txt``. Its section 2.5 gives the recipe: batch size 512,
AdamW at learning rate 1e-3 with weight decay 5e-5, gradient clipping at norm 1, 100 epochs on
CelebA and 60 on MSDS, the authors' CelebA model (``nlayers = [8, 6, 4, 2]``) and MSDS model
(``nlayers = 4``). The report states no uncertainty, no seed count, not on which split the BPD
was measured, and neither the sampling temperature nor the number of images of its FID.
"""
from __future__ import annotations

#: Table 1 of the 2025 reproduction: ``{dataset: {prior: {"bpd": bits/dim, "fid": FID}}}``, with
#: the dataset and prior names of ``rgflow.config.DATASETS`` / ``PRIOR_KINDS``.
REPRODUCTION_2025_TABLE_1: dict[str, dict[str, dict[str, float]]] = {
    "celeba": {"laplace": {"bpd": 3.7238, "fid": 83.815}, "gaussian": {"bpd": 3.7432, "fid": 80.418}},
    "msds1": {"laplace": {"bpd": 1.8562, "fid": 103.164}, "gaussian": {"bpd": 1.8505, "fid": 103.637}},
    "msds2": {"laplace": {"bpd": 1.9375, "fid": 105.798}, "gaussian": {"bpd": 1.9457, "fid": 106.914}},
}
SOURCE_2025 = "the 2025 reproduction (Faisal, \"RG and Sampling\"), Table 1"
#: Batch size (images) of every run behind Table 1.
BATCH_2025 = 512
#: Our model preset (``rgflow.config.MODEL_PRESETS``) that is the 2025 model of each dataset.
PRESET_2025 = {"celeba": "celeba32", "msds1": "msds", "msds2": "msds"}
RECIPE_2025 = ("batch 512, AdamW at LR 1e-3 with weight decay 5e-5, 100 epochs (CelebA) / 60 (MSDS); no "
               "uncertainty, seed count or BPD split stated; FID temperature and image count not stated")

__all__ = ["REPRODUCTION_2025_TABLE_1", "SOURCE_2025", "BATCH_2025", "PRESET_2025", "RECIPE_2025"]
#: Their recipe's effective learning rate (AdamW, no batch-size scaling) and epochs per dataset.
LR_2025 = 1e-3
EPOCHS_2025 = {"celeba": 100, "msds1": 60, "msds2": 60}
