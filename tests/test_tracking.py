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


def test_champion_gate_lock_lets_one_run_at_a_time_decide_and_breaks_stale_locks(tmp_path):
    """Two gates on the same registered model run one after the other, never interleaved; a lock left by a
    killed process is broken once stale, and a run's own earlier lock is taken over at once."""
    import threading
    import time

    from tasks import tracking
    from tasks.config import EvolverConfig

    cfg = EvolverConfig.model_construct(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    events = []

    def gate(holder: str) -> None:
        with tracking.champion_gate_lock(cfg, ["fused"], holder, poll_s=0.05):
            events.append(f"{holder} in")
            time.sleep(0.5)
            events.append(f"{holder} out")

    threads = [threading.Thread(target=gate, args=(h,)) for h in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(events[0::2]) == ["a in", "b in"] and [e.split()[0] for e in events[0::2]] == [e.split()[0] for e in events[1::2]], events
    assert not client.search_registered_models(), "the lock is released"

    client.create_registered_model("fused" + tracking.GATE_LOCK_SUFFIX, tags={"holder": "killed", "since": "0"})
    with tracking.champion_gate_lock(cfg, ["fused"], "next", poll_s=0.05):
        assert client.get_registered_model("fused" + tracking.GATE_LOCK_SUFFIX).tags["holder"] == "next"
    client.create_registered_model("fused" + tracking.GATE_LOCK_SUFFIX, tags={"holder": "retried", "since": f"{time.time()}"})
    with tracking.champion_gate_lock(cfg, ["fused"], "retried", poll_s=0.05, stale_after_s=3600):
        pass
    assert not client.search_registered_models()
