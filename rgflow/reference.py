"""Import and export of the authors' checkpoint layout (spec §10).

A reference checkpoint is ``{'flow': state_dict, 'optimizer': ...}`` (the bare flow state dict is
accepted too). Key correspondence, ``k`` = sub-layer, ``j`` = coupling, ``r`` = residual block,
``i`` = layer inside the block, ``st`` ∈ {``s``, ``t``}:

=========================================================  ===============================================
reference                                                  ours (``RGFlowModel`` parameter)
=========================================================  ===============================================
``layers.k.{st}_layers.j.res_blocks.r.(2i).scale``          ``flow.sublayers.k.couplings.j.{st}.blocks.r.acts.i.beta``
``layers.k.{st}_layers.j.res_blocks.r.(2i+1).weight_v``     ``….blocks.r.linears.i.weight_v`` (same for ``weight_g``, ``bias``)
``layers.k.{st}_layers.j.scale.scale``                      ``flow.sublayers.k.couplings.j.{st}.gain``
``layers.k.mask_left`` / ``mask_right``                     checked: must be the (a+b)-even checkerboard / its complement
``layers.k.{st}_layers.j.scale.saved_mean`` / ``saved_var`` ignored (debug statistics; exported as 0 / 1)
``prior.scale``                                             checked against the model's prior (T or T/√2)
=========================================================  ===============================================

Any unexpected or missing key, or a shape that does not match the model's config, raises
:class:`ReferenceLayoutError` naming the key.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from rgflow.flow import checkerboard_masks
from rgflow.model import RGFlowModel

_PARAM = re.compile(r"^layers\.(\d+)\.([st])_layers\.(\d+)\.(?:res_blocks\.(\d+)\.(\d+)\.(scale|weight_v|weight_g|bias)|scale\.(scale|saved_mean|saved_var))$")
_MASK = re.compile(r"^layers\.(\d+)\.mask_(left|right)$")


class ReferenceLayoutError(ValueError):
    """A reference state dict does not fit the model: ``str(err)`` names the key and the fix."""


def _ours(match: re.Match) -> str | None:
    """Our parameter name for a reference parameter key (``None`` for ignored debug buffers)."""
    k, st, j, r, pos, leaf, scale_leaf = match.groups()
    prefix = f"flow.sublayers.{k}.couplings.{j}.{st}"
    if r is None:
        return f"{prefix}.gain" if scale_leaf == "scale" else None
    pos = int(pos)
    if pos % 2 == 0:
        return f"{prefix}.blocks.{r}.acts.{pos // 2}.beta" if leaf == "scale" else f"{prefix}.blocks.{r}.?{leaf}"
    return f"{prefix}.blocks.{r}.linears.{pos // 2}.{leaf}" if leaf != "scale" else f"{prefix}.blocks.{r}.?{leaf}"


def _unwrap(state: Mapping[str, Any]) -> Mapping[str, Any]:
    if "flow" in state and isinstance(state["flow"], Mapping):
        return state["flow"]
    return state


def import_reference_state(model: RGFlowModel, state_dict: Mapping[str, Any]) -> None:
    """Load a reference-layout state dict (or ``{'flow': sd, 'optimizer': …}``) into ``model`` in place."""
    sd = _unwrap(state_dict)
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    even, odd = checkerboard_masks(model.cfg.channels, model.cfg.kernel)
    nsub = len(model.flow.sublayers)
    masks_seen = set()
    for key, value in sd.items():
        if key == "prior.scale":
            _check_prior_scale(model, value)
            continue
        m = _MASK.match(key)
        if m and int(m.group(1)) < nsub:
            want = even if m.group(2) == "left" else odd
            got = torch.as_tensor(value).detach().to("cpu", torch.float32).reshape(-1)
            if got.shape != want.shape or not torch.equal(got, want):
                raise ReferenceLayoutError(
                    f"{key}: mask differs from the (a+b)-even checkerboard of C={model.cfg.channels}, m={model.cfg.kernel}; "
                    "this checkpoint uses another coupling layout and cannot be imported")
            masks_seen.add(key)
            continue
        m = _PARAM.match(key)
        name = _ours(m) if m else "?"
        if m and name is None:
            continue  # saved_mean / saved_var: debugging statistics
        if name not in ours:
            raise ReferenceLayoutError(
                f"{key}: unexpected key for model preset {model.cfg.preset!r} (nlayers={list(model.cfg.nlayers)}, "
                f"nresblocks={model.cfg.nresblocks}, nmlp={model.cfg.nmlp}); check the model config matches the checkpoint")
        tensor = torch.as_tensor(value)
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise ReferenceLayoutError(
                f"{key}: shape {tuple(tensor.shape)} does not match the model's {tuple(ours[name].shape)}; "
                "check nhidden / channels / kernel of the model config")
        mapped[name] = tensor
    for name in ours:
        if name not in mapped:
            raise ReferenceLayoutError(f"{export_key(name)}: missing from the reference state dict (model parameter {name})")
    for k in range(nsub):
        for side in ("left", "right"):
            if f"layers.{k}.mask_{side}" not in masks_seen:
                raise ReferenceLayoutError(f"layers.{k}.mask_{side}: missing from the reference state dict")
    if "prior.scale" not in sd:
        raise ReferenceLayoutError("prior.scale: missing from the reference state dict")
    model.load_state_dict(mapped, strict=True)


def _check_prior_scale(model: RGFlowModel, value: Any) -> None:
    got = float(torch.as_tensor(value))
    want = model.prior.scale
    if not math.isclose(got, want, rel_tol=1e-6):
        raise ReferenceLayoutError(
            f"prior.scale: checkpoint has {got:.6g} but the model's {model.prior_cfg.kind} prior at temperature "
            f"{model.prior_cfg.temperature} has scale {want:.6g}; set prior.kind / prior.temperature / "
            "prior.laplace_scale to the values the checkpoint was trained with")


def export_key(name: str) -> str:
    """The reference key of one of our parameter names."""
    m = re.match(r"^flow\.sublayers\.(\d+)\.couplings\.(\d+)\.([st])\.(.*)$", name)
    if not m:
        raise KeyError(name)
    k, j, st, rest = m.groups()
    prefix = f"layers.{k}.{st}_layers.{j}"
    if rest == "gain":
        return f"{prefix}.scale.scale"
    m2 = re.match(r"^blocks\.(\d+)\.(acts|linears)\.(\d+)\.(.*)$", rest)
    r, kind, i, leaf = m2.groups()
    pos = 2 * int(i) + (kind == "linears")
    return f"{prefix}.res_blocks.{r}.{pos}.{'scale' if kind == 'acts' else leaf}"


def export_reference_state(model: RGFlowModel) -> dict[str, torch.Tensor]:
    """The model's weights as a reference-layout flow state dict (put it under ``'flow'`` to save)."""
    out: dict[str, torch.Tensor] = {}
    dtype = next(model.parameters()).dtype
    out["prior.scale"] = torch.tensor(model.prior.scale, dtype=dtype)
    even, odd = checkerboard_masks(model.cfg.channels, model.cfg.kernel)
    shape = (model.cfg.channels, model.cfg.kernel, model.cfg.kernel)
    f = model.cfg.patch_dim
    for k, sub in enumerate(model.flow.sublayers):
        out[f"layers.{k}.mask_left"] = even.view(shape).to(dtype)
        out[f"layers.{k}.mask_right"] = odd.view(shape).to(dtype)
        for j in range(len(sub.couplings)):
            for st in "st":
                out[f"layers.{k}.{st}_layers.{j}.scale.saved_mean"] = torch.zeros(f, dtype=dtype)
                out[f"layers.{k}.{st}_layers.{j}.scale.saved_var"] = torch.ones(f, dtype=dtype)
    for name, tensor in model.state_dict().items():
        out[export_key(name)] = tensor.detach().clone()
    return out


__all__ = ["ReferenceLayoutError", "import_reference_state", "export_reference_state", "export_key"]
