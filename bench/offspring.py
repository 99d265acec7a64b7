"""Offspring against memory bandwidth: how close mutation + crossover come to the cheapest pass over the same bytes.

    python -m bench.offspring [--device cpu|cuda] [--params 110] [--repeats 5] [--legacy] [--smoke]

An offspring reads two parents and writes one tensor, so its floor is a read-read-write pass: `torch.add(x_i,
x_r, out=child)` over the same tensors, timed in the same run (the "copy limit"). Both are reported as GB/s of
fp32 parameters written (model bytes / seconds), best of `--repeats`, over a synthetic transformer of `--params`
million parameters (an encoder's shapes: embeddings, 12 layers of attention and MLP, a head).

It times `tasks.evolve.offspring_tensor`, the function `make_offspring` calls per tensor, key derivation
included; reading and writing safetensors files is not included. The last line is
`offspring_gbps=<x> copy_gbps=<y> ratio=<x/y> kernel=<name> device=<device>`.
"""

from __future__ import annotations

import argparse
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


def measure(*, device: str, params_millions: float, repeats: int, legacy: bool) -> dict[str, float]:
    dev = torch.device(device)
    shapes = encoder_shapes(params_millions)
    g = torch.Generator().manual_seed(0)
    x_i = {n: torch.randn(s, generator=g).to(dev) for n, s in shapes.items()}
    x_r = {n: torch.randn(s, generator=g).to(dev) for n, s in shapes.items()}
    out = {n: torch.empty_like(t) for n, t in x_i.items()}
    nbytes = sum(t.numel() * t.element_size() for t in x_i.values())

    def offspring(stream: str):
        def run():
            for n in shapes:
                # Into the same buffers as the copy: both are then timed without allocation (the stage reuses one buffer).
                reuse = {"out": out[n]} if stream == "counter" else {}
                evolve.offspring_tensor(x_i[n], x_r[n], F=0.5, CR=0.5, seed=1, generation=1, individual=0, name=n, stream=stream, **reuse)

        return run

    def add():
        for n in shapes:
            torch.add(x_i[n], x_r[n], out=out[n])

    figures = {"params": sum(t.numel() for t in x_i.values()), "model_gb": nbytes / 1e9, "tensors": len(shapes)}
    figures["copy_gbps"] = nbytes / _best(add, repeats, dev) / 1e9
    figures["offspring_gbps"] = nbytes / _best(offspring("counter"), repeats, dev) / 1e9
    # The largest tensor alone: the kernel against the memory system, without the per-tensor launch and
    # key-derivation cost that a model's ~200 small tensors (biases, norms) add.
    big = max(shapes, key=lambda n: x_i[n].numel())
    big_bytes = x_i[big].numel() * x_i[big].element_size()
    figures["largest_mb"] = big_bytes / 1e6
    figures["largest_copy_gbps"] = big_bytes / _best(lambda: torch.add(x_i[big], x_r[big], out=out[big]), repeats, dev) / 1e9
    figures["largest_offspring_gbps"] = big_bytes / _best(
        lambda: evolve.offspring_tensor(x_i[big], x_r[big], F=0.5, CR=0.5, seed=1, generation=1, individual=0, name=big, out=out[big]), repeats, dev
    ) / 1e9
    if legacy:
        figures["legacy_gbps"] = nbytes / _best(offspring("torch-mt19937"), max(1, repeats // 2), dev) / 1e9
    return figures


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
    print(f"copy limit (x_i + x_r -> out): {f['copy_gbps']:.2f} GB/s")
    print(f"offspring ({kernel}):          {f['offspring_gbps']:.2f} GB/s")
    if "legacy_gbps" in f:
        print(f"offspring (torch-mt19937):     {f['legacy_gbps']:.2f} GB/s ({f['legacy_gbps'] / f['copy_gbps']:.1%} of the copy limit)")
    print(f"offspring_gbps={f['offspring_gbps']:.2f} copy_gbps={f['copy_gbps']:.2f} ratio={f['offspring_gbps'] / f['copy_gbps']:.2f} kernel={kernel} device={dev.type}")


if __name__ == "__main__":
    main()
