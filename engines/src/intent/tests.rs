use super::*;

const ROBOT: &str = include_str!("../../../configs/intents/robot.toml");

fn robot() -> IntentSet {
    IntentSet::parse(ROBOT, "robot.toml").unwrap()
}

/// (intent, [(slot, value)]) of a transcript.
fn rec(set: &IntentSet, text: &str) -> Option<(String, Vec<(String, String)>)> {
    set.recognize(text).map(|m| {
        assert_eq!(m.recognizer, Recognizer::Template);
        assert_eq!(m.confidence, 1.0);
        let slots = m
            .slots
            .into_iter()
            .map(|s| {
                let v = match s.value {
                    SlotValue::Text(t) => t,
                    SlotValue::Number(n) => n.to_string(),
                };
                (s.name, v)
            })
            .collect();
        (m.name, slots)
    })
}

fn is(set: &IntentSet, text: &str, intent: &str, slots: &[(&str, &str)]) {
    let want = slots
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect::<Vec<_>>();
    assert_eq!(rec(set, text), Some((intent.to_string(), want)), "{text:?}");
}

#[test]
fn the_robot_file_parses() {
    let set = robot();
    assert!(set.intents.len() >= 8);
    assert!(set.templates() >= 25);
    assert_eq!(set.intents[0].name, "move");
    assert_eq!(set.intents[0].line, 9);
}

#[test]
fn numbers_in_every_form_fill_number_slots() {
    let set = robot();
    for text in [
        "Move forward 2 meters.",
        "move forward two meters",
        "Move forward by 2 metres!",
    ] {
        is(
            &set,
            text,
            "move",
            &[("direction", "forward"), ("distance", "2")],
        );
    }
    // Slots come in the order of the transcript.
    is(
        &set,
        "go 2 meters forward",
        "move",
        &[("distance", "2"), ("direction", "forward")],
    );
    // Whisper's homophones of small numbers, where a number slot is.
    is(
        &set,
        "Move forward to meters.",
        "move",
        &[("direction", "forward"), ("distance", "2")],
    );
    is(&set, "Go to the kitchen.", "go_to", &[("place", "kitchen")]);
    is(
        &set,
        "Drive back two point five meters",
        "move",
        &[("direction", "backward"), ("distance", "2.5")],
    );
    is(
        &set,
        "Turn left 90 degrees.",
        "turn",
        &[("side", "left"), ("angle", "90")],
    );
    is(
        &set,
        "turn left ninety degrees",
        "turn",
        &[("side", "left"), ("angle", "90")],
    );
    is(
        &set,
        "Rotate one hundred and eighty degrees to the right",
        "turn",
        &[("angle", "180"), ("side", "right")],
    );
    is(
        &set,
        "Set the speed to twenty-five percent.",
        "speed",
        &[("percent", "25")],
    );
    is(&set, "set speed to 25%", "speed", &[("percent", "25")]);
}

#[test]
fn numbers_out_of_range_or_not_integers_do_not_match() {
    let set = robot();
    assert_eq!(rec(&set, "move forward 500 meters"), None);
    assert_eq!(rec(&set, "set the speed to 2.5 percent"), None);
    assert_eq!(rec(&set, "turn left 0 degrees"), None);
}

#[test]
fn synonyms_give_the_canonical_value_and_the_raw_words() {
    let set = robot();
    is(
        &set,
        "Go straight ahead.",
        "move",
        &[("direction", "forward")],
    );
    is(
        &set,
        "Move in reverse",
        "move",
        &[("direction", "backward")],
    );
    is(&set, "Spin anticlockwise", "turn", &[("side", "left")]);
    is(
        &set,
        "Go to the lounge.",
        "go_to",
        &[("place", "living room")],
    );
    is(
        &set,
        "navigate to the living room",
        "go_to",
        &[("place", "living room")],
    );
    let m = set.recognize("Please go to the Front Door!").unwrap();
    assert_eq!(m.slots[0].raw, "Front Door");
    assert_eq!(m.slots[0].value, SlotValue::Text("front door".into()));
    let m = set.recognize("Move forward one point five meters").unwrap();
    assert_eq!(m.slots[1].raw, "one point five");
    assert_eq!(m.slots[1].value, SlotValue::Number(1.5));
}

#[test]
fn optional_words_and_alternatives() {
    let set = robot();
    is(&set, "Turn on the lights.", "lights", &[("state", "on")]);
    is(
        &set,
        "please switch the lamp off",
        "lights",
        &[("state", "off")],
    );
    is(&set, "Lights off!", "lights", &[("state", "off")]);
    is(&set, "Stop.", "stop", &[]);
    is(&set, "Stop right now!", "stop", &[]);
    is(&set, "Hold on.", "stop", &[]);
    is(&set, "What's the battery level?", "battery", &[]);
    is(&set, "How much battery do you have left?", "battery", &[]);
    is(
        &set,
        "Make the lights blue.",
        "light_color",
        &[("color", "blue")],
    );
    is(&set, "Go home.", "dock", &[]);
    is(&set, "Take a picture, please", "photo", &[]);
}

