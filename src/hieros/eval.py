"""``python -m hieros.eval checkpoint=PATH [episodes=N] [video=true] [out=DIR] ...`` (also ``hieros-eval``).

``checkpoint=runs:/RUN_ID`` (or the bare MLflow run id) evaluates a training run found in the MLflow store: its run
directory (the run's tag ``run_dir``) and that directory's newest good checkpoint; when the directory is not on this
machine, the newest checkpoint the run uploaded (``logger.log_checkpoints=true``) is downloaded into
``<out or ./eval_RUN_ID>/checkpoints/``.

Evaluates a saved agent: loads the configuration stored in the checkpoint, builds the agent, loads its weights and
runs N episodes in fresh environments. Writes ``eval_step<N>_<mode>.json`` (returns, lengths, mean) and, for image
environments, ``eval_step<N>_<mode>.gif/.mp4`` of the episodes (level-0 observations) next to the checkpoint (in
``<checkpoint folder>/eval/``) or in ``out=DIR``, and logs them to the MLflow run recorded in the checkpoint (metric
``eval_only/<mode>_score`` at the checkpoint's step, artifacts under ``eval/``) or, if that run is not in the store,
to a new run of the same experiment.

Arguments (``key=value``):
    checkpoint      a ``.ckpt`` file, a run directory (its newest good checkpoint), or an MLflow run:
                    ``runs:/RUN_ID`` or RUN_ID                                            (required)
    episodes        episodes to run                                                       (default 10)
    mode            sampled | greedy: the policy at every level                           (default greedy)
    video           write a video of the episodes                                         (default true)
    video_episodes  episodes recorded into the video                                      (default 3)
    out             output folder                                          (default <checkpoint folder>/eval)
    seed            seed of the evaluation environments            (default: the run's seed + 300000)
    mlflow          log to MLflow (the store in MLFLOW_TRACKING_URI or the run's)        (default true)
    device          cpu | cuda | auto                                                     (default cpu)
    tracking_uri    the MLflow store of ``checkpoint=runs:/RUN_ID`` and of the logged evaluation
                    (default: MLFLOW_TRACKING_URI, else sqlite:///<HIEROS_HOME or ./hieros-runs>/mlflow.db)
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hieros.files import write_json_atomic
from hieros.training.objective import POLICY_MODES

DEFAULTS: dict[str, Any] = {
    "checkpoint": None,
    "episodes": 10,
    "mode": "greedy",
    "video": True,
    "video_episodes": 3,
    "out": None,
    "seed": None,
    "mlflow": True,
    "device": "cpu",
    "tracking_uri": None,
}
RUN_ID = re.compile(r"^(?:runs:/)?([0-9a-f]{32})/?$")  # an MLflow run: runs:/<32 hex digits> or the bare id


class EvalError(ValueError):
    """Bad arguments or an unusable checkpoint; the message says what to do."""


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise EvalError(f"arguments are key=value pairs, got {bad}; e.g. checkpoint=PATH episodes=10 video=true")
    given = OmegaConf.to_container(OmegaConf.from_dotlist(list(argv)))
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise EvalError(f"unknown arguments {unknown}; allowed: {', '.join(DEFAULTS)}")
    args = {**DEFAULTS, **given}
    if not args["checkpoint"]:
        raise EvalError("checkpoint=PATH is required (a .ckpt file or a run directory)")
    if not isinstance(args["episodes"], int) or isinstance(args["episodes"], bool) or args["episodes"] < 1:
        raise EvalError(f"episodes={args['episodes']!r} is invalid: allowed is an integer >= 1")
    if args["mode"] not in POLICY_MODES:
        raise EvalError(f"mode={args['mode']!r} is invalid: allowed is {' | '.join(POLICY_MODES)}")
    for flag in ("video", "mlflow"):
        if not isinstance(args[flag], bool):
            raise EvalError(f"{flag}={args[flag]!r} is invalid: allowed is true | false")
    if args["device"] not in ("cpu", "cuda", "auto"):
        raise EvalError(f"device={args['device']!r} is invalid: allowed is cpu | cuda | auto")
    return args


def find_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file, or a run directory's newest good checkpoint: (path, payload)."""
    from hieros.training.checkpoint import CheckpointDir, CheckpointError, load_file

    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        warnings: list[str] = []
        loaded = CheckpointDir(folder).load_latest(report=warnings.append)
        for warning in warnings:
            print(f"[hieros.eval] WARNING: {warning}", file=sys.stderr)
        if loaded is None:
            raise EvalError(f"no usable checkpoint in {folder}: train first, or pass checkpoint=<file>.ckpt")
        return loaded.path, loaded.payload
    try:
        return path, load_file(path)
    except CheckpointError as error:
        raise EvalError(str(error)) from None


