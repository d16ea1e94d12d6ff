"""Experiment tracking: each training, ensemble and export job is one MLflow run.

Layout in the store (by default ``sqlite:///<run folder>/mlruns.db``, no server)::

    experiment "hms"
      parent run "workflow <start time>"       one per workflow run (status/run.json's start)
        child run "train_resnet1d_gru_fold0"   params, metric curves, final figures, tags
        child run "ensemble" ...

A job opens its run with :func:`open_job` and keeps the run id in its checkpoint folder
(``mlflow_run.json``): a job resumed after a crash appends to the same run, and metrics of
steps it already logged are not logged twice. ``backend: none``, ranks other than 0 and jobs
whose tracking failed get a :class:`Tracker` that does nothing; a failure to track is a
warning, never a failed job. Nothing is sent over the network: MLflow's usage telemetry is
switched off before MLflow is imported.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from hms_core import atomic
from hms_core.config import check_option, from_mapping
from hms_core.hashing import sha256_file

logger = logging.getLogger(__name__)

Backend = Literal["mlflow", "none"]
BACKENDS = typing.get_args(Backend)
RUN_ID_FILE = "mlflow_run.json"  # in the job's checkpoint folder
PARENT_FILE = Path("status", "mlflow_parent.json")
STATUS_FILE = Path("status", "run.json")  # hms_core.status.STATUS_FILE (status imports more)
MANIFEST_FILE = Path("data", "manifest.sha256")
SQLITE_TIMEOUT_S = 60  # concurrent jobs write one sqlite file: wait for its lock this long
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


@dataclass
class TrackingConfig:
    """Config section ``tracking``: where jobs log their runs.

    Parameters
    ----------
    backend : {"mlflow", "none"}
        ``"mlflow"`` logs every pretrain, train_fold, ensemble and export job as an MLflow
        run; ``"none"`` logs nothing and imports nothing of MLflow (default "mlflow").
    uri : str or None
        MLflow tracking URI; null: ``sqlite:///<run folder>/mlruns.db``, a file in the
        Snakemake working directory (default null).
    experiment : str
        MLflow experiment name (default "hms").
    """

    backend: Backend = "mlflow"
    uri: str | None = None
    experiment: str = "hms"

    def __post_init__(self) -> None:
        check_option("tracking.backend", self.backend, BACKENDS)


class Tracker:
    """The tracker that logs nothing: ``backend: none``, ranks > 0, or tracking that failed."""

    active = False

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the float-valued entries of ``metrics`` at ``step`` (others are skipped)."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values as strings)."""

    def finish(self, failed: bool = False) -> None:
        """Mark the run finished (or failed)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(failed=exc_type is not None)


class MlflowTracker(Tracker):
    """One MLflow run, through an ``MlflowClient``; the first error turns it off (a warning)."""

    active = True

    def __init__(self, client: Any, run_id: str, job: str, last_steps: Mapping[str, int]):
        self.client, self.run_id, self.job = client, run_id, job
        self.last_steps = dict(last_steps)  # metric -> highest step logged (resume skips those)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and step > self.last_steps.get(k, -1)}
        if not values:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, int(step)) for k, v in values.items()]
        if self._call(self.client.log_batch, self.run_id, metrics=batch):
            self.last_steps.update(dict.fromkeys(values, int(step)))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, self.run_id,
                   tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, failed: bool = False) -> None:
        self._call(self.client.set_terminated, self.run_id, "FAILED" if failed else "FINISHED")

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> bool:
        if not self.active:
            return False
        try:
            fn(*args, **kwargs)
            return True
        except Exception as err:  # tracking must never fail the job
            self.active = False
            logger.warning("experiment tracking of %s is off from now on: %s", self.job, err)
            return False


def open_job(cfg: TrackingConfig | Mapping | None, job: str, *,
             state_dir: str | os.PathLike | None = None,
             params: Mapping[str, Any] | None = None, rank: int | None = None,
             workdir: str | os.PathLike = ".") -> Tracker:
    """The job's tracker: its MLflow run (reopened on resume) under the workflow's parent run.

    Parameters
    ----------
    cfg : TrackingConfig, mapping or None
        The ``tracking`` section; None tracks nothing (library calls outside the workflow).
    job : str
        The run's name, e.g. ``train_resnet1d_gru_fold0``.
    state_dir : path, optional
        The checkpoint folder of a resumable job; it keeps the run id for a resume. Without
        it every call starts a new run (a job that is redone, not resumed).
    params : mapping, optional
        The job's resolved config, logged flattened (``training.lr``); its hash is the tag
        ``config_hash`` and a resume reopens the run only when the hash is the same.
    rank : int, optional
        The process's distributed rank (default: ``$RANK``, set by torchrun, else 0); only
        rank 0 tracks.
    workdir : path
        The run folder: the default store, the parent run's id and ``data/manifest.sha256``.

    Returns
    -------
    Tracker
        Logs nothing when tracking is off or failed to start (a warning says why).
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if cfg is None or rank != 0:
        return Tracker()
    if not isinstance(cfg, TrackingConfig):
        cfg = from_mapping(TrackingConfig, cfg, "tracking")
    if cfg.backend == "none":
        return Tracker()
    try:
        return _open_mlflow(cfg, job, None if state_dir is None else Path(state_dir) / RUN_ID_FILE,
                            dict(params or {}), Path(workdir))
    except Exception as err:  # an unwritable store, a broken database, MLflow raising
        logger.warning("experiment tracking of %s is off: %s", job, err)
        return Tracker()


