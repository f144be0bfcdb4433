"""Baseline for the GPU index build: causal prefill attention of one layer,
PyTorch scaled_dot_product_attention(is_causal=True), Llama-3-8B shape
(32 q / 8 kv heads, d=128, fp16), batch 1. Prints a Markdown table (ms per
layer: median of timed repeats with CUDA events). Runs on the device machine
in the same call as //index/cuda:index_build_bench.

Usage: python3 bench/prefill_attention.py [--contexts 32768,131072,...]
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="32768,131072,524288,1048576")
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| context | ms/layer (SDPA causal) | TFLOP/s | how |")
    print("|---|---|---|---|")
    g = torch.Generator(device=dev).manual_seed(0)
    for n in [int(x) for x in args.contexts.split(",")]:
        q = torch.randn(1, 32, n, 128, device=dev, dtype=torch.float16, generator=g)
        k = torch.randn(1, 8, n, 128, device=dev, dtype=torch.float16, generator=g)
        v = torch.randn(1, 8, n, 128, device=dev, dtype=torch.float16, generator=g)
        how = "flash, enable_gqa"

        def fn():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                      enable_gqa=True)
        try:
            fn()
        except RuntimeError:
            # No GQA in this flash build: expand K/V to the 32 q heads.
            k = k.repeat_interleave(4, dim=1)
            v = v.repeat_interleave(4, dim=1)
            how = "flash, K/V expanded to 32 heads"

            def fn():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            fn()
        torch.cuda.synchronize()
        reps = 10 if n <= 131072 else (2 if n <= 524288 else 1)
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        ms = statistics.median(times)
        flops = 2 * 2 * 32 * 128 * n * n / 2  # QK^T and PV, causal half
        print(f"| {n} | {ms:.2f} | {flops / ms / 1e9:.0f} | {how} |", flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
