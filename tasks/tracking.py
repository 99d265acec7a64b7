"""Everything MLflow: one run per pipeline run, per-generation metrics, final scores and artifacts.

Calls go through `MlflowClient` with explicit run ids, never through the fluent "active run", because
under Airflow every task is a separate process. Each call is idempotent: the run is found again by its
`evolver.run_key` tag, and a generation's metrics are not logged twice.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tasks.config import EvolverConfig

RUN_KEY_TAG = "evolver.run_key"


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        # MLflow creates the database file but not its folder.
        Path(tracking_uri.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def _default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite database rather than in ./mlruns of whatever folder a task runs in."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()
        return (db.parent / "artifacts").as_uri()
    return None


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_default_artifact_location(tracking_uri))
    except Exception:
        # Another task created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def start_run(cfg: EvolverConfig, run_key: str, tags: dict[str, str] | None = None) -> str:
    """The MLflow run of this pipeline run: found by its run-key tag, or created with the config as params."""
    from mlflow.entities import Param

    client = _client(cfg.tracking_uri)
    experiment_id = _experiment_id(client, cfg.experiment, cfg.tracking_uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_key, tags={RUN_KEY_TAG: run_key, **(tags or {})})
    params = [Param(k, v[:6000]) for k, v in sorted(_flatten(cfg.resolved()).items())]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    return run.info.run_id


def log_generation(cfg: EvolverConfig, run_id: str, record: dict[str, Any]) -> None:
    """best/mean fitness and accepted count at step = generation, once per generation."""
    import time

    from mlflow.entities import Metric

    client = _client(cfg.tracking_uri)
    step = record["generation"]
    if any(m.step == step for m in client.get_metric_history(run_id, "best_fitness")):
        return
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(record[key]), now, step) for key in ("mean_fitness", "accepted", "evaluations")]
    # best_fitness goes last: it is the marker the check above reads.
    metrics.append(Metric("best_fitness", float(record["best_fitness"]), now, step))
    client.log_batch(run_id, metrics=metrics)


def finish_run(cfg: EvolverConfig, run_id: str, summary: dict[str, Any], model_dir: Path | None = None) -> None:
    client = _client(cfg.tracking_uri)
    final = summary["final"]
    for metric, value in final["dev"].items():
        client.log_metric(run_id, f"dev_{metric}", float(value))
    for name, scores in final["heldout"].items():
        for metric, value in scores.items():
            client.log_metric(run_id, f"heldout_{name}_{metric}", float(value))
    for group, scores in final.get("heldout_mean", {}).items():
        for metric, value in scores.items():
            client.log_metric(run_id, f"{group}_{metric}", float(value))
    client.set_tag(run_id, "fused_model_sha256", summary["fused_model_sha256"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "summary.json"
        path.write_text(json.dumps(summary, indent=1, sort_keys=True))
        client.log_artifact(run_id, str(path))
    if model_dir is not None:
        client.log_artifacts(run_id, str(model_dir), artifact_path="fused_model")
    client.set_terminated(run_id, "FINISHED")


def fail_run(tracking_uri: str, run_id: str) -> None:
    _client(tracking_uri).set_terminated(run_id, "FAILED")