def store_uri(cfg: TrackingConfig, workdir: str | os.PathLike = ".") -> str:
    """The tracking URI: ``cfg.uri``, or the sqlite file ``mlruns.db`` in ``workdir``."""
    if cfg.uri:
        return cfg.uri
    return f"sqlite:///{Path(workdir).absolute() / 'mlruns.db'}"


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` with telemetry off; sqlite waits for a busy database."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:") and "?" not in uri:
        uri = f"{uri}?timeout={SQLITE_TIMEOUT_S}"
    return MlflowClient(tracking_uri=uri)


def config_hash(params: Mapping[str, Any]) -> str:
    """sha256 of ``params`` as sorted JSON."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_hashes(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """Tags ``sha256.<file name>``: the sha256 of each file (e.g. the ONNX files a job wrote)."""
    return {f"sha256.{Path(p).name}": sha256_file(p) for p in paths}


def numeric_leaves(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested result: ``{"ensemble": {"kl_all": 0.6}}`` -> ``{"ensemble.kl_all": 0.6}``."""
    found: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found.update(numeric_leaves(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; values as strings, cut to MLflow's limit.

    A config dataclass becomes the keys a config file would hold (the engine's keys sit
    directly in ``training``, see ``hms_core.config.FLATTEN``).
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        value = config_keys(value)
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def config_keys(value: Any) -> Any:
    """A config dataclass as the mapping of its config-file keys; anything else as is."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    keys: dict[str, Any] = {}
    for field in dataclasses.fields(value):
        inner = config_keys(getattr(value, field.name))
        if field.metadata.get("flatten"):
            keys.update(inner)
        else:
            keys[field.name] = inner
    return keys


def _open_mlflow(cfg: TrackingConfig, job: str, run_id_path: Path | None, params: dict[str, Any],
                 workdir: Path) -> MlflowTracker:
    from mlflow.entities import Param, RunTag

    digest = config_hash(params)
    lock_path = workdir / "status" / "mlflow.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # One process at a time creates the database, the experiment and the parent run.
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = client_for(store_uri(cfg, workdir))
        experiment_id = _experiment_id(client, cfg.experiment, workdir)
        run_id = None if run_id_path is None else _resumable_run(client, run_id_path, digest)
        if run_id is None:
            parent_id = _parent_run_id(client, experiment_id, workdir)
            tags = {"mlflow.parentRunId": parent_id, "mlflow.runName": job, "job": job,
                    "config_hash": digest, **_provenance(workdir)}
            run = client.create_run(experiment_id, run_name=job,
                                    tags={k: str(v) for k, v in tags.items()})
            run_id = run.info.run_id
            if run_id_path is not None:
                atomic.write_json(run_id_path, {"run_id": run_id, "config_hash": digest})
            client.log_batch(run_id, params=[Param(k, v) for k, v in flatten(params).items()])
            last_steps: dict[str, int] = {}
            logger.info("tracking %s as MLflow run %s", job, run_id)
        else:
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag("resumed", "true")])
            last_steps = {key: max(m.step for m in client.get_metric_history(run_id, key))
                          for key in client.get_run(run_id).data.metrics}
            logger.info("tracking %s: resuming MLflow run %s", job, run_id)
    return MlflowTracker(client, run_id, job, last_steps)


def _experiment_id(client: Any, name: str, workdir: Path) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (workdir / "mlartifacts").absolute().as_uri()  # local, never the default ./mlruns
    return client.create_experiment(name, artifact_location=artifacts)


def _resumable_run(client: Any, path: Path, digest: str) -> str | None:
    """The run id saved in ``path`` if that run still exists with the same config hash."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("config_hash") != digest:
        return None
    try:
        run = client.get_run(saved["run_id"])
    except Exception:  # deleted, or another store: start a new run
        return None
    return None if run.info.lifecycle_stage == "deleted" else run.info.run_id


def _parent_run_id(client: Any, experiment_id: str, workdir: Path) -> str:
    """The parent run of this workflow run, created by its first job (call under the lock)."""
    started_at = _workflow_started_at(workdir)
    path = workdir / PARENT_FILE
    try:
        saved = json.loads(path.read_text())
        if saved.get("started_at") == started_at:
            return saved["run_id"]
    except (OSError, json.JSONDecodeError):
        pass
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_at or time.time()))
    run = client.create_run(experiment_id, run_name=f"workflow {when}",
                            tags={"workdir": str(workdir.absolute()), **_provenance(workdir)})
    atomic.write_json(path, {"run_id": run.info.run_id, "started_at": started_at})
    return run.info.run_id


def finish_workflow(cfg: TrackingConfig | Mapping | None, *, failed: bool = False,
                    workdir: str | os.PathLike = ".") -> None:
    """Mark this workflow run's parent run finished (Snakefile ``onsuccess``/``onerror``)."""
    if cfg is None:
        return
    if not isinstance(cfg, TrackingConfig):
        cfg = from_mapping(TrackingConfig, cfg, "tracking")
    path = Path(workdir, PARENT_FILE)
    if cfg.backend == "none" or not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
        if saved.get("started_at") != _workflow_started_at(Path(workdir)):
            return  # no job of this workflow run was tracked
        client_for(store_uri(cfg, workdir)).set_terminated(saved["run_id"],
                                                           "FAILED" if failed else "FINISHED")
    except Exception as err:
        logger.warning("could not close the workflow's MLflow run: %s", err)


def _workflow_started_at(workdir: Path) -> float | None:
    try:
        return json.loads((workdir / STATUS_FILE).read_text())["run"]["started_at"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None  # a job outside Snakemake: one parent per run folder


def _provenance(workdir: Path) -> dict[str, str]:
    """Tags ``git_commit`` (of the hms code, when it is a git checkout) and ``data_manifest_sha256``."""
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    manifest = workdir / MANIFEST_FILE
    if manifest.exists():
        tags["data_manifest_sha256"] = sha256_file(manifest)
    return tags
