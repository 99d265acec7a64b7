"""The MLflow run a pipeline run leaves behind (local SQLite tracking, local artifacts)."""

import json

from mlflow.tracking import MlflowClient

from tasks.cli import main


def test_run_holds_config_generations_scores_and_model(tiny_config, tmp_path):
    assert main(["run", str(tiny_config), "--output", str(tmp_path / "out"), "--run-id", "audit-me"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["F"] == "0.5" and run.data.params["mode"] == "merge"
    history = client.get_metric_history(run.info.run_id, "best_fitness")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.value for m in history] == [g["best_fitness"] for g in summary["generations"]]
    assert run.data.metrics["dev_macro_f1"] == summary["final"]["dev"]["macro_f1"]
    assert run.data.tags["fused_model_sha256"] == summary["fused_model_sha256"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "fused_model"} <= artifacts
    # Re-running the same run id reuses the MLflow run and logs no duplicate generation.
    assert main(["run", str(tiny_config), "--run-id", "audit-me"]) == 0
    assert len(client.get_metric_history(run.info.run_id, "best_fitness")) == 4
