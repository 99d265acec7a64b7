"""Aggregate the ablation's traces: each factor level's change against the starting merge, paired by seed;
which factor moves the out-of-domain change most; JSON, Markdown and the trade-off plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.ablation import PLAIN, PLAIN_FACTORS
from bench.report import spread, write_json_and_markdown
from bench.run import mask_stream_of

KEYS = {"dev_fitness": "dev fitness", "in_domain": "in-domain", "out_of_domain": "out-of-domain"}


def point_values(result: dict[str, Any], method: str, run_name: str, generation: int) -> dict[str, dict[str, float]]:
    """seed -> start and end scores of one point: the run's generation 0 and the given generation."""
    runs = result["runs"].get(method, {}).get(run_name, {}).get("per_seed", {})
    values = {}
    for seed, entry in runs.items():
        by_generation = {row["generation"]: row for row in entry["trace"]}
        if generation not in by_generation:
            continue
        start, end = by_generation[0], by_generation[generation]
        values[seed] = {**{f"start_{k}": start[k] for k in KEYS}, **{f"end_{k}": end[k] for k in KEYS}}
    return values


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """method -> label -> {factor, level, seeds, and per key: start, end and Δ = end - start (mean ± std, higher/lower)}."""
    table: dict[str, Any] = {}
    for method in result["methods"]:
        for factor, label, level, run_name, generation in result["points"]:
            if method == PLAIN and factor not in PLAIN_FACTORS:
                continue
            values = point_values(result, method, run_name, generation)
            if not values:
                continue
            cell = {"factor": factor, "level": level, "seeds": len(values)}
            for key in KEYS:
                deltas = [v[f"end_{key}"] - v[f"start_{key}"] for v in values.values()]
                cell[key] = {
                    "start": spread([v[f"start_{key}"] for v in values.values()]),
                    "end": spread([v[f"end_{key}"] for v in values.values()]),
                    "delta": {**spread(deltas), "higher_on": sum(d > 0 for d in deltas), "lower_on": sum(d < 0 for d in deltas)},
                    "delta_per_seed": {seed: v[f"end_{key}"] - v[f"start_{key}"] for seed, v in values.items()},
                }
            table.setdefault(method, {})[label] = cell
    return table


def factor_effects(table: dict[str, Any]) -> dict[str, Any]:
    """method -> factor -> the level with the best mean Δ out-of-domain, and the range of that mean over levels:
    the factor with the widest range is the one that moves the out-of-domain change most. Levels are compared
    on the seeds they share (paired), so a level run on fewer seeds is not set against another level's mean over
    other seeds; a factor with a single measured level has no effect to report."""
    effects: dict[str, Any] = {}
    for method, cells in table.items():
        by_factor: dict[str, dict[str, dict[str, float]]] = {}
        for label, cell in cells.items():
            by_factor.setdefault(cell["factor"], {})[label] = cell["out_of_domain"]["delta_per_seed"]
        for factor, levels in by_factor.items():
            # Levels run on as many seeds as the best-covered one are compared on those seeds; only when fewer
            # than two levels have them are all levels compared on the seeds they share.
            most = max(len(v) for v in levels.values())
            covered = {label: v for label, v in levels.items() if len(v) == most}
            levels = covered if len(covered) >= 2 else levels
            seeds = sorted(set.intersection(*(set(v) for v in levels.values())), key=int)
            if len(levels) < 2 or not seeds:
                continue
            means = {label: sum(v[s] for s in seeds) / len(seeds) for label, v in levels.items()}
            best = max(means, key=means.get)
            effects.setdefault(method, {})[factor] = {
                "range": max(means.values()) - min(means.values()),
                "best_level": best,
                "best_delta": means[best],
                "levels": means,
                "seeds": seeds,
            }
    return effects


