"""A trained trial's ``model/`` folder as an MLflow model: written by :func:`save_pyfunc_files`
(``jobs.model_io.write_model_folder``), made a LoggedModel of its run by :func:`log_logged_model`
(``TrialRun``'s flusher, when it uploads the folder's ``MLmodel``).

The pyfunc itself is ``rgflow_pyfunc.py`` (MLflow's "models from code"; its docstring says what
``predict`` returns and how to sample). mlflow is imported on first use: importing this module is light.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

MLMODEL_FILE = "MLmodel"
CODE_FILE = "rgflow_pyfunc.py"
#: The files MLflow's ``save_model`` writes for the pyfunc (``MLmodel`` last: it completes a folder).
PYFUNC_FILES = (CODE_FILE, "requirements.txt", "python_env.yaml", "conda.yaml", MLMODEL_FILE)
#: The packages the pyfunc imports when it loads, pinned to the versions that trained it.
REQUIREMENTS = ("rgflow-sweeps", "torch", "torchvision", "numpy", "pyyaml", "mlflow")
MODEL_TYPE = "rgflow"  # the LoggedModel's model_type


def logged_model_name(run_name: str) -> str:
    """The LoggedModel name of a trial run named ``run_name``: never the name of a run artifact
    folder such as ``model`` — MLflow 3.17 merges a run's LoggedModel of that name into
    ``runs:/<run>/<name>`` listings and downloads, resolving it through the process's global
    tracking URI instead of the client's (a wrong store, or a new ``./mlflow.db``). The characters
    MLflow refuses in a LoggedModel name (``/ : . % " '``: run names hold LRs like ``lr0.001``)
    become ``_``."""
    return "rgflow-" + re.sub(r"""[/:.%"']""", "_", run_name)


def find_logged_model(client, experiment_id: str, run_id: str):
    """Run ``run_id``'s LoggedModel of :data:`MODEL_TYPE`, or None."""
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return next((m for m in found if m.model_type == MODEL_TYPE), None)


def _pinned(name: str) -> str:
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name


def save_pyfunc_files(dst: str | os.PathLike, model_config: Mapping[str, Any], shape: tuple[int, int, int],
                      run_id: str | None = None) -> list[Path]:
    """Write the MLflow pyfunc files (:data:`PYFUNC_FILES`) of a trained RG-Flow into the new folder
    ``dst`` (``mlflow.pyfunc.save_model``): ``model_config`` is the pyfunc's (``model``, ``prior``,
    ``draws``, ``noise_seed``, ``batch_size``), ``shape`` the images' ``(C, L, L)``; the signature
    takes uint8 ``(-1, C, L, L)`` and gives float64 ``(-1,)`` bits/dim, with params ``draws``,
    ``noise_seed`` and ``batch_size``. The weights are not written here (``weights.pt`` goes beside).
    Returns the files' paths, ``MLmodel`` last."""
    import numpy as np
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1,))]),
        params=ParamSchema([ParamSpec(key, "long", int(model_config[key])) for key in ("draws", "noise_seed", "batch_size")]),
    )
    with warnings.catch_warnings():  # its advice (type hints, an input example) is for the console of a notebook
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(str(dst), python_model=str(Path(__file__).with_name(CODE_FILE)),
                                 model_config=dict(model_config), signature=signature,
                                 mlflow_model=Model(run_id=run_id),
                                 pip_requirements=[_pinned(name) for name in REQUIREMENTS])
    written = sorted(p.name for p in Path(dst).iterdir())
    if written != sorted(PYFUNC_FILES):
        raise RuntimeError(f"mlflow.pyfunc.save_model wrote {written}; expected {sorted(PYFUNC_FILES)}")
    return [Path(dst) / name for name in PYFUNC_FILES]


def log_logged_model(client, experiment_id: str, run_id: str, folder: Path, name: str,
                     params: Mapping[str, str], tags: Mapping[str, str]) -> str:
    """Make the MLflow model in local ``folder`` the LoggedModel ``name`` (:func:`logged_model_name`)
    of run ``run_id`` and return its id: found (a retry after a crash) or created with ``params`` and ``tags``; the folder's
    ``MLmodel`` rewritten (atomically) with the model's id, run and location; the folder uploaded as
    the model's artifacts; the run's output linked (at the ``step`` of ``model.json``); the model
    READY. Idempotent. Errors are raised (the caller retries)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    found = find_logged_model(client, experiment_id, run_id)
    model = found or client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, params=dict(params), tags=dict(tags), model_type=MODEL_TYPE)
    mlmodel = Model.load(str(folder / MLMODEL_FILE))
    if (mlmodel.model_id, mlmodel.run_id) != (model.model_id, run_id):
        mlmodel.model_id = mlmodel.model_uuid = model.model_id
        mlmodel.run_id, mlmodel.artifact_path = run_id, model.artifact_location
        part = folder / f".{MLMODEL_FILE}.partial"
        mlmodel.save(str(part))
        os.replace(part, folder / MLMODEL_FILE)
    client.log_model_artifacts(model.model_id, str(folder))
    if not found:
        info = json.loads((folder / "model.json").read_text()) if (folder / "model.json").is_file() else {}
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, int(info.get("step", 0)))])
    if model.status != LoggedModelStatus.READY:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id