def store_uri(given: str | None) -> str:
    """``tracking_uri=`` as given (sqlite paths made absolute), else the store training runs use by default."""
    from hieros.training.mlflow_store import resolve_tracking_uri, sqlite_path

    if given:
        path = sqlite_path(str(given))
        return str(given) if path is None else f"sqlite:///{path.resolve()}"
    return resolve_tracking_uri(None, os.environ.get("HIEROS_HOME") or "hieros-runs")


def training_run(run_id: str, uri: str) -> Any:
    """The MLflow run ``run_id`` of a hieros training run in the store ``uri`` (raises :class:`EvalError`)."""
    from hieros.training.mlflow_store import probe, sqlite_path

    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise EvalError(f"no MLflow store at {database}: pass tracking_uri=... or set MLFLOW_TRACKING_URI")
    problem = probe(uri)
    if problem is not None:
        raise EvalError(f"MLflow store {uri} is unreachable ({problem})")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - not in this store
        raise EvalError(f"MLflow run {run_id} is not in {uri}: pass tracking_uri=... of the store it is in") from None
    if not run.data.tags.get("run_dir"):
        raise EvalError(f"MLflow run {run_id} is not a hieros training run (it has no run_dir tag)")
    return run


def run_checkpoint(run_id: str, uri: str, out: str | None) -> Path:
    """The run directory MLflow recorded for training run ``run_id`` or, when it is not on this machine, the newest
    checkpoint the run uploaded, downloaded into ``<out or ./eval_RUN_ID>/checkpoints``."""
    from mlflow.tracking import MlflowClient

    run_dir = training_run(run_id, uri).data.tags["run_dir"]
    client = MlflowClient(tracking_uri=uri)
    if Path(run_dir).is_dir():
        return Path(run_dir)
    uploaded = sorted(item.path for item in client.list_artifacts(run_id, "checkpoints") if item.path.endswith(".ckpt"))
    if not uploaded:
        raise EvalError(
            f"the run directory {run_dir} of MLflow run {run_id} is not on this machine and the run uploaded no "
            f"checkpoints (logger.log_checkpoints=true does); evaluate there, or pass checkpoint=<file>.ckpt"
        )
    folder = (Path(out).expanduser() if out else Path(f"eval_{run_id}")).resolve() / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, uploaded[-1], str(folder)))


def evaluate(args: Mapping[str, Any]) -> dict[str, Any]:
    """Run the evaluation ``args`` (see :data:`DEFAULTS`) describes; returns the content of the scores JSON."""
    import torch

    from hieros.agent.hierarchy import Hierarchy
    from hieros.envs.seeding import CHECKPOINT_EVAL_SEED_OFFSET
    from hieros.envs.vector import make_vector_env
    from hieros.registry import Registry
    from hieros.training.evaluation import run_episodes
    from hieros.training.media import write_video

    source = str(args["checkpoint"])
    uri = store_uri(args["tracking_uri"])
    run = RUN_ID.match(source)
    if run is not None and (source.startswith("runs:/") or not Path(source).expanduser().exists()):
        path, payload = find_checkpoint(run_checkpoint(run.group(1), uri, args["out"]).resolve())
    elif source.startswith("runs:/"):
        raise EvalError(f"checkpoint={source} is invalid: an MLflow run is runs:/<32-digit run id>")
    else:
        path, payload = find_checkpoint(Path(source).expanduser().resolve())
    config = payload["config"]
    step = int(payload.get("counters", {}).get("step", 0))
    device = torch.device(
        "cuda" if args["device"] == "cuda" or (args["device"] == "auto" and torch.cuda.is_available()) else "cpu"
    )
    registry = Registry.default()
    seed = int(args["seed"]) if args["seed"] is not None else int(config["seed"]) + CHECKPOINT_EVAL_SEED_OFFSET
    envs = make_vector_env(registry, config["env"], 1, seed=seed)
    try:
        obs_shapes = {key: tuple(space.shape) for key, space in envs.observation_space.spaces.items()}
        agent = Hierarchy(config, registry, obs_shapes, envs.action_dim).to(device)
        agent.load_state_dict(payload["agent"])
        agent.eval()
        has_images = "image" in obs_shapes
        record = bool(args["video"]) and has_images
        frames: list[np.ndarray] = []
        episode_lengths: list[float] = []
        finished = [0]

        def on_step(obs: Mapping[str, np.ndarray]) -> None:
            if record and finished[0] < int(args["video_episodes"]):
                frames.append(np.asarray(obs["image"][0]))
            if obs["is_last"][0]:
                finished[0] += 1
                episode_lengths.append(float(obs["episode_length"][0]))

        returns = run_episodes(agent, envs, int(args["episodes"]), args["mode"], seed, device, on_step=on_step)
    finally:
        envs.close()

    out = Path(args["out"]).expanduser().resolve() if args["out"] else path.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"eval_step{step:09d}_{args['mode']}"
    scores = {
        "checkpoint": str(path),
        "step": step,
        "mode": args["mode"],
        "seed": seed,
        "episodes": returns,
        "lengths": episode_lengths[: len(returns)],
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns)),
        "min": float(np.min(returns)),
        "max": float(np.max(returns)),
    }
    files = [out / f"{stem}.json"]
    write_json_atomic(files[0], scores)
    if args["video"] and not has_images:
        scores["video_note"] = "no video: the environment has vector observations (no images to record)"
    elif frames:
        height = frames[0].shape[0]
        files += write_video(np.stack(frames), out / stem, fps=15, tile_height=height)
    scores["files"] = [str(file) for file in files]
    write_json_atomic(files[0], scores)
    if args["mlflow"]:
        given = store_uri(args["tracking_uri"]) if args["tracking_uri"] or run is not None else None
        scores["mlflow"] = log_to_mlflow(payload, path, step, scores, files, tracking_uri=given)
        write_json_atomic(files[0], scores)
    return scores


