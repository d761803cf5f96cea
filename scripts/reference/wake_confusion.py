#!/usr/bin/env python3
"""The reference side of `cargo bench -p sotad-benches --bench wake -- confusion`.

pymicro-wakeword 2.5.0 (pymicro-features' MicroFrontend and TensorFlow Lite's C library), in
/tmp/venv-wake (scripts/bench-peers.sh wake). The bench starts it as

    /tmp/venv-wake/bin/python scripts/reference/wake_confusion.py JOBS CHUNK PAUSE

JOBS: a file of lines `settings.json<TAB>file.wav`, in order. Each WAV file (16 kHz mono
16-bit) is fed from a fresh detector in CHUNK-sample chunks, as the microphone delivers them.
The reference's own rule, with the model's .json settings: `process_streaming` is true at every
step where the mean of the last `sliding_window_size` probabilities exceeds
`probability_cutoff`. A detection is the first step of such a run (what a driver reports once);
then, as sotad's voice loop does (the wake word's listening window, daemon/src/voice/wake.rs
WAKE_LISTEN), the next PAUSE chunks are not fed, and the detector starts afresh (features and
model state reset) on the chunk after them.

Prints one line per job: `detections<TAB>max_mean`, where detections is a comma-separated list
of `end_sample:mean` (end_sample: the end of the detecting feature frame in the file's samples),
or `-`.
"""
import sys
import wave

from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures


def run(mww, pcm, chunk, pause):
    features = MicroWakeWordFeatures()
    mww.reset()
    detections, best = [], 0.0
    start, frame, above = 0, 0, False  # start: the sample where the fresh detector began
    c, n = 0, len(pcm) // 2
    while c * chunk < n:
        data = pcm[c * chunk * 2:(c + 1) * chunk * 2]
        found = None
        for f in features.process_streaming(data):
            hit = mww.process_streaming(f)
            if not mww._features:  # a step ran on this frame
                if len(mww._probabilities) == mww.sliding_window_size:
                    mean = sum(mww._probabilities) / len(mww._probabilities)
                    best = max(best, mean)
                    if hit and not above and found is None:
                        found = (start + 480 + 160 * frame, mean)
                above = bool(hit)
            frame += 1
        if found is not None:
            detections.append(found)
            c += 1 + pause
            start = c * chunk
            frame, above = 0, False
            features.reset()
            mww.reset()
            continue
        c += 1
    return detections, best


def main():
    jobs, chunk, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    loaded = {}
    out = sys.stdout
    for line in open(jobs, encoding="utf-8"):
        settings, path = line.rstrip("\n").split("\t")
        if settings not in loaded:
            for m in loaded.values():
                m.close()
            loaded = {settings: MicroWakeWord.from_config(settings)}
        with wave.open(path, "rb") as w:
            assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            pcm = w.readframes(w.getnframes())
        detections, best = run(loaded[settings], pcm, chunk, pause)
        text = ",".join(f"{s}:{m:.6f}" for s, m in detections) or "-"
        out.write(f"{text}\t{best:.6f}\n")
        out.flush()


if __name__ == "__main__":
    main()
