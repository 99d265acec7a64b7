"""`evolver`: the in-process driver of the pipeline's stages (the Airflow DAG is the other one).

    evolver run CONFIG [--set key=value ...] [--output DIR] [--run-id ID] [--retries N] [--verbose]
    evolver audit RUN_ID [--tracking-uri URI] [--verify] [--json]   # a run, from MLflow alone
    evolver schema            # the config's JSON schema (what the Airflow form validates)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tasks.config import EvolverConfig, InputError


def run_pipeline(cfg: EvolverConfig, run_id: str, *, log=print, retries: int = 0, retry_delay: float = 5.0) -> dict[str, Any]:
    """download -> init -> for each generation, rounds of (offspring, evaluate, select) -> finalize, logging a
    line per stage and generation (tasks.progress).

    A stage that fails is retried up to `retries` times, after `retry_delay` seconds doubling each time, as the
    DAG's tasks are: the stages are idempotent, so a retry resumes from what the store already holds. Bad input
    (InputError) is never retried: it would fail the same way.
    """
    from tasks import stages
    from tasks.progress import RunReport

    def stage(function, *args, **kwargs):
        for attempt in range(retries + 1):
            try:
                return function(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - what a task retry catches; the last one propagates
                if attempt == retries or (isinstance(err, InputError) and not err.transient):
                    raise
                wait = retry_delay * 2**attempt
                log(f"{function.__name__} failed ({type(err).__name__}: {str(err)[:200]}); retry {attempt + 1} of {retries} in {wait:.0f} s")
                time.sleep(wait)

    conf = cfg.resolved()
    report = RunReport(cfg, log)
    store = stages.Run(cfg, run_id).store
    stage(stages.download_models, conf, run_id, tags={"runner": "cli"})
    report.poll(store)
    stage(stages.init_population, conf, run_id)
    report.poll(store)
    for generation in range(cfg.generations + 1):
        for round_ in range(stages.rounds_needed(cfg)):
            work = stage(stages.make_offspring, conf, run_id, generation, round_)
            if work is None:
                break
            for items in work:
                stage(stages.evaluate, conf, run_id, items)
            if stage(stages.select, conf, run_id, generation, round_)["done"]:
                report.poll(store)
    summary = stage(stages.finalize, conf, run_id)
    report.poll(store)
    promotion = stage(stages.promote, conf, run_id)
    report.poll(store)
    return {**summary, "promotion": promotion}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evolver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole pipeline in this process")
    run.add_argument("config", type=Path, help="YAML run configuration")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (dotted)")
    run.add_argument("--output", type=Path, default=None, help="folder for summary.json (default: print only)")
    run.add_argument("--run-id", default=None, help="resume or repeat a run id (default: a new one)")
    run.add_argument("--retries", type=int, default=0, help="retry a failed stage N times, as the DAG's tasks are (default 0)")
    run.add_argument("--retry-delay", type=float, default=5.0, help="seconds before the first retry, doubling after (default 5)")
    run.add_argument("--verbose", action="store_true", help="keep the libraries' own logs and progress bars")
    audit = commands.add_parser("audit", help="print a run's config, fitness, lineage, scores and artifacts from MLflow")
    audit.add_argument("run_id", help="the MLflow run id (printed by `evolver run`, shown in the MLflow UI)")
    audit.add_argument("--tracking-uri", default=EvolverConfig.model_fields["tracking_uri"].default, help="MLflow tracking URI")
    audit.add_argument("--verify", action="store_true", help="re-score the downloaded fused model on the dev data")
    audit.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands.add_parser("schema", help="print the config's JSON schema")
    args = parser.parse_args(argv)

    if args.command == "schema":
        print(json.dumps(EvolverConfig.model_json_schema(), indent=2))
        return 0
    if args.command == "audit":
        return _audit(args)
    if not args.verbose:
        from tasks.progress import quiet_libraries

        quiet_libraries()
    run_id = args.run_id or f"cli-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}"
    try:
        cfg = EvolverConfig.from_yaml(args.config, args.overrides)
        summary = run_pipeline(cfg, run_id, retries=args.retries, retry_delay=args.retry_delay)
    except (InputError, FileNotFoundError) as err:
        print(f"evolver: {err}", file=sys.stderr)
        return 2
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    final = summary["final"]
    scores = {"dev": final["dev"], "heldout_mean": final["heldout_mean"]} if "tasks" not in final else {
        "dev": final["dev"],
        "tasks": {name: {"dev": report["dev"], "heldout": report["heldout"]} for name, report in final["tasks"].items()},
    }
    print(json.dumps({"run_id": run_id, **scores, "fused_model_sha256": summary["fused_model_sha256"], "mlflow_run_id": summary["mlflow_run_id"]}, indent=1))
    return 0


def _audit(args) -> int:
    from mlflow.exceptions import MlflowException

    from tasks import audit

    try:
        report = audit.collect(args.run_id, args.tracking_uri)
        if args.verify:
            report["verify"] = audit.verify(report, args.tracking_uri)
    except (MlflowException, InputError) as err:
        print(f"evolver audit: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, sort_keys=True) if args.json else audit.render(report))
    if args.verify and not args.json:
        checks = report["verify"].get("tasks", {"": report["verify"]})
        for task, check in checks.items():
            where = f" {task}" if task else ""
            print(f"\nverify{where}: dev {check['metric']} logged {check['logged']!r}, recomputed {check['recomputed']!r}: {'match' if check['match'] else 'MISMATCH'}")
    return 0 if not args.verify or report["verify"]["match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
