"""The ablation behind the generalisation study: which factor makes Evolver lose out of domain.

    python -m bench.run --setting ablation [--quick] [--name NAME] [--seeds 1 2 3] [--methods average ties] [--jobs 2]

On the benchmark's population, Evolver runs inside each method of `methods` with one factor at a time moved
away from the benchmark's setting (CURRENT):

    F       mutation scale                    0.1, 0.3, [0.5]
    CR      crossover rate                    0.1, [0.5], 0.9
    dev     dev tweets per domain             [60], 150   (the extra 90 come after the training rows, so the
                                                            members are the same and never saw them)
    G       generations                       [5], 15
    heads   members' fine-tuning seeds        [independent: seed k for member k], identical: one seed for all
                                              (the same initial classification head and batch order)

Every run keeps its store until its *trace* is taken: the dev and held-out scores of what it would output
after each generation that changed it (`tasks.stages.population_report`). The current setting's runs are traced
generation by generation (the plot of dev fitness against out-of-domain score across generations); the other
levels at their start (the starting merge, generation 0) and their end.
In merge mode nothing in a generation depends on G, so generation 5 of the G = 15 run *is* the G = 5 run of
the current setting: one run gives both levels of G (its traced sha256 equals the benchmark's fused model's).

Runs are independent: `--jobs N` spreads them over N worker processes (each with its own MLflow database and
cores / N torch threads; on 2 CPU cores two single-thread workers give the same logits, bit for bit, in about
two thirds of the time).

Held-out data are only reported; every selection inside the runs uses dev data. Results:
<results>/<name>.json (every trace, per seed), <name>.md, <name>_tradeoff.png.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shlex
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from bench import run as bench

# The benchmark's setting, from which each factor moves alone. Per variant, so the quick smoke run stays quick.
CURRENT = {
    "full": {"F": 0.5, "CR": 0.5, "dev": 60, "G": 5, "heads": "independent"},
    "quick": {"F": 0.5, "CR": 0.5, "dev": 16, "G": 2, "heads": "independent"},
}
LEVELS = {
    "full": {"F": [0.1, 0.3, 0.5], "CR": [0.1, 0.5, 0.9], "dev": [60, 150], "G": [5, 15], "heads": ["independent", "identical"]},
    "quick": {"F": [0.1, 0.5], "CR": [0.5, 0.9], "dev": [16, 32], "G": [2, 3], "heads": ["independent", "identical"]},
}
# Task arithmetic is the method that loses most out of domain in the benchmark (-0.09 on every seed).
METHODS = {"full": ["average", "ties", "task_arithmetic", "plain"], "quick": ["average", "plain"]}
# `plain` is plain-mode Evolver (no merge): it only runs the heads factor, the one hypothesis for why it never
# beats the best member (other factors act on it as on any Evolver).
PLAIN, PLAIN_FACTORS = "plain", ("heads",)
# Identical heads: every member fine-tuned with member 0's seed, so member 0 is shared with the benchmark.
IDENTICAL_SEED = 0


def runs_of(variant: str, method: str) -> list[tuple[str, dict[str, Any]]]:
    """(run name, setting) of every run of one (method, seed): the longest-G run of the current setting first,
    then one run per other level of every factor except G."""
    current, levels = CURRENT[variant], LEVELS[variant]
    if method == PLAIN:
        return [("current", current)] + [(f"heads={v}", {**current, "heads": v}) for v in levels["heads"] if v != current["heads"]]
    runs = [("current", {**current, "G": max(levels["G"])})]
    for factor, values in levels.items():
        if factor == "G":
            continue
        runs += [(f"{factor}={value}", {**current, factor: value}) for value in values if value != current[factor]]
    return runs


def points_of(variant: str) -> list[tuple[str, str, Any, str, int]]:
    """(factor, level label, level, run name, generation) of every point of the report. Each factor's current
    level reads the current run at the current G; G's levels read the same run at each G."""
    current, levels = CURRENT[variant], LEVELS[variant]
    points = []
    for factor, values in levels.items():
        for value in values:
            if factor == "G":
                points.append((factor, f"G={value}", value, "current", value))
            elif value == current[factor]:
                points.append((factor, f"{factor}={value}", value, "current", current["G"]))
            else:
                points.append((factor, f"{factor}={value}", value, f"{factor}={value}", current["G"]))
    return points


