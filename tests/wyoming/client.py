#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Drives sotad's Wyoming server with the official `wyoming` package (and `zeroconf`), as
Home Assistant does; tests/tests/wyoming.rs runs it and checks the JSON it prints.

    client.py HOST PORT describe
    client.py HOST PORT ping TEXT
    client.py HOST PORT transcribe WAV [LANGUAGE]
    client.py HOST PORT synthesize TEXT OUT_WAV
    client.py HOST PORT synthesize-stream OUT_WAV FIRST_CHUNK REST_CHUNK...
    client.py HOST PORT detect WAV NAME [SILENCE_S]
    client.py - - zeroconf INSTANCE_NAME TIMEOUT_S

Each prints one JSON object: the events received (types, in order) and what they said.
"""

import asyncio
import json
import sys
import time
import wave

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from wyoming.ping import Ping
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
)
from wyoming.wake import Detect

TIMEOUT = 120.0


async def read(client):
    event = await asyncio.wait_for(client.read_event(), TIMEOUT)
    if event is None:
        raise SystemExit(json.dumps({"error": "connection closed"}))
    return event


def wav_chunks(path, samples_per_chunk=1024):
    with wave.open(path, "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    step = samples_per_chunk * width * channels
    chunks = [frames[i : i + step] for i in range(0, len(frames), step)]
    return rate, width, channels, chunks


async def describe(client):
    await client.write_event(Describe().event())
    event = await read(client)
    info = Info.from_event(event)  # the package's own parser must accept it
    return {"type": event.type, "data": event.data, "asr": len(info.asr), "tts": len(info.tts)}


async def ping(client, text):
    await client.write_event(Ping(text=text).event())
    event = await read(client)
    return {"type": event.type, "data": event.data}


async def transcribe(client, path, language=None):
    rate, width, channels, chunks = wav_chunks(path)
    await client.write_event(Transcribe(language=language).event())
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    for c in chunks:
        await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=c).event())
    await client.write_event(AudioStop().event())
    types, text, chunks_text = [], None, []
    while True:
        event = await read(client)
        types.append(event.type)
        if event.type == "transcript-chunk":
            chunks_text.append(event.data["text"])
        if Transcript.is_type(event.type):
            text = Transcript.from_event(event).text
        if event.type in ("transcript-stop", "error"):
            return {"types": types, "text": text, "chunks": chunks_text, "data": event.data}


def write_wav(path, rate, width, channels, audio):
    with wave.open(path, "wb") as w:
        w.setframerate(rate)
        w.setsampwidth(width)
        w.setnchannels(channels)
        w.writeframes(audio)


async def collect_audio(client, until):
    """Reads events until one of type `until`; returns (types, rate, width, channels, audio)."""
    types, fmt, audio = [], None, bytearray()
    while True:
        event = await read(client)
        types.append(event.type)
        if AudioStart.is_type(event.type):
            s = AudioStart.from_event(event)
            fmt = (s.rate, s.width, s.channels)
        elif AudioChunk.is_type(event.type):
            audio += AudioChunk.from_event(event).audio
        if event.type == until or event.type == "error":
            return types, fmt, bytes(audio), event


async def synthesize(client, text, out):
    await client.write_event(Synthesize(text=text).event())
    types, fmt, audio, last = await collect_audio(client, "audio-stop")
    if fmt:
        write_wav(out, *fmt, audio)
    return {"types": types, "format": fmt, "bytes": len(audio), "last": last.data}


async def synthesize_stream(client, out, first, rest):
    """Sends the first text chunk, waits for audio, then the rest: audio before the text ends."""
    await client.write_event(SynthesizeStart().event())
    await client.write_event(SynthesizeChunk(text=first).event())
    started = time.monotonic()
    # The first sentence's audio must come before any more text is sent.
    event = await read(client)
    first_event = event.type
    audio_before_end = AudioStart.is_type(event.type)
    types, fmt, audio = [event.type], None, bytearray()
    if audio_before_end:
        s = AudioStart.from_event(event)
        fmt = (s.rate, s.width, s.channels)
    first_audio_s = time.monotonic() - started
    for r in rest:
        await client.write_event(SynthesizeChunk(text=r).event())
    # For older servers, as Home Assistant does; a streaming server ignores it.
    await client.write_event(Synthesize(text=first + "".join(rest)).event())
    await client.write_event(SynthesizeStop().event())
    more, fmt2, audio2, last = await collect_audio(client, "synthesize-stopped")
    types += more
    fmt = fmt or fmt2
    if fmt:
        write_wav(out, *fmt, audio2)
    return {
        "types": types,
        "first_event": first_event,
        "audio_before_text_end": audio_before_end,
        "first_audio_s": first_audio_s,
        "bytes": len(audio2),
        "last": last.data,
    }


async def detect(client, path, name, silence_s=0.5):
    rate, width, channels, chunks = wav_chunks(path)
    pad = bytes(int(rate * silence_s) * width * channels)
    chunks = [pad] + chunks + [pad]
    await client.write_event(Detect(names=[name]).event())
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    for c in chunks:
        await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=c).event())
    await client.write_event(AudioStop().event())
    types, detections = [], []
    while True:
        try:
            event = await asyncio.wait_for(client.read_event(), 5.0)
        except asyncio.TimeoutError:
            break
        if event is None:
            break
        types.append(event.type)
        if event.type == "detection":
            detections.append(event.data)
        if event.type in ("not-detected", "error"):
            break
        if event.type == "detection":
            # Nothing follows a detection unless the stream goes on: a short wait suffices.
            continue
    return {"types": types, "detections": detections}


def zeroconf_resolve(name, timeout_s):
    from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

    service_type = "_wyoming._tcp.local."
    found = {}
    # IPv4: the test network's loopback of multicast (Home Assistant's own default is IPv4 too).
    zc = Zeroconf(ip_version=IPVersion.V4Only)

    seen = set()

    def on_change(zeroconf, service_type, name, state_change):
        # Resolving inside the handler would block the browser's thread: only note the name.
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            seen.add(name)

    browser = ServiceBrowser(zc, service_type, handlers=[on_change])
    want = f"{name}.{service_type}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and want not in seen:
        time.sleep(0.1)
    browser.cancel()
    if want in seen:
        info = zc.get_service_info(service_type, want, timeout=3000)
        if info:
            found[want] = {
                "port": info.port,
                "addresses": info.parsed_addresses(),
                "server": info.server,
            }
    zc.close()
    return {"want": want, "found": found}


async def main():
    host, port, cmd, *args = sys.argv[1:]
    async with AsyncTcpClient(host, int(port)) as client:
        if cmd == "describe":
            result = await describe(client)
        elif cmd == "ping":
            result = await ping(client, args[0])
        elif cmd == "transcribe":
            result = await transcribe(client, args[0], args[1] if len(args) > 1 else None)
        elif cmd == "synthesize":
            result = await synthesize(client, args[0], args[1])
        elif cmd == "synthesize-stream":
            result = await synthesize_stream(client, args[0], args[1], args[2:])
        elif cmd == "detect":
            result = await detect(client, args[0], args[1], float(args[2]) if len(args) > 2 else 0.5)
        else:
            raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[3] == "zeroconf":
        # Outside asyncio: the synchronous zeroconf API must not run inside an event loop.
        print(json.dumps(zeroconf_resolve(sys.argv[4], float(sys.argv[5]))))
    else:
        asyncio.run(main())
