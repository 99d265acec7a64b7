"""
### Evolver: knowledge fusion by evolving the weights of language models

Fuses several fine-tuned checkpoints of one base model into one model, without training data or training
(Du et al., Findings of ACL 2024). Offspring are made by mutation and crossover of the weights, scored on
dev data, and kept only where they improve fitness; in `merge` mode fitness is the dev score of the merged
population.

**Flow**: `download_models` → `init_population` → `gen_00` (scores the initial population) → `gen_01` …
each generation is one or more *rounds* of `make_offspring` → `evaluate` (mapped over the candidate × dev
shard work items, packed into at most `evaluate_tasks` tasks) → `select` → `finalize` (fused model, held-out
scores, MLflow artifacts) → `promote` (Model Registry: `challenger`, and `champion` if it beats the current
one by `gate_rule`: on this run's dev data, on `gate_data` (sources selection never saw, e.g. recent
production inputs), or on both).

**Guarded evolution**: `data.validation` holds back dev rows (a fraction of each source, or named sources)
that fitness never sees; the output is then the accepted state with the best validation score, and
`validation_tolerance` can refuse offspring that lower it. `fitness_aggregate` makes fitness the mean or the
worst of the per-source scores instead of one pooled score.

The DAG's shape is fixed when it is parsed: it has `EVOLVER_MAX_GENERATIONS` generation groups and
`EVOLVER_MAX_ROUNDS` rounds in each (the sequential schedule needs one round per model, the generational
one at most two). Rounds a run does not need are skipped. Every setting is a Param of the trigger form;
its schema is the pipeline's config schema (`evolver schema`).

**Recurring merges**: every YAML file in `EVOLVER_RECURRING_DIR` adds a DAG `evolver_<file stem>` with the
same tasks, its file's `config` as the defaults, and either a `cron` schedule or an `asset` URI: the DAG then
runs whenever a producer updates that asset, and an asset event whose `extra` carries `models` fuses exactly
those checkpoints. Each run resolves its checkpoints afresh, fuses them and goes through the champion gate.

**Object storage**: with `store: s3://…` the credentials and endpoint come from the Airflow connection
`EVOLVER_AWS_CONN_ID` (default `aws_default`: login/password = key id/secret, extra `endpoint_url`,
`region_name`) when it exists, else from the workers' environment.

This file is wiring only: torch, transformers and mlflow are imported inside the tasks, by `tasks.stages`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset, Param, dag, get_current_context, task, task_group
from airflow.sdk.exceptions import DownstreamTasksSkipped

from tasks.config import load_yaml, models_from_events, param_schemas

MAX_GENERATIONS = int(os.environ.get("EVOLVER_MAX_GENERATIONS", "15"))
MAX_ROUNDS = int(os.environ.get("EVOLVER_MAX_ROUNDS", "5"))
# Evaluate tasks can be routed to GPU workers: an Airflow pool bounds how many run at once, a queue picks the workers.
EVALUATE_POOL = os.environ.get("EVOLVER_EVALUATE_POOL", "default_pool")
EVALUATE_QUEUE = os.environ.get("EVOLVER_EVALUATE_QUEUE", "default")
# CPU threads per evaluate task (0: torch's default, every core). Several single-threaded evaluate tasks beat
# the same number of tasks that each spin one thread per core: give CPU workers 1 here and a pool of one slot
# per core.
EVALUATE_THREADS = int(os.environ.get("EVOLVER_EVALUATE_THREADS", "0"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("EVOLVER_RETRY_DELAY_SECONDS", "20")))
AWS_CONN_ID = os.environ.get("EVOLVER_AWS_CONN_ID", "aws_default")


def _params(defaults: dict) -> dict[str, Param]:
    """One Param per config key, with the given defaults where they set one."""
    params = {}
    for name, schema in param_schemas().items():
        schema = dict(schema)
        if name in defaults:
            schema["default"] = defaults[name]
        params[name] = Param(**schema)
    return params


def _run() -> tuple[dict, str]:
    """The run's config (the validated Params, models overridden by a triggering asset event) and its run id."""
    context = get_current_context()
    conf = {key: value for key, value in context["params"].items()}
    unknown = sorted(set((context["dag_run"].conf or {})) - set(conf))
    if unknown:
        from tasks.config import ConfigError

        raise ConfigError(f"unknown config keys in the trigger conf: {unknown}")
    events = [(event.timestamp, event.extra) for events in (context.get("triggering_asset_events") or {}).values() for event in events]
    landed = models_from_events(events)
    if landed is not None:
        conf["models"] = landed  # the checkpoints that just landed
    if str(conf.get("store", "")).startswith("s3://"):
        _aws_environment(AWS_CONN_ID)
    return conf, context["run_id"]


def _stage(name: str, *args):
    """Run one pipeline stage for this DAG run. Bad input (config, checkpoints, data, store) fails the task at
    once: a retry cannot fix it, and the message is the same every time. A store outage is retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks import stages
    from tasks.config import InputError

    try:
        return getattr(stages, name)(*_run(), *args)
    except InputError as err:
        if err.transient:
            raise
        raise AirflowFailException(f"{type(err).__name__}: {err}") from err


def _identity() -> dict[str, str]:
    """The calling task instance, as MLflow tags."""
    ti = get_current_context()["ti"]
    return {
        "airflow.dag_id": ti.dag_id,
        "airflow.run_id": ti.run_id,
        "airflow.task_id": ti.task_id,
        "airflow.try_number": str(ti.try_number),
        "airflow.map_index": str(ti.map_index),
    }


def _aws_environment(conn_id: str) -> None:
    """Export an Airflow AWS connection as the variables boto3 (the store and MLflow) reads."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return  # no connection: the worker's own environment (or instance role) applies
    extra = conn.extra_dejson
    values = {
        "AWS_ACCESS_KEY_ID": conn.login,
        "AWS_SECRET_ACCESS_KEY": conn.password,
        "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
        "AWS_DEFAULT_REGION": extra.get("region_name"),
        "AWS_ENDPOINT_URL_S3": extra.get("endpoint_url"),
        "MLFLOW_S3_ENDPOINT_URL": extra.get("endpoint_url"),
    }
    os.environ.update({key: value for key, value in values.items() if value})


