#!/usr/bin/env python3
"""The wake word confusion corpus for `cargo bench -p sotad-benches --bench wake -- confusion`.

Setup:  scripts/install-models.sh; scripts/bench-peers.sh wake (numpy, in /tmp/venv-wake);
        cargo build --release -p sotad (Piper through `sotad say`); espeak-ng and sox.
Run:    /tmp/venv-wake/bin/python scripts/wake_corpus.py [--out DIR] [--sotad PATH]
        (default DIR ~/.cache/sotad/bench-wake; a few minutes; nothing to commit)

Deterministic from SEED (espeak-ng and the mixing; Piper's noise is sotad's own seeded
generator). Writes 16 kHz mono 16-bit WAV files and DIR/manifest.tsv, one line per file:

    path  kind  label  snr  description

- kind `pos`, label the model (okay_nabu, hey_jarvis, hey_mycroft, alexa): the phrase alone
  or in a carrier sentence, by Piper (en_US-joe-medium at several length and noise scales)
  and by espeak-ng (several voices and variants, speeds 120-210 wpm, pitches 20-80), with
  0.4-1.0 s of silence before and 1.2 s after; each base clip three times: clean, and with
  noise (white, pink, brown, or babble from the LibriVox clips, in turn) at 20 dB and 10 dB
  SNR (speech power over the synthesized clip).
- kind `neg`, label the group: `real` (the speech sets' recordings), `recording` (10 minutes
  built like engines/tests/stt_long.rs: the LibriVox clips cycled with pauses and faint
  noise), `espeak` and `piper` (sentences without any of the four wake words, 60 s per file,
  clean / 20 dB / 10 dB in turn), `nearmiss` (phrases close to the wake words: "hey Travis",
  "okay, banana", "Alexander", "hey my crow" ...), `noise` (white, pink, brown, babble).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np

SEED = 23
VERSION = "1"
RATE = 16000
MODELS = os.environ.get("SOTAD_MODELS_DIR", os.path.expanduser("~/.cache/sotad/models"))
LIBRIVOX = os.path.join(MODELS, "speech", "librivox")

# The phrase as written for the synthesizers (espeak-ng reads "Mycroft" as "Mick-roft").
PHRASES = {
    "okay_nabu": ["Okay Nabu", "OK Nabu"],
    "hey_jarvis": ["Hey Jarvis"],
    "hey_mycroft": ["Hey My-croft"],
    "alexa": ["Alexa"],
}
CARRIERS = [
    "{w}.",
    "{w}!",
    "{w}?",
    "{w}, turn on the light.",
    "{w}, what time is it?",
    "{w}, what's the weather like tomorrow?",
    "{w}, set a timer for ten minutes.",
    "{w}, play some music in the kitchen.",
    "{w}, how tall is Mount Everest?",
    "{w}, turn off the TV.",
    "{w}, remind me to call my mother.",
    "{w}, stop.",
]
NEAR_MISSES = {
    "okay_nabu": ["Okay, banana.", "Okay, no boo.", "Okay Google.", "Okay, Nadia.",
                  "Okay, Nadal won.", "OK, nab you later."],
    "hey_jarvis": ["Hey Travis.", "Hey Harvey.", "Hey Marvin.", "Hey, carve this.",
                   "Hey, Jarvie.", "Hey, are this yours?"],
    "hey_mycroft": ["Hey my crow.", "Hey Microsoft.", "Hey Mike.", "Hey, my craft.",
                    "Hey microwave.", "Hey, my car is off."],
    "alexa": ["Alexander.", "Alexis.", "A lexicon.", "Alaska.", "Elect her.", "Electra."],
}
NEAR_CARRIERS = ["{w}", "{w} Turn on the light.", "{w} What time is it?",
                 "I said {w}", "{w} Play some music."]
ESPEAK_VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029",
                 "en-gb-x-gbcwmd", "en-us", "en-gb"]
ESPEAK_VARIANTS = ["", "+m1", "+m3", "+m7", "+f1", "+f2", "+f3", "+f4", "+croak", "+klatt"]
PIPER_SETTINGS = [(ls, ns) for ls in (0.8, 0.9, 1.0, 1.15, 1.3) for ns in (0.333, 0.667, 0.9)]
WORDS = ["okay_nabu", "hey_jarvis", "hey_mycroft", "alexa"]
ESPEAK_PER_WORD = 96
PIPER_PER_WORD = 24
NOISES = ["white", "pink", "brown", "babble"]

# Sentence parts for negatives: commands and conversation without any wake word.
SUBJECTS = ["The children", "My neighbour", "Our teacher", "The old man", "Everybody",
            "The driver", "My sister", "The doctor", "A friend of mine", "The team",
            "Nobody", "The cat", "Your brother", "The manager", "We", "They"]
VERBS = ["walked to", "talked about", "looked at", "forgot", "painted", "visited",
         "cleaned", "found", "left", "waited for", "opened", "fixed", "bought",
         "remembered", "photographed", "closed"]
OBJECTS = ["the garden", "the red car", "the station", "a small window", "the kitchen door",
           "the market", "the blue bicycle", "an old letter", "the river", "the library",
           "the long table", "the computer", "a cup of tea", "the school", "the bridge",
           "the office"]
TAILS = ["yesterday", "this morning", "after lunch", "last week", "before the rain",
         "on Sunday", "in the evening", "without a word", "again", "twice", "at night",
         "early", "together", "on the way home", "during the storm", "for an hour"]
COMMANDS = ["Turn on the light in the living room.", "What is the weather tomorrow?",
            "Set a timer for five minutes.", "Play some jazz.", "Turn the volume down.",
            "What time is it in Tokyo?", "Add milk to the shopping list.",
            "Switch off the heating.", "How far is the moon?", "Tell me a joke.",
            "Open the garage door.", "Close the blinds in the bedroom.",
            "What is twelve times eight?", "Call my brother.", "Read me the news.",
            "Stop the music.", "Next song please.", "Is it going to rain today?",
            "Wake me up at seven.", "How do you make pancakes?"]
CHAT = ["I think we should leave a little earlier tomorrow.",
        "Did you see the game last night? It was incredible.",
        "Can you pass me the salt, please?",
        "The train was late again, so I missed the meeting.",
        "Let's have pasta for dinner tonight.",
        "I don't remember where I put my keys.",
        "She said the package would arrive on Thursday.",
        "Honestly, I prefer the blue one.",
        "We need to buy more coffee before the weekend.",
        "He has been working in the garden all afternoon.",
        "Hey, how are you doing today?", "Okay, that sounds good to me.",
        "Hey there, long time no see.", "Okay, let's go.",
        "My mother called this morning about the holidays.",
        "The weather is lovely, let's go for a walk.",
        "Could you turn that down a little?", "Thanks, that was really helpful.",
        "I'll be home around six, maybe a bit later.",
        "What did the doctor say about your knee?"]
BANNED = re.compile(r"\b(nabu|jarvis|mycroft|my-croft|alexa)\b")


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768


def read_raw(path):
    return np.fromfile(path, dtype="<i2").astype(np.float64) / 32768


def write_wav(path, x):
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def to_16k(src, tmp):
    dst = os.path.join(tmp, "16k.wav")
    subprocess.run(["sox", "-D", "-v", "0.7", src, "-r", str(RATE), "-b", "16", "-c", "1", dst], check=True)
    return read_wav(dst)


def espeak(text, voice, speed, pitch, tmp):
    out = os.path.join(tmp, "espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", out, text],
                   check=True)
    return to_16k(out, tmp)


class Piper:
    """`sotad say` with the installed voice, its length and noise scales set in a copy of
    its .onnx.json."""

    def __init__(self, sotad, tmp):
        self.sotad, self.tmp = sotad, tmp
        self.onnx = os.path.join(MODELS, "piper", "en_US-joe-medium.onnx")
        with open(self.onnx + ".json", encoding="utf-8") as f:
            import json
            self.config = json.load(f)

    def say(self, text, length_scale, noise_scale):
        import json
        d = os.path.join(self.tmp, f"piper-{length_scale}-{noise_scale}")
        onnx = os.path.join(d, "voice.onnx")
        if not os.path.exists(onnx):
            os.makedirs(d, exist_ok=True)
            os.symlink(self.onnx, onnx)
            c = json.loads(json.dumps(self.config))
            c.setdefault("inference", {})
            c["inference"]["length_scale"] = length_scale
            c["inference"]["noise_scale"] = noise_scale
            with open(onnx + ".json", "w", encoding="utf-8") as f:
                json.dump(c, f)
        out = os.path.join(self.tmp, "piper.wav")
        subprocess.run([self.sotad, "say", "-m", onnx, "-o", out, text], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return to_16k(out, self.tmp)


def noise(kind, n, rng, babble):
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1
        spec /= np.sqrt(f) if kind == "pink" else f
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    else:  # babble: three LibriVox talkers at random offsets
        x = np.zeros(n)
        for _ in range(3):
            start = rng.integers(0, len(babble))
            x += np.roll(babble, -start)[np.arange(n) % len(babble)]
    return x / np.sqrt(np.mean(x ** 2))


def mix(speech_power, x, kind, snr, rng, babble):
    if snr is None:
        return x
    n = noise(kind, len(x), rng, babble) * np.sqrt(speech_power / 10 ** (snr / 10))
    y = x + n
    peak = np.max(np.abs(y))
    return y * (0.95 / peak) if peak > 0.95 else y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/sotad/bench-wake"))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target"))
    ap.add_argument("--sotad", default=os.path.join(target, "release", "sotad"))
    args = ap.parse_args()
    out = args.out
    stamp = os.path.join(out, "VERSION")
    if os.path.exists(stamp) and open(stamp).read().strip() == f"{VERSION} {SEED}":
        print(f"{out}: up to date")
        return
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "pos"))
    os.makedirs(os.path.join(out, "neg"))
    tmp = tempfile.mkdtemp(prefix="sotad-wake-corpus-")
    rng = np.random.default_rng(SEED)
    piper = Piper(args.sotad, tmp)
    clips = sorted(f for f in os.listdir(LIBRIVOX) if f.endswith(".wav"))
    librivox = [read_wav(os.path.join(LIBRIVOX, f)) for f in clips]
    babble = np.concatenate(librivox)
    manifest = []

    def espeak_random(text):
        voice = ESPEAK_VOICES[rng.integers(len(ESPEAK_VOICES))] + \
            ESPEAK_VARIANTS[rng.integers(len(ESPEAK_VARIANTS))]
        speed, pitch = int(rng.integers(120, 211)), int(rng.integers(20, 81))
        return espeak(text, voice, speed, pitch, tmp), f"espeak-ng {voice} -s {speed} -p {pitch}"

    # Positives.
    for word in WORDS:
        n = 0
        for i in range(ESPEAK_PER_WORD + PIPER_PER_WORD):
            phrase = PHRASES[word][i % len(PHRASES[word])]
            text = CARRIERS[rng.integers(len(CARRIERS))].format(w=phrase)
            if i < ESPEAK_PER_WORD:
                x, desc = espeak_random(text)
            else:
                ls, ns = PIPER_SETTINGS[(i - ESPEAK_PER_WORD) % len(PIPER_SETTINGS)]
                x, desc = piper.say(text, ls, ns), f"piper joe-medium length {ls} noise {ns}"
            x = x / np.max(np.abs(x)) * 10 ** (rng.uniform(-20, -3) / 20)
            power = np.mean(x ** 2)
            lead = int(rng.uniform(0.4, 1.0) * RATE)
            x = np.concatenate([np.zeros(lead), x, np.zeros(int(1.2 * RATE))])
            kind = NOISES[i % len(NOISES)]
            for snr in (None, 20, 10):
                name = f"pos/{word}-{i:03}-{'clean' if snr is None else f'{snr}db'}.wav"
                write_wav(os.path.join(out, name), mix(power, x, kind, snr, rng, babble))
                label = "clean" if snr is None else str(snr)
                noise_desc = "" if snr is None else f", {kind} noise"
                manifest.append((name, "pos", word, label, f"{desc}: {text}{noise_desc}"))
                n += 1
        print(f"{word}: {n} positives", flush=True)

    # Negatives: the speech sets' recordings.
    real = [(f"librivox/{f}", x) for f, x in zip(clips, librivox)]
    for i in range(1, 6):
        real.append((f"cards/00{i}.wav", read_wav(os.path.join(MODELS, "speech", "cards", f"00{i}.wav"))))
    for f in ("goforward.raw", "numbers.raw", "something.raw"):
        real.append((f, read_raw(os.path.join(MODELS, "speech", f))))
    for j, (src, x) in enumerate(real):
        name = f"neg/real-{j:02}.wav"
        write_wav(os.path.join(out, name), np.concatenate([np.zeros(RATE // 2), x, np.zeros(RATE)]))
        manifest.append((name, "neg", "real", "clean", src))
    # The 10-minute recording (as engines/tests/stt_long.rs builds it), in 60 s files.
    gaps = [1.0, 2.5, 4.0, 0.7, 6.0, 3.0]
    audio, i = [], 0
    while sum(len(a) for a in audio) < 600 * RATE:
        audio.append(librivox[i % len(librivox)])
        audio.append(rng.random(int(gaps[i % len(gaps)] * RATE)) * 2e-4)
        if i == 30:
            audio.append(rng.random(40 * RATE) * 2e-4)
        i += 1
    audio = np.concatenate(audio)
    for j in range(0, len(audio), 60 * RATE):
        name = f"neg/recording-{j // (60 * RATE):02}.wav"
        write_wav(os.path.join(out, name), audio[j:j + 60 * RATE])
        manifest.append((name, "neg", "recording", "clean", "LibriVox clips cycled with pauses"))

    def sentence():
        r = rng.random()
        if r < 0.45:
            return " ".join([SUBJECTS[rng.integers(len(SUBJECTS))], VERBS[rng.integers(len(VERBS))],
                             OBJECTS[rng.integers(len(OBJECTS))], TAILS[rng.integers(len(TAILS))]]) + "."
        if r < 0.75:
            return COMMANDS[rng.integers(len(COMMANDS))]
        return CHAT[rng.integers(len(CHAT))]

    def long_file(group, j, seconds, make, snr):
        parts, texts, n = [np.zeros(RATE // 2)], [], 0
        speech = []
        while n < seconds * RATE:
            text = make()
            assert not BANNED.search(text.lower()), text
            x, desc = synth(text)
            x = x / np.max(np.abs(x)) * 10 ** (rng.uniform(-20, -3) / 20)
            speech.append(x)
            parts += [x, np.zeros(int(rng.uniform(0.3, 2.0) * RATE))]
            texts.append(text)
            n = sum(len(p) for p in parts)
        y = np.concatenate(parts)
        power = np.mean(np.concatenate(speech) ** 2)
        kind = NOISES[j % len(NOISES)]
        y = mix(power, y, kind, snr, rng, babble)
        name = f"neg/{group}-{j:02}.wav"
        write_wav(os.path.join(out, name), y)
        label = "clean" if snr is None else str(snr)
        noise_desc = "" if snr is None else f"{kind} noise; "
        manifest.append((name, "neg", group, label, f"{noise_desc}{len(texts)} sentences"))

    snrs = [None, 20, 10]
    synth = espeak_random
    for j in range(45):
        long_file("espeak", j, 60, sentence, snrs[j % 3])
    # Near misses, every word's, by espeak-ng and by Piper.
    near = [c.format(w=m) for ms in NEAR_MISSES.values() for m in ms for c in NEAR_CARRIERS]
    order = list(rng.permutation(len(near)))

    def near_miss():
        if not order:
            order.extend(rng.permutation(len(near)))
        return near[order.pop()]

    for j in range(6):
        long_file("nearmiss", j, 60, near_miss, snrs[j % 3])
    k = [0]

    def piper_random(text):
        ls, ns = PIPER_SETTINGS[k[0] % len(PIPER_SETTINGS)]
        k[0] += 1
        return piper.say(text, ls, ns), "piper"

    synth = piper_random
    for j in range(3):
        long_file("piper", j, 60, sentence, snrs[j % 3])
    for j in range(3, 6):
        long_file("nearmiss", j + 3, 60, near_miss, snrs[j % 3])
    # Noise alone, at several levels.
    for j, kind in enumerate(NOISES):
        x = noise(kind, 60 * RATE, rng, babble) * 10 ** (rng.uniform(-40, -15) / 20)
        name = f"neg/noise-{j:02}.wav"
        write_wav(os.path.join(out, name), x)
        manifest.append((name, "neg", "noise", "-", f"{kind} noise"))

    with open(os.path.join(out, "manifest.tsv"), "w", encoding="utf-8") as f:
        f.write("# path\tkind\tlabel\tsnr\tdescription (scripts/wake_corpus.py)\n")
        for row in manifest:
            f.write("\t".join(row) + "\n")
    with open(stamp, "w") as f:
        f.write(f"{VERSION} {SEED}\n")
    shutil.rmtree(tmp)
    hours = sum(os.path.getsize(os.path.join(out, r[0])) - 44 for r in manifest if r[1] == "neg") / 2 / RATE / 3600
    print(f"{out}: {len(manifest)} files, negatives {hours:.2f} h")


if __name__ == "__main__":
    sys.exit(main())
