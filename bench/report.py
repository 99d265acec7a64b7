"""Aggregate the benchmark's per-seed rows (mean ± std), compare the two schedules, write JSON, Markdown, plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.run import ENSEMBLE, EVOLVER_PLAIN, INDIVIDUAL_BEST, INDIVIDUAL_MEAN, MULTITASK, SEQUENTIAL, guard_of, mask_stream_of

COLUMNS = {"in_domain": "in-domain macro-F1", "out_of_domain": "out-of-domain macro-F1", "dev_fitness": "dev fitness (macro-F1)", "wall_s": "wall s"}
GENERATIONAL = "Evolver + average"


def row_order(rows: dict[str, Any]) -> list[str]:
    """Individuals, plain merges, Evolver rows, references: the order of ALGORITHM.md's result table."""
    first = [INDIVIDUAL_MEAN, INDIVIDUAL_BEST]
    last = [ENSEMBLE, MULTITASK]
    evolver = [r for r in rows if r.startswith("Evolver")]
    merges = [r for r in rows if r not in first + last + evolver]
    return [r for r in first + merges + evolver + last if r in rows]


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (n - 1) over seeds; std 0 for a single seed."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(result: dict[str, Any]) -> None:
    for entry in result["rows"].values():
        seeds = entry["per_seed"].values()
        entry["summary"] = {key: spread([s[key] for s in seeds]) for key in COLUMNS}


def schedule_comparison(result: dict[str, Any]) -> dict[str, Any]:
    """Sequential against generational (both Evolver + average, same G) at the same number of evaluations.

    Rule: budget B = the smaller total evaluation count of the two runs of a seed (the sequential run's
    1 + N*G: generational also spends up to one combination round per generation). Each schedule's score at B
    is the best merged dev fitness it had accepted after at most B evaluations: sequential after exactly B
    (known per evaluation from its lineage), generational at the end of its last generation that fits in B.
    """
    rows = result["rows"]
    if GENERATIONAL not in rows or SEQUENTIAL not in rows:
        return {}
    per_seed = {}
    for seed, seq in rows[SEQUENTIAL]["per_seed"].items():
        gen = rows[GENERATIONAL]["per_seed"].get(seed)
        if gen is None:
            continue
        budget = min(gen["evaluations"][-1], seq["evaluations"][-1])
        fits = [g for g, used in enumerate(gen["evaluations"]) if used <= budget]
        per_seed[seed] = {
            "budget": budget,
            "sequential_at_budget": seq["curve_per_evaluation"][budget - 1],
            "generational_at_budget": gen["curve"][fits[-1]],
            "generational_generations_in_budget": fits[-1],
            "sequential_final": seq["fitness"],
            "sequential_evaluations": seq["evaluations"][-1],
            "generational_final": gen["fitness"],
            "generational_evaluations": gen["evaluations"][-1],
        }
    if not per_seed:
        return {}
    keys = ["sequential_at_budget", "generational_at_budget", "sequential_final", "generational_final", "sequential_evaluations", "generational_evaluations"]
    return {"rule": schedule_comparison.__doc__.split("\n\n", 1)[1].strip(), "per_seed": per_seed, "summary": {k: spread([s[k] for s in per_seed.values()]) for k in keys}}


def starting_point(row: str) -> str | None:
    """The row an Evolver row starts from: its merger's plain merge, or plain mode's best member."""
    if row == EVOLVER_PLAIN:
        return INDIVIDUAL_BEST
    if row == SEQUENTIAL:
        row = GENERATIONAL  # the same merger, the other schedule
    if guard_of(row):
        row = row.removesuffix(f" ({guard_of(row)})")
    return row.removeprefix("Evolver + ") if row.startswith("Evolver + ") else None


