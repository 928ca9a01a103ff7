"""Pretraining throughput of SpecHi-Net: windows/s for forward and forward+backward, and
peak memory, for every named size.

    python bench/pretrain_throughput.py [--device cpu|cuda] [--batch 4] [--n-times 6000]

Each size runs in a fresh subprocess so that its peak memory (CPU: peak RSS of the
process; CUDA: torch.cuda.max_memory_allocated) is its own. The input is the SPEC §1
pretraining segment (19 channels × 30 s at 200 Hz), spectrally masked as in training;
forward+backward includes the full reconstruction loss and an AdamW step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(size: str, device: str, batch: int, n_chans: int, n_times: int, repeats: int):
    import torch

    from rtmoe.config import Config
    from rtmoe.dsp.masking import spectral_mask
    from rtmoe.models.registry import build_model
    from rtmoe.offline.pretrain import reconstruction_loss

    cfg = Config()
    dev = torch.device(device)
    model = build_model(size).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain.lr)
    x = torch.randn(batch, n_chans, n_times, device=dev) * 0.2
    gen = torch.Generator(device=dev).manual_seed(0)
    x_masked, _ = spectral_mask(x, 200.0, cfg.spectral, cfg.mask, gen)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        fn()  # warm-up
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return batch / statistics.median(times)

    def forward():
        with torch.no_grad(), autocast:
            model(x_masked)

    def train_step():
        with autocast:
            loss, _ = reconstruction_loss(model(x_masked), x, cfg.pretrain)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.eval()
    fwd = timed(forward)
    model.train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd_bwd = timed(train_step)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "size": size,
        "params_m": n_params / 1e6,
        "forward_win_s": fwd,
        "train_win_s": fwd_bwd,
        "peak_mb": peak_mb,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--n-chans", type=int, default=19)
    parser.add_argument("--n-times", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = measure(args.one, args.device, args.batch, args.n_chans, args.n_times, args.repeats)
        print(json.dumps(row))
        return 0
    rows = []
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", size, *_forward_args(args)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"device={rows[0]['device']} threads={rows[0]['threads']} batch={args.batch} "
        f"input={args.n_chans}x{args.n_times} (median of {args.repeats})"
    )
    print(f"{'size':<6} {'params':>8} {'fwd win/s':>10} {'fwd+bwd win/s':>14} {'peak MB':>8}")
    for r in rows:
        print(
            f"{r['size']:<6} {r['params_m']:>7.2f}M {r['forward_win_s']:>10.1f} "
            f"{r['train_win_s']:>14.1f} {r['peak_mb']:>8.0f}"
        )
    return 0


def _forward_args(args: argparse.Namespace) -> list[str]:
    return [
        "--device", args.device, "--batch", str(args.batch), "--n-chans", str(args.n_chans),
        "--n-times", str(args.n_times), "--repeats", str(args.repeats),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