#[test]
fn out_of_domain_and_partial_sentences_match_nothing() {
    let set = robot();
    for text in [
        "What is the capital of France?",
        "Tell me a joke.",
        "Turn on the kitchen light and make coffee.",
        "move",
        "please",
        "",
        "...",
        "stop the music in the kitchen",
        "move forward two",
        "How far is the moon?",
        "the lights are on",
    ] {
        assert_eq!(rec(&set, text), None, "{text:?}");
    }
}

#[test]
fn free_text_slots_take_the_words_as_written_and_come_last() {
    let file = r#"
[[intent]]
name = "remind"
sentences = ["remind me to {task}"]
[intent.slots.task]
type = "text"

[[intent]]
name = "remind_call"
sentences = ["remind me to call {who}"]
[intent.slots.who]
type = "enum"
values = ["mum", "dad"]
"#;
    let set = IntentSet::parse(file, "f.toml").unwrap();
    is(
        &set,
        "Remind me to call mum.",
        "remind_call",
        &[("who", "mum")],
    );
    is(
        &set,
        "Remind me to buy milk, now!",
        "remind",
        &[("task", "buy milk, now")],
    );
    assert_eq!(rec(&set, "remind me to"), None);
}

#[test]
fn literal_numbers_in_templates_match_number_words() {
    let file = "[[intent]]\nname = \"t\"\nsentences = [\"turn 90 degrees\"]\n";
    let set = IntentSet::parse(file, "f.toml").unwrap();
    is(&set, "Turn ninety degrees", "t", &[]);
    is(&set, "turn 90°", "t", &[]);
    assert_eq!(rec(&set, "turn nine degrees"), None);
}

/// (file text, line, column or 0 for any, what the message says)
#[test]
fn every_bad_file_is_refused_with_its_line() {
    for (text, line, column, says) in [
        ("[[intent]\nname = \"a\"\n", 1, 0, ""),
        ("[[intent]]\nname = \"a\"\nsentences = [\"x\"\n", 3, 0, ""),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\"go {dir}\"]\n[intent.slots.dir]\ntype = \"colour\"\n",
            5,
            8,
            "unknown type \"colour\"",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\n  \"go\",\n  \"go {where}\",\n]\n",
            5,
            7,
            "slot `where` is referenced but not declared",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\"go (left|right\"]\n",
            3,
            18,
            "never closed",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\"go\"]\n\n[[intent]]\nname = \"a\"\nsentences = [\"run\"]\n",
            6,
            8,
            "declared twice (first at line 2)",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\"go\"]\ncolour = 1\n",
            4,
            1,
            "unknown field `colour`",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = []\n",
            3,
            13,
            "no sentences",
        ),
        (
            "[[intent]]\nsentences = [\"go\"]\n",
            1,
            0,
            "missing field `name`",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\"go {n}\"]\n[intent.slots.n]\ntype = \"number\"\nmin = 5\nmax = 1\n",
            0,
            0,
            "min 5 is above max 1",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\"go {n}\"]\n[intent.slots.n]\ntype = \"enum\"\n",
            0,
            0,
            "has no `values`",
        ),
        (
            "[[intent]]\nname = \"a\"\nsentences = [\"go {n}\"]\n[intent.slots.n]\ntype = \"text\"\nvalues = [\"x\"]\n",
            0,
            0,
            "`values` is only for enum slots",
        ),
        ("", 0, 0, "no intent is declared"),
    ] {
        let e = IntentSet::parse(text, "bad.toml").unwrap_err();
        assert_eq!(e.file, "bad.toml");
        if line > 0 {
            assert_eq!(e.line, line, "{text}\n{e}");
        } else {
            assert!(e.line > 0 || says.contains("no intent"), "{text}\n{e}");
        }
        if column > 0 {
            assert_eq!(e.column, column, "{text}\n{e}");
        }
        assert!(e.message.contains(says), "{text}\n{e}");
        assert!(e.to_string().starts_with("bad.toml"), "{e}");
    }
}

#[test]
fn matching_is_deterministic() {
    let set = robot();
    let a = set.recognize("turn right 45 degrees");
    for _ in 0..10 {
        assert_eq!(set.recognize("turn right 45 degrees"), a);
    }
}