def trace(conf: dict[str, Any], run_id: str, summary: dict[str, Any], *, every_generation: bool = True, starts: Path | None = None) -> list[dict[str, Any]]:
    """Scores of what the run would output after each generation: re-scored only where the generation accepted an
    offspring, the last generation read from the run's own final report. every_generation False keeps only the
    start and the end; the start (the plain merge, the same for every level of a method, population and seed)
    is then read from, or written to, a cache file in `starts`."""
    from tasks.stages import population_report

    rows, report = [], None
    last = summary["generations"][-1]["generation"]
    for record in summary["generations"]:
        g = record["generation"]
        if not every_generation and 0 < g < last:
            continue
        if g == last and (report is None or record["accepted"] > 0 or not every_generation):
            report = {**summary["final"], "sha256": summary["fused_model_sha256"], "output": summary.get("output", {})}
        elif g == 0 and starts is not None:
            report = _cached_start(conf, run_id, starts)
        elif report is None or record["accepted"] > 0:
            report = population_report(conf, run_id, g)
        rows.append(
            {
                "generation": g,
                # The fitness of what the run would output now (with validation: its best-validation state).
                "dev_fitness": report.get("output", {}).get("fitness", record["best_fitness"]),
                "in_domain": report["heldout_mean"]["in_domain"]["macro_f1"],
                "out_of_domain": report["heldout_mean"]["out_of_domain"]["macro_f1"],
                "evaluations": record["evaluations"],
                "accepted": record["accepted"],
                "sha256": report["sha256"],
            }
        )
    return rows


def _cached_start(conf: dict[str, Any], run_id: str, starts: Path) -> dict[str, Any]:
    """Held-out scores of the starting merge, computed once per (mode, method, members, base, seed)."""
    from tasks.evolve import derive_seed
    from tasks.stages import population_report

    key = derive_seed(conf.get("mode"), conf.get("merger"), *conf["models"], conf.get("base_model"), conf["seed"])
    path = starts / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    report = population_report(conf, run_id, 0)
    report = {"heldout_mean": report["heldout_mean"], "sha256": report["sha256"]}
    starts.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")  # two workers may race: both write the same bytes
    partial.write_text(json.dumps(report))
    partial.replace(path)
    return report


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # one thread per worker gives the same logits as two, bit for bit (checked)


def run_job(conf: dict[str, Any], run_id: str, workdir: str, every_generation: bool) -> dict[str, Any]:
    """One ablation run, start to trace, in a worker process: its own MLflow database, so workers never share
    a SQLite file; its store deleted once traced."""
    conf = {**conf, "tracking_uri": f"sqlite:///{Path(workdir) / f'mlflow-ablation-{os.getpid()}.db'}"}
    summary, wall = bench.run_one(conf, run_id, keep_store=True, summaries=Path(workdir) / "summaries", log=lambda line: None)
    started = time.perf_counter()
    rows = trace(conf, run_id, summary, every_generation=every_generation, starts=Path(workdir) / "ablation-starts")
    shutil.rmtree(Path(conf["store"]) / summary["run_key"], ignore_errors=True)
    return {
        "trace": rows,
        "fused_model_sha256": summary["fused_model_sha256"],
        "run_wall_s": round(wall, 1),
        "trace_wall_s": round(time.perf_counter() - started, 1),
        "run_key": summary["run_key"],
    }


