"""`evolver audit RUN_ID`: a pipeline run, reconstructed from MLflow alone.

Nothing here reads the run store or Airflow: the config comes from the run's `config.json` artifact, the
fitness per generation from metric histories, the lineage from its table, the model from `fused_model/`.
`verify` goes one step further and re-scores the downloaded model on the dev data named in the config,
which must reproduce the logged dev score exactly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tasks import tracking

GENERATION_METRICS = ("best_fitness", "mean_fitness", "accepted", "evaluations", "validation", "best_validation")


def collect(run_id: str, tracking_uri: str) -> dict[str, Any]:
    client = tracking.client_for(tracking_uri)
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        config = json.loads(Path(client.download_artifacts(run_id, "config.json", tmp)).read_text())
    by_step: dict[int, dict[str, float]] = {}
    for key in GENERATION_METRICS:
        for metric in client.get_metric_history(run_id, key):
            by_step.setdefault(metric.step, {"generation": metric.step})[key] = metric.value
    final = {k: v for k, v in sorted(run.data.metrics.items()) if k not in GENERATION_METRICS and not k.startswith(tracking.TASK_FITNESS_PREFIX)}
    # search results carry no aliases; fetching each version does.
    versions = [client.get_model_version(v.name, v.version) for v in client.search_model_versions(f"run_id = '{run_id}'")]
    return {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "config": config,
        "generations": [by_step[step] for step in sorted(by_step)],
        "lineage": tracking.read_lineage(client, run_id),
        "final": final,
        "promotion": {k.removeprefix("evolver."): v for k, v in run.data.tags.items() if k.startswith(("evolver.promot", "evolver.gate_"))},
        "artifact_uri": run.info.artifact_uri,
        "artifacts": {a.path: f"{run.info.artifact_uri}/{a.path}" for a in client.list_artifacts(run_id)},
        "registered": [{"name": v.name, "version": str(v.version), "aliases": list(v.aliases), "source": v.source} for v in versions],
        "inputs": [
            {"name": d.dataset.name, "digest": d.dataset.digest, "context": next((t.value for t in d.tags if t.key == "mlflow.data.context"), "")}
            for d in run.inputs.dataset_inputs
        ],
    }


def verify(report: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    """Download the fused model from MLflow, re-score it on the config's dev data, compare with the logged score.
    A cross-task run's model of every task, each on its task's dev data: `tasks` holds each check, `match` all."""
    from tasks.config import EvolverConfig

    cfg = EvolverConfig.from_dict(report["config"])
    if not cfg.cross_task:
        return _verify_task(report, tracking_uri, cfg, cfg.task_list[0], "fused_model", "dev")
    checks = {t.name: _verify_task(report, tracking_uri, cfg, t, f"fused_model/{t.name}", f"{t.name}_dev") for t in cfg.task_list}
    return {"tasks": checks, "match": all(c["match"] for c in checks.values())}


def _verify_task(report: dict[str, Any], tracking_uri: str, cfg, spec, artifact: str, logged_as: str) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from tasks import modelpool, taskpool
    from tasks.taskpool.rank import prompting

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.download_model(tracking_uri, report["run_id"], Path(tmp), artifact)
        tokenizer = modelpool.load_tokenizer(folder)
        model = modelpool.load_model(folder, spec.task_type, cfg.dtype)
        settings = prompting(spec, folder)
    model.to(modelpool.pick_device(cfg.device)).eval()
    if taskpool.get_task_type(spec.task_type).head_labels:
        label2id, num_labels = {str(k): int(v) for k, v in model.config.label2id.items()}, model.config.num_labels
    else:  # a generative model's labels are the config's
        label2id, num_labels = {name: i for i, name in enumerate(spec.label_names)}, len(spec.label_names)
    # The dev set exactly as init_population encoded it, so every example is scored in the same batch.
    data = taskpool.encode(
        spec.dev_sources + spec.validation_sources,
        tokenizer=tokenizer,
        text_column=spec.text_column,
        label_column=spec.label_column,
        label2id=label2id,
        num_labels=num_labels,
        max_length=spec.max_length,
        text_pair_column=spec.text_pair_column,
        task_type=spec.task_type,
        **settings,
    )
    rows = range(len(data["labels"]))
    marks = taskpool.validation_rows(data["source"], validation=spec.validation, dev_sources=len(spec.dev_sources), seed=cfg.seed)
    task = taskpool.task(spec.task_type, label2id)
    fitness_rows, _ = task.score(
        model, data, rows, batch_size=spec.batch_size, batch_tokens=spec.batch_tokens, num_labels=num_labels, groups=marks.long(), n_groups=2
    )
    scores = task.metrics(fitness_rows)  # `dev_*` covers the rows fitness sees
    logged = report["final"][f"{logged_as}_{spec.metric}"]
    return {"metric": spec.metric, "logged": logged, "recomputed": scores[spec.metric], "match": scores[spec.metric] == logged}


def render(report: dict[str, Any]) -> str:
    lines = [f"run {report['run_id']} ({report['run_name']}), status {report['status']}", "", "config:"]
    lines += [f"  {line}" for line in json.dumps(report["config"], indent=2, sort_keys=True).splitlines()]
    lines += ["", "generation  best_fitness  mean_fitness  accepted  evaluations"]
    for g in report["generations"]:
        lines.append(
            f"{g['generation']:10d}  {g.get('best_fitness', float('nan')):12.4f}  {g.get('mean_fitness', float('nan')):12.4f}"
            f"  {int(g.get('accepted', 0)):8d}  {int(g.get('evaluations', 0)):11d}"
        )
    columns = tracking.LINEAGE_COLUMNS + (("validation",) if any("validation" in row for row in report["lineage"]) else ())
    lines += ["", f"lineage ({' '.join(columns)}):"]
    for row in report["lineage"]:
        lines.append("  " + "  ".join(f"{row[c]:.4f}" if c in ("fitness", "validation") else str(row[c]) for c in columns))
    lines += ["", "final scores:"] + [f"  {k:40s} {v:.4f}" for k, v in report["final"].items()]
    lines += ["", "data sets:"] + [f"  {d['context']:24s} digest {d['digest']}" for d in report["inputs"]]
    lines += ["", f"artifacts ({report['artifact_uri']}):"] + [f"  {uri}" for uri in report["artifacts"].values()]
    lines += ["", "model registry:"] + [
        f"  {v['name']} version {v['version']} aliases {v['aliases'] or '-'} source {v['source']}" for v in report["registered"]
    ]
    if report["promotion"]:
        lines += [f"  promoted: {report['promotion'].get('promoted')}: {report['promotion'].get('promotion_reason', '')}"]
    return "\n".join(lines)
