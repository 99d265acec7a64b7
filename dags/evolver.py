"""
### Evolver: knowledge fusion by evolving the weights of language models

Fuses several fine-tuned checkpoints of one base model into one model, without training data or training
(Du et al., Findings of ACL 2024). Offspring are made by mutation and crossover of the weights, scored on
dev data, and kept only where they improve fitness; in `merge` mode fitness is the dev score of the merged
population.

**Flow**: `download_models` → `init_population` → `gen_00` (scores the initial population) → `gen_01` …
each generation is one or more *rounds* of `make_offspring` → `evaluate` (mapped over candidate × dev
shard) → `select` → `finalize` (fused model, held-out scores, MLflow run).

The DAG's shape is fixed when it is parsed: it has `EVOLVER_MAX_GENERATIONS` generation groups and
`EVOLVER_MAX_ROUNDS` rounds in each (the sequential schedule needs one round per model, the generational
one at most two). Rounds a run does not need are skipped. Every setting is a Param of the trigger form;
its schema is the pipeline's config schema (`evolver schema`).

This file is wiring only: torch, transformers and mlflow are imported inside the tasks, by `tasks.stages`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import yaml
from airflow.sdk import Param, dag, get_current_context, task, task_group
from airflow.sdk.exceptions import DownstreamTasksSkipped

from tasks.config import param_schemas

MAX_GENERATIONS = int(os.environ.get("EVOLVER_MAX_GENERATIONS", "15"))
MAX_ROUNDS = int(os.environ.get("EVOLVER_MAX_ROUNDS", "5"))
# Evaluate tasks can be routed to GPU workers: an Airflow pool bounds how many run at once, a queue picks the workers.
EVALUATE_POOL = os.environ.get("EVOLVER_EVALUATE_POOL", "default_pool")
EVALUATE_QUEUE = os.environ.get("EVOLVER_EVALUATE_QUEUE", "default")


def _params() -> dict[str, Param]:
    """One Param per config key; defaults from the YAML file named by EVOLVER_DEFAULT_CONFIG, if any."""
    defaults = {}
    if os.environ.get("EVOLVER_DEFAULT_CONFIG"):
        defaults = yaml.safe_load(Path(os.environ["EVOLVER_DEFAULT_CONFIG"]).read_text()) or {}
    params = {}
    for name, schema in param_schemas().items():
        schema = dict(schema)
        if name in defaults:
            schema["default"] = defaults[name]
        params[name] = Param(**schema)
    return params


def _run() -> tuple[dict, str]:
    """The run's config (the validated Params) and its run id."""
    context = get_current_context()
    conf = {key: value for key, value in context["params"].items()}
    unknown = sorted(set((context["dag_run"].conf or {})) - set(conf))
    if unknown:
        from tasks.config import ConfigError

        raise ConfigError(f"unknown config keys in the trigger conf: {unknown}")
    return conf, context["run_id"]


@dag(
    dag_id="evolver",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["evolver", "model-merging"],
    params=_params(),
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20)},
    max_active_runs=4,
)
def evolver():
    @task
    def download_models() -> dict:
        from tasks import stages

        conf, run_id = _run()
        context = get_current_context()
        tags = {"airflow.dag_id": context["dag"].dag_id, "airflow.run_id": run_id, "runner": "airflow"}
        return stages.download_models(conf, run_id, tags=tags, max_generations=MAX_GENERATIONS, max_rounds=MAX_ROUNDS)

    @task
    def init_population(_models: dict) -> dict:
        from tasks import stages

        return stages.init_population(*_run())

    @task(trigger_rule="none_failed")
    def make_offspring(generation: int, round_: int, rest_of_generation: list[str], later_generations: list[str]) -> list[dict]:
        from tasks import stages

        conf, run_id = _run()
        items = stages.make_offspring(conf, run_id, generation, round_)
        if items is None:
            # Skip every task this run does not need in one go, rather than one dependency level per
            # scheduler pass: a run of 3 generations should not wait on hundreds of cascading skips.
            past_the_end = generation > int(conf["generations"])
            raise DownstreamTasksSkipped(tasks=rest_of_generation + (later_generations if past_the_end else []))
        return items

    @task(map_index_template="{{ work_item }}", pool=EVALUATE_POOL, queue=EVALUATE_QUEUE)
    def evaluate(item: dict) -> dict:
        from tasks import stages

        get_current_context()["work_item"] = f"candidate {item['candidate']} shard {item['shard']}"
        return stages.evaluate(*_run(), item)

    @task
    def select(generation: int, round_: int) -> dict:
        from tasks import stages

        return stages.select(*_run(), generation, round_)

    @task(trigger_rule="none_failed")
    def finalize() -> dict:
        from tasks import stages

        summary = stages.finalize(*_run())
        return {"fused_model_uri": summary["fused_model_uri"], "fused_model_sha256": summary["fused_model_sha256"], "mlflow_run_id": summary["mlflow_run_id"]}

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
                    items = make_offspring(generation, round_, rest_of_generation, later_generations)
                    evaluate.expand(item=items) >> select(generation, round_)

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
    upstream >> finalize()

evolver()
