"""The DAG: it parses cleanly, its Params carry the config schema, and a full run matches the CLI."""

import json

import pytest
import yaml


def test_structure_params_and_retries(dag):
    ids = set(dag.task_dict)
    assert {"download_models", "init_population", "finalize", "promote", "gen_00.round_0.evaluate", "gen_03.round_2.select"} <= ids
    assert all(t.retries >= 2 for t in dag.tasks)
    assert dag.params.get_param("F").schema["maximum"] == 2
    assert dag.params.get_param("schedule").schema["enum"] == ["sequential", "generational"]
    assert dag.params.get_param("gate_rule").schema["enum"] == ["dev", "gate_data", "both"]
    assert dag.params.get_param("fitness_aggregate").schema["enum"] == ["pooled", "mean_domain", "worst_domain"]
    assert "validation" in dag.params.get_param("data").schema["properties"]


def test_form_takes_an_optional_text_pair_column(dag):
    from airflow.sdk.exceptions import ParamValidationError

    data = dag.params.get_param("data")
    assert data.schema["properties"]["text_pair_column"]["default"] is None
    for form in ({"dev": "pairs.csv"}, {"dev": "pairs.csv", "text_pair_column": None}, {"dev": "pairs.csv", "text_pair_column": "passage"}):
        assert data.resolve(form) == form  # raises when the form does not validate
    with pytest.raises(ParamValidationError):
        data.resolve({"dev": "pairs.csv", "text_pair_column": 3})


def test_dag_run_matches_cli(dag, tiny_config, tmp_path):
    """With the guards on (the production test covers the defaults): the same lineage, output and weights."""
    from tasks.cli import main

    from tasks.config import EvolverConfig

    conf = yaml.safe_load(tiny_config.read_text())
    # ... and each round's work items packed into 2 evaluate tasks (the CLI scores them one by one)
    conf.update(fitness_aggregate="mean_domain", validation_tolerance=0.05, evaluate_tasks=2)
    conf["data"]["validation"] = 0.3
    conf = EvolverConfig.from_dict(conf).resolved()  # every key: see test_bad_input_fails_at_once...
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    [summary_file] = (tmp_path / "store").glob("manual*/final/summary.json")
    from_dag = json.loads(summary_file.read_text())
    guarded = tmp_path / "guarded.yaml"
    guarded.write_text(yaml.safe_dump(conf))
    assert main(["run", str(guarded), "--output", str(tmp_path / "cli")]) == 0
    from_cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert from_dag["final"]["dev"] == from_cli["final"]["dev"] and from_dag["output"] == from_cli["output"]
    assert [(e["fitness"], e["validation"], e["accepted"]) for e in from_dag["lineage"]] == [(e["fitness"], e["validation"], e["accepted"]) for e in from_cli["lineage"]]
    assert from_dag["fused_model_sha256"] == from_cli["fused_model_sha256"]


def test_recurring_merges_run_on_a_cron_or_when_checkpoints_land(dagbag):
    weekly, on_checkpoints = dagbag.dags["evolver_weekly"], dagbag.dags["evolver_on_checkpoints"]
    assert weekly.timetable.expression == "0 3 * * 1"
    assert weekly.params.get_param("generations").value == 2  # the file's config is the form's default
    assert on_checkpoints.timetable.asset_condition.uri == "s3://checkpoints/sentiment"
    assert set(weekly.task_dict) == set(dagbag.dags["evolver"].task_dict)  # the same pipeline, champion gate included


def test_form_lists_exactly_the_registered_merging_methods(dag):
    from tasks.merge import METHODS

    assert dag.params.get_param("merger").schema["enum"] == list(METHODS)
    per_method = dag.params.get_param("merge_params").schema["properties"]
    assert set(per_method) == set(METHODS)
    for name, method in METHODS.items():
        assert set(per_method[name]["properties"]) == set(method.params.model_fields)
    assert dag.params.get_param("generations").schema["minimum"] == 0


def test_bad_input_fails_at_once_and_marks_the_mlflow_run_failed(dag, tiny_config, tmp_path):
    from tasks import tracking

    from tasks.config import EvolverConfig

    # Every key, defaults included: dag.test leaves an earlier run's conf in the session-wide DAG's task params.
    conf = EvolverConfig.from_dict(yaml.safe_load(tiny_config.read_text())).resolved()
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("text,stars\ngreat book,5\n")
    conf["data"]["dev"] = str(unlabelled)  # found by download_models, unreadable for init_population
    run = dag.test(run_conf=conf)
    assert run.state == "failed"
    ti = run.get_task_instance("init_population")
    assert ti.state == "failed" and ti.try_number == 1, "bad input must not be retried"
    [record] = (tmp_path / "store").glob("manual*/run.json")
    mlflow_run = tracking.client_for(conf["tracking_uri"]).get_run(json.loads(record.read_text())["mlflow_run_id"])
    assert mlflow_run.info.status == "FAILED"