/// The README's example intents file parses and does what the README says.
#[test]
fn the_readme_example_is_valid() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("# /etc/sotad/robot.toml")
        .expect("the README's intents example");
    let end = start + readme[start..].find("```").unwrap();
    let set = IntentSet::parse(&readme[start..end], "README.md").unwrap();
    let names: Vec<&str> = set.intents.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["move", "turn", "stop", "lights", "battery"]);
    is(
        &set,
        "Move forward two meters.",
        "move",
        &[("direction", "forward"), ("distance", "2")],
    );
    is(
        &set,
        "move ahead 2 meters",
        "move",
        &[("direction", "forward"), ("distance", "2")],
    );
    is(&set, "What's your battery level?", "battery", &[]);
    assert_eq!(rec(&set, "Tell me a joke."), None);
}

/// The bench's command set (benches/data/robot_commands.tsv) as written: every in-domain
/// command gives its intent and slots, no out-of-domain one gives any. The bench measures
/// what transcription does to them.
#[test]
fn the_bench_commands_match_as_written() {
    let set = robot();
    let data = include_str!("../../../benches/data/robot_commands.tsv");
    let mut n = 0;
    for line in data
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut f = line.split('\t');
        let (text, intent, slots) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""));
        n += 1;
        if intent == "-" {
            assert_eq!(rec(&set, text), None, "{text}");
            continue;
        }
        let want: Vec<(&str, &str)> = slots
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.split_once('=').unwrap())
            .collect();
        is(&set, text, intent, &want);
    }
    assert!(n >= 60, "{n} commands");
}

#[test]
fn the_stt_prompt_is_example_commands_with_the_slot_values() {
    let set = robot();
    let prompt = set.stt_prompt(120);
    // The budget counts a slot value of several words ("in reverse") as one.
    let words = prompt.split_whitespace().count();
    assert!((60..=140).contains(&words), "{words} words: {prompt}");
    for word in ["forward", "backward", "left", "kitchen", "battery", "red"] {
        assert!(
            prompt.to_lowercase().contains(word),
            "{word:?} not in {prompt}"
        );
    }
    // Sentences, each one the templates match.
    for sentence in prompt.split(". ") {
        assert!(
            set.recognize(sentence).is_some(),
            "{sentence:?} in {prompt}"
        );
    }
    assert_eq!(prompt, set.stt_prompt(120));
    // A small file: every word fits.
    let small = IntentSet::parse(
        "[[intent]]\nname = \"fan\"\nsentences = [\"(turn|switch) the fan {state}\"]\n\
         [intent.slots.state]\ntype = \"enum\"\nvalues = [\"on\", \"off\"]\n",
        "fan.toml",
    )
    .unwrap();
    let p = small.stt_prompt(120);
    for word in ["turn", "switch", "fan", "on", "off"] {
        assert!(p.to_lowercase().contains(word), "{word:?} not in {p}");
    }
}

#[test]
fn the_fuzzy_match_takes_close_words_and_never_guesses() {
    let set = robot();
    let fuzzy = |text: &str| {
        assert!(set.recognize(text).is_none(), "{text:?} matches a template");
        set.recognize_fuzzy(text, 0.8).map(|m| {
            assert_eq!(m.recognizer, Recognizer::Fuzzy);
            assert!((0.8..1.0).contains(&m.confidence), "{m:?}");
            let slots: Vec<(String, SlotValue)> =
                m.slots.into_iter().map(|s| (s.name, s.value)).collect();
            (m.name, slots)
        })
    };
    let text = |s: &str| SlotValue::Text(s.into());
    assert_eq!(
        fuzzy("which the lamp on."),
        Some(("lights".into(), vec![("state".into(), text("on"))]))
    );
    assert_eq!(
        fuzzy("How much matter do you have left?"),
        Some(("battery".into(), vec![]))
    );
    assert_eq!(
        fuzzy("Ride back one meter."),
        Some((
            "move".into(),
            vec![
                ("direction".into(), text("backward")),
                ("distance".into(), SlotValue::Number(1.0))
            ]
        ))
    );
    for not_a_command in [
        "What is the capital of France?",
        "How much money do you have left?",
        // Extra words next to a number: "for the five" is not 5.
        "Turn right for the five degrees.",
        // "light" is as near "left" as "right".
        "rotate to the light",
        // One word differs in a two-word command.
        "start moving",
        "he might even have been made amiable himself",
    ] {
        assert_eq!(fuzzy(not_a_command), None, "{not_a_command:?}");
    }
    assert!(fuzzy::distance("lamb", "lamp") <= fuzzy::MAX_SUBSTITUTION);
    assert!(fuzzy::distance("money", "battery") > fuzzy::MAX_SUBSTITUTION);
}
