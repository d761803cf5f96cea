//! The default brain: the real `sotad` binary at its default `[llm]` (model, system prompt,
//! temperature, sampling) answers a few questions of the spoken question set
//! (`benches/data/questions.tsv`) over mosquitto, in one conversation, correctly and in
//! English. The whole set, spoken, is `cargo bench -p sotad-benches --bench voice`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sotad_engines::llm::language::{self, Language};
use sotad_tests::questions;
use sotad_tests::{Mosquitto, Sotad, TestClient, models_dir};

/// Model loading plus a first inference on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(120);

/// The questions asked, by their text in the set.
const ASKED: [&str; 4] = [
    "What is the capital of France?",
    "What is two plus two?",
    "How many days are in a week?",
    "Who wrote Romeo and Juliet?",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_default_brain_answers_correctly_and_in_english() {
    let started = Instant::now();
    let set = questions::load();
    let broker = Mosquitto::start().unwrap();
    // Only the LLM: nothing of `[llm]` is set, so the defaults are what is tested.
    let conf = format!(
        "{}\n[models]\ndir = \"{}\"\n[audio]\ncapture_device = \"\"\nplayback_device = \"\"\n\
         [stt]\nmodel = \"\"\n[tts]\nvoice = \"\"\n",
        Sotad::link_config(broker.port, "brain", ""),
        models_dir().display()
    );
    let sotad = Sotad::start(&conf, "brain").unwrap();
    let mut c = TestClient::connect(broker.port, "t-brain", false)
        .await
        .unwrap();
    c.subscribe(&sotad.topic("#")).await.unwrap();
    c.expect(&sotad.topic("status"), WAIT, |p| p == b"online")
        .await
        .unwrap_or_else(|e| panic!("sotad never said online: {e}\n{}", sotad.log()));

    let mut wrong = Vec::new();
    for (i, text) in ASKED.iter().enumerate() {
        let q = set
            .iter()
            .find(|q| q.text == *text)
            .unwrap_or_else(|| panic!("{text:?} is not in {}", questions::FILE));
        let id = format!("b{i}");
        // One conversation, as the voice loop's; a fixed seed so that a failure repeats
        // (everything else is the configured default).
        c.publish(
            &sotad.topic("llm/ask"),
            json!({"id": id, "prompt": q.text, "session": "brain", "options": {"seed": i}})
                .to_string(),
        )
        .await
        .unwrap();
        let reply: Value = c
            .expect_id(&sotad.topic("llm/reply"), &id, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sotad.log()));
        let answer = reply["text"].as_str().unwrap_or_default();
        assert_ne!(
            language::guess(answer),
            Language::Other,
            "{text:?} answered in another language: {answer:?}"
        );
        if !q.is_answered_by(answer) {
            wrong.push(format!(
                "{text:?} -> {answer:?} (expected one of {:?})",
                q.keywords
            ));
        }
        // Briefly: a robot's answer, not a monologue.
        assert!(
            answer.split_whitespace().count() <= 40,
            "{text:?} -> {answer:?}"
        );
    }
    assert!(wrong.is_empty(), "wrong answers: {wrong:#?}");
    eprintln!(
        "{} questions answered in {:.1} s (start included)",
        ASKED.len(),
        started.elapsed().as_secs_f64()
    );
}
