"""GPUs used well: a candidate's whole path (offspring, merge, load, evaluate) on one device, with its figures.

    python -m bench.gpu                 # on a GPU: all-mpnet-base-v2's architecture (110 M parameters), bfloat16
    python -m bench.gpu --smoke         # a tiny encoder on the CPU in seconds (tests/test_gpu_bench.py)
    python -m bench.gpu --checkpoint PATH   # real weights: a local all-mpnet-base-v2 folder (../shared/design/DATA.md)

The population is the checkpoint (or, without one, the same architecture with seeded weights) plus `--members`
seeded perturbations of it, held in host memory as the store's readers would hand them over. The dev set is
`--dev` token sequences of tweet-like lengths (speed does not depend on what the tokens say). It reports:
- the offspring kernel's GB/s against the device's read-read-write copy bandwidth (`bench.offspring`);
- the evaluation harness (`tasks.taskpool.grouped_confusion`, token-budget batches) against a bare forward
  loop over the same batches already on the device: target <= 1.10x;
- candidates per minute through the stages' own functions (`evolve.offspring_tensor`, the merge registry,
  `modelpool.model_with`'s copy, the harness), and the time of each phase; with `--resident` (the default) the
  members stay on the device across candidates and each offspring is one call over the model
  (`evolve.offspring_tensors`, one kernel launch on CUDA), and on a GPU the path from host memory is timed too;
- peak GPU memory against one model's size.
The last line is `candidates_per_min=<x> harness_over_bare=<y> offspring_ratio=<z> device=<d> dtype=<t>`.
What it leaves out: reading and writing safetensors files in the store, and Airflow's per-task cost
(`bench.airflow_overhead`).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from bench.offspring import best_offspring, timed
from bench.offspring import measure as offspring_bandwidth

# all-mpnet-base-v2's config.json (sentence-transformers), with a 3-label classification head.
MPNET_BASE = {
    "vocab_size": 30527,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "layer_norm_eps": 1e-5,
    "relative_attention_num_buckets": 32,
}
SMOKE = {**MPNET_BASE, "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 130}
NUM_LABELS = 3


def build_model(config: dict, checkpoint: Path | None, seed: int):
    from transformers import AutoModelForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    if checkpoint is not None:
        return AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=NUM_LABELS, dtype=torch.float32)
    torch.manual_seed(seed)
    return MPNetForSequenceClassification(MPNetConfig(**config, num_labels=NUM_LABELS))


def population(model, members: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`members` fine-tuned stand-ins: the model's weights plus a seeded perturbation of 1 % of each tensor's spread."""
    g = torch.Generator().manual_seed(seed)
    base = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    return [{k: v + 0.01 * (v.std() if v.numel() > 1 else 1.0) * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(members)]


def dev_set(n: int, vocab: int, max_length: int, seed: int) -> dict[str, torch.Tensor]:
    """Token sequences laid out as `taskpool.encode` lays them out, lengths spread like tweets (8 to max_length)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, max_length + 1, (n,), generator=g, dtype=torch.int32)
    input_ids = torch.randint(5, vocab, (n, max_length), generator=g, dtype=torch.int32)
    attention_mask = (torch.arange(max_length)[None, :] < lengths[:, None]).to(torch.int8)
    return {
        "input_ids": input_ids * attention_mask + (1 - attention_mask.int()),  # MPNet's pad id is 1
        "attention_mask": attention_mask,
        "lengths": lengths,
        "labels": torch.randint(0, NUM_LABELS, (n,), generator=g),
        "source": torch.zeros(n, dtype=torch.int32),
    }


def harness_against_bare(model, data, *, batch_size: int, batch_tokens: int | None, repeats: int, device: torch.device) -> tuple[float, float]:
    from tasks import taskpool

    rows = range(len(data["labels"]))
    bounds = taskpool.batch_bounds(data["lengths"], batch_size, batch_tokens)
    batches = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        width = int(data["lengths"][start:stop].max())
        batches.append((data["input_ids"][start:stop, :width].long().to(device), data["attention_mask"][start:stop, :width].long().to(device)))

    @torch.inference_mode()
    def bare():
        for input_ids, attention_mask in batches:
            model(input_ids=input_ids, attention_mask=attention_mask).logits.argmax(-1)

    def harness():
        taskpool.grouped_confusion(model, data, rows, batch_size=batch_size, batch_tokens=batch_tokens, num_labels=NUM_LABELS)

    bare(), harness()  # warm-up: kernels, allocator, autotuning
    times = {"bare": [], "harness": []}
    for _ in range(repeats):  # interleaved, so drift hits both alike
        times["bare"].append(timed(bare, device))
        times["harness"].append(timed(harness, device))
    return statistics.median(times["harness"]), statistics.median(times["bare"])


def candidate_loop(
    model, members, data, *, merger: str, candidates: int, batch_size: int, batch_tokens: int | None, device: torch.device, resident: bool
) -> dict[str, float]:
    """Candidates as `make_offspring` + `evaluate` build them, phase by phase: offspring of member i with reference
    i+1, the merge of the population with it (registry method, on the device), the copy into the evaluation model
    (its dtype), the harness over the dev set.

    From host memory (resident=False), as the stages work today, each candidate copies its parents and the
    population to the device and the offspring goes tensor by tensor. resident=True copies the members once,
    before the loop (as a packed evaluate task could keep them), and each offspring is one call over the model
    (one kernel launch on CUDA) into buffers reused from candidate to candidate."""
    from tasks import evolve, taskpool
    from tasks.merge import TensorGroup, get_method

    if resident:
        members = [{n: t.to(device) for n, t in m.items()} for m in members]
        child_buffers = {n: torch.empty_like(t) for n, t in members[0].items()}
    method = get_method(merger)
    merge, params = method.load(), method.params()
    names = list(members[0])
    state = model.state_dict()
    phases = {"offspring": 0.0, "merge": 0.0, "load": 0.0, "evaluate": 0.0}

    for c in range(candidates + 1):  # the first is a warm-up
        target, reference = c % len(members), (c + 1) % len(members)
        spent = {}
        child = {}

        def offspring():
            if resident:
                parents = members[target], members[reference]
                child.update(evolve.offspring_tensors(*parents, F=0.5, CR=0.5, seed=1, generation=c, individual=target, outs=child_buffers))
                return
            for n in names:
                child[n] = evolve.offspring_tensor(
                    members[target][n].to(device), members[reference][n].to(device), F=0.5, CR=0.5, seed=1, generation=c, individual=target, name=n
                )

        spent["offspring"] = timed(offspring, device)
        merged = {}

        def merge_all():
            for n in names:
                tensors = [child[n] if i == target else m[n].to(device) for i, m in enumerate(members)]
                merged[n] = merge(TensorGroup(n, tensors, seed=evolve.derive_seed(1, "merge", n)), params)

        spent["merge"] = timed(merge_all, device)

        def load():
            with torch.no_grad():
                for n in names:
                    state[n].copy_(merged[n])

        spent["load"] = timed(load, device)
        spent["evaluate"] = timed(
            lambda: taskpool.grouped_confusion(model, data, range(len(data["labels"])), batch_size=batch_size, batch_tokens=batch_tokens, num_labels=NUM_LABELS),
            device,
        )
        if c:
            for k, v in spent.items():
                phases[k] += v / candidates
    return phases


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a tiny encoder, a small dev set, a few candidates: seconds on a CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="evaluation dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a local all-mpnet-base-v2 folder (default: its architecture, seeded weights)")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--dev", type=int, default=None, help="dev examples (default 4096 on CUDA, 256 on the CPU)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default 1024 on CUDA, 64 on the CPU")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default 65536 on CUDA, none on the CPU")
    ap.add_argument("--merger", default="average")
    ap.add_argument("--candidates", type=int, default=None, help="default 10 (smoke: 2)")
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (smoke: 2)")
    ap.add_argument(
        "--resident",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the members on the device across candidates, offspring in one call over the model "
        "(default; on a GPU the path from host memory is timed too)",
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    dev_n = args.dev or (4096 if on_gpu else 256)
    batch_size = args.batch_size or (1024 if on_gpu else 64)
    batch_tokens = args.batch_tokens if args.batch_tokens is not None else (65536 if on_gpu else None)
    candidates = args.candidates or (2 if args.smoke else 10)
    repeats = args.repeats or (2 if args.smoke else 5)
    config = SMOKE if args.smoke else MPNET_BASE
    if args.smoke:
        dev_n = args.dev or 64

    from tasks import crossover

    where = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"device {device} ({where}), torch {torch.__version__}, evaluation dtype {dtype}, crossover kernel {crossover.kernel_for(device)}")
    model = build_model(config, args.checkpoint, seed=0)
    members = population(model, args.members, seed=1)
    params = sum(v.numel() for v in members[0].values())
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
    model_gb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e9
    data = dev_set(dev_n, config["vocab_size"], args.max_length, seed=2)
    print(f"model: {params / 1e6:.1f} M parameters ({model_gb:.3f} GB in {dtype}); {args.members} members; dev {dev_n} sequences of 8-{args.max_length} tokens; "
          f"batches of at most {batch_size}" + (f" and {batch_tokens} padded tokens" if batch_tokens else ""))
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)

    bandwidth = offspring_bandwidth(device=str(device), params_millions=params / 1e6, repeats=repeats, legacy=False)
    offspring_gbps, offspring_kernel = best_offspring(bandwidth)
    offspring_ratio = offspring_gbps / bandwidth["copy_gbps"]
    flat_copy_gbps = bandwidth["flat_copy_gbps"]
    print(f"offspring ({offspring_kernel}): {offspring_gbps:.1f} GB/s of fp32 parameters; copy limit {bandwidth['copy_gbps']:.1f} GB/s "
          f"(a torch.add per tensor), {flat_copy_gbps:.1f} GB/s (one over a flat buffer); "
          f"ratio {offspring_ratio:.2f} ({offspring_gbps / flat_copy_gbps:.2f} of the flat one)")

    harness_s, bare_s = harness_against_bare(model, data, batch_size=batch_size, batch_tokens=batch_tokens, repeats=repeats, device=device)
    print(f"evaluation of {dev_n} sequences: harness {harness_s * 1e3:.1f} ms, bare forward loop {bare_s * 1e3:.1f} ms (medians of {repeats}); "
          f"ratio {harness_s / bare_s:.3f}; {dev_n / harness_s:,.0f} sequences/s")

    def candidate_cost(resident: bool) -> float:
        phases = candidate_loop(
            model, members, data, merger=args.merger, candidates=candidates, batch_size=batch_size, batch_tokens=batch_tokens, device=device, resident=resident
        )
        where = "members resident on the device, offspring in one call" if resident else "members from host memory, offspring per tensor"
        print(f"a candidate ({args.merger} of {args.members}; {where}): {sum(phases.values()):.3f} s = "
              + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()) + f" (mean of {candidates})")
        return sum(phases.values())

    if args.resident and on_gpu:
        candidate_cost(resident=False)  # the path the stages take today, for comparison
    per_candidate = candidate_cost(args.resident)
    if on_gpu:
        peak = torch.cuda.max_memory_allocated(device) / 1e9
        print(f"peak GPU memory: {peak:.2f} GB ({peak / model_gb:.1f} x the evaluation model; the offspring benchmark's parents and child"
              + (" and the resident members" if args.resident else "") + " included)")
    print(
        f"candidates_per_min={60 / per_candidate:.1f} harness_over_bare={harness_s / bare_s:.3f} offspring_ratio={offspring_ratio:.3g} "
        f"device={device.type} dtype={dtype}"
    )


if __name__ == "__main__":
    main()
