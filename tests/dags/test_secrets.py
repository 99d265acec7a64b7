"""No secret anywhere it should not be: a DAG run with real-looking S3 credentials in the Airflow connection and
in the environment, one task failing on its first try, and then every place a secret could land searched for
the access key id and the secret key: task logs and the Airflow metadata database (rendered templates, XCom,
task instances), the console, MLflow's params, tags, metrics and artifacts, and every object of the run store
and of the MLflow artifact bucket. Both servers are real processes on 127.0.0.1; nothing is mocked.
"""

import json
import os
import urllib.parse
from pathlib import Path

import boto3
import yaml

from tasks import tracking

ACCESS_KEY_ID = "AKIAEVOLVERLEAKPROBE7"
SECRET_ACCESS_KEY = "evolverLeakProbe/Secret+Key0123456789abcdef"
# A secret can land encoded as well as raw: in a URL, in JSON, in a repr.
NEEDLES = {
    form.encode()
    for secret in (ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    for form in (secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), json.dumps(secret)[1:-1])
}


def _hits(blob: bytes) -> list[bytes]:
    return [needle for needle in NEEDLES if needle in blob]


def _bucket_objects(bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"]: s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read() for page in pages for obj in page.get("Contents", [])}


def test_no_secret_in_logs_xcom_templates_mlflow_or_the_store(dag, tiny_config, tmp_path, s3_bucket, s3_endpoint, mlflow_server, monkeypatch, capfd, caplog):
    conf = yaml.safe_load(tiny_config.read_text())
    conf.update(store=f"s3://{s3_bucket}/runs", tracking_uri=mlflow_server, experiment="secrets", registered_model="evolver-secrets", generations=1)
    monkeypatch.setenv("EVOLVER_S3_CACHE", str(tmp_path / "s3-cache"))
    monkeypatch.setenv("EVOLVER_INJECT_FAULTS", "select.after_tracking")  # one failing task, then its retry
    monkeypatch.setenv("EVOLVER_FAULTS_STATE", str(tmp_path / "faults"))
    # The credentials in both places a deployment puts them: the Airflow connection and the worker's environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    connection = {
        "conn_type": "aws",
        "login": ACCESS_KEY_ID,
        "password": SECRET_ACCESS_KEY,
        "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))

    from tasks.config import EvolverConfig

    run = dag.test(run_conf=EvolverConfig.from_dict(conf).resolved())
    assert run.state == "success"
    assert [p.name for p in (tmp_path / "faults").iterdir()] == ["select.after_tracking"]  # the failure happened

    found: dict[str, list[bytes]] = {}

    def search(where: str, blob: bytes) -> None:
        if hits := _hits(blob):
            found[where] = hits

    # The console and the log records of this process: task logs under dag.test, exception messages.
    out, err = capfd.readouterr()
    search("stdout", out.encode())
    search("stderr", err.encode())
    search("log records", "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records).encode())
    # AIRFLOW_HOME: task log files and the metadata database (XCom, rendered templates, task instances, dag runs).
    airflow_home = Path(os.environ["AIRFLOW_HOME"])
    files = [f for f in airflow_home.rglob("*") if f.is_file()]
    assert any(f.name.startswith("airflow.db") for f in files)
    for file in files:
        search(str(file), file.read_bytes())
    # The run store and the MLflow artifact bucket, every object; the local S3 cache.
    objects = _bucket_objects(s3_bucket)
    assert any(key.endswith("final/summary.json") for key in objects)
    for key, body in {**objects, **{f"mlflow-artifacts/{k}": v for k, v in _bucket_objects("mlflow-artifacts").items()}}.items():
        search(f"s3://{key}", body)
    for file in (f for f in (tmp_path / "s3-cache").rglob("*") if f.is_file()):
        search(str(file), file.read_bytes())
    # MLflow's params, tags and metrics of every run of the experiment, and the registry's versions.
    client = tracking.client_for(mlflow_server)
    experiment = client.get_experiment_by_name("secrets")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 + 3  # the run and its generation's three offspring
    for mlflow_run in runs:
        search(f"mlflow run {mlflow_run.info.run_id}", json.dumps(mlflow_run.to_dictionary(), default=str).encode())
    for version in client.search_model_versions("name = 'evolver-secrets'"):
        search(f"model version {version.version}", json.dumps(dict(version), default=str).encode())

    assert found == {}, f"credentials found in: {sorted(found)}"
