//! The Wyoming server (issue 26) against the official `wyoming` Python package as the client
//! (tests/wyoming/client.py, as Home Assistant drives a Wyoming service), the `zeroconf`
//! package as the mDNS browser, and raw TCP for the bad input no real client sends. The real
//! `sotad` binary with the real small models (Whisper tiny.en, Piper joe-medium,
//! microWakeWord hey_jarvis), beside Debian's mosquitto.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotad_tests::{
    Mosquitto, Sotad, free_port, librivox_clips, models_config, sotad_bin, word_error_rate,
};

/// Model loading plus a first inference on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("wyoming/client.py")
}

/// Runs the Python client; its JSON output.
fn client(port: u16, args: &[&str]) -> Value {
    let out = std::process::Command::new(sotad_tests::test_python())
        .arg(client_script())
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("the test venv's python (scripts/setup.sh makes it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the Python packages are missing: scripts/setup.sh installs tests/requirements.txt (wyoming, zeroconf) into its venv\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client {args:?}: {e}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Waits until the Wyoming port takes connections.
fn wait_port(port: u16, sotad: &Sotad) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the Wyoming server never listened on {port}\n{}",
            sotad.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wyoming_config(broker: u16, id: &str, listen: &str, zeroconf: bool, extra: &str) -> String {
    models_config(
        broker,
        id,
        &format!(
            "[llm]\nmodel = \"\"\n{extra}\n[wyoming]\nenabled = true\nlisten = \"{listen}\"\nzeroconf = {zeroconf}\nname = \"{id}\"\n"
        ),
    )
}

fn types(v: &Value) -> Vec<&str> {
    v["types"]
        .as_array()
        .unwrap_or_else(|| panic!("no types: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn home_assistant_client_describes_transcribes_synthesizes_detects_and_finds_it() {
    let broker = Mosquitto::start().unwrap();
    let port = free_port();
    let name = format!("sotad-wy-{}", std::process::id());
    let config = wyoming_config(broker.port, &name, &format!("0.0.0.0:{port}"), true, "");
    let sotad = Sotad::start(&config, &name).unwrap();
    wait_port(port, &sotad);
    let dir = sotad.dir.path().to_path_buf();
    let (clip, _) = librivox_clips().into_iter().next().unwrap();

    // `sotad transcribe` on the same clip, in parallel (it loads its own model).
    let conf = dir.join("sotad.toml");
    let cli_clip = clip.clone();
    let cli = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(sotad_bin())
            .arg("--config")
            .arg(conf)
            .arg("transcribe")
            .arg(cli_clip)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    });

    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            client(port, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // describe → info, parsed by the package's own Info.
    let info = run(s(&["describe"])).await.unwrap();
    assert_eq!(info["type"], "info", "{info}");
    let data = &info["data"];
    assert_eq!(
        data["asr"][0]["models"][0]["languages"],
        json!(["en"]),
        "{data}"
    );
    assert_eq!(data["asr"][0]["models"][0]["name"], "whisper-tiny.en-ct2");
    assert_eq!(data["tts"][0]["supports_synthesize_streaming"], true);
    assert_eq!(data["tts"][0]["voices"][0]["name"], "en_US-joe-medium");
    assert_eq!(data["tts"][0]["voices"][0]["languages"], json!(["en_US"]));
    let wake: Vec<&str> = data["wake"][0]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(wake.contains(&"hey_jarvis"), "{wake:?}");

    // ping → pong with the text.
    let pong = run(s(&["ping", "hello"])).await.unwrap();
    assert_eq!(pong, json!({"type": "pong", "data": {"text": "hello"}}));

    // A real clip: the same transcript as `sotad transcribe`, streamed then whole.
    let t = run(s(&["transcribe", clip.to_str().unwrap(), "en-US"]))
        .await
        .unwrap();
    assert_eq!(
        types(&t),
        {
            let mut want = vec!["transcript-start"];
            want.extend(std::iter::repeat_n(
                "transcript-chunk",
                t["chunks"].as_array().unwrap().len(),
            ));
            want.extend(["transcript", "transcript-stop"]);
            want
        },
        "{t}"
    );
    assert!(!t["chunks"].as_array().unwrap().is_empty(), "{t}");
    let cli_text = cli.await.unwrap();
    assert_eq!(
        t["text"].as_str().unwrap(),
        cli_text,
        "Wyoming vs `sotad transcribe`"
    );

    // synthesize → audio-start, chunks, audio-stop; intelligible (back through Whisper).
    let said = "Turn on the kitchen light.";
    let wav = dir.join("say.wav");
    let out = run(s(&["synthesize", said, wav.to_str().unwrap()]))
        .await
        .unwrap();
    let ty = types(&out);
    assert_eq!(ty.first(), Some(&"audio-start"), "{out}");
    assert_eq!(ty.last(), Some(&"audio-stop"), "{out}");
    assert!(
        ty.iter().filter(|t| **t == "audio-chunk").count() > 5,
        "{out}"
    );
    assert_eq!(out["format"], json!([22050, 2, 1]));
    let back = run(s(&["transcribe", wav.to_str().unwrap()]))
        .await
        .unwrap();
    let wer = word_error_rate(said, back["text"].as_str().unwrap());
    assert!(wer <= 0.25, "WER {wer}: {back}");

    // Streaming synthesis: audio for the first sentence before the rest of the text is
    // sent, then synthesize-stopped; the whole is intelligible.
    let wav = dir.join("stream.wav");
    let first = "The weather today is sunny and warm. Tomorrow";
    let rest = [" it will rain", " in the afternoon."];
    let out = run(s(&[
        "synthesize-stream",
        wav.to_str().unwrap(),
        first,
        rest[0],
        rest[1],
    ]))
    .await
    .unwrap();
    assert_eq!(out["audio_before_text_end"], true, "{out}");
    let ty = types(&out);
    assert_eq!(ty.last(), Some(&"synthesize-stopped"), "{out}");
    // One audio stream per sentence, none from the compatibility `synthesize`.
    assert_eq!(
        ty.iter().filter(|t| **t == "audio-start").count(),
        2,
        "{out}"
    );
    assert_eq!(
        ty.iter().filter(|t| **t == "audio-stop").count(),
        2,
        "{out}"
    );
    let back = run(s(&["transcribe", wav.to_str().unwrap()]))
        .await
        .unwrap();
    let whole = format!("{first}{}{}", rest[0], rest[1]);
    let wer = word_error_rate(&whole, back["text"].as_str().unwrap());
    assert!(wer <= 0.25, "WER {wer}: {back}");

    // Wake word: Piper saying "Hey Jarvis" is detected; a LibriVox clip is not.
    let jarvis = dir.join("jarvis.wav");
    let out = run(s(&["synthesize", "Hey Jarvis.", jarvis.to_str().unwrap()]))
        .await
        .unwrap();
    assert_eq!(types(&out).last(), Some(&"audio-stop"), "{out}");
    let det = run(s(&["detect", jarvis.to_str().unwrap(), "hey_jarvis"]))
        .await
        .unwrap();
    assert_eq!(det["detections"][0]["name"], "hey_jarvis", "{det}");
    assert!(
        det["detections"][0]["timestamp"].as_u64().unwrap() > 0,
        "{det}"
    );
    assert!(!types(&det).contains(&"not-detected"), "{det}");
    let det = run(s(&["detect", clip.to_str().unwrap(), "Hey Jarvis"]))
        .await
        .unwrap();
    assert_eq!(types(&det), ["not-detected"], "{det}");

    // Zeroconf: a real mDNS browser resolves the announcement to this port, and the
    // resolved address serves.
    let found = tokio::task::spawn_blocking({
        let name = name.clone();
        move || client(0, &["zeroconf", &name, "15"])
    })
    .await
    .unwrap();
    let want = found["want"].as_str().unwrap();
    let service = &found["found"][want];
    assert_eq!(service["port"], port, "{found}\n{}", sotad.log());
    let address = service["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or_else(|| panic!("no IPv4 address: {found}"))
        .to_string();
    let mut stream = TcpStream::connect((address.as_str(), port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    send(
        &mut stream,
        b"{\"type\":\"ping\",\"data\":{\"text\":\"mdns\"}}\n",
    );
    let mut reader = BufReader::new(stream);
    let (kind, data, _) = read_event(&mut reader).unwrap();
    assert_eq!(
        (kind.as_str(), data["text"].as_str()),
        ("pong", Some("mdns"))
    );
}

fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

/// One event from the server: type, data (inline and section merged), payload. `None` at
/// the end of the stream.
fn read_event(r: &mut BufReader<TcpStream>) -> Option<(String, Value, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let header: Value = serde_json::from_str(&line).expect("server header is JSON");
    let mut data = header.get("data").cloned().unwrap_or(json!({}));
    let n = header["data_length"].as_u64().unwrap_or(0) as usize;
    if n > 0 {
        let mut bytes = vec![0; n];
        r.read_exact(&mut bytes).unwrap();
        let section: Value = serde_json::from_slice(&bytes).unwrap();
        for (k, v) in section.as_object().unwrap() {
            data[k] = v.clone();
        }
    }
    let m = header["payload_length"].as_u64().unwrap_or(0) as usize;
    let mut payload = vec![0; m];
    r.read_exact(&mut payload).unwrap();
    Some((header["type"].as_str().unwrap().to_string(), data, payload))
}

/// Opens a connection, sends `bytes`, returns every event until the server closes it (or
/// `limit` events).
fn exchange(port: u16, bytes: &[u8], half_close: bool, limit: usize) -> Vec<(String, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    send(&mut s, bytes);
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    while out.len() < limit {
        match read_event(&mut r) {
            Some((k, d, _)) => out.push((k, d)),
            None => break,
        }
    }
    out
}

/// Whether the server closed the connection (EOF) after the events read.
fn closed(port: u16, bytes: &[u8]) -> (Vec<(String, Value)>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    send(&mut s, bytes);
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let eof = loop {
        match read_event(&mut r) {
            Some((k, d, _)) => out.push((k, d)),
            None => break true,
        }
    };
    (out, eof)
}

fn code(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(k, d)| match k.as_str() {
            "error" => format!("error:{}", d["code"].as_str().unwrap_or("?")),
            other => other.to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_answered_with_errors_and_the_server_keeps_serving() {
    let broker = Mosquitto::start().unwrap();
    let port = free_port();
    let config = wyoming_config(
        broker.port,
        "wy-bad",
        &format!("127.0.0.1:{port}"),
        false,
        "[tts]\nvoice = \"\"",
    );
    let mut sotad = Sotad::start(&config, "wy-bad").unwrap();
    wait_port(port, &sotad);
    let ping = b"{\"type\":\"ping\",\"data\":{\"text\":\"ok\"}}\n";

    tokio::task::spawn_blocking(move || {
        // Framing errors: an error naming the problem, then the connection is closed.
        let cases: &[(&[u8], &str)] = &[
            (b"this is not json\n", "error:bad-frame"),
            (b"{\"type\":\"ping\",\"data_length\":99999999}\n", "error:too-large"),
            (b"{\"type\":\"ping\",\"payload_length\":999999999}\n", "error:too-large"),
            (b"{\"type\":\"ping\",\"data_length\":5}\n[1,2]", "error:bad-frame"),
            (b"{\"data\":{}}\n", "error:bad-frame"),
        ];
        for (bytes, want) in cases {
            let (events, eof) = closed(port, bytes);
            assert_eq!(code(&events), [*want], "{}", String::from_utf8_lossy(bytes));
            assert!(eof, "closed after {want}");
        }
        // A header line that never ends: refused at 64 KiB, not buffered without bound.
        let (events, eof) = closed(port, &vec![b'{'; 70 * 1024]);
        assert_eq!(code(&events), ["error:too-large"]);
        assert!(eof);
        // Lengths larger than what follows: the end of the stream inside the event.
        let events = exchange(
            port,
            b"{\"type\":\"audio-chunk\",\"data_length\":2,\"payload_length\":100}\n{}abc",
            true,
            8,
        );
        assert_eq!(code(&events), ["error:truncated"]);

        // Event mistakes: an error, and the same connection goes on serving.
        let mut bad = Vec::new();
        bad.extend_from_slice(b"{\"type\":\"no-such-event\"}\n");
        bad.extend_from_slice(b"{\"type\":\"audio-chunk\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1},\"payload_length\":4}\n\0\0\0\0");
        bad.extend_from_slice(b"{\"type\":\"audio-stop\"}\n");
        bad.extend_from_slice(b"{\"type\":\"synthesize-chunk\",\"data\":{\"text\":\"hi\"}}\n");
        bad.extend_from_slice(b"{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":7,\"channels\":1}}\n");
        bad.extend_from_slice(b"{\"type\":\"audio-stop\"}\n");
        bad.extend_from_slice(b"{\"type\":\"synthesize\",\"data\":{\"text\":\"hi\"}}\n");
        bad.extend_from_slice(b"{\"type\":\"detect\",\"data\":{\"names\":[\"no_such_word\"]}}\n");
        bad.extend_from_slice(b"{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1}}\n");
        bad.extend_from_slice(b"{\"type\":\"audio-stop\"}\n");
        bad.extend_from_slice(ping);
        let events = exchange(port, &bad, false, 8);
        assert_eq!(
            code(&events),
            [
                "error:unknown-event",
                "error:out-of-order",
                "error:out-of-order",
                "error:out-of-order",
                "error:bad-event",
                "error:unavailable",
                "error:unavailable",
                "pong"
            ],
            "{events:?}"
        );
        assert!(events[0].1["text"].as_str().unwrap().contains("no-such-event"));

        // A client that leaves in the middle of a transcription: nothing else is disturbed.
        {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            send(&mut s, b"{\"type\":\"transcribe\"}\n{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1}}\n");
            send(&mut s, b"{\"type\":\"audio-chunk\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1},\"payload_length\":3200}\n");
            send(&mut s, &[1u8; 1000]);
        }
        let events = exchange(port, ping, false, 1);
        assert_eq!(code(&events), ["pong"]);
    })
    .await
    .unwrap();

    // The STT model loads in the background: a transcription of 1 s of silence waits for
    // it, so that the RSS below is the flood's, not the model's. Then a first, smaller flood
    // lets the allocator reach its steady state.
    let events = tokio::task::spawn_blocking(move || {
        let mut bytes = b"{\"type\":\"transcribe\"}\n{\"type\":\"audio-start\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1}}\n".to_vec();
        bytes.extend_from_slice(b"{\"type\":\"audio-chunk\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1},\"payload_length\":32000}\n");
        bytes.extend_from_slice(&[0u8; 32_000]);
        bytes.extend_from_slice(b"{\"type\":\"audio-stop\"}\n");
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        send(&mut s, &bytes);
        let mut r = BufReader::new(s);
        let mut seen = Vec::new();
        while let Some((k, _, _)) = read_event(&mut r) {
            let stop = k == "transcript-stop" || k == "error";
            seen.push(k);
            if stop {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(
        (
            events.first().map(String::as_str),
            events.last().map(String::as_str)
        ),
        (Some("transcript-start"), Some("transcript-stop")),
        "{events:?}\n{}",
        sotad.log()
    );
    let warm = tokio::task::spawn_blocking(move || flood(port, 1))
        .await
        .unwrap();
    assert_eq!(warm, 2_500);

    // A bounded flood: 10,000 bad requests (8,000 event mistakes on 16 connections, 2,000
    // connections with a framing error), every one answered; RSS before and after.
    let (rss_before, anon_before) = sotad.rss_kib().unwrap();
    let started = Instant::now();
    let answered = tokio::task::spawn_blocking(move || flood(port, 4))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    // Let the closed connections' tasks end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_after, anon_after) = sotad.rss_kib().unwrap();
    println!(
        "wyoming flood: 10000 bad requests in {:.2} s, {answered} errors; RSS {rss_before} -> {rss_after} KiB (anonymous {anon_before} -> {anon_after} KiB)",
        elapsed.as_secs_f64()
    );
    assert_eq!(answered, 10_000);
    assert!(
        anon_after <= anon_before + 8 * 1024,
        "anonymous RSS grew from {anon_before} to {anon_after} KiB over the flood"
    );
    let events = tokio::task::spawn_blocking(move || exchange(port, ping, false, 1))
        .await
        .unwrap();
    assert_eq!(code(&events), ["pong"]);
    sotad
        .assert_still_running_after(Duration::from_millis(10))
        .await;
}

/// `threads` × (4 connections × 500 event mistakes + 500 connections with a framing error):
/// 2,500 bad requests a thread; how many were answered with an `error`.
fn flood(port: u16, threads: usize) -> usize {
    let threads: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut answered = 0usize;
                for _ in 0..4 {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    for i in 0..500 {
                        let bytes: &[u8] = match i % 3 {
                            0 => b"{\"type\":\"flood\"}\n",
                            1 => b"{\"type\":\"audio-stop\"}\n",
                            _ => b"{\"type\":\"synthesize-stop\"}\n",
                        };
                        s.write_all(bytes).unwrap();
                        let (k, _, _) = read_event(&mut r).expect("answered");
                        answered += usize::from(k == "error");
                    }
                }
                for i in 0..500 {
                    let bytes: &[u8] = match i % 2 {
                        0 => b"not json at all\n",
                        _ => b"{\"type\":\"x\",\"payload_length\":99999999999}\n",
                    };
                    let events = exchange(port, bytes, false, 2);
                    answered += usize::from(events.len() == 1 && events[0].0 == "error");
                }
                answered
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}
