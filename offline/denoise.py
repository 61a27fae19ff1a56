"""`asd-offline denoise --bundle DENOISER_DIR IN... [--out DIR]`: run the LSTM mel denoiser offline.

Each IN is one of:
- a noisy log-mel `.npy` (`[frames, n_mels]`, or `[n_mels, frames]` as librosa lays it out; the values the
  bundle's feature computes, dB): writes the denoised `.npy` in the same layout and a PNG of noisy / denoised
  (/ clean, with `--clean FILE.npy` given in the same order as the inputs) spectrograms side by side;
- a noisy `.wav`: writes the denoised `.wav`, audio rebuilt from the denoised mel with librosa's Griffin-Lim, and
  the PNG. The mel keeps no phase, so Griffin-Lim estimates one: expect a metallic, smeared sound even from a
  perfect mel (the `resynthesis_snr_db` of a clean reference shows that ceiling);
- a folder of pairs in the seed's layout (`train|val/{noisy,clean}/<id>/*.wav`): one random pair (`--seed`; from
  `val/` when there is one) written as `*_clean.wav`, `*_noisy.wav`, `*_denoised.wav` and the PNG, with the SNR of
  the noisy and the denoised audio against the clean one.

SNRs here are magnitude-spectrum SNRs, 10 log10(sum |C|^2 / sum (|X| - |C|)^2) over the STFT of the feature's
n_fft and hop: Griffin-Lim's phase is an estimate, so a waveform SNR would measure the phase, not the denoising.
One JSON line per input says what was written.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GRIFFIN_LIM_ITERATIONS = 32


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, metavar="DENOISER_DIR", help="an lstm_denoiser bundle")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IN", help=".npy noisy mel, .wav, or a pairs folder")
    parser.add_argument("--out", type=Path, default=Path("denoised"), metavar="DIR",
                        help="folder for the outputs (default ./denoised)")
    parser.add_argument("--clean", action="append", type=Path, default=[], metavar="NPY",
                        help="clean mel .npy for the PNG, one per .npy input in the same order (optional)")
    parser.add_argument("--seed", type=int, default=0, help="which random pair a pairs folder gives (default 0)")


def run(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle

    bundle = load_bundle(args.bundle, device="cpu")
    if bundle.kind != "denoiser":
        raise ValueError(f"{args.bundle} is a {bundle.kind} bundle ({bundle.name}); `denoise` needs a denoiser "
                         "(asd-offline train --model lstm_denoiser)")
    npys = [p for p in args.inputs if p.suffix.lower() == ".npy"]
    if args.clean and len(args.clean) != len(npys):
        raise ValueError(f"--clean given {len(args.clean)} times for {len(npys)} .npy inputs; give one per .npy")
    clean_for = dict(zip(npys, args.clean))
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for path in args.inputs:
        try:
            if path.is_dir():
                result = denoise_pair_folder(bundle, path, args.out, args.seed)
            elif path.suffix.lower() == ".npy":
                result = denoise_npy(bundle, path, args.out, clean_for.get(path))
            elif path.suffix.lower() == ".wav":
                result = denoise_wav(bundle, path, args.out)
            else:
                raise ValueError("expected a .npy mel, a .wav or a pairs folder")
        except (ValueError, OSError) as exc:
            result, status = {"error": f"{path}: {exc}"}, 2
        print(json.dumps({"input": str(path), **result}))
    return status


# -- the three inputs ---------------------------------------------------------------------------------------------


def denoise_npy(bundle: Any, path: Path, out: Path, clean_path: Path | None) -> dict[str, Any]:
    noisy, transposed = _read_mel(path, bundle)
    denoised = _denoise(bundle, noisy)
    target = out / f"{path.stem}_denoised.npy"
    np.save(target, denoised.T if transposed else denoised)
    panels = {"noisy": noisy, "denoised": denoised}
    result: dict[str, Any] = {"denoised": str(target)}
    if clean_path is not None:
        clean, _ = _read_mel(clean_path, bundle)
        if clean.shape != noisy.shape:
            raise ValueError(f"clean mel {clean_path} has shape {clean.shape}, the noisy one {noisy.shape}")
        panels["clean"] = clean
        result["mse_db2"] = {"noisy": float(np.mean((noisy - clean) ** 2)),
                             "denoised": float(np.mean((denoised - clean) ** 2))}
    result["png"] = str(plot_mels(panels, out / f"{path.stem}_denoised.png", path.name))
    return result


def denoise_wav(bundle: Any, path: Path, out: Path) -> dict[str, Any]:
    import soundfile as sf

    from models.audio import WavReader

    wav = WavReader(path, sample_rate=bundle.sample_rate, resample=True).read()
    noisy = bundle.feature.extract(wav).numpy()
    denoised = _denoise(bundle, noisy)
    target = out / f"{path.stem}_denoised.wav"
    sf.write(target, griffin_lim(bundle.feature, denoised), bundle.sample_rate, subtype="PCM_16")
    png = plot_mels({"noisy": noisy, "denoised": denoised}, out / f"{path.stem}_denoised.png", path.name)
    return {"denoised": str(target), "png": str(png), "phase": "estimated (Griffin-Lim)"}


def denoise_pair_folder(bundle: Any, root: Path, out: Path, seed: int) -> dict[str, Any]:
    import soundfile as sf

    from offline.datasets.pairs import is_pair_folder, read_pair_folder

    if not is_pair_folder(root):
        raise ValueError("not a pairs folder (expected train/noisy and train/clean inside)")
    train, val = read_pair_folder(root, bundle.sample_rate)
    pool = val or train
    pair = pool[int(np.random.default_rng(seed).integers(len(pool)))]
    f = bundle.feature
    noisy_mel, clean_mel = f.extract(pair.noisy).numpy(), f.extract(pair.clean).numpy()
    denoised_mel = _denoise(bundle, noisy_mel)
    stem = pair.name.replace("/", "_").removesuffix(".wav")
    audio = {"clean": pair.clean, "noisy": pair.noisy, "denoised": griffin_lim(f, denoised_mel)}
    written = {}
    for kind, x in audio.items():
        written[kind] = str(out / f"{stem}_{kind}.wav")
        sf.write(written[kind], x, bundle.sample_rate, subtype="PCM_16")
    png = plot_mels({"noisy": noisy_mel, "denoised": denoised_mel, "clean": clean_mel}, out / f"{stem}.png",
                    pair.name)
    snr = {"noisy_snr_db": spectral_snr(pair.clean, pair.noisy, f),
           "denoised_snr_db": spectral_snr(pair.clean, audio["denoised"], f),
           "resynthesis_snr_db": spectral_snr(pair.clean, griffin_lim(f, clean_mel), f)}
    return {"pair": pair.name, **written, "png": str(png), **{k: round(v, 3) for k, v in snr.items()}}


# -- shared pieces ------------------------------------------------------------------------------------------------


def _read_mel(path: Path, bundle: Any) -> tuple[np.ndarray, bool]:
    """A `[frames, n_mels]` float32 mel and whether the file held it transposed."""
    try:
        mel = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"not a plain numeric .npy: {exc}") from None
    n = bundle.detector.dim_
    if mel.ndim != 2 or n not in mel.shape:
        raise ValueError(f"expected a 2-D mel with {n} bands, got shape {mel.shape}")
    transposed = mel.shape[1] != n
    mel = (mel.T if transposed else mel).astype(np.float32)
    if not np.isfinite(mel).all():
        raise ValueError(f"{int((~np.isfinite(mel)).sum())} NaN/inf values")
    return mel, transposed


def _denoise(bundle: Any, mel: np.ndarray) -> np.ndarray:
    import torch

    return bundle.detector.denoise([torch.from_numpy(mel)])[0].numpy()


def griffin_lim(feature: Any, mel_db: np.ndarray) -> np.ndarray:
    """Audio from a log-mel `[frames, n_mels]` of `feature` (dB as `models.features.logmel` computes it): mel power
    -> linear spectrogram (librosa's NNLS inverse of the same filterbank) -> Griffin-Lim phase, `center=False`
    framing like the feature's. Float32 in [-1, 1]."""
    import librosa

    mel = np.maximum(10.0 ** (mel_db.T.astype(np.float64) * feature.power / 20.0), 0.0)
    spec = librosa.feature.inverse.mel_to_stft(mel, sr=feature.sample_rate, n_fft=feature.n_fft, power=feature.power,
                                               fmin=feature.fmin, fmax=feature.fmax)
    y = librosa.griffinlim(spec, n_iter=GRIFFIN_LIM_ITERATIONS, hop_length=feature.hop_length,
                           win_length=feature.n_fft, window="hann", center=False,
                           length=feature.n_fft + (mel.shape[1] - 1) * feature.hop_length, random_state=0)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def spectral_snr(clean: np.ndarray, estimate: np.ndarray, feature: Any) -> float:
    """Magnitude-spectrum SNR in dB of `estimate` against `clean` (see the module docstring); the shorter length."""
    import librosa

    n = min(clean.shape[0], estimate.shape[0])
    kw = {"n_fft": feature.n_fft, "hop_length": feature.hop_length, "center": False}
    c = np.abs(librosa.stft(clean[:n].astype(np.float32), **kw))
    e = np.abs(librosa.stft(estimate[:n].astype(np.float32), **kw))
    return float(10 * np.log10(np.sum(c**2) / max(float(np.sum((e - c) ** 2)), 1e-20)))


def plot_mels(panels: dict[str, np.ndarray], target: Path, title: str) -> Path:
    """Spectrograms side by side on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = min(float(np.percentile(m, 1)) for m in panels.values())
    hi = max(float(m.max()) for m in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), sharey=True)
    for ax, (name, mel) in zip(np.atleast_1d(axes), panels.items()):
        im = ax.imshow(mel.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
        ax.set_title(name)
        ax.set_xlabel("frame")
    np.atleast_1d(axes)[0].set_ylabel("mel band")
    fig.colorbar(im, ax=list(np.atleast_1d(axes)), label="dB")
    fig.suptitle(title, y=1.0)
    fig.savefig(target, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return target
