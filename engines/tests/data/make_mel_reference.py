#!/usr/bin/env python3
"""Generates the Whisper log-mel reference used by engines/tests/stt_mel.rs.

The reference is computed with numpy (float64) straight from the definitions, without
librosa or torch, exactly as openai-whisper's
``log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)`` does:

  audio + 480000 zeros -> reflect-pad 200 on both sides (torch.stft center=True)
  -> frames of 400 every 160, periodic Hann window -> |rfft|^2, dropping the last frame
  -> Slaney mel filter bank (librosa.filters.mel(sr=16000, n_fft=400, n_mels, htk=False,
     norm="slaney"), float32 like librosa's default dtype)
  -> log10(max(x, 1e-10)) -> max(x, x.max() - 8) -> (x + 4) / 4

If librosa happens to be installed, its filter bank is compared with this one and the
maximum difference is printed (it is not needed to generate the files).

Input: the first second of a LibriVox recording (public domain) installed by
scripts/install-models.sh. Outputs, next to this script:

  librivox_1s.wav      the 16000 input samples (16 kHz mono s16), so the test needs no
                       model cache
  mel_reference.bin    little-endian:
                         magic  b"MELREF1\\0"
                         u32    n_samples, n_stored (frames stored in full), n_total (3000),
                                n_configs
                         per config:
                           u32  n_mels
                           f32  silence (the value of frames of pure silence)
                           f32  tail_min, tail_max   over frames n_stored..n_total
                           f64  tail_sum             over frames n_stored..n_total
                           f32  n_mels * n_stored values, row-major (one row per band)

Usage: python3 engines/tests/data/make_mel_reference.py [path/to/clip.wav]
"""

import os
import struct
import sys
import wave

import numpy as np

SR = 16000
N_FFT = 400
HOP = 160
N_SAMPLES = 30 * SR
N_FRAMES = N_SAMPLES // HOP
N_STORED = 104  # the 102 frames that overlap 1 s of audio, plus 2 of pure silence
CLIP_SAMPLES = SR

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLIP = os.path.expanduser(
    "~/.cache/sotad/models/speech/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"
)


def hz_to_mel(f):
    """Slaney mel scale (librosa hz_to_mel, htk=False)."""
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-30) / min_log_hz) / logstep, mels)


def mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filters(n_mels):
    """Triangular filters between Slaney-mel-spaced points, area-normalised (norm="slaney")."""
    fft_freqs = np.arange(N_FFT // 2 + 1, dtype=np.float64) * SR / N_FFT
    mel_pts = np.linspace(hz_to_mel(0.0), hz_to_mel(SR / 2), n_mels + 2)
    hz_pts = mel_to_hz(mel_pts)
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lo, mid, hi = hz_pts[i], hz_pts[i + 1], hz_pts[i + 2]
        lower = (fft_freqs - lo) / (mid - lo)
        upper = (hi - fft_freqs) / (hi - mid)
        weights[i] = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (hi - lo))
    return weights.astype(np.float32)


def log_mel(audio, n_mels):
    """openai-whisper log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES), in float64."""
    x = np.concatenate([audio.astype(np.float64), np.zeros(N_SAMPLES)])
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n_frames = 1 + (len(x) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann
    spec = np.fft.rfft(x[idx] * window, axis=1)  # (frames, 201)
    power = (np.abs(spec) ** 2)[:-1].T  # drop the last frame, like whisper
    mel = mel_filters(n_mels).astype(np.float64) @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def read_wav_s16_mono(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == SR, path
        raw = w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2")


def main():
    clip = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CLIP
    pcm = read_wav_s16_mono(clip)[:CLIP_SAMPLES]
    assert len(pcm) == CLIP_SAMPLES
    audio = pcm.astype(np.float64) / 32768.0

    with wave.open(os.path.join(HERE, "librivox_1s.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.astype("<i2").tobytes())

    configs = [80, 128]
    out = bytearray(b"MELREF1\0")
    out += struct.pack("<4I", CLIP_SAMPLES, N_STORED, N_FRAMES, len(configs))
    for n_mels in configs:
        mel = log_mel(audio, n_mels)[:, :N_FRAMES]
        log_max = mel.max() * 4.0 - 4.0
        silence = (max(-10.0, log_max - 8.0) + 4.0) / 4.0
        tail = mel[:, N_STORED:]
        out += struct.pack("<I", n_mels)
        out += struct.pack("<3f", silence, tail.min(), tail.max())
        out += struct.pack("<d", tail.sum())
        out += mel[:, :N_STORED].astype("<f4").tobytes()
        print(f"n_mels={n_mels}: max={mel.max():.6f} silence={silence:.6f} "
              f"tail min/max={tail.min():.6f}/{tail.max():.6f}")

        try:
            import librosa  # optional cross-check of the filter bank
        except ImportError:
            print("  librosa not installed: filter bank not cross-checked")
        else:
            ref = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=n_mels, htk=False, norm="slaney")
            diff = np.abs(ref - mel_filters(n_mels)).max()
            print(f"  librosa {librosa.__version__} filter bank max abs difference: {diff:.3g}")

    with open(os.path.join(HERE, "mel_reference.bin"), "wb") as f:
        f.write(bytes(out))
    print(f"wrote mel_reference.bin ({len(out)} bytes) and librivox_1s.wav")


if __name__ == "__main__":
    main()
