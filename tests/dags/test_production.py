"""A full DAG run in the production setting: run state in S3, audit trail on an MLflow server whose artifacts
live in S3 too, and two tasks that die on their first try right after writing to MLflow.

Both servers are real processes on 127.0.0.1 (moto's S3 server, `mlflow server`); nothing is mocked.
"""

import json
from pathlib import Path

import boto3
import yaml

from tasks import audit, tracking
from tasks.cli import main


def _keys(bucket: str, prefix: str) -> set[str]:
    # boto3 here reads the variables the tasks exported from the Airflow connection.
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"].removeprefix(prefix) for page in pages for obj in page.get("Contents", [])}


def test_s3_store_and_mlflow_server_with_retried_tasks(dag, tiny_config, tmp_path, s3_bucket, s3_endpoint, mlflow_server, monkeypatch, capsys):
    conf = yaml.safe_load(tiny_config.read_text())
    # The checkpoints themselves come from object storage, as a producer would publish them.
    for folder in map(Path, conf["models"]):
        for file in folder.iterdir():
            boto3.client("s3").upload_file(str(file), s3_bucket, f"checkpoints/{folder.name}/{file.name}")
    models = [f"s3://{s3_bucket}/checkpoints/{Path(folder).name}" for folder in conf["models"]]
    conf.update(models=models, store=f"s3://{s3_bucket}/runs", tracking_uri=mlflow_server, experiment="production", baselines=False)
    monkeypatch.setenv("EVOLVER_S3_CACHE", str(tmp_path / "s3-cache"))
    monkeypatch.setenv("EVOLVER_INJECT_FAULTS", "select.after_tracking,finalize.after_tracking")
    monkeypatch.setenv("EVOLVER_FAULTS_STATE", str(tmp_path / "faults"))
    # The tasks must find S3 through the Airflow connection `aws_default`, as on a shared deployment.
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    connection = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))

    from tasks.config import EvolverConfig

    # Every key, defaults included: dag.test leaves an earlier run's conf in the session-wide DAG's task params.
    run = dag.test(run_conf=EvolverConfig.from_dict(conf).resolved())
    assert run.state == "success"
    assert sorted(p.name for p in (tmp_path / "faults").iterdir()) == ["finalize.after_tracking", "select.after_tracking"]

    # Run state: per generation a member set under deterministic keys, then the final model and summary.
    [run_key] = {key.split("/")[0] for key in _keys(s3_bucket, "runs/")}
    keys = _keys(s3_bucket, f"runs/{run_key}/")
    generations = conf["generations"]
    assert {f"members/init/ind={i}.safetensors" for i in range(3)} <= keys
    assert {f"gen={g}/population.json" for g in range(generations + 1)} <= keys
    assert {f"gen={g}/ind={i}/offspring.safetensors" for g in range(1, generations + 1) for i in range(3)} <= keys
    assert {"final/summary.json", "final/promotion.json", "final/model/model.safetensors", "template/config.json"} <= keys
    summary = json.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"runs/{run_key}/final/summary.json")["Body"].read())
    for g in range(generations + 1):  # every generation's member set is complete in the store
        population = json.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"runs/{run_key}/gen={g}/population.json")["Body"].read())
        assert len(population["members"]) == 3 and set(population["members"]) <= keys

    # The audit trail: one entry per generation and offspring although select and finalize each ran twice.
    client = tracking.client_for(mlflow_server)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["finalize.airflow.try_number"] == "2" and parent.data.tags["airflow.dag_id"] == "evolver"
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "best_fitness")] == list(range(generations + 1))
    assert len(client.get_metric_history(parent.info.run_id, "dev_macro_f1")) == 1
    report = audit.collect(parent.info.run_id, mlflow_server)
    assert len(report["lineage"]) == len(summary["lineage"]) == 3 * generations
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == len(summary["lineage"])
    first = min(children, key=lambda c: (c.data.tags["evolver.generation"], c.data.tags["evolver.individual"]))
    assert first.data.tags["airflow.task_id"] == "gen_01.round_0.select"
    assert first.data.tags["evaluate.airflow.map_index"] == "0,1"  # candidate 0's two dev shards
    assert set(report["registered"][0]["aliases"]) == {"challenger", "champion"}
    assert report["artifact_uri"].startswith("mlflow-artifacts:")
    assert any(key.endswith("fused_model/model.safetensors") for key in _keys("mlflow-artifacts", ""))

    # The same final weights as an undisturbed in-process run, and the downloaded model reproduces its score.
    assert main(["run", str(tiny_config), "--output", str(tmp_path / "cli"), "--set", "baselines=false"]) == 0
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["fused_model_sha256"] == summary["fused_model_sha256"]
    assert main(["audit", parent.info.run_id, "--tracking-uri", mlflow_server, "--verify"]) == 0
    assert ": match" in capsys.readouterr().out