def _mark_failed(context) -> None:
    """DAG failure callback: the MLflow run of a failed DAG run is marked FAILED, not left RUNNING."""
    from tasks import stages

    conf = dict(context["params"])
    if str(conf.get("store", "")).startswith("s3://"):
        _aws_environment(AWS_CONN_ID)
    stages.mark_failed(conf, context["run_id"])


def build(dag_id: str, schedule, defaults: dict, tags: list[str]):
    @dag(
        dag_id=dag_id,
        schedule=schedule,
        catchup=False,
        doc_md=__doc__,
        tags=["evolver", "model-merging", *tags],
        params=_params(defaults),
        default_args={"retries": 2, "retry_delay": RETRY_DELAY},
        max_active_runs=4,
        on_failure_callback=_mark_failed,
    )
    def evolver():
        _tasks()

    return evolver()


def _tasks() -> None:
    @task
    def download_models() -> dict:
        tags = {"airflow.dag_id": get_current_context()["dag"].dag_id, "airflow.run_id": get_current_context()["run_id"], "runner": "airflow"}
        return _stage("download_models", tags, MAX_GENERATIONS, MAX_ROUNDS)

    @task
    def init_population(_models: dict) -> dict:
        return _stage("init_population")

    @task(trigger_rule="none_failed")
    def make_offspring(generation: int, round_: int, rest_of_generation: list[str], later_generations: list[str]) -> list[list[dict]]:
        work = _stage("make_offspring", generation, round_)
        if work is None:
            # Skip every task this run does not need in one go, rather than one dependency level per
            # scheduler pass: a run of 3 generations should not wait on hundreds of cascading skips.
            past_the_end = generation > int(get_current_context()["params"]["generations"])
            raise DownstreamTasksSkipped(tasks=rest_of_generation + (later_generations if past_the_end else []))
        return work

    @task(map_index_template="{{ work_items }}", pool=EVALUATE_POOL, queue=EVALUATE_QUEUE)
    def evaluate(items: list[dict]) -> dict:
        get_current_context()["work_items"] = ", ".join(f"candidate {item['candidate']} shard {item['shard']}" for item in items)
        if EVALUATE_THREADS:
            import torch

            torch.set_num_threads(EVALUATE_THREADS)
        return _stage("evaluate", items, _identity())

    @task
    def select(generation: int, round_: int) -> dict:
        return _stage("select", generation, round_, _identity())

    @task(trigger_rule="none_failed")
    def finalize() -> dict:
        summary = _stage("finalize", _identity())
        return {"fused_model_uri": summary["fused_model_uri"], "fused_model_sha256": summary["fused_model_sha256"], "mlflow_run_id": summary["mlflow_run_id"]}

    @task
    def promote(_final: dict) -> dict:
        return _stage("promote", _identity())

    def round_ids(generation: int, round_: int) -> list[str]:
        prefix = f"gen_{generation:02d}.round_{round_}"
        return [f"{prefix}.make_offspring", f"{prefix}.evaluate", f"{prefix}.select"]

    rounds_in = {g: 1 if g == 0 else MAX_ROUNDS for g in range(MAX_GENERATIONS + 1)}

    def generation_group(generation: int):
        @task_group(group_id=f"gen_{generation:02d}")
        def rounds():
            later_generations = [i for g in range(generation + 1, MAX_GENERATIONS + 1) for r in range(rounds_in[g]) for i in round_ids(g, r)]
            previous = None
            for round_ in range(rounds_in[generation]):
                rest_of_generation = round_ids(generation, round_)[1:] + [
                    i for r in range(round_ + 1, rounds_in[generation]) for i in round_ids(generation, r)
                ]

                @task_group(group_id=f"round_{round_}")
                def one_round():
                    work = make_offspring(generation, round_, rest_of_generation, later_generations)
                    evaluate.expand(items=work) >> select(generation, round_)

                current = one_round()
                if previous is not None:
                    previous >> current
                previous = current

        return rounds()

    upstream = init_population(download_models())
    for generation in range(MAX_GENERATIONS + 1):
        group = generation_group(generation)
        upstream >> group
        upstream = group
    promote(upstream >> finalize())


def _yaml(path: str | Path) -> dict:
    return load_yaml(Path(path).read_text(), str(path)) or {}


# The manually triggered DAG; EVOLVER_DEFAULT_CONFIG (a YAML config) fills its form.
build("evolver", None, _yaml(os.environ["EVOLVER_DEFAULT_CONFIG"]) if os.environ.get("EVOLVER_DEFAULT_CONFIG") else {}, [])

# Recurring merges: one DAG per YAML file {cron: "0 3 * * 1" | asset: "<uri>", config: {...}}.
for _file in sorted(Path(os.environ.get("EVOLVER_RECURRING_DIR", "/nonexistent")).glob("*.yaml")):
    _spec = _yaml(_file)
    if bool(_spec.get("cron")) == bool(_spec.get("asset")):
        raise ValueError(f"{_file}: set exactly one of `cron` or `asset`")
    _schedule = _spec["cron"] if _spec.get("cron") else Asset(_spec["asset"])
    build(f"evolver_{_file.stem}", _schedule, _spec.get("config") or {}, ["recurring"])