def test_a_store_outage_is_retried_where_bad_input_is_not(dag, tiny_config, tmp_path, monkeypatch):
    """A store that does not answer raises StoreUnavailable, an InputError that is transient: the task fails its
    try and Airflow retries it, and the run succeeds (bad input, above, fails at its first try)."""
    from tasks.config import EvolverConfig

    conf = EvolverConfig.from_dict(yaml.safe_load(tiny_config.read_text())).resolved()
    monkeypatch.setenv("EVOLVER_INJECT_FAULTS", "select.after_tracking=outage")
    monkeypatch.setenv("EVOLVER_FAULTS_STATE", str(tmp_path / "faults"))
    run = dag.test(run_conf=conf)
    assert [p.name for p in (tmp_path / "faults").iterdir()] == ["select.after_tracking"]
    assert run.state == "success"
    ti = run.get_task_instance("gen_00.round_0.select")
    assert ti.state == "success" and ti.try_number == 2


def test_checkpoint_events_name_the_models_to_fuse():
    """The asset events a run is triggered by, built with Airflow's own classes, as a task sees them."""
    from datetime import datetime, timezone

    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from tasks.config import ConfigError, models_from_events

    def event(day: int, extra: dict):
        return AssetEventDagRunReferenceResult(
            asset={"name": "s3://checkpoints/sentiment", "uri": "s3://checkpoints/sentiment", "extra": {}},
            extra=extra, source_task_id=None, source_dag_id=None, source_run_id=None, source_map_index=None,
            source_aliases=[], timestamp=datetime(2026, 11, day, tzinfo=timezone.utc),
        )  # fmt: skip

    accessor = TriggeringAssetEventsAccessor.build([event(3, {"models": ["ckpt/v3-a", "ckpt/v3-b"]}), event(1, {"models": ["old"]}), event(2, {})])
    pairs = [(e.timestamp, e.extra) for events in accessor.values() for e in events]
    assert models_from_events(pairs) == ["ckpt/v3-a", "ckpt/v3-b"]  # the newest naming event wins
    assert models_from_events([(e.timestamp, e.extra) for e in [event(2, {})]]) is None
    with pytest.raises(ConfigError, match="list of checkpoint names"):
        models_from_events([(datetime.now(timezone.utc), {"models": "ckpt/a"})])


def test_a_cross_task_run_on_the_dag_gives_the_cli_result(dag, tiny_cross_task, tmp_path):
    from tasks.cli import main
    from tasks.config import EvolverConfig
    from tests.test_cross_task import _config

    config = _config(tiny_cross_task, tmp_path, merger="average", registered_model=None)
    conf = EvolverConfig.from_yaml(config).resolved()
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    [summary_file] = (tmp_path / "store").glob("manual*/final/summary.json")
    from_dag = json.loads(summary_file.read_text())
    assert main(["run", str(config), "--output", str(tmp_path / "cli"), "--set", f"store={tmp_path / 'cli-store'}"]) == 0
    from_cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert from_dag["final"]["tasks"] == from_cli["final"]["tasks"]
    assert from_dag["fused_model_sha256"] == from_cli["fused_model_sha256"]


def _dag_and_cli_agree(dag, config, tmp_path) -> None:
    """The config run by dag.test and by the CLI: the same dev report, lineage of generations and weights."""
    from tasks.cli import main
    from tasks.config import EvolverConfig

    run = dag.test(run_conf=EvolverConfig.from_yaml(config).resolved())
    assert run.state == "success"
    [summary_file] = (tmp_path / "store").glob("manual*/final/summary.json")
    from_dag = json.loads(summary_file.read_text())
    assert main(["run", str(config), "--output", str(tmp_path / "cli"), "--set", f"store={tmp_path / 'cli-store'}"]) == 0
    from_cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert from_dag["final"]["dev"] == from_cli["final"]["dev"] and from_dag["generations"] == from_cli["generations"]
    assert from_dag["fused_model_sha256"] == from_cli["fused_model_sha256"]


def test_a_decoder_run_on_the_dag_gives_the_cli_result(dag, tiny_decoders, tmp_path):
    """GPT-2 members without a pad token, RegMean over their Conv1D weights."""
    from tests.test_task_types import _config

    _dag_and_cli_agree(dag, _config(tiny_decoders("gpt2"), tmp_path, merger="regmean", generations=1, registered_model=None), tmp_path)


def test_a_t5_rank_classification_run_on_the_dag_gives_the_cli_result(dag, tiny_decoders, tmp_path):
    from tests.test_families import _rank_config

    _dag_and_cli_agree(dag, _rank_config(tiny_decoders("t5", "lm"), tmp_path, merger="fisher", generations=1, registered_model=None), tmp_path)


def test_the_champion_takes_part_in_a_dag_run(dag, tiny_config, tmp_path):
    """A DAG run with `models:/evolver-fused@champion` as its first member downloads the version the alias names
    and records it in its summary."""
    from tasks.cli import main
    from tasks.config import EvolverConfig
    from tests.test_cli import _champion_config

    assert main(["run", str(tiny_config), "--output", str(tmp_path / "first"), "--set", "generations=1"]) == 0
    first = json.loads((tmp_path / "first" / "summary.json").read_text())
    config = _champion_config(tiny_config, tmp_path, "models:/evolver-fused@champion")
    run = dag.test(run_conf=EvolverConfig.from_yaml(config).resolved())
    assert run.state == "success"
    [summary_file] = (tmp_path / "next-store").glob("manual*/final/summary.json")
    pinned = json.loads(summary_file.read_text())["members"][0]["registered_model"]
    assert pinned == {"name": "evolver-fused", "alias": "champion", "version": "1", "run_id": first["mlflow_run_id"]}