def step_statistics(result: dict[str, Any]) -> dict[str, Any]:
    """method -> over every accepted step of the current setting's runs (traced generation by generation, all
    seeds): how many, the mean change of out-of-domain macro-F1 per step, the share of steps that lower it, and
    the correlation of a step's dev gain with its out-of-domain change (does buying dev fitness cost OOD?)."""
    stats: dict[str, Any] = {}
    for method in result["methods"]:
        runs = result["runs"].get(method, {}).get("current", {}).get("per_seed", {})
        dev, ood = [], []
        for entry in runs.values():
            for before, after in zip(entry["trace"], entry["trace"][1:]):
                if after["sha256"] != before["sha256"]:
                    dev.append(after["dev_fitness"] - before["dev_fitness"])
                    ood.append(after["out_of_domain"] - before["out_of_domain"])
        if len(ood) < 3:
            continue
        stats[method] = {
            "steps": len(ood),
            "seeds": len(runs),
            "mean_ood_change": statistics.fmean(ood),
            "share_lowering_ood": sum(d < 0 for d in ood) / len(ood),
            "corr_dev_gain_ood_change": statistics.correlation(dev, ood) if len(set(dev)) > 1 and len(set(ood)) > 1 else None,
        }
    return stats


def _title(method: str) -> str:
    return "Evolver (plain mode)" if method == PLAIN else f"Evolver + {method}"


def _delta(stat: dict[str, Any], seeds: int) -> str:
    return f"{stat['mean']:+.4f} ± {stat['std']:.4f} ({stat['higher_on']}↑ {stat['lower_on']}↓ of {seeds})"