def guarded_target(result: dict[str, Any]) -> dict[str, Any]:
    """Per guarded row: on how many seeds it is above its merge in domain while no worse out of domain (the
    generalisation target), and each seed's two differences."""
    rows, target = result["rows"], {}
    for row in row_order(rows):
        if not guard_of(row) or starting_point(row) not in rows:
            continue
        base = rows[starting_point(row)]["per_seed"]
        per_seed = {
            seed: {"in_domain": run["in_domain"] - base[seed]["in_domain"], "out_of_domain": run["out_of_domain"] - base[seed]["out_of_domain"]}
            for seed, run in rows[row]["per_seed"].items()
            if seed in base
        }
        met = [seed for seed, d in per_seed.items() if d["in_domain"] > 0 and d["out_of_domain"] >= 0]
        target[row] = {"versus": starting_point(row), "seeds": len(per_seed), "met_on": len(met), "met_seeds": met, "per_seed": per_seed}
    return target


def evolver_gains(result: dict[str, Any]) -> dict[str, Any]:
    """Per Evolver row: its score minus its starting point's, paired by seed, and on how many seeds it is higher.

    This is the claim the benchmark tests (does evolving beat the merge it starts from?), so the table states
    it per column instead of leaving the reader to subtract means.
    """
    rows, gains = result["rows"], {}
    for row in row_order(rows):
        start = starting_point(row)
        if start not in rows:
            continue
        pairs = [(s, rows[start]["per_seed"][seed]) for seed, s in rows[row]["per_seed"].items() if seed in rows[start]["per_seed"]]
        gains[row] = {"versus": start, "seeds": len(pairs)}
        for key in ("dev_fitness", "in_domain", "out_of_domain"):
            deltas = [evolved[key] - base[key] for evolved, base in pairs]
            gains[row][key] = {**spread(deltas), "higher_on": sum(d > 0 for d in deltas), "lower_on": sum(d < 0 for d in deltas)}
    return gains


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _pm(stat: dict[str, float], digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    m, sizes = result["machine"], result["sizes"]
    seeds = sizes["seeds"]
    lines = [
        f"# Benchmark `{result['name']}` ({result['variant']} sizes)" + ("" if result["complete"] else " — PARTIAL, still running or interrupted"),
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['started']} (UTC start){' → ' + result['finished'] if result.get('finished') else ''}; total wall {result.get('wall_s', 0):.0f} s "
        f"(population build {result['population']['wall_s']:.0f} s)",
        f"- machine: {m['cpu_count']} CPUs ({m['torch_threads']} torch threads), device {m['device']}, torch {m['torch']}, Python {m['python']}, "
        f"{m['platform']}; load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"- population: all-MiniLM-L6-v2 fine-tuned on each of {', '.join(sizes['in_domain'])} "
        f"({sizes['train']} train tweets each, {sizes['epochs']} epochs); out of domain: {', '.join(sizes['out_of_domain'])}",
        f"- splits (seed {result['split_seed']}): dev {sizes['dev']} / test {sizes['test']} per in-domain domain, {sizes['ood_test']} per out-of-domain set; "
        "fitness = the dev splits concatenated",
        f"- Evolver: G = {sizes['generations']}, F = {result['hyperparameters']['F']}, CR = {result['hyperparameters']['CR']}, "
        f"crossover stream `{mask_stream_of(result)}`, generational schedule "
        "unless noted; merging methods at their documented defaults",
        f"- seeds {', '.join(map(str, seeds))}: {result['varied_per_seed']}",
        "- mean ± sample std over seeds. A row marked `no` in *seeded* cannot depend on the run seed (no random draw, fixed fine-tuning): "
        "it is computed once, with the first seed, and repeated, so its std is 0 by construction. "
        "*individual (best on dev)* is the member with the best dev fitness, never chosen on test data.",
        "",
        "| row | " + " | ".join(COLUMNS.values()) + " | seeded |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for row in row_order(result["rows"]):
        entry = result["rows"][row]
        cells = [_pm(entry["summary"][k], 1 if k == "wall_s" else 4) for k in COLUMNS]
        # A row added for fewer seeds than the benchmark's (a probe) says so, instead of showing a std of 0.
        partial = sorted(entry["per_seed"], key=int) if len(entry["per_seed"]) < len(seeds) and entry["seeded"] else None
        label = f"{row} (seed {', '.join(partial)} only)" if partial else row
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'yes' if entry['seeded'] else 'no'} |")
    lines += [
        "",
        "*wall s*: the row's pipeline run (download, init, all evaluations, finalize, MLflow); both individual rows share one run; "
        "the multi-task row includes its fine-tuning, the ensemble only its evaluation.",
    ]
    gains = result["evolver_gains"]  # set by write() before it renders
    if gains:
        lines += [
            "",
            "## Evolver against its starting point",
            "",
            "Each Evolver row minus the row it starts from (its merger's plain merge; plain mode: the best member on dev), paired by seed: "
            "mean ± std of the difference, and on how many seeds Evolver is higher / lower.",
            "",
            "| row | versus | Δ dev fitness | Δ in-domain | Δ out-of-domain |",
            "|---|---|---|---|---|",
        ]
        for row, g in gains.items():
            cells = [f"{g[k]['mean']:+.4f} ± {g[k]['std']:.4f} (higher {g[k]['higher_on']}/{g['seeds']}, lower {g[k]['lower_on']}/{g['seeds']})" for k in ("dev_fitness", "in_domain", "out_of_domain")]
            lines.append(f"| {row} | {g['versus']} | " + " | ".join(cells) + " |")
    target = result.get("guarded_target") or {}
    if target:
        guards = "; ".join(f"*{label}*: " + ", ".join(f"{k} = {v}" for k, v in _flat(settings).items()) for label, settings in result.get("guards", {}).items())
        lines += [
            "",
            "## Guarded Evolver against the generalisation target",
            "",
            f"Guard settings: {guards}. Target: above its merge in domain *and* no worse than it out of domain, on at least 2 of 3 seeds. "
            "Per seed: Δ in-domain / Δ out-of-domain against the merge.",
            "",
            "| row | versus | target met on | per seed |",
            "|---|---|---|---|",
        ]
        for row, t in target.items():
            seeds = "; ".join(f"seed {s}: {d['in_domain']:+.4f} / {d['out_of_domain']:+.4f}" for s, d in t["per_seed"].items())
            lines.append(f"| {row} | {t['versus']} | {t['met_on']}/{t['seeds']} | {seeds} |")
    for addition in result.get("additions", []):
        am = addition["machine"]
        lines += [
            "",
            f"Rows {', '.join(addition['rows'])} were added by `{addition['command']}` on {addition['started']} "
            f"({addition.get('wall_s', 0):.0f} s, {addition['workers']} worker(s); {am['cpu_count']} CPUs, device {am['device']}, commit {am['git_commit']}"
            f"{' (dirty)' if am['git_dirty'] else ''})" + (f"; stopped before the end: {addition['stopped']}." if addition.get("stopped") else "."),
        ]
    comparison = result.get("schedules") or {}
    if comparison:
        s = comparison["summary"]
        lines += [
            "",
            "## Sequential against generational (Evolver + average, same G)",
            "",
            comparison["rule"].replace("\n    ", " ").replace("\n", " "),
            "",
            "| schedule | dev fitness at the shared budget | dev fitness at the end | evaluations at the end |",
            "|---|---|---|---|",
            f"| sequential | {_pm(s['sequential_at_budget'])} | {_pm(s['sequential_final'])} | {_pm(s['sequential_evaluations'], 1)} |",
            f"| generational | {_pm(s['generational_at_budget'])} | {_pm(s['generational_final'])} | {_pm(s['generational_evaluations'], 1)} |",
            "",
            "Per seed (budget, sequential, generational at budget): "
            + "; ".join(f"seed {k}: {v['budget']}, {v['sequential_at_budget']:.4f}, {v['generational_at_budget']:.4f}" for k, v in comparison["per_seed"].items()),
        ]
    members = result["rows"].get(INDIVIDUAL_MEAN, {}).get("per_seed", {})
    if members:
        first = next(iter(members.values()))["members"]
        lines += ["", "## Members (seed-independent)", "", "| member | dev | in-domain mean | out-of-domain mean | " + " | ".join(next(iter(first.values()))["heldout"]) + " |", "|---|---|---|---|" + "---|" * len(next(iter(first.values()))["heldout"])]
        for member, s in first.items():
            lines.append(f"| {member} | {s['dev_fitness']:.4f} | {s['in_domain']:.4f} | {s['out_of_domain']:.4f} | " + " | ".join(f"{v['macro_f1']:.4f}" for v in s["heldout"].values()) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for row in [r for r in row_order(result["rows"]) if r.startswith("Evolver")]:
        curves = [s["curve"] for s in result["rows"][row]["per_seed"].values()]
        length = min(map(len, curves))
        mean = [statistics.fmean(c[g] for c in curves) for g in range(length)]
        low = [min(c[g] for c in curves) for g in range(length)]
        high = [max(c[g] for c in curves) for g in range(length)]
        style = "--" if row == SEQUENTIAL else "-"  # sequential often retraces generational: keep both visible
        (line,) = left.plot(range(length), mean, style, marker="o", label=row)
        left.fill_between(range(length), low, high, color=line.get_color(), alpha=0.12)
    left.set(xlabel="generation", ylabel="best dev fitness (macro-F1)", title="Evolver rows: mean over seeds, band = min..max")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.legend(fontsize=7)
    rows = result["rows"]
    if GENERATIONAL in rows and SEQUENTIAL in rows:
        for k, (seed, seq) in enumerate(rows[SEQUENTIAL]["per_seed"].items()):
            curve = seq["curve_per_evaluation"]
            right.step(range(1, len(curve) + 1), curve, where="post", color="C0", alpha=0.8, label="sequential" if k == 0 else None)
            gen = rows[GENERATIONAL]["per_seed"].get(seed)
            if gen:
                right.step(gen["evaluations"], gen["curve"], where="post", color="C1", marker=".", alpha=0.8, label="generational" if k == 0 else None)
        right.set(xlabel="evaluations of the dev set", ylabel="best dev fitness (macro-F1)", title="Evolver + average: schedules, one line per seed")
        right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = row_order(result["rows"])
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(order) + 1.5))
    y = range(len(order))
    for shift, key, label in ((-0.2, "in_domain", "in-domain"), (0.2, "out_of_domain", "out-of-domain")):
        stats = [result["rows"][r]["summary"][key] for r in order]
        ax.barh([i + shift for i in y], [s["mean"] for s in stats], height=0.4, xerr=[s["std"] for s in stats], label=label, capsize=2)
    ax.set_yticks(list(y), order)
    ax.invert_yaxis()
    ax.set(xlabel=f"held-out macro-F1 (mean ± std over seeds), bench {result['name']}")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.04), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Re-render <name>.md and the plots from a results JSON (e.g. after changing this module)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("results_json", type=Path)
    args = parser.parse_args(argv)
    result = json.loads(args.results_json.read_text())
    write(result, args.results_json.parent, plots=True)
    return 0


def write(result: dict[str, Any], out_dir: Path, *, plots: bool) -> None:
    """<name>.json and <name>.md (always), <name>_curves.png and <name>_bars.png (when plots)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summarise(result)
    result["evolver_gains"] = evolver_gains(result)
    result["guarded_target"] = guarded_target(result)
    name = result["name"]
    write_json_and_markdown(result, out_dir, markdown(result))
    if plots:
        plot_curves(result, out_dir / f"{name}_curves.png")
        plot_bars(result, out_dir / f"{name}_bars.png")


def write_json_and_markdown(result: dict[str, Any], out_dir: Path, text: str) -> None:
    """<name>.json, replaced whole (a reader never sees half a file), then <name>.md."""
    name = result["name"]
    tmp = out_dir / f".{name}.json.partial"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out_dir / f"{name}.json")
    (out_dir / f"{name}.md").write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
