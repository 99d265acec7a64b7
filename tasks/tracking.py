"""Everything MLflow: the audit trail of a pipeline run.

One parent run per pipeline run, created by the first task and closed by the last (or marked FAILED by
the DAG's failure callback). Under it:
  params            the resolved config (flattened), and `config.json` as an artifact
  inputs            the dev and held-out data sets (`log_inputs`, context `dev` / `heldout/<name>`)
  metrics           best_fitness, mean_fitness, accepted, evaluations with step = generation;
                    dev_*, heldout_<name>_*, in_domain_*, out_of_domain_* for the fused model
  lineage.json      an MLflow table (generation, round, individual, reference, seed, fitness, accepted),
                    one block of rows appended per generation
  child runs        one per evaluated offspring, tagged with generation, individual and the Airflow identity
                    (DAG id, run id, task, try number, map index) of the tasks that produced it
  fitness_curve.png, summary.json, fused_model/  (safetensors, config, tokenizer: `from_pretrained` loads it)
  registry          the fused model as a version of `registered_model`, alias `challenger`, and
                    `champion` when it wins the gate (see `tasks.stages.promote`)

Calls go through `MlflowClient` with explicit run ids, never the fluent "active run", because under Airflow
every task is a separate process. Every call is idempotent so that a retried task never duplicates an entry:
the run is found again by its `evolver.run_key` tag, child runs by their tags, each metric batch is logged in
one call and only when absent, table rows only when their generation is absent, artifacts overwrite.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.config import EvolverConfig

RUN_KEY_TAG = "evolver.run_key"
LINEAGE_TABLE = "lineage.json"
CHAMPION, CHALLENGER = "champion", "challenger"
LINEAGE_COLUMNS = ("generation", "round", "individual", "reference", "seed", "fitness", "accepted")
# A cross-task run's per-task scores, per generation and per offspring: `fitness_<task>` (maximised scale).
TASK_FITNESS_PREFIX = "fitness_"


def client_for(tracking_uri: str):
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per lineage read is log noise

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


def _log_json(client, run_id: str, name: str, record: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(record, indent=1, sort_keys=True))
        client.log_artifact(run_id, str(path))


def _metrics(values: dict[str, float], step: int = 0) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()]


# -- the parent run ---------------------------------------------------------------------------------------


def start_run(cfg: EvolverConfig, run_key: str, tags: dict[str, str] | None = None) -> str:
    """The MLflow run of this pipeline run: found by its run-key tag, or created with the config as params."""
    from mlflow.entities import Param

    client = client_for(cfg.tracking_uri)
    experiment_id = _experiment_id(client, cfg.experiment, cfg.tracking_uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        if "config.json" in {a.path for a in client.list_artifacts(run_id)}:
            return run_id  # complete: config.json is written last
    else:
        run_id = client.create_run(experiment_id, run_name=run_key, tags={RUN_KEY_TAG: run_key, **(tags or {})}).info.run_id
    # Params may be logged again with the same values (a retry after a crash in between); MLflow accepts that.
    params = [Param(k, v[:6000]) for k, v in sorted(_flatten(cfg.resolved()).items())]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    _log_json(client, run_id, "config.json", cfg.resolved())
    return run_id


def log_datasets(cfg: EvolverConfig, run_id: str, tables: dict[str, tuple[str, Any]]) -> None:
    """Record the data sets as run inputs: context -> (source description, pandas frame of text(s) and label).
    MLflow keeps one input per (digest, context), so a retry adds nothing."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, (source, frame) in tables.items():
        with warnings.catch_warnings():  # a path is "ambiguous" between two equivalent local source kinds
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name=context)
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    client_for(cfg.tracking_uri).log_inputs(run_id, datasets=inputs)


