"""Offspring against memory bandwidth: how close mutation + crossover come to the cheapest pass over the same bytes.

    python -m bench.offspring [--device cpu|cuda] [--params 110] [--repeats 5] [--legacy] [--smoke]

An offspring reads two parents and writes one tensor, so its floor is a read-read-write pass: `torch.add(x_i,
x_r, out=child)` over the same tensors, timed in the same run (the "copy limit"). Both are reported as GB/s of
fp32 parameters written (model bytes / seconds), best of `--repeats`, over a synthetic transformer of `--params`
million parameters (an encoder's shapes: embeddings, 12 layers of attention and MLP, a head).

The copy limit is timed two ways: a torch.add per tensor (launches included, as a loop over a model pays them)
and one torch.add over the flat buffer that holds every tensor (the bytes alone). So is the offspring:
`tasks.evolve.offspring_tensor` per tensor, the function `make_offspring` calls, and `evolve.offspring_tensors`,
all tensors in one call (on CUDA one Triton launch); key derivation is included, reading and writing
safetensors files is not. The last line is `offspring_gbps=<x> copy_gbps=<y> ratio=<x/y> kernel=<name>
device=<device> flat_copy_gbps=<z> flat_ratio=<x/z>`: x the faster of the two offspring figures and <name> its
kernel (`triton-many` is the single launch), y the per-tensor copy limit, z the flat one.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from tasks import crossover, evolve


def encoder_shapes(params_millions: float) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a BERT-style encoder with about this many parameters (hidden size scales, 12 layers)."""
    layers, vocab = 12, 30522
    # params ~ vocab*h + layers*12*h^2: solve for h, rounded to a multiple of 64 as real models are.
    h = 64
    while (vocab * (h + 64) + layers * 12 * (h + 64) ** 2) <= params_millions * 1e6:
        h += 64
    shapes: dict[str, tuple[int, ...]] = {"embeddings.word_embeddings.weight": (vocab, h), "embeddings.position_embeddings.weight": (512, h)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h, h), (h,)
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = (4 * h, h), (4 * h,)
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = (h, 4 * h), (h,)
        shapes[p + "attention.output.LayerNorm.weight"] = shapes[p + "output.LayerNorm.weight"] = (h,)
    shapes["classifier.weight"], shapes["classifier.bias"] = (3, h), (3,)
    return shapes


