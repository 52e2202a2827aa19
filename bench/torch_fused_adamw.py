#!/usr/bin/env python3
"""PyTorch's fused AdamW (`torch._fused_adamw_`, what `torch.optim.AdamW(fused=True)`
runs) on one flat tensor of N elements, timed with CUDA events, for comparison with
bench_cuda_kernels (bench/cuda_kernels.sh computes the ratio).

Setup, per N (default 64M and 256M): fp32 params, exp_avg, exp_avg_sq; gradients in
bf16 when this PyTorch's fused kernel accepts them next to fp32 params, fp32 otherwise
(the dtype used is printed). Decoupled weight decay, no AMSGrad, no grad scaler.
Bytes per element: params, exp_avg, exp_avg_sq read and written (24 B) plus the
gradient read (2 B for bf16, 4 B for fp32) = 26 or 28 B; PyTorch writes no 16-bit
parameter copy (zeroblocks' fused pass does: its 28 B include a 2 B param write).

Prints a table and one line per N:
    RESULT torch_fused_adamw n=N elems_per_s=X gbps=Y grad_dtype=D bytes_per_elem=B
Without PyTorch, or without a CUDA device, it says so and exits 0.

Usage: torch_fused_adamw.py [--n N[,N...]] [--reps R] [--warmup W]
"""
import argparse
import statistics
import sys


def parse_list(text):
    return [int(float(x)) for x in text.split(",") if x]


def time_ms(torch, fn, reps, warmup):
    for _ in range(warmup):
        fn()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def bench(torch, n, reps, warmup):
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    params = [torch.randn(n, device=dev, generator=gen).mul_(0.02)]
    exp_avgs = [torch.zeros(n, device=dev)]
    exp_avg_sqs = [torch.full((n,), 1e-6, device=dev)]
    state_steps = [torch.tensor(10.0, device=dev)]

    def step_with(grads):
        def step():
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], state_steps,
                                lr=1e-4, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8,
                                amsgrad=False, maximize=False, grad_scale=None, found_inf=None)
        return step

    grad32 = torch.randn(n, device=dev, generator=gen)
    grads, grad_dtype, grad_bytes = [grad32.to(torch.bfloat16)], "bf16", 2
    step = step_with(grads)
    try:
        step()
        torch.cuda.synchronize()
    except (RuntimeError, TypeError) as e:  # mixed dtypes refused by this PyTorch
        print(f"  (bf16 gradients with fp32 params refused: {str(e).splitlines()[0]}; using fp32)")
        grads, grad_dtype, grad_bytes = [grad32], "fp32", 4
        step = step_with(grads)
    del grad32
    ms = time_ms(torch, step, reps, warmup)
    bytes_per_elem = 24 + grad_bytes
    elems_per_s = n / (ms * 1e-3)
    gbps = bytes_per_elem * elems_per_s / 1e9
    print(f"  n={n:>11}  grad {grad_dtype}  {bytes_per_elem} B/elem  median {ms:9.3f} ms  "
          f"{gbps:8.1f} GB/s  {elems_per_s / 1e9:8.2f} Gelem/s")
    print(f"RESULT torch_fused_adamw n={n} elems_per_s={elems_per_s:.6e} gbps={gbps:.2f} "
          f"grad_dtype={grad_dtype} bytes_per_elem={bytes_per_elem}")
    del params, exp_avgs, exp_avg_sqs, grads
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default=f"{64 << 20},{256 << 20}", help="element counts, comma separated")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: no torch measurement")
        return 0
    if not torch.cuda.is_available():
        print(f"no CUDA device for PyTorch {torch.__version__}: no torch measurement")
        return 0
    if not hasattr(torch, "_fused_adamw_"):
        print(f"PyTorch {torch.__version__} has no torch._fused_adamw_: no torch measurement")
        return 0
    print(f"PyTorch {torch.__version__}, {torch.cuda.get_device_name()}; "
          f"{args.warmup} warmup + {args.reps} timed runs, median")
    for n in parse_list(args.n):
        bench(torch, n, max(1, args.reps), max(0, args.warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
