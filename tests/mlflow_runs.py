"""Read the MLflow runs of a run folder back, as a user would (``mlflow.search_runs``)."""
from __future__ import annotations

from hms_core import tracking


def search_runs(workdir):
    """Every run of experiment ``hms`` in ``workdir``'s store, as a DataFrame."""
    uri = tracking.store_uri(tracking.TrackingConfig(), workdir)
    tracking.client_for(uri)  # telemetry off before mlflow is used here
    import mlflow

    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=["hms"])
    finally:
        mlflow.set_tracking_uri(old)


def metric_steps(workdir, run_id, key):
    """The steps at which ``key`` was logged in run ``run_id``, in logging order."""
    client = tracking.client_for(tracking.store_uri(tracking.TrackingConfig(), workdir))
    return [m.step for m in client.get_metric_history(run_id, key)]
