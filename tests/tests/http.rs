//! The OpenAI-compatible HTTP API (`[http]`) of the real binary with the real small models:
//! the official `openai` Python client (tests/python/openai_client.py, the version pinned in
//! tests/requirements.txt) for chat (plain and streamed), transcription and speech; curl for
//! `/health` and `/metrics`; bad input over raw TCP, each answered in OpenAI's error shape;
//! a bounded flood of 10,000 bad requests with the RSS before and after.
//!
//! One daemon serves every check (model loading is the expensive part).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sotad_tests::{
    Mosquitto, Sotad, free_port, librivox_clips, models_config, sotad_bin, word_error_rate,
};

const KEY: &str = "test-key-123";
/// `http.max_request_bytes` of the test: small, so that a too-large body is cheap to send.
const MAX_REQUEST: usize = 8192;

/// One HTTP/1.1 exchange on a kept-alive connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts OpenAI's error shape and returns the error object.
    fn error(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.headers
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{}",
            self.headers
        );
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        let fields = e.as_object().expect("error object");
        for key in ["message", "type", "param", "code"] {
            assert!(fields.contains_key(key), "no {key:?} in {v}");
        }
        e.clone()
    }
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP API");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        self.send_declaring(method, path, headers, body, body.len())
    }

    /// Sends `body` under a `Content-Length` of `length` (larger: the rest never comes).
    fn send_declaring(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        length: usize,
    ) -> Answer {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!("Content-Length: {length}\r\n\r\n"));
        let stream = self.reader.get_mut();
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        self.read()
    }

    fn read(&mut self) -> Answer {
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .expect("status line");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {status_line:?}"));
        let mut headers = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
            headers.push_str(&line);
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        Answer {
            status,
            headers,
            body,
        }
    }
}

