"""Baseline for decode attention: PyTorch scaled_dot_product_attention, one
query token, Llama-3-8B attention shape (32 q / 8 kv heads, d=128, fp16),
all K/V in GPU memory. Prints a Markdown table (us per layer, median of
timed repeats with CUDA events). Runs on the device machine.

Usage: python3 bench/torch_sdpa_decode.py [--contexts 32768,131072] [--batches 1,4,16]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="32768,131072,524288,1048576")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| context | batch | us/layer (SDPA) | tokens/s (1 layer) |")
    print("|---|---|---|---|")
    g = torch.Generator(device=dev).manual_seed(0)
    for n in [int(x) for x in args.contexts.split(",")]:
        for b in [int(x) for x in args.batches.split(",")]:
            need = 2 * b * 8 * n * 128 * 2
            free, _ = torch.cuda.mem_get_info()
            if need + (2 << 30) > free:
                print(f"| {n} | {b} | (does not fit: {need / 2**30:.1f} GiB K+V) | |")
                continue
            q = torch.randn(b, 32, 1, 128, device=dev, dtype=torch.float16, generator=g)
            k = torch.randn(b, 8, n, 128, device=dev, dtype=torch.float16, generator=g)
            v = torch.randn(b, 8, n, 128, device=dev, dtype=torch.float16, generator=g)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            for _ in range(5):
                fn()
            times = []
            for _ in range(args.iters):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) * 1000.0)
            us = statistics.median(times)
            print(f"| {n} | {b} | {us:.1f} | {b * 1e6 / us:.0f} |")
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