def log_to_mlflow(
    payload: Mapping[str, Any],
    path: Path,
    step: int,
    scores: Mapping[str, Any],
    files: list[Path],
    tracking_uri: str | None = None,
) -> str:
    """Log the evaluation to the checkpoint's MLflow run (or a new run) in ``tracking_uri`` (default: the store the
    checkpoint recorded, or MLFLOW_TRACKING_URI); returns where it went, or why not."""
    from hieros.training.mlflow_store import get_or_create_experiment, probe, resolve_tracking_uri

    config = payload["config"]
    recorded = payload.get("mlflow", {}) or {}
    logger = config.get("logger", {}) or {}
    if logger.get("name") != "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI") and not tracking_uri:
        return "not logged: the run was trained with logger=none (set MLFLOW_TRACKING_URI to log the evaluation)"
    uri = tracking_uri or resolve_tracking_uri(
        recorded.get("tracking_uri") or logger.get("tracking_uri"), config.get("paths", {}).get("root", "hieros-runs")
    )
    problem = probe(uri)
    if problem is not None:
        message = f"not logged: MLflow store {uri} unreachable ({problem}); results are in {files[0].parent}"
        print(f"[hieros.eval] WARNING: {message}", file=sys.stderr)
        return message
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = recorded.get("run_id") or None
    if run_id:
        try:
            if client.get_run(run_id).info.lifecycle_stage == "deleted":
                run_id = None
        except Exception:  # noqa: BLE001 - not in this store
            run_id = None
    if run_id is None:
        location = logger.get("artifact_location")
        artifact_location = None if uri.startswith("http") or not location else str(Path(location).resolve())
        experiment_id = get_or_create_experiment(
            client, str(config.get("experiment_name", "default")), artifact_location
        )
        run = client.create_run(
            experiment_id, run_name=f"eval {path.parent.parent.name}/{path.name}", tags={"hieros.eval_of": str(path)}
        )
        run_id = run.info.run_id
        client.set_terminated(run_id)
    mode = scores["mode"]
    client.log_metric(run_id, f"eval_only/{mode}_score", float(scores["mean"]), step=step)
    for file in files:
        client.log_artifact(run_id, str(file), f"eval/step{step:09d}")
    return f"MLflow run {run_id} at {uri}"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return
    try:
        scores = evaluate(parse_args(argv))
    except EvalError as error:
        print(f"hieros.eval: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"[hieros.eval] {len(scores['episodes'])} episodes ({scores['mode']}) of {scores['checkpoint']} "
        f"(step {scores['step']}): mean {scores['mean']:.2f} +- {scores['std']:.2f}"
    )
    for file in scores["files"]:
        print(f"[hieros.eval] wrote {file}")
    if "video_note" in scores:
        print(f"[hieros.eval] {scores['video_note']}")
    if "mlflow" in scores:
        print(f"[hieros.eval] {scores['mlflow']}")


if __name__ == "__main__":
    main()
