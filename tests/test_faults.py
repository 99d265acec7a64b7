"""Workers killed in the middle of a write: `evolver run` SIGKILLed at a fault point, then run again with the same
run id (what a task retry or a cleared task does), must end with the undisturbed run's fused weights, with no
partial object ever taken for a complete one and no duplicate in the audit trail.

Each kill is real (`os.kill(SIGKILL)` at the point, in a subprocess): no exception handler or cleanup runs.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks import tracking
from tasks.store import open_store, run_key
from tests import tiny

EVOLVER = str(Path(sys.executable).parent / "evolver")
RUN_ID = "killed-run"


def _evolver(config: Path, out: Path, env: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    command = [EVOLVER, "run", str(config), "--run-id", RUN_ID, "--output", str(out), *options]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _config(population, folder: Path, **changes) -> Path:
    conf = {**tiny.run_config(population, folder), "generations": 2, "baselines": False, **changes}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="module")
def undisturbed(tiny_population, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("undisturbed")
    done = _evolver(_config(tiny_population, folder), folder / "out", dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "out" / "summary.json").read_text())["fused_model_sha256"]


# point, store, what must not exist (as a complete object) right after the kill
CASES = [
    ("evaluate.mid_forward", "file", "gen=0/round=0/cand=0/shard=0.json"),
    ("make_offspring.mid_stream", "file", "gen=1/ind=0/offspring.safetensors"),
    ("make_offspring.mid_stream", "s3", "gen=1/ind=0/offspring.safetensors"),
    ("evaluate.before_write", "file", "gen=0/round=0/cand=0/shard=0.json"),
    ("select.after_tracking", "file", "gen=0/population.json"),
]


@pytest.mark.parametrize("point, store_kind, absent", CASES, ids=[f"{p}-{s}" for p, s, _ in CASES])
def test_a_killed_worker_resumes_to_the_undisturbed_result(point, store_kind, absent, undisturbed, tiny_population, tmp_path, request):
    store = str(tmp_path / "store")
    if store_kind == "s3":
        store = f"s3://{request.getfixturevalue('s3_bucket')}/runs"  # the fixture exports the endpoint and keys
    env = {**os.environ, "EVOLVER_S3_CACHE": str(tmp_path / "s3-cache")}
    config = _config(tiny_population, tmp_path, store=store)
    faults = {"EVOLVER_INJECT_FAULTS": f"{point}=kill", "EVOLVER_FAULTS_STATE": str(tmp_path / "faults")}

    killed = _evolver(config, tmp_path / "killed", {**env, **faults})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [p.name for p in (tmp_path / "faults").iterdir()] == [point]
    run_store = open_store(store).scoped(run_key(RUN_ID))
    assert not run_store.exists(absent), f"{absent} exists although its writer was killed first"
    if store_kind == "file":  # whatever the kill left is a temporary file no reader looks at
        leftovers = [p.name for p in (tmp_path / "store" / run_key(RUN_ID)).rglob("*") if p.is_file() and p.name.startswith(".")]
        assert all(name.startswith(f".{Path(absent).name}.") for name in leftovers), leftovers

    resumed = _evolver(config, tmp_path / "resumed", {**env, **faults})  # the marker says it fired: no second kill
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["fused_model_sha256"] == undisturbed
    # One audit entry per generation, whether or not a select died after logging its generation.
    steps, children = _audit_entries(config, summary)
    assert steps == [0, 1, 2] and children == len(summary["lineage"])


def _audit_entries(config: Path, summary: dict) -> tuple[list[int], int]:
    """The steps of best_fitness and the number of child runs of a run's MLflow entry."""
    client = tracking.client_for(yaml.safe_load(config.read_text())["tracking_uri"])
    steps = [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "best_fitness")]
    experiment = client.get_run(summary["mlflow_run_id"]).info.experiment_id
    return steps, len(client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{summary['mlflow_run_id']}'"))


def test_a_failing_stage_is_retried_in_process_with_retries(undisturbed, tiny_population, tmp_path):
    """`--retries`: the CLI retries a failed stage as Airflow retries a task, so one invocation finishes."""
    config = _config(tiny_population, tmp_path)
    faults = {"EVOLVER_INJECT_FAULTS": "select.after_tracking", "EVOLVER_FAULTS_STATE": str(tmp_path / "faults")}
    without = _evolver(config, tmp_path / "without", {**os.environ, **faults, "EVOLVER_FAULTS_STATE": str(tmp_path / "faults-0")})
    assert without.returncode == 1 and "InjectedFault" in without.stderr
    retried = _evolver(config, tmp_path / "retried", {**os.environ, **faults}, "--retries", "1", "--retry-delay", "0")
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "select failed (InjectedFault: injected fault at select.after_tracking" in retried.stdout + retried.stderr
    assert json.loads((tmp_path / "retried" / "summary.json").read_text())["fused_model_sha256"] == undisturbed


def test_a_cleared_generation_reruns_to_the_same_result(undisturbed, tiny_population, tmp_path):
    """A user clears generation 1 and everything after it (tasks and their objects) and runs again: the same
    fused model, and no second audit entry for the generations that ran twice."""
    config = _config(tiny_population, tmp_path)
    assert _evolver(config, tmp_path / "first", dict(os.environ)).returncode == 0
    run_folder = tmp_path / "store" / run_key(RUN_ID)
    cleared = sorted(p.name for p in run_folder.iterdir() if p.name in ("gen=1", "gen=2", "final"))
    assert cleared == ["final", "gen=1", "gen=2"]
    for name in cleared:
        shutil.rmtree(run_folder / name)
    again = _evolver(config, tmp_path / "again", dict(os.environ))
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["fused_model_sha256"] == undisturbed
    assert (run_folder / "gen=2" / "population.json").is_file()  # recomputed, not found
    steps, children = _audit_entries(config, summary)
    assert steps == [0, 1, 2] and children == len(summary["lineage"])