def set_tags(cfg: EvolverConfig, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    if tags:
        client_for(cfg.tracking_uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


# -- per generation ---------------------------------------------------------------------------------------


def read_lineage(client, run_id: str) -> list[dict[str, Any]]:
    """The lineage table's rows, [] before the first generation has been logged."""
    names = {a.path for a in client.list_artifacts(run_id)}
    if LINEAGE_TABLE not in names:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(client.download_artifacts(run_id, LINEAGE_TABLE, tmp)).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def log_generation(
    cfg: EvolverConfig, run_id: str, record: dict[str, Any], lineage: list[dict[str, Any]], context: dict[str, str] | None = None
) -> None:
    """A finished generation: its child runs, its block of the lineage table, then its metrics (the marker)."""
    client = client_for(cfg.tracking_uri)
    step = record["generation"]
    if any(m.step == step for m in client.get_metric_history(run_id, "best_fitness")):
        return
    # With validation data every candidate also has a validation score: one more column.
    columns = LINEAGE_COLUMNS + (("validation",) if any("validation" in entry for entry in lineage) else ())
    rows = [{column: entry[column if column != "individual" else "target"] for column in columns} for entry in lineage]
    for row, entry in zip(rows, lineage):
        if "tasks" in entry:
            row["tasks"] = entry["tasks"]
    evaluated_by = [entry.get("evaluated_by", {}) for entry in lineage]
    _log_offspring_runs(client, run_id, step, rows, evaluated_by, context or {})
    if rows and not any(row["generation"] == step for row in read_lineage(client, run_id)):
        client.log_table(run_id, {column: [row[column] for row in rows] for column in columns}, LINEAGE_TABLE)
    values = {key: record[key] for key in ("validation", "best_validation", "mean_fitness", "accepted", "evaluations", "best_fitness") if key in record}
    values.update({f"{TASK_FITNESS_PREFIX}{task}": score for task, score in record.get("task_fitness", {}).items()})
    client.log_batch(run_id, metrics=_metrics(values, step))  # one call: all of them or none


def _log_offspring_runs(
    client, parent_id: str, generation: int, rows: list[dict[str, Any]], evaluated_by: list[dict[str, str]], context: dict[str, str]
) -> None:
    """One child run per evaluated offspring, so each can be found by generation and individual; tagged with the
    Airflow identity of the select task (`context`) and of the evaluate tasks that scored it (`evaluated_by`)."""
    from mlflow.entities import RunTag

    parent = client.get_run(parent_id)
    existing = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`evolver.generation` = '{generation}'",
        max_results=1000,
    )
    have = {(r.data.tags.get("evolver.round"), r.data.tags.get("evolver.individual")) for r in existing}
    for row, evaluators in zip(rows, evaluated_by):
        if (str(row["round"]), str(row["individual"])) in have:
            continue
        tags = {
            "mlflow.parentRunId": parent_id,
            RUN_KEY_TAG: parent.data.tags.get(RUN_KEY_TAG, ""),
            **{f"evolver.{k}": json.dumps(row[k]) if not isinstance(row[k], str) else row[k] for k in LINEAGE_COLUMNS if k != "fitness"},
            **context,
            **evaluators,
        }
        child = client.create_run(parent.info.experiment_id, run_name=f"g{generation:02d}-r{row['round']}-ind{row['individual']}", tags=tags)
        scores = {k: row[k] for k in ("fitness", "validation") if k in row}
        scores.update({f"{TASK_FITNESS_PREFIX}{task}": score for task, score in row.get("tasks", {}).items()})
        client.log_batch(child.info.run_id, metrics=_metrics(scores, generation), tags=[RunTag("evolver.complete", "1")])
        client.set_terminated(child.info.run_id, "FINISHED")


# -- the end ----------------------------------------------------------------------------------------------


def _fitness_curve_png(generations: list[dict[str, Any]], metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [g["generation"] for g in generations]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, [g["best_fitness"] for g in generations], marker="o", label="best (selected)")
    ax.plot(steps, [g["mean_fitness"] for g in generations], marker=".", linestyle="--", label="mean of candidates")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title("Evolver fitness")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def final_metrics(final: dict[str, Any]) -> dict[str, float]:
    """MLflow metric name -> value of a final report; a cross-task run's tasks under `<task>_` (`sst_dev_macro_f1`)."""
    values = {f"dev_{metric}": value for metric, value in final["dev"].items()}
    for task, report in final.get("tasks", {}).items():
        values.update({f"{task}_{key}": value for key, value in final_metrics(report).items()})
    for part in ("validation", "gate"):
        values.update({f"{part}_{metric}": value for metric, value in final.get(part, {}).items()})
    for name, scores in final["heldout"].items():
        values.update({f"heldout_{name}_{metric}": value for metric, value in scores.items()})
    for group, scores in final.get("heldout_mean", {}).items():
        values.update({f"{group}_{metric}": value for metric, value in scores.items()})
    return values


def log_final(cfg: EvolverConfig, run_id: str, summary: dict[str, Any], model_dir: Path) -> None:
    """Scores of the fused model, the summary, the fitness curve and the model itself. The run stays open for
    the promotion step."""
    client = client_for(cfg.tracking_uri)
    values = final_metrics(summary["final"])
    if not all(key in client.get_run(run_id).data.metrics for key in values):
        client.log_batch(run_id, metrics=_metrics(values))
    set_tags(cfg, run_id, {"fused_model_sha256": summary["fused_model_sha256"]})
    client.log_artifacts(run_id, str(model_dir), artifact_path="fused_model")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "fitness_curve.png"
        png.write_bytes(_fitness_curve_png(summary["generations"], "mean of the tasks' metrics" if cfg.cross_task else cfg.metric))
        client.log_artifact(run_id, str(png))
    _log_json(client, run_id, "summary.json", summary)


def run_description(cfg: EvolverConfig, summary: dict[str, Any], decision: dict[str, Any]) -> str:
    """A few lines of Markdown for the MLflow run page's description (`mlflow.note.content`): what ran, how far
    fitness moved, the held-out scores, and what the registry did with the model."""
    metric = "mean of the tasks' metrics" if cfg.cross_task else cfg.metric
    method = f"Evolver + {cfg.merger}" if cfg.mode == "merge" else "Evolver (plain)"
    generations = summary["generations"]
    final = summary["final"]
    lines = [
        f"**{method}** over {len(cfg.models)} models: {cfg.schedule} schedule, {cfg.generations} generations "
        f"(F {cfg.F}, CR {cfg.CR}, seed {cfg.seed}), {generations[-1]['evaluations']} candidate evaluations.",
        f"Dev {metric}: {generations[0]['best_fitness']:.4f} at generation 0, {final['fitness']:.4f} fused.",
    ]
    if cfg.cross_task:
        tasks = ", ".join(f"{spec.name} {final['tasks'][spec.name]['dev'][spec.metric]:.4f}" for spec in cfg.task_list)
        lines.append(f"Per task (dev): {tasks}.")
    else:
        means = ", ".join(f"{group.replace('_', '-')} {scores[cfg.metric]:.4f}" for group, scores in final.get("heldout_mean", {}).items())
        if means:
            lines.append(f"Held-out {cfg.metric} (reported only, never selected on): {means}.")
    lines.append(f"Fused model sha256 `{summary['fused_model_sha256'][:16]}`. Registry: {decision['reason']}.")
    return "\n\n".join(lines)


def register(cfg: EvolverConfig, run_id: str, name: str | None = None, artifact: str = "fused_model") -> str:
    """The run's fused model (the `artifact` folder) as a version of `name` (default `cfg.registered_model`)
    with the alias `challenger`; its version."""
    client = client_for(cfg.tracking_uri)
    name = name or cfg.registered_model
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        _create_registered_model(client, name, description="Fused models from evolver-pipeline runs.")
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    version = versions[0] if versions else client.create_model_version(name, source=f"runs:/{run_id}/{artifact}", run_id=run_id)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def _create_registered_model(client, name: str, **kwargs) -> bool:
    """Create `name`; False when it exists already (another run made it first: the database's unique name is
    the one atomic test-and-set the registry offers)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, **kwargs)
        return True
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False


GATE_LOCK_SUFFIX = ".champion-gate-lock"


@contextmanager
def champion_gate_lock(cfg: EvolverConfig, names: list[str], holder: str, *, stale_after_s: float = 900, poll_s: float = 1.0):
    """Hold the champion gate of the registered models `names` against other runs, in any driver.

    The gate reads the champion, compares and moves the alias: two runs finishing together would both read the
    old champion, both win, and the last to write would be champion whether or not it beat the other. The lock
    is a registered model `<name>.champion-gate-lock` that only one run can create (tagged with the holder and
    the time), deleted on exit; names are taken in sorted order so that cross-task runs cannot deadlock. A
    lock older than `stale_after_s` belongs to a process that died holding it, and is broken; a lock of
    `holder` itself is an earlier try of the same run, and is taken over.
    """
    client = client_for(cfg.tracking_uri)
    held = []
    try:
        for name in sorted(names):
            lock = name + GATE_LOCK_SUFFIX
            while not _create_registered_model(client, lock, tags={"holder": holder, "since": f"{time.time():.3f}"}, description=f"held by {holder} while it decides the champion of {name}"):
                tags = _registered_model_tags(client, lock)
                if tags is not None and (tags.get("holder") == holder or time.time() - float(tags.get("since", 0)) > stale_after_s):
                    _delete_registered_model(client, lock)
                    continue
                time.sleep(poll_s)
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            _delete_registered_model(client, lock)


def _registered_model_tags(client, name: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException:
        return None  # released in between


def _delete_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def champion(cfg: EvolverConfig, name: str | None = None):
    """The version of `name` (default `cfg.registered_model`) holding the `champion` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client_for(cfg.tracking_uri).get_model_version_by_alias(name or cfg.registered_model, CHAMPION)
    except MlflowException:
        return None


def download_model(tracking_uri: str, run_id: str, dst: Path, artifact: str = "fused_model") -> Path:
    """The `fused_model/` artifacts of a run (a cross-task run's `fused_model/<task>/`), as a folder that
    `from_pretrained` loads."""
    return Path(client_for(tracking_uri).download_artifacts(run_id, artifact, str(dst)))


def set_champion(cfg: EvolverConfig, version: str, name: str | None = None) -> None:
    client_for(cfg.tracking_uri).set_registered_model_alias(name or cfg.registered_model, CHAMPION, version)


def finish(cfg: EvolverConfig, run_id: str) -> None:
    client_for(cfg.tracking_uri).set_terminated(run_id, "FINISHED")


def fail_run(tracking_uri: str, run_id: str) -> None:
    client = client_for(tracking_uri)
    if client.get_run(run_id).info.status != "FINISHED":
        client.set_terminated(run_id, "FAILED")
