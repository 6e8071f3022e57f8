"""The trained agent as an MLflow 3 logged model (``logger.log_model: final | periodic | never``).

Two halves, so that no MLflow call runs inside the training loop:

* :func:`save_agent` runs in the loop (like a checkpoint write): a CPU copy of the
  :class:`~hieros.agent.hierarchy.Hierarchy` module is saved with ``mlflow.pytorch.save_model`` (cloudpickle format;
  the module has no tensor-in/tensor-out ``forward`` to export) into ``<run_dir>/mlflow_models/step_<N>/``, written
  to a temporary folder first and renamed, so a folder there is always complete;
* :func:`upload` runs in the mirror thread (:class:`~hieros.training.mlflow_mirror.MlflowTracker`): it creates the
  logged model ``agent`` of the run (its params: the run's config; its metrics: the ``metrics.jsonl`` points of that
  step, e.g. ``final_eval/greedy_score``), uploads the folder, marks the model READY and records it as an output of the
  run at step N. The mirror then deletes the local folder (the checkpoints keep everything).

Loading it back (hieros must be importable: the pickle refers to its classes)::

    agent = mlflow.pytorch.load_model("models:/<model_id>")   # the tag hieros.model of the run holds that URI
    agent = mlflow.pytorch.load_model("runs:/<run_id>/agent")  # the run's model (with periodic models: one of them)
    actions, _, state = agent.act(obs, agent.initial_acting_state(1, "cpu"), "greedy")  # see Hierarchy.act
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODEL_NAME = "agent"  # the logged model's name: runs:/<run_id>/agent
MODEL_TYPE = "hieros-hierarchy"  # LoggedModel.model_type, to search for hieros agents
MODELS_DIR = "mlflow_models"  # <run_dir>/mlflow_models/step_<N>/: saved, not yet uploaded
MODEL_TAG = "hieros.model"  # run tag: models:/<model_id> of the newest uploaded agent


def model_folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / MODELS_DIR / f"step_{int(step):09d}"


def pending_models(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every saved agent not yet uploaded, oldest first (temporary folders left out)."""
    folder = Path(run_dir) / MODELS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        name = path.name
        if path.is_dir() and name.startswith("step_") and name[5:].isdigit():
            found.append((int(name[5:]), path))
    return sorted(found)


def pip_requirements() -> list[str]:
    """What the model needs (written without inferring them, which would start a subprocess that loads the model)."""
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for package in ("torch", "cloudpickle", "hieros"):
        try:
            requirements.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            requirements.append(package)
    return requirements


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """mlflow.pytorch warns on every pickle-format save; one agent per checkpoint would repeat it each time."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def plain_module(agent: Any) -> Any:
    """The Hierarchy itself, also when Fabric wrapped it (``fabric.setup_module``)."""
    from lightning.fabric.wrappers import _FabricModule

    return agent.module if isinstance(agent, _FabricModule) else agent


def save_agent(agent: Any, folder: Path, step: int) -> Path:
    """Save a CPU float32 copy of ``agent`` as an MLflow pytorch model in ``folder`` (atomically: temp + rename)."""
    import mlflow.pytorch
    import torch

    module = plain_module(agent)
    first = next(iter(module.parameters()), None)
    if first is not None and (first.device.type != "cpu" or first.dtype != torch.float32):
        module = copy.deepcopy(module).to("cpu").float()  # a GPU or bf16 agent: a copy that loads anywhere
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    training = module.training
    module.eval()
    try:
        with _quiet("mlflow.pytorch"):
            mlflow.pytorch.save_model(
                module,
                str(temporary),
                serialization_format="pickle",
                pip_requirements=pip_requirements(),
                metadata={"hieros_step": int(step)},
            )
        os.replace(temporary, folder)
    finally:
        module.train(training)
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def step_metrics(metrics_path: Path, step: int) -> dict[str, tuple[float, int]]:
    """The metric values ``metrics.jsonl`` holds for ``step``: {key: (value, timestamp ms)} (the last line wins)."""
    found: dict[str, tuple[float, int]] = {}
    try:
        lines = Path(metrics_path).read_bytes().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("step") != step:
            continue
        stamp = int(float(record.get("time") or time.time()) * 1000)
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, int | float) and not isinstance(value, bool):
                found[key] = (float(value), stamp)
    return found


def upload(
    client, run_id: str, experiment_id: str, folder: Path, step: int, params: dict[str, str], metrics_path: Path
) -> str:
    """Log the saved agent in ``folder`` as the logged model ``agent`` of ``run_id`` at ``step``; returns its id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    model = client.create_logged_model(
        experiment_id, name=MODEL_NAME, source_run_id=run_id, params=params, model_type=MODEL_TYPE
    )
    try:
        mlmodel = Path(folder) / "MLmodel"
        description = Model.load(str(mlmodel))
        description.run_id, description.model_id = run_id, model.model_id
        description.artifact_path = model.artifact_location
        description.save(str(mlmodel))
        client.log_model_artifacts(model.model_id, str(folder))
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=int(step))])
    points = [
        Metric(key, value, stamp, int(step), model_id=model.model_id)
        for key, (value, stamp) in step_metrics(metrics_path, step).items()
    ]
    for start in range(0, len(points), 1000):  # MAX_METRICS_PER_BATCH; same points as the run's: not duplicated
        client.log_batch(run_id, metrics=points[start : start + 1000])
    client.set_tag(run_id, MODEL_TAG, f"models:/{model.model_id}")
    return model.model_id