def run_ablation(args, argv: list[str]) -> dict[str, Any]:
    from bench import ablation_report

    variant = "quick" if args.quick else "full"
    sizes = {**bench.VARIANTS[variant], **dict(args.size), "seeds": list(args.seeds or bench.VARIANTS[variant]["seeds"])}
    current, levels = CURRENT[variant], LEVELS[variant]
    sizes["extra_dev"] = max(levels["dev"]) - current["dev"]
    methods = list(args.methods or METHODS[variant])
    from tasks.merge.registry import MERGER_NAMES

    unknown = sorted(set(methods) - {*MERGER_NAMES, PLAIN})
    if unknown:
        raise SystemExit(f"--methods: unknown method(s) {unknown}; registered merging methods: {list(MERGER_NAMES)}, or {PLAIN} (plain mode)")
    name = args.name or ("ablation" if variant == "full" else "ablation-quick")
    workdir = (args.workdir or bench.BENCH / "work" / variant).resolve()
    results_dir = args.results.resolve()
    started, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    log = bench._log
    log(f"ablation {name}: {variant} sizes, methods {methods}, seeds {sizes['seeds']}, workdir {workdir}")

    populations = {
        "independent": bench.build_population(workdir, sizes, log),
        "identical": bench.build_population(workdir, sizes, log, member_seed=IDENTICAL_SEED),
    }
    data = Path(populations["independent"]["data"])
    result: dict[str, Any] = {
        "name": name,
        "variant": variant,
        "command": shlex.join(["python", "-m", "bench.run", *argv]),
        "started": started_at.isoformat(timespec="seconds"),
        "machine": {**bench.machine(), "loadavg_at_start": os.getloadavg()},
        "sizes": sizes,
        "split_seed": bench.SPLIT_SEED,
        "current": current,
        "levels": levels,
        "methods": methods,
        "mask_stream": args.mask_stream,
        "identical_seed": IDENTICAL_SEED,
        "populations": {k: {"members": v["members"], "wall_s": v["wall_s"]} for k, v in populations.items()},
        "points": [list(p) for p in points_of(variant)],
        "runs": {},
        "complete": False,
    }
    stamp = started_at.strftime("%Y%m%dT%H%M%S")
    earlier_wall = 0.0
    existing = results_dir / f"{name}.json"
    if args.resume and existing.is_file():
        # Keep every finished run of the same study; add the methods or seeds asked for now.
        previous = json.loads(existing.read_text())
        # The same study, or one with more factors or levels: every finished run keeps its meaning.
        same = previous["variant"] == variant and previous["identical_seed"] == IDENTICAL_SEED
        same &= all(current.get(k) == v for k, v in previous["current"].items())
        same &= all(set(v) <= set(levels.get(k, [])) for k, v in previous["levels"].items())
        same &= bench.mask_stream_of(previous) == args.mask_stream
        if not same or bench.data_sizes(previous["sizes"]) != bench.data_sizes(sizes):
            raise SystemExit(f"--resume: {existing} is another study (variant, settings, sizes or --mask-stream differ); use another --name")
        done_methods = [m for m, runs in previous["runs"].items() if any(e["per_seed"] for e in runs.values())]
        result["methods"] = methods = methods + [m for m in done_methods if m not in methods]
        result["sizes"]["seeds"] = sorted({*previous["sizes"]["seeds"], *sizes["seeds"]})
        result["runs"] = {m: previous["runs"][m] for m in done_methods}
        result["sessions"] = previous.get("sessions", []) + [{k: previous[k] for k in ("command", "started", "wall_s", "machine")}]
        result["started"] = previous["started"]
        earlier_wall = previous.get("wall_s", 0.0)
        log(f"resuming {existing}: {sum(len(e['per_seed']) for runs in result['runs'].values() for e in runs.values())} runs already done")

    def publish(plots: bool = False) -> None:
        result["wall_s"] = round(earlier_wall + time.perf_counter() - started, 1)  # every session's share
        ablation_report.write(result, results_dir, plots=plots)

    jobs = []
    for seed in sizes["seeds"]:
        for method in methods:
            for run_name, setting in runs_of(variant, method):
                conf = bench.base_config(populations[setting["heads"]], workdir, sizes, name, args.mask_stream)
                conf.update(F=setting["F"], CR=setting["CR"], generations=setting["G"], seed=seed)
                conf.update(mode="plain") if method == PLAIN else conf.update(merger=method)
                if setting["dev"] != current["dev"]:
                    conf["data"]["dev"] = [str(data / d / part) for d in sizes["in_domain"] for part in ("dev.csv", "dev_extra.csv")]
                if method != PLAIN and bench._needs_base(method):
                    conf["base_model"] = bench._minilm()
                jobs.append((seed, method, run_name, setting, conf, f"ablation-{name}-{stamp}-s{seed}-{method}-{run_name}"))
    for method in methods:  # the table's row order, whatever order the runs finish in
        kept = result["runs"].get(method, {})
        result["runs"][method] = {run_name: kept.get(run_name, {"setting": setting, "per_seed": {}}) for run_name, setting in runs_of(variant, method)}
    jobs = [job for job in jobs if str(job[0]) not in result["runs"][job[1]][job[2]]["per_seed"]]
    left_over = 0
    if args.runs:
        known = {run_name for method in methods for run_name, _ in runs_of(variant, method)}
        if set(args.runs) - known:
            raise SystemExit(f"--runs: unknown run(s) {sorted(set(args.runs) - known)}; runs: {sorted(known)}")
        left_over = sum(job[2] not in args.runs for job in jobs)
        jobs = [job for job in jobs if job[2] in args.runs]
    # Workers share the cores: one torch thread each by default. Longest runs first, so the pool ends together.
    workers = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // workers)
    order = sorted(jobs, key=lambda j: (-j[3]["G"], j[1] != "ties", j[0]))
    log(f"{len(jobs)} runs on {workers} worker(s) with {threads} torch thread(s) each" + (f"; {left_over} left for later (--runs)" if left_over else ""))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        # The current setting's runs are traced generation by generation (the plot's trajectories); the other
        # levels only at their start and end (the table), which costs a third as much.
        futures = {
            pool.submit(run_job, conf, run_id, str(workdir), run_name == "current"): (seed, method, run_name) for seed, method, run_name, _, conf, run_id in order
        }
        for done, future in enumerate(as_completed(futures), start=1):
            seed, method, run_name = futures[future]
            entry = future.result()
            first, last = entry["trace"][0], entry["trace"][-1]
            log(
                f"[{done}/{len(jobs)}] seed {seed}, {method}, {run_name}: dev {first['dev_fitness']:.4f} -> {last['dev_fitness']:.4f}, "
                f"in-domain {first['in_domain']:.4f} -> {last['in_domain']:.4f}, out-of-domain {first['out_of_domain']:.4f} -> "
                f"{last['out_of_domain']:.4f} ({entry['run_wall_s']:.0f}s + trace {entry['trace_wall_s']:.0f}s)"
            )
            result["runs"][method][run_name]["per_seed"][str(seed)] = entry
            publish(plots=done % 10 == 0)
    result["complete"] = left_over == 0  # a study cut short by --runs stays marked partial
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    publish(plots=True)
    log(f"ablation {name}: done in {result['wall_s']:.0f}s; results in {results_dir}")
    return result
