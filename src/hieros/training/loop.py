"""The training loop, readable top to bottom (CleanRL style):

    resume from the newest good checkpoint (if any) -> build envs, agent, replays -> attach the tracker ->
    loop { act, store, train as the ratio allows, log, evaluate, media, checkpoint } -> checkpoint, final evaluation

One agent step = one policy call for every parallel environment (``num_envs`` steps counted). Each agent step owes
``train_ratio / (batch_size x batch_length)`` learner steps (:meth:`~hieros.agent.learner.Learner.train_step`, which
decides what in the hierarchy learns); the loop knows nothing of the hierarchy's structure: it stores what ``act``
returns into :class:`~hieros.replay.HierarchyReplay` and hands their ``sample`` to the learner.

Re-running the same command in the same run directory resumes: the checkpoint restores the agent's modules,
optimisers and schedulers, the counters, the train-ratio clock, the random generators and the replays' positions
(their data stays in ``<run_dir>/replay``); the environments start fresh episodes.

Fabric as Lightning intends: ``fabric.setup_module`` on the agent (device and precision, see
:mod:`~hieros.training.precision`), ``fabric.setup_optimizers`` on every optimiser
(:class:`~hieros.agent.learner.Learner`), ``fabric.backward`` and ``fabric.clip_gradients`` in the updates
(:meth:`~hieros.agent.subactor.Subactor._step_jointly`), ``fabric.save`` for checkpoints and an in-place restore of
the verified payload (what ``fabric.load`` does). ``fabric.float32_matmul_precision`` and the determinism switches
hold for the whole of :func:`train` (:mod:`~hieros.training.numerics`). The plumbing lives in
:mod:`~hieros.training.resume`, :mod:`~hieros.training.checkpoint`, :mod:`~hieros.training.evaluation` (evaluations
and ``scores.json``), :mod:`~hieros.training.tracking` (``metrics.jsonl`` and MLflow), :mod:`~hieros.training.console`,
:mod:`~hieros.training.media`, :mod:`~hieros.training.preemption` and :mod:`~hieros.training.threads`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from omegaconf import DictConfig, OmegaConf

from hieros.agent.hierarchy import Hierarchy
from hieros.agent.learner import Learner
from hieros.config import ConfigError
from hieros.envs.vector import make_vector_env
from hieros.files import write_atomic
from hieros.registry import Registry
from hieros.replay import HierarchyReplay
from hieros.training.checkpoint import FORMAT_VERSION, CheckpointDir, NumpyState, RandomState, check_compatible, restore
from hieros.training.console import Console, banner_rows, dashboard_command
from hieros.training.evaluation import final_evaluation, periodic_evaluation, write_scores
from hieros.training.media import write_run_media
from hieros.training.metrics_file import MetricsFile
from hieros.training.numerics import torch_numerics
from hieros.training.precision import fabric_arguments
from hieros.training.preemption import Preemption
from hieros.training.ratio import TrainRatio
from hieros.training.resume import check_replay_data, finished_scores, resume_point
from hieros.training.run_lock import RunDirLock, requeue_wait_seconds
from hieros.training.threads import torch_threads
from hieros.training.tracking import Tracker, make_tracker


class MetricMeans:
    """Running means of scalar metrics between two reports. Tensors are summed where they live (no device sync per
    update); :meth:`pop` reads them back once."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}
        self._counts: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def add(self, metrics: Mapping[str, Any], prefix: str = "") -> None:
        if not metrics:
            return
        keys = tuple(metrics)
        scalars = [torch.as_tensor(metrics[key]).detach().float().mean() for key in keys]
        device = scalars[0].device  # the training device: summing there needs no synchronisation per update
        values = torch.stack([scalar.to(device) for scalar in scalars])
        finite = torch.isfinite(values)
        group = (prefix, keys)
        if group not in self._sums:
            self._sums[group] = torch.zeros_like(values)
            self._counts[group] = torch.zeros_like(values)
        self._sums[group] += torch.where(finite, values, torch.zeros_like(values))
        self._counts[group] += finite.float()

    def pop(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for (prefix, keys), total in self._sums.items():
            for key, value, count in zip(keys, total.tolist(), self._counts[(prefix, keys)].tolist()):
                sums[prefix + key] = sums.get(prefix + key, 0.0) + value
                counts[prefix + key] = counts.get(prefix + key, 0.0) + count
        self._sums.clear()
        self._counts.clear()
        return {key: sums[key] / counts[key] for key in sums if counts[key] > 0}


def crossed(before: int, after: int, every: int) -> bool:
    """A cadence of ``every`` steps (0 = never) fires when the step count passes one of its multiples."""
    return every > 0 and after // every > before // every


class Run:
    """Everything one training run holds: the agent, its optimisers, replays, clocks and counters.

    The config is held in two forms on purpose: ``cfg`` is the composed :class:`~omegaconf.DictConfig` (attribute
    access; what the loop, evaluation and media read their settings from), ``config`` its resolved plain-dict copy
    (what the agent modules are built from, what every checkpoint stores and a resume compares, what the banner
    shows). Both hold the same values.
    """

    def __init__(self, cfg: DictConfig, registry: Registry, run_dir: Path, fabric: Fabric) -> None:
        self.cfg, self.registry, self.run_dir, self.fabric = cfg, registry, Path(run_dir), fabric
        self.config = OmegaConf.to_container(cfg, resolve=True)
        training = cfg.training
        self.num_envs = training.num_envs
        self.envs = make_vector_env(registry, cfg.env, self.num_envs, seed=cfg.seed, parallel=training.parallel_envs)
        obs_space = self.envs.observation_space
        self.obs_shapes = {key: tuple(space.shape) for key, space in obs_space.spaces.items()}
        self.device = fabric.device
        # setup_module moves the agent to the device and converts it for the precision (bf16-true: bf16 weights,
        # the S5 layers stay float32); its state_dict keys are the Hierarchy's own (no wrapper prefix)
        self.agent = fabric.setup_module(Hierarchy(self.config, registry, self.obs_shapes, self.envs.action_dim))
        self.learner = Learner(self.agent, cfg.agent.world_model.warmup_steps, fabric)
        if training.get("compile", False):
            self.agent.compile_updates(str(training.get("compile_backend", "inductor")))
        self.replays = HierarchyReplay(
            self.agent.replay_specs(),
            capacity=training.replay_capacity,
            num_streams=self.num_envs,
            window=training.batch_length,
            make_sampler=lambda: registry.build("sampler", cfg.sampler),
            directory=self.run_dir / "replay",
            batch_size=training.batch_size,
            min_windows=training.min_windows,
        )
        self.rng = np.random.default_rng(cfg.seed)
        self.ratio = TrainRatio(training.train_ratio / (training.batch_size * training.batch_length))
        self.step = 0
        self.episodes: list[dict[str, float]] = []
        self.eval_capped: dict[str, int] = {}  # episodes stopped by training.eval_max_steps in the latest evaluation
        self.metrics_offset = 0  # bytes of metrics.jsonl written up to the last checkpoint
        self.metrics = MetricMeans()
        self.acting = self.agent.initial_acting_state(self.num_envs, self.device)

    # ------------------------------------------------------------ checkpoint
    def stateful(self) -> dict[str, Any]:
        """The objects a checkpoint restores in place (module, optimisers, schedulers, clocks, replays, RNG)."""
        objects: dict[str, Any] = {"agent": self.agent, **self.learner.stateful(), "ratio": self.ratio}
        scaler = getattr(self.fabric.strategy.precision, "scaler", None)
        if scaler is not None:  # 16-mixed: the loss scale and its growth counter
            objects["grad_scaler"] = scaler
        objects.update({name: NumpyState(replay) for name, replay in self.replays.stateful().items()})
        objects["rng"] = RandomState(self.rng)
        return objects

    def state(self, tracker: Tracker) -> dict[str, Any]:
        """What :meth:`CheckpointDir.save` writes: the stateful objects plus plain values."""
        self.replays.flush()
        counters = {
            "step": self.step,
            "updates": list(self.updates),
            "episodes": list(self.episodes),
            "metrics_offset": self.metrics_offset,
        }
        mlflow = {"run_id": tracker.run_id or "", "tracking_uri": tracker.uri or ""}
        return {
            "format": FORMAT_VERSION,
            "config": self.config,
            **self.stateful(),
            "counters": counters,
            "mlflow": mlflow,
        }

    def restore(self, payload: Mapping[str, Any]) -> None:
        # fabric.load's in-place restore, on the payload the resume already read and verified; a checkpoint of another
        # precision has no scaler state (the scaler then starts afresh)
        rest = restore(self.stateful(), payload, optional=("grad_scaler",))
        counters = rest["counters"]
        self.step = int(counters["step"])
        self.learner.updates = [int(n) for n in counters["updates"]]
        self.episodes = [dict(episode) for episode in counters["episodes"]]
        self.metrics_offset = int(counters["metrics_offset"])

    # --------------------------------------------------------------- acting
    def store(self, rows) -> None:
        self.replays.store(rows)

    def record_episodes(self, obs: Mapping[str, np.ndarray]) -> None:
        for env in np.flatnonzero(obs["is_last"]):
            episode = {"step": self.step, "return": float(obs["episode_return"][env])}
            episode["length"] = float(obs["episode_length"][env])
            self.episodes.append(episode)
            self.metrics.add({"episode/score": episode["return"], "episode/length": episode["length"]})

    @property
    def latest_score(self) -> float | None:
        return self.episodes[-1]["return"] if self.episodes else None

    # -------------------------------------------------------------- training
    @property
    def updates(self) -> list[int]:
        """The learner's update counters (scores.json and the checkpoint record them)."""
        return self.learner.updates

    def train(self) -> None:
        """The learner steps the train ratio owes at this step (none before the prefill or while the replay is short)."""
        if self.step < self.cfg.training.prefill or not self.replays.ready:
            return
        for _ in range(self.ratio(self.step)):
            for prefix, metrics in self.learner.train_step(self.sample_batch, self.fabric).items():
                self.metrics.add(metrics, prefix=prefix)

    def sample_batch(self, index: int) -> dict[str, torch.Tensor] | None:
        """What the learner trains part ``index`` of the agent on (:meth:`HierarchyReplay.sample`)."""
        return self.replays.sample(index, self.rng, self.device)

    def report(self, steps_per_second: float) -> dict[str, float]:
        """The means since the last report, steps per second, update counts and replay sizes."""
        return {"sps": steps_per_second, **self.metrics.pop(), **self.learner.report(), **self.replays.report()}


def make_fabric(cfg: DictConfig) -> Fabric:
    """The run's Fabric (:mod:`~hieros.training.precision` turns ``fabric.precision`` into its plugin). An accelerator
    this machine does not have is a :class:`~hieros.config.ConfigError` (one line, before anything is written)."""
    arguments = fabric_arguments(str(cfg.fabric.precision), str(cfg.fabric.accelerator))
    try:
        with warnings.catch_warnings():
            # Lightning's hint to prepend `srun` wherever a SLURM client is installed; hieros runs one process per
            # job (a sweep's SLURM jobs are started by submitit), so the hint is noise on every run
            warnings.filterwarnings("ignore", message=r".*`srun` command is available on your system")
            return Fabric(
                accelerator=cfg.fabric.accelerator,
                devices=cfg.fabric.devices,
                strategy=cfg.fabric.strategy,
                **arguments,
            )
    except (RuntimeError, ValueError) as error:  # Lightning: "`CUDAAccelerator` can not run on your system ..."
        message = " ".join(str(error).split())
        raise ConfigError(
            f"fabric.accelerator={cfg.fabric.accelerator} cannot run here ({message}); use fabric=cpu, or "
            f"fabric.accelerator=auto to take a GPU where there is one"
        ) from None


def train(
    cfg: DictConfig,
    registry: Registry,
    run_dir: Path,
    fabric: Fabric | None = None,
    hydra_record: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train one agent as ``cfg`` says (resuming from ``run_dir``'s checkpoints); returns the content of scores.json.

    ``hydra_record``: Hydra's ``.hydra/`` files of the job (name -> text), written with ``config.yaml`` once the resume
    checks have passed (``hydra.output_subdir`` is null, so a refused rerun leaves the run's record as it was)."""
    # first: a precision this machine cannot run is refused before any file is written
    fabric = fabric or make_fabric(cfg)
    numerics = cfg.fabric
    with (
        torch_threads(int(cfg.training.get("torch_threads", 0) or 0)),
        torch_numerics(
            numerics.get("float32_matmul_precision", "highest"),
            numerics.get("deterministic", False),
            numerics.get("cudnn_benchmark", False),
        ),
    ):
        return _train(cfg, registry, run_dir, fabric, hydra_record or {})


def _train(
    cfg: DictConfig, registry: Registry, run_dir: Path, fabric: Fabric, hydra_record: Mapping[str, str]
) -> dict[str, Any]:
    run_dir = Path(run_dir).resolve()
    with RunDirLock(run_dir, wait_seconds=requeue_wait_seconds()):  # before anything in run_dir is written
        return _train_owned(cfg, registry, run_dir, fabric, hydra_record)


def _train_owned(
    cfg: DictConfig, registry: Registry, run_dir: Path, fabric: Fabric, hydra_record: Mapping[str, str]
) -> dict[str, Any]:
    training = cfg.training
    config = OmegaConf.to_container(cfg, resolve=True)
    console = Console(training.steps, cfg.hierarchy.layers, training.get("progress", "auto"))

    # Resume: the newest checkpoint that verifies, if its config is compatible and its replay data is there.
    checkpoints = CheckpointDir(run_dir / "checkpoints", keep=training.keep_checkpoints)
    latest = resume_point(checkpoints, training.get("resume", "auto"), console.warn)
    if latest is not None:
        check_compatible(latest.payload["config"], config, latest.path)
        check_replay_data(latest, run_dir)
    payload = latest.payload if latest is not None else {}
    counters = payload.get("counters", {})
    # A finished run (its last checkpoint at the budget, scores.json written after it) keeps every metrics line: the
    # final evaluation's lines come after that checkpoint and must survive a rerun (which only syncs the tracker).
    finished = int(counters.get("step", 0)) >= training.steps and finished_scores(run_dir, int(counters["step"]))
    metrics_path = run_dir / "metrics.jsonl"
    keep_bytes = (
        metrics_path.stat().st_size if finished and metrics_path.exists() else counters.get("metrics_offset", 0)
    )

    # Records: metrics.jsonl cut back to the checkpoint, then the tracker (fails here if its store is unreachable).
    metrics_file = MetricsFile(metrics_path, keep_bytes=keep_bytes)
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    for name, text in hydra_record.items():
        (run_dir / ".hydra").mkdir(exist_ok=True)
        write_atomic(run_dir / ".hydra" / name, text)
    tracker = make_tracker(config, run_dir, console.warn, run_id_hint=payload.get("mlflow", {}).get("run_id") or None)
    tracker.rewind_metrics(metrics_file.offset, step=int(counters.get("step", 0)))
    run: Run | None = None
    status, failure = "FAILED", None
    try:
        tracker.start()
        fabric.seed_everything(cfg.seed, verbose=False)
        run = Run(cfg, registry, run_dir, fabric)
        resumed = "fresh start"
        if latest is not None:
            run.restore(payload)
            resumed = f"resumed from {latest.path.name} (step {run.step})"
        console.banner("HIEROS training", banner_rows(run, run_dir, resumed, tracker))
        done = finished_scores(run_dir, run.step) if run.step >= training.steps else None
        if done is not None:
            console.info(f"run already finished at step {run.step}; scores in {run_dir / 'scores.json'}")
            status = "FINISHED"
            return done

        def save_checkpoint() -> None:
            run.metrics_offset = metrics_file.offset
            checkpoints.save(fabric, run.state(tracker), run.step)
            tracker.log_model(run.agent, run.step)  # logger.log_model=periodic: every checkpoint's agent
            if tracker.wants_media:
                tracker.poke()

        def write_media() -> None:
            if tracker.wants_media:
                write_run_media(run, run_dir / "media", run.step, report=console.info)
                tracker.poke()

        obs = run.envs.reset(seed=cfg.seed + run.step)
        last_time, last_step, saved_step = time.monotonic(), run.step, run.step
        checkpoint_due = time.monotonic() + 60 * training.checkpoint_minutes
        console.start(run.step)
        with Preemption() as preemption:
            while run.step < training.steps:
                before = run.step
                mode = "random" if run.step < training.prefill else "sampled"
                actions, rows, run.acting = run.agent.act(obs, run.acting, mode)
                run.store(rows)
                obs = run.envs.step(actions)
                run.step += run.num_envs
                run.record_episodes(obs)
                run.train()
                console.advance(run.step)

                if crossed(before, run.step, training.log_every) or run.step >= training.steps:
                    now = time.monotonic()
                    report = run.report((run.step - last_step) / max(now - last_time, 1e-9))
                    metrics_file.write(run.step, report)
                    console.report(run.step, report, run.latest_score)
                    last_time, last_step = now, run.step
                if crossed(before, run.step, training.eval_every) and run.step < training.steps:
                    periodic_evaluation(run, metrics_file, console.info)
                if crossed(before, run.step, tracker.media_every) and run.step < training.steps:
                    write_media()
                wall_clock_due = training.checkpoint_minutes > 0 and time.monotonic() >= checkpoint_due
                if crossed(before, run.step, training.checkpoint_every) or wall_clock_due or preemption.requested:
                    save_checkpoint()
                    saved_step, checkpoint_due = run.step, time.monotonic() + 60 * training.checkpoint_minutes
                    if preemption.requested:
                        console.info(f"{preemption.signal_name} received: checkpoint written at step {run.step}")
                    preemption.forward()  # exits (or requeues under submitit) when a signal asked for it
            console.stop()
            if saved_step != run.step or not checkpoints.paths():
                save_checkpoint()

        # Final evaluation (spec section 1.4), media and scores.
        evaluation = final_evaluation(run, metrics_file, console.info)
        write_media()
        scores = write_scores(run, evaluation, run_dir / "scores.json")
        tracker.log_model(run.agent, run.step, final=True)  # an MLflow logged model, uploaded by the mirror
        console.info(f"done: {run.step} agent steps; scores in {run_dir / 'scores.json'}")
        status = "FINISHED"
        return scores
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    except Exception as error:
        failure = f"{type(error).__name__}: {error}"
        raise
    finally:
        console.stop()
        metrics_file.close()
        if run is not None:
            run.envs.close()
        if tracker.started:
            tracker.close(status, reason=failure if status == "FAILED" else None)
            console.info(f"tracking: {tracker.describe()}")
            if tracker.uri:
                console.info(f"dashboard: {dashboard_command(tracker.uri)}")