def timed(fn, device: torch.device) -> float:
    """Seconds of one call, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _best(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: JIT compilation, allocator, page faults
    return min(timed(fn, device) for _ in range(repeats))


# Tensors start at multiples of 64 elements in the benchmark's flat buffers, as separate allocations would (torch
# aligns those to 512 bytes): an unaligned start would cost the kernels their vector loads.
ALIGN_ELEMENTS = 64


def _alignment_padded(numel: int) -> int:
    return -(-numel // ALIGN_ELEMENTS) * ALIGN_ELEMENTS


def measure(*, device: str, params_millions: float, repeats: int, legacy: bool) -> dict:
    dev = torch.device(device)
    shapes = encoder_shapes(params_millions)
    # Each set of tensors is laid out in one flat buffer, so one torch.add over the buffer gives the copy limit
    # without launches over the very bytes the per-tensor figures touch.
    starts, total = {}, 0
    for n, s in shapes.items():
        starts[n], total = total, total + _alignment_padded(math.prod(s))
    flat_i, flat_r, flat_out = (torch.zeros(total, device=dev) for _ in range(3))

    def views(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: flat[starts[n] : starts[n] + math.prod(s)].view(s) for n, s in shapes.items()}

    x_i, x_r, out = views(flat_i), views(flat_r), views(flat_out)
    g = torch.Generator().manual_seed(0)
    for tensors in (x_i, x_r):
        for n, s in shapes.items():
            tensors[n].copy_(torch.randn(s, generator=g))
    nbytes = sum(t.numel() * t.element_size() for t in x_i.values())
    kernel = crossover.kernel_for(dev)

    def offspring(stream: str):
        def run():
            for n in shapes:
                # Into the same buffers as the copy: both are then timed without allocation (the stage reuses one buffer).
                reuse = {"out": out[n]} if stream == "counter" else {}
                evolve.offspring_tensor(x_i[n], x_r[n], F=0.5, CR=0.5, seed=1, generation=1, individual=0, name=n, stream=stream, **reuse)

        return run

    def offspring_at_once():
        evolve.offspring_tensors(x_i, x_r, F=0.5, CR=0.5, seed=1, generation=1, individual=0, outs=out)

    def add():
        for n in shapes:
            torch.add(x_i[n], x_r[n], out=out[n])

    def gbps(fn, repeats: int = repeats, nbytes: int = nbytes) -> float:
        return nbytes / _best(fn, repeats, dev) / 1e9

    figures = {"params": sum(t.numel() for t in x_i.values()), "model_gb": nbytes / 1e9, "tensors": len(shapes), "kernel": kernel}
    figures["copy_gbps"] = gbps(add)
    figures["flat_copy_gbps"] = gbps(lambda: torch.add(flat_i, flat_r, out=flat_out))
    figures["offspring_gbps"] = gbps(offspring("counter"))
    figures["many_kernel"] = "triton-many" if kernel == "triton" else kernel  # off CUDA, offspring_many loops over tensors
    figures["many_offspring_gbps"] = gbps(offspring_at_once)
    # The largest tensor alone: the kernel against the memory system, without the per-tensor launch and
    # key-derivation cost that a model's ~200 small tensors (biases, norms) add.
    big = max(shapes, key=lambda n: x_i[n].numel())
    big_bytes = x_i[big].numel() * x_i[big].element_size()
    figures["largest_mb"] = big_bytes / 1e6
    figures["largest_copy_gbps"] = gbps(lambda: torch.add(x_i[big], x_r[big], out=out[big]), nbytes=big_bytes)
    figures["largest_offspring_gbps"] = gbps(
        lambda: evolve.offspring_tensor(x_i[big], x_r[big], F=0.5, CR=0.5, seed=1, generation=1, individual=0, name=big, out=out[big]), nbytes=big_bytes
    )
    if legacy:
        figures["legacy_gbps"] = gbps(offspring("torch-mt19937"), max(1, repeats // 2))
    return figures


def best_offspring(figures: dict) -> tuple[float, str]:
    """The faster of the two ways through a whole model, a call per tensor or one call for all, and its kernel."""
    return max((figures["offspring_gbps"], figures["kernel"]), (figures["many_offspring_gbps"], figures["many_kernel"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--params", type=float, default=110.0, help="millions of fp32 parameters (default: all-mpnet-base-v2's size)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--legacy", action="store_true", help="also time the stream before 2026-11-27 (torch-mt19937)")
    ap.add_argument("--smoke", action="store_true", help="a 2 M-parameter model, 2 repeats (tests)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.params, args.repeats = 2.0, 2
    dev = torch.device(args.device)
    kernel = crossover.kernel_for(dev)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    print(f"device {dev} ({where}), kernel {kernel}, torch {torch.__version__}")
    f = measure(device=args.device, params_millions=args.params, repeats=args.repeats, legacy=args.legacy)
    print(f"model: {f['params'] / 1e6:.1f} M fp32 parameters in {f['tensors']} tensors ({f['model_gb']:.3f} GB); best of {args.repeats}")
    print(f"largest tensor alone ({f['largest_mb']:.0f} MB): offspring {f['largest_offspring_gbps']:.2f} GB/s, copy limit {f['largest_copy_gbps']:.2f} GB/s, "
          f"ratio {f['largest_offspring_gbps'] / f['largest_copy_gbps']:.2f}")
    copy, flat = f["copy_gbps"], f["flat_copy_gbps"]
    print(f"copy limit (x_i + x_r -> out), a torch.add per tensor: {copy:.2f} GB/s")
    print(f"copy limit, one torch.add over the model's flat buffer: {flat:.2f} GB/s (the bytes alone, without a launch per tensor)")

    def against_both(gbps: float) -> str:
        return f"{gbps:.2f} GB/s ({gbps / copy:.2f} of the per-tensor copy limit, {gbps / flat:.2f} of the flat one)"

    print(f"offspring ({f['kernel']}), a call per tensor: {against_both(f['offspring_gbps'])}")
    at_once = "one launch" if f["many_kernel"] != f["kernel"] else "a loop over tensors here"
    print(f"offspring ({f['many_kernel']}), all tensors in one call ({at_once}): {against_both(f['many_offspring_gbps'])}")
    if "legacy_gbps" in f:
        print(f"offspring (torch-mt19937):     {f['legacy_gbps']:.2f} GB/s ({f['legacy_gbps'] / copy:.1%} of the per-tensor copy limit)")
    best, best_kernel = best_offspring(f)
    print(f"offspring_gbps={best:.2f} copy_gbps={copy:.2f} ratio={best / copy:.2f} kernel={best_kernel} device={dev.type} "
          f"flat_copy_gbps={flat:.2f} flat_ratio={best / flat:.2f}")


if __name__ == "__main__":
    main()