fn auth() -> String {
    format!("Bearer {KEY}")
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

/// Waits until `/metrics` says the three engines are ready.
fn wait_ready(port: u16, sotad: &Sotad) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (body, code) = curl(&[
            "-H",
            &format!("Authorization: {}", auth()),
            &format!("http://127.0.0.1:{port}/metrics"),
        ]);
        if code == "200"
            && ["stt", "llm", "tts"].iter().all(|e| {
                body.contains(&format!(
                    "sotad_engine_ready{{engine=\"{e}\",state=\"ready\"}} 1"
                ))
            })
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "engines never ready (last /metrics: {code})\n{body}\n{}",
            sotad.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn openai_client_curl_and_bad_input() {
    let broker = Mosquitto::start().unwrap();
    let port = free_port();
    let config = models_config(
        broker.port,
        "http-test",
        &format!(
            "[llm]\nmodel = \"smollm2-135m-instruct-q4_1.gguf\"\nmax_tokens = 32\n\
             [http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\napi_key = \"{KEY}\"\n\
             max_request_bytes = {MAX_REQUEST}\n[service]\nrequest_queue = 2\n"
        ),
    );
    let mut sotad = Sotad::start(&config, "http-test").unwrap();
    let started = Instant::now();

    // curl: /health needs no token.
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let (body, code) = curl(&[&format!("http://127.0.0.1:{port}/health")]);
        if code == "200" {
            break body;
        }
        assert!(Instant::now() < deadline, "no /health\n{}", sotad.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        serde_json::from_str::<Value>(&health).unwrap()["status"],
        "ok"
    );
    wait_ready(port, &sotad);
    eprintln!("engines ready after {:?}", started.elapsed());

    // The official client: chat, streamed chat, transcriptions, speech through Whisper.
    let (clip, _) = librivox_clips()
        .into_iter()
        .next()
        .expect("a LibriVox clip");
    let out = Command::new(sotad_tests::test_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/openai_client.py"
        ))
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .arg(KEY)
        .arg(&clip)
        .output()
        .expect("run the openai client");
    assert!(
        out.status.success(),
        "openai client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sotad.log()
    );
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    eprintln!(
        "openai {} after {:?}",
        r["openai_version"],
        started.elapsed()
    );
    assert_eq!(
        r["models"],
        serde_json::json!([
            "whisper-tiny.en-ct2",
            "smollm2-135m-instruct-q4_1",
            "en_US-joe-medium"
        ]),
        "{r}"
    );

    let chat = &r["chat"];
    assert_eq!(chat["object"], "chat.completion", "{r}");
    assert_eq!(chat["role"], "assistant");
    assert!(
        chat["text"].as_str().is_some_and(|t| !t.trim().is_empty()),
        "{r}"
    );
    let usage = &chat["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{r}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(completion + usage["prompt_tokens"].as_u64().unwrap())
    );
    assert!(
        matches!(chat["finish_reason"].as_str(), Some("stop" | "length")),
        "{r}"
    );

    // `response_format` with a JSON schema: the answer is JSON that validates (the grammar
    // allows nothing else).
    let js = &r["chat_json_schema"];
    let content: Value =
        serde_json::from_str(js["content"].as_str().unwrap_or_else(|| panic!("{js}")))
            .unwrap_or_else(|e| panic!("not JSON ({e}): {js}"));
    assert!(
        content["city"].is_string() && content["population"].is_i64(),
        "{js}"
    );
    assert_eq!(content.as_object().unwrap().len(), 2, "{js}");
    // `tools`: a plain answer or a call whose arguments match the tool's schema.
    let tools = &r["chat_tools"];
    match tools["finish_reason"].as_str() {
        Some("tool_calls") => {
            let call = &tools["tool_calls"][0];
            assert_eq!(call["name"], "lights", "{tools}");
            let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
            assert!(args["state"] == "on" || args["state"] == "off", "{tools}");
        }
        Some(_) => assert!(tools["content"].is_string(), "{tools}"),
        None => panic!("chat with tools failed: {tools}"),
    }
    let stream = &r["chat_stream"];
    assert!(
        stream["text"]
            .as_str()
            .is_some_and(|t| !t.trim().is_empty()),
        "{r}"
    );
    let streamed = stream["usage"]["completion_tokens"]
        .as_u64()
        .expect("usage chunk");
    assert!((1..=12).contains(&streamed), "{r}");
    // One piece per token or fewer; more than one: it streamed.
    let pieces = stream["pieces"].as_u64().unwrap();
    assert!(pieces > 1 && pieces <= streamed, "{r}");
    assert!(
        matches!(stream["finish_reason"].as_str(), Some("stop" | "length")),
        "{r}"
    );

    // The transcription equals `sotad transcribe`'s of the same clip.
    let cli = Command::new(sotad_bin())
        .arg("--config")
        .arg(sotad.dir.path().join("sotad.toml"))
        .arg("transcribe")
        .arg(&clip)
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&cli.stdout).trim().to_string();
    assert!(
        !expected.is_empty(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(r["transcription"]["text"], expected.as_str(), "{r}");
    assert_eq!(
        r["transcription_text"]["text"].as_str().map(str::trim),
        Some(expected.as_str())
    );
    let verbose = &r["transcription_verbose"];
    assert_eq!(verbose["text"], expected.as_str());
    assert_eq!(verbose["language"], "en");
    let segments = verbose["segments"].as_array().expect("segments");
    assert!(!segments.is_empty(), "{r}");
    let duration = verbose["duration"].as_f64().unwrap();
    let mut last = 0.0;
    for s in segments {
        let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        assert!(
            start >= last - 1e-6 && end > start && end <= duration + 0.5,
            "{r}"
        );
        last = end;
    }

    // Speech: a WAV whose words come back through Whisper; PCM streamed in pieces.
    let speech = &r["speech"];
    assert_eq!(speech["riff"], "RIFF", "{r}");
    let wer = word_error_rate(
        speech["said"].as_str().unwrap(),
        speech["heard"].as_str().unwrap_or(""),
    );
    assert!(wer <= 0.2, "speech round trip WER {wer}: {r}");
    let pcm = &r["speech_pcm"];
    let bytes = pcm["bytes"].as_u64().unwrap();
    assert_eq!(pcm["sample_rate"], "22050", "{r}");
    // Two sentences, about 5 s of 16-bit audio.
    assert!(bytes.is_multiple_of(2) && bytes > 22_050 * 2 * 2, "{r}");

    // Errors through the client: an unknown model, a wrong key.
    assert_eq!(r["unknown_model"]["status"], 404, "{r}");
    assert_eq!(
        r["unknown_model"]["error"]["code"], "model_not_found",
        "{r}"
    );
    assert_eq!(r["bad_key"]["status"], 401, "{r}");

    // curl: /metrics counts the requests above, in Prometheus' text format.
    let (metrics, code) = curl(&[
        "-H",
        &format!("Authorization: {}", auth()),
        &format!("http://127.0.0.1:{port}/metrics"),
    ]);
    assert_eq!(code, "200");
    assert!(
        metrics.contains("# TYPE sotad_requests_total counter"),
        "{metrics}"
    );
    for line in [
        "sotad_requests_ok_total{stage=\"http.chat\"} 4",
        "sotad_requests_ok_total{stage=\"http.speech\"} 2",
        "sotad_requests_ok_total{stage=\"http.transcriptions\"} 4",
        "sotad_mqtt_connected 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let (_, code) = curl(&[&format!("http://127.0.0.1:{port}/metrics")]);
    assert_eq!(code, "401", "/metrics needs the token");

    // Bad input over raw TCP, each in the error shape; the connection goes on serving.
    let json = ("Content-Type", "application/json");
    let bearer = auth();
    let key = ("Authorization", bearer.as_str());
    let chat_path = "/v1/chat/completions";
    let mut c = Conn::open(port);
    let e = c
        .send("POST", chat_path, &[json, key], b"{\"messages\": [")
        .error(400);
    assert!(
        e["message"].as_str().unwrap().contains("not valid JSON"),
        "{e}"
    );
    let e = c
        .send(
            "POST",
            chat_path,
            &[("Content-Type", "text/plain"), key],
            b"hi",
        )
        .error(415);
    assert_eq!(e["code"], "unsupported_media_type");
    let e = c
        .send(
            "POST",
            chat_path,
            &[json, key],
            br#"{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .error(404);
    assert_eq!(
        (e["code"].as_str(), e["param"].as_str()),
        (Some("model_not_found"), Some("model"))
    );
    let e = c
        .send(
            "POST",
            chat_path,
            &[json, ("Authorization", "Bearer nope")],
            b"{}",
        )
        .error(401);
    assert_eq!(e["code"], "invalid_api_key");
    let e = c
        .send(
            "POST",
            chat_path,
            &[json, key],
            br#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
        )
        .error(400);
    assert_eq!(e["param"], "tools");
    let e = c
        .send(
            "POST",
            "/v1/audio/transcriptions",
            &[("Content-Type", "multipart/form-data; boundary=zz"), key],
            b"--zz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nnot a wav\r\n--zz--\r\n",
        )
        .error(400);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("file"), Some("invalid_audio"))
    );
    c.send("GET", "/v1/nothing", &[key], b"").error(404);
    c.send("GET", chat_path, &[key], b"").error(405);
    // Too large: refused from its Content-Length, before the body is read.
    let mut big = Conn::open(port);
    let e = big
        .send_declaring("POST", chat_path, &[json, key], b"{", MAX_REQUEST + 1)
        .error(413);
    assert_eq!(e["code"], "request_too_large");
    assert_eq!(c.send("GET", "/health", &[], b"").status, 200);

    // A full queue (`service.request_queue` = 2: one running, two waiting) is a 429 at once.
    let ask =
        br#"{"messages":[{"role":"user","content":"Count from one to fifty."}],"max_tokens":16}"#;
    let mut many: Vec<Conn> = (0..6).map(|_| Conn::open(port)).collect();
    for m in &mut many {
        let head = format!(
            "POST {chat_path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Authorization: {bearer}\r\nContent-Length: {}\r\n\r\n",
            ask.len()
        );
        let stream = m.reader.get_mut();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(ask).unwrap();
    }
    let statuses: Vec<u16> = many
        .iter_mut()
        .map(|m| {
            let a = m.read();
            if a.status == 429 {
                assert_eq!(a.error(429)["code"], "rate_limit_exceeded");
            }
            a.status
        })
        .collect();
    let busy = statuses.iter().filter(|&&s| s == 429).count();
    assert!(
        busy >= 3 && statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    drop(many);

    // A bounded flood: 10,000 bad requests on kept-alive connections; RSS before and after.
    let warm_up = |c: &mut Conn, n: usize| {
        for i in 0..n {
            let kind = i % 4;
            let a = match kind {
                0 => c.send("POST", chat_path, &[json, key], b"{\"messages\": [{"),
                1 => c.send(
                    "POST",
                    chat_path,
                    &[("Content-Type", "text/csv"), key],
                    b"a,b",
                ),
                2 => c.send(
                    "POST",
                    "/v1/audio/speech",
                    &[json, key],
                    br#"{"model":"tts-1","input":"hi","voice":"alloy"}"#,
                ),
                _ => c.send(
                    "POST",
                    chat_path,
                    &[json, ("Authorization", "Bearer x")],
                    b"{}",
                ),
            };
            let expected = [400, 415, 404, 401][kind];
            assert_eq!(a.status, expected, "{}", String::from_utf8_lossy(&a.body));
        }
    };
    warm_up(&mut c, 400);
    let before = sotad.rss_kib().unwrap();
    let flood_started = Instant::now();
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(port)).collect();
    for round in 0..25 {
        let c = &mut conns[round % 4];
        warm_up(c, 400);
    }
    let flood = flood_started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let after = sotad.rss_kib().unwrap();
    eprintln!(
        "10,000 bad requests in {flood:?}; RSS {} -> {} KiB (anonymous {} -> {} KiB)",
        before.0, after.0, before.1, after.1
    );
    assert!(
        after.1 < before.1 + 8 * 1024,
        "anonymous RSS grew from {} to {} KiB over 10,000 bad requests",
        before.1,
        after.1
    );
    assert_eq!(c.send("GET", "/health", &[], b"").status, 200);
    assert!(
        sotad.wait_exit(Duration::from_millis(10)).is_err(),
        "sotad exited"
    );

    // SIGTERM: the API stops with the daemon, cleanly.
    sotad.sigterm();
    let status = sotad.wait_exit(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "{status:?}\n{}", sotad.log());
    assert!(!sotad.log().contains("panicked"), "{}", sotad.log());
    eprintln!("whole test {:?}", started.elapsed());
}
