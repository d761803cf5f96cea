#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""The official `openai` Python client against sotad's HTTP API (tests/tests/http.rs).

Usage: openai_client.py BASE_URL API_KEY WAV
Prints one JSON object with what each call returned; the Rust test asserts on it. A call that
raises is reported under its name, not fatal, so the test sees every result.
"""
import json
import sys

import openai

base_url, api_key, wav_path = sys.argv[1:4]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
out = {"openai_version": openai.__version__}


def record(name, fn):
    try:
        out[name] = fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        out[name] = {"status": e.status_code, "error": body}
    except Exception as e:  # noqa: BLE001 - reported to the Rust test
        out[name] = {"exception": repr(e)}


models = {}


def list_models():
    ids = [m.id for m in client.models.list().data]
    for i in ids:
        if "whisper" in i:
            models["stt"] = i
        elif "joe" in i:
            models["tts"] = i
        else:
            models["llm"] = i
    return ids


record("models", list_models)
messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def chat():
    r = client.chat.completions.create(
        model=models["llm"], messages=messages, max_tokens=12, temperature=0, seed=1
    )
    c = r.choices[0]
    return {
        "text": c.message.content,
        "role": c.message.role,
        "finish_reason": c.finish_reason,
        "object": r.object,
        "usage": r.usage.model_dump(),
    }


def chat_stream():
    stream = client.chat.completions.create(
        model=models["llm"],
        messages=messages,
        max_tokens=12,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return {"text": "".join(pieces), "pieces": len(pieces), "chunks": chunks,
            "finish_reason": finish, "usage": usage}


record("chat", chat)
record("chat_stream", chat_stream)

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}
LIGHTS = {"type": "function", "function": {
    "name": "lights", "description": "Switch the lights on or off.",
    "parameters": {"type": "object", "properties": {"state": {"type": "string", "enum": ["on", "off"]}},
                   "required": ["state"]}}}


def chat_json_schema():
    r = client.chat.completions.create(
        model=models["llm"], messages=[{"role": "user", "content": "Name a big city and its population."}],
        max_tokens=96, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
    )
    c = r.choices[0]
    return {"content": c.message.content, "finish_reason": c.finish_reason}


def chat_tools():
    r = client.chat.completions.create(
        model=models["llm"], messages=[{"role": "user", "content": "Turn the lights on."}],
        max_tokens=48, temperature=0, tools=[LIGHTS],
    )
    c = r.choices[0]
    calls = [{"name": t.function.name, "arguments": t.function.arguments} for t in (c.message.tool_calls or [])]
    return {"content": c.message.content, "tool_calls": calls, "finish_reason": c.finish_reason}


record("chat_json_schema", chat_json_schema)
record("chat_tools", chat_tools)


def transcribe(fmt):
    def run():
        with open(wav_path, "rb") as f:
            r = client.audio.transcriptions.create(model=models["stt"], file=f, response_format=fmt)
        if fmt == "text":
            return {"text": r}
        if fmt == "verbose_json":
            return {"text": r.text, "language": r.language, "duration": r.duration,
                    "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in r.segments]}
        return {"text": r.text}
    return run


record("transcription", transcribe("json"))
record("transcription_text", transcribe("text"))
record("transcription_verbose", transcribe("verbose_json"))

SAID = "The quick brown fox jumps over the lazy dog."


def speech():
    r = client.audio.speech.create(model=models["tts"], voice=models["tts"], input=SAID,
                                   response_format="wav")
    wav = r.read()
    heard = client.audio.transcriptions.create(model=models["stt"], file=("speech.wav", wav))
    return {"said": SAID, "bytes": len(wav), "riff": wav[:4].decode("latin-1"), "heard": heard.text}


def speech_pcm():
    n, pieces = 0, 0
    with client.audio.speech.with_streaming_response.create(
        model=models["tts"], voice=models["tts"], input=SAID + " " + SAID, response_format="pcm"
    ) as r:
        rate = r.headers.get("x-sample-rate")
        for piece in r.iter_bytes():
            n += len(piece)
            pieces += 1
    return {"bytes": n, "pieces": pieces, "sample_rate": rate}


record("speech", speech)
record("speech_pcm", speech_pcm)
record("unknown_model", lambda: client.chat.completions.create(
    model="no-such-model", messages=messages, max_tokens=4).model_dump())
bad = openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0, timeout=30)
record("bad_key", lambda: [m.id for m in bad.models.list().data])
print(json.dumps(out))