def markdown(result: dict[str, Any]) -> str:
    m, sizes, current = result["machine"], result["sizes"], result["current"]
    table, effects = result["summary"], result["effects"]
    lines = [
        f"# Ablation `{result['name']}` ({result['variant']} sizes)" + ("" if result["complete"] else " — PARTIAL, still running or interrupted"),
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['started']} (UTC start){' → ' + result['finished'] if result.get('finished') else ''}; total wall {result.get('wall_s', 0):.0f} s",
        f"- machine: {m['cpu_count']} CPUs ({m['torch_threads']} torch threads), device {m['device']}, torch {m['torch']}, {m['platform']}; "
        f"commit {m['git_commit']}{' (dirty)' if m['git_dirty'] else ''}",
        f"- population: the benchmark's ({', '.join(sizes['in_domain'])}; out of domain {', '.join(sizes['out_of_domain'])}); "
        f"`heads=identical` fine-tunes every member with seed {result['identical_seed']}",
        "- the current setting: " + ", ".join(f"{k} = {v}" for k, v in current.items())
        + f"; crossover stream `{mask_stream_of(result)}`; generational schedule; one factor moves at a time",
        f"- seeds {', '.join(map(str, sizes['seeds']))} (the run seed); Δ = the score after the last generation minus the starting merge "
        "(generation 0 of the same run), paired by seed: mean ± std, and on how many seeds it rose (↑) or fell (↓)",
        "- held-out scores are only reported; every selection inside the runs uses dev data",
        "",
    ]
    for method, cells in table.items():
        lines += [f"## {_title(method)}", "", "| factor level | Δ dev fitness | Δ in-domain | Δ out-of-domain | out-of-domain: start → end |", "|---|---|---|---|---|"]
        for label, cell in cells.items():
            ood = cell["out_of_domain"]
            lines.append(
                f"| {label}{' (current)' if cell['level'] == current[cell['factor']] else ''} | "
                + " | ".join(_delta(cell[k]["delta"], cell["seeds"]) for k in KEYS)
                + f" | {ood['start']['mean']:.4f} → {ood['end']['mean']:.4f} |"
            )
        lines.append("")
    steps = result.get("steps") or {}
    if steps:
        lines += [
            "## What one accepted step does (current setting, every generation of every seed)",
            "",
            "| method | accepted steps | mean Δ out-of-domain per step | steps that lower it | corr(Δ dev, Δ out-of-domain) |",
            "|---|---|---|---|---|",
        ]
        for method, st in steps.items():
            corr = "n/a" if st["corr_dev_gain_ood_change"] is None else f"{st['corr_dev_gain_ood_change']:+.2f}"
            lines.append(f"| {_title(method)} | {st['steps']} ({st['seeds']} seeds) | {st['mean_ood_change']:+.4f} | {st['share_lowering_ood']:.0%} | {corr} |")
        lines.append("")
    if effects:
        factors = list(result["levels"])
        lines += [
            "## Which factor moves the out-of-domain change",
            "",
            "Per method and factor: the range of the mean Δ out-of-domain over the factor's levels, and the level where it is "
            "highest, paired by seed: over the levels run on the most seeds (or, when only one level has them, every "
            "level on the seeds they share).",
            "",
            "| factor | " + " | ".join(_title(m) for m in effects) + " |",
            "|---|" + "---|" * len(effects),
        ]
        for factor in factors:
            cells = []
            for method in effects:
                e = effects[method].get(factor)
                cells.append(f"range {e['range']:.4f}; best {e['best_level']} ({e['best_delta']:+.4f}); seeds {', '.join(e['seeds'])}" if e else "not measured")
            lines.append(f"| {factor} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(result: dict[str, Any], path: Path) -> None:
    """Top: dev fitness against out-of-domain score across generations (mean over seeds), one line per run.
    Bottom: Δ in-domain and Δ out-of-domain per factor level (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in result["methods"] if m in result["summary"]]
    if not methods:
        return
    fig, axes = plt.subplots(2, len(methods), figsize=(6.5 * len(methods), 10), squeeze=False)
    for column, method in enumerate(methods):
        top, bottom = axes[0][column], axes[1][column]
        for k, (run_name, entry) in enumerate(result["runs"][method].items()):
            traces = [{row["generation"]: row for row in s["trace"]} for s in entry["per_seed"].values()]
            if not traces:
                continue
            generations = sorted(set.intersection(*(set(t) for t in traces)))  # every seed's traced generations
            dev = [sum(t[g]["dev_fitness"] for t in traces) / len(traces) for g in generations]
            ood = [sum(t[g]["out_of_domain"] for t in traces) / len(traces) for g in generations]
            style = "-" if run_name == "current" else "--"
            (line,) = top.plot(dev, ood, style, marker=".", color=f"C{k}", label=run_name if run_name != "current" else f"current (G={generations[-1]})")
            top.plot(dev[:1], ood[:1], "o", color=line.get_color(), markersize=8, markerfacecolor="none")
            if run_name == "current" and result["current"]["G"] in generations[1:-1]:
                at = generations.index(result["current"]["G"])
                top.plot([dev[at]], [ood[at]], "s", color=line.get_color(), markersize=7)
        top.set(xlabel="dev fitness (macro-F1)", ylabel="out-of-domain macro-F1", title=f"{_title(method)}: generations (○ start, ■ current G)")
        top.legend(fontsize=7)
        cells = result["summary"][method]
        labels = list(cells)
        y = range(len(labels))
        for shift, key, name in ((-0.2, "in_domain", "Δ in-domain"), (0.2, "out_of_domain", "Δ out-of-domain")):
            stats = [cells[label][key]["delta"] for label in labels]
            bottom.barh([i + shift for i in y], [s["mean"] for s in stats], height=0.4, xerr=[s["std"] for s in stats], label=name, capsize=2)
        bottom.axvline(0, color="black", linewidth=0.8)
        bottom.set_yticks(list(y), labels)
        bottom.invert_yaxis()
        bottom.set(xlabel="change against the starting merge (mean ± std over seeds)")
        bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(result: dict[str, Any], out_dir: Path, *, plots: bool) -> None:
    """<name>.json and <name>.md (always), <name>_tradeoff.png (when plots)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result["summary"] = summarise(result)
    result["effects"] = factor_effects(result["summary"])
    result["steps"] = step_statistics(result)
    name = result["name"]
    write_json_and_markdown(result, out_dir, markdown(result))
    if plots:
        plot_tradeoff(result, out_dir / f"{name}_tradeoff.png")
