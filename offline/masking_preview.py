"""``rtmoe mask-preview``: draw one development trial before and after spectral masking."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from rtmoe.cli import Command, UserError
from rtmoe.config import add_config_arguments, config_from_args
from rtmoe.dsp.masking import KINDS, TF, TIME, MaskDraw, spectral_mask
from rtmoe.dsp.spectral import stft, stft_freqs, stft_params
from rtmoe.offline import commands as offline_commands
from rtmoe.offline.corpus.devdata import DEV_DATASETS, load_dev_split
from rtmoe.signal import preprocess_trials


def plot_mask_preview(
    x: torch.Tensor,
    x_masked: torch.Tensor,
    draw: MaskDraw,
    sfreq: float,
    n_fft: int,
    hop: int,
    path: str | Path,
    sample: int = 0,
    chan: int = 0,
    title: str = "",
) -> Path:
    """Draw one channel of one sample: waveforms, |STFT| before and after, and the mask.

    Parameters
    ----------
    x, x_masked : Tensor, shape (batch, n_chans, n_times)
        Input and masked input, in model units.
    draw : MaskDraw
        The masks (batch, n_bins, n_frames) and their components; centres are marked on
        the mask (frequency: horizontal line, time: vertical line, time-frequency: cross).
    sfreq : float
        Sampling rate in Hz.
    n_fft, hop : int
        The STFT the masks were drawn for.
    path : str or Path
        PNG to write (parent folders are created).
    sample, chan : int
        Which sample and channel to draw.
    title : str
        Figure title.

    Returns
    -------
    Path
        The PNG written.
    """
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    before = x[sample, chan].detach().cpu().float()
    after = x_masked[sample, chan].detach().cpu().float()
    mask = draw.masks[sample].detach().cpu().numpy()
    n_times = before.shape[-1]
    n_frames = mask.shape[1]
    freqs = stft_freqs(n_fft, sfreq).numpy()
    # Frames are centred on t · hop; each image cell spans one hop and one bin.
    extent = (
        -hop / 2 / sfreq,
        (n_frames - 0.5) * hop / sfreq,
        freqs[0] - sfreq / n_fft / 2,
        freqs[-1] + sfreq / n_fft / 2,
    )
    floor = 1e-6
    magnitudes = [20 * np.log10(stft(v, n_fft, hop).abs().numpy() + floor) for v in (before, after)]
    vmax = magnitudes[0].max()
    vmin = vmax - 80

    fig = Figure(figsize=(10, 11), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    times = np.arange(n_times) / sfreq
    axes[0].plot(times, before.numpy(), lw=0.7, label="input")
    axes[0].plot(times, after.numpy(), lw=0.7, label="masked")
    axes[0].set_ylabel("amplitude (100 µV)")
    axes[0].legend(loc="upper right")
    panels = (
        (magnitudes[0], "|STFT| input (dB)", "viridis", vmin, vmax),
        (mask, "mask M (retained share)", "gray", 0.0, 1.0),
        (magnitudes[1], "|STFT| masked (dB)", "viridis", vmin, vmax),
    )
    for ax, (image, label, cmap, low, high) in zip(axes[1:], panels, strict=True):
        shown = ax.imshow(
            image,
            origin="lower",
            aspect="auto",
            interpolation="nearest",  # one cell per bin and frame, as the mask acts
            extent=extent,
            cmap=cmap,
            vmin=low,
            vmax=high,
        )
        fig.colorbar(shown, ax=ax, label=label)
        ax.set_ylabel("frequency (Hz)")

    mine = draw.sample == sample
    bin_hz = sfreq / n_fft
    for kind, f0, t0 in zip(draw.kind[mine], draw.f0_bins[mine], draw.t0_frames[mine], strict=True):
        f_hz, t_s = f0.item() * bin_hz, t0.item() * hop / sfreq
        if kind == TIME:
            axes[2].axvline(t_s, color="tab:red", ls="--", lw=1)
        elif kind == TF:
            axes[2].plot(t_s, f_hz, "x", color="tab:red", ms=9, mew=2)
        else:
            axes[2].axhline(f_hz, color="tab:red", ls="--", lw=1)
    axes[-1].set_xlabel("time (s)")
    counts = ", ".join(
        f"{int((draw.kind[mine] == k).sum())} {name}" for k, name in enumerate(KINDS)
    )
    masked_share = 1 - float(mask.mean())
    fig.suptitle(f"{title}\n{counts}; masked share {masked_share:.2f}".strip())
    fig.savefig(path, dpi=100)
    return path


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DEV_DATASETS, default="SelfRegulationSCP1")
    parser.add_argument("--index", type=int, default=0, help="trial of the train split")
    parser.add_argument("--chan", type=int, default=0, help="channel to draw")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask draw")
    parser.add_argument("--out", type=Path, default=Path("mask-preview.png"), metavar="PNG")
    add_config_arguments(parser, sections=("signal", "spectral", "mask"))


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    trials = load_dev_split(args.dataset, "train")
    n_trials, n_chans, _ = trials.X.shape
    if not 0 <= args.index < n_trials:
        raise UserError(f"--index={args.index} is out of range; {args.dataset} has {n_trials}")
    if not 0 <= args.chan < n_chans:
        raise UserError(f"--chan={args.chan} is out of range; {args.dataset} has {n_chans}")
    sfreq = cfg.signal.sfreq
    x = torch.from_numpy(preprocess_trials(trials.X[args.index], trials.sfreq, cfg.signal))[None]
    generator = torch.Generator().manual_seed(args.seed)
    x_masked, draw = spectral_mask(x, sfreq, cfg.spectral, cfg.mask, generator)
    n_fft, hop = stft_params(x.shape[-1], sfreq, cfg.spectral)
    title = (
        f"{args.dataset} train trial {args.index} (label {trials.y[args.index]}), "
        f"channel {trials.ch_names[args.chan]}, {trials.sfreq:g} -> {sfreq:g} Hz, "
        f"n_fft {n_fft}, hop {hop}, seed {args.seed}"
    )
    path = plot_mask_preview(
        x, x_masked, draw, sfreq, n_fft, hop, args.out, chan=args.chan, title=title
    )
    n_bins, n_frames = draw.masks.shape[1:]
    print(
        f"{path}: {n_bins} bins x {n_frames} frames, {len(draw.kind)} components, "
        f"masked share {1 - draw.masks.mean().item():.3f}"
    )
    return 0


command = Command(
    help=offline_commands.mask_preview.help,  # the entry-point stub's line
    add_arguments=_add_arguments,
    run=_run,
)
