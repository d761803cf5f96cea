//! Phoneme ids for the real joe-medium voice, compared with what Piper itself produces.
//!
//! `tests/data/piper/phoneme_ids.tsv` holds piper-tts 1.8.0's phonemes and ids for five
//! texts (made by `tests/data/piper/make_phoneme_ids.py`). Two comparisons:
//!
//! - Piper's own phonemes through our id scheme must give Piper's ids exactly (this checks
//!   the `^ _ p _ … $` scheme, the code-point split and the map).
//! - espeak-ng (Debian's 1.51) through `clauses_from_cli` gives the same clause structure and
//!   ids: exactly with its shared library (the call Piper makes, what a voice uses by
//!   default), and with its command line except where the command line's synthesis mode
//!   stresses a word differently: the only difference in these texts is one primary stress
//!   (`ˈ`) where Piper has a secondary stress (`ˌ`).

mod common;

use common::models_dir;
use std::path::PathBuf;

use sotad_engines::tts::VoiceConfig;
use sotad_engines::tts::espeak::Espeak;
use sotad_engines::tts::phonemize::{
    PhonemeIdMap, clause_ends, clauses_from_cli, ids_from_cli, phonemes_to_ids, sentences,
};

fn joe_config() -> VoiceConfig {
    let path = models_dir().join("piper/en_US-joe-medium.onnx.json");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        path.display()
    );
    VoiceConfig::open(&path).unwrap()
}

struct Row {
    text: String,
    /// Piper's phonemes of each sentence.
    phonemes: Vec<String>,
    /// Piper's ids of each sentence.
    ids: Vec<Vec<i64>>,
}

fn fixture() -> Vec<Row> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/piper/phoneme_ids.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            let text = cols.next().unwrap().to_owned();
            let phonemes = cols
                .next()
                .unwrap()
                .split(" | ")
                .map(str::to_owned)
                .collect();
            let ids = cols
                .next()
                .unwrap()
                .split(" | ")
                .map(|s| s.split(' ').map(|n| n.parse().unwrap()).collect())
                .collect();
            Row {
                text,
                phonemes,
                ids,
            }
        })
        .collect()
}

/// espeak-ng's program, as a voice uses it when given a program path.
fn program(voice: &str) -> Espeak {
    Espeak::new("espeak-ng", voice)
}

/// espeak-ng's shared library, as a voice uses it by default; `None` only on aarch64, where
/// the cross tests run under qemu without the arm64 library (installing `libespeak-ng1:arm64`
/// beside the host's would upgrade the host's systemd), and then a voice must fall back to the
/// program.
fn library(voice: &str) -> Option<Espeak> {
    match Espeak::library(voice) {
        Ok(e) => {
            assert!(e.program().is_none());
            Some(e)
        }
        Err(why) if cfg!(target_arch = "aarch64") => {
            println!("no espeak-ng library for this architecture ({why})");
            assert_eq!(
                Espeak::auto(voice).program(),
                Some(std::path::Path::new("espeak-ng"))
            );
            None
        }
        Err(why) => panic!(
            "{why}: install espeak-ng (apt-get install espeak-ng, scripts/setup.sh), which brings libespeak-ng1"
        ),
    }
}

fn ipa(espeak: &Espeak, text: &str) -> String {
    espeak.ipa(text).unwrap_or_else(|e| {
        panic!("{e}: install espeak-ng with `apt-get install espeak-ng` (scripts/setup.sh)")
    })
}

#[test]
fn pipers_phonemes_give_pipers_ids() {
    let config = joe_config();
    let map = PhonemeIdMap::new(&config.phoneme_id_map).unwrap();
    assert_eq!(map.len(), config.phoneme_id_map.len());
    let rows = fixture();
    assert_eq!(rows.len(), 5);
    for row in &rows {
        for (phonemes, ids) in row.phonemes.iter().zip(&row.ids) {
            let chars: Vec<char> = phonemes.chars().collect();
            let ours = phonemes_to_ids(&chars, &map);
            assert!(
                ours.unknown.is_empty(),
                "{:?}: unknown {:?}",
                row.text,
                ours.unknown
            );
            assert_eq!(&ours.ids, ids, "{:?}", row.text);
        }
    }
}

/// Compares the ids from `espeak`'s output with Piper's for every fixture text: the same
/// clause structure and lengths, and ids that differ only in a stress mark. Returns how many
/// texts are identical.
fn compare_with_piper(espeak: &Espeak, name: &str) -> usize {
    let config = joe_config();
    assert_eq!(config.espeak_voice, "en-us");
    let map = PhonemeIdMap::new(&config.phoneme_id_map).unwrap();
    let primary = map.get('ˈ').unwrap()[0];
    let secondary = map.get('ˌ').unwrap()[0];

    let rows = fixture();
    let (mut exact, mut ids_total, mut ids_equal) = (0, 0, 0);
    for row in &rows {
        let ipa = ipa(espeak, &row.text);
        let cli = clauses_from_cli(&row.text, &ipa);
        assert!(
            cli.aligned,
            "{name}, {:?}: {:?} vs clause ends {:?}",
            row.text,
            ipa,
            clause_ends(&row.text)
        );
        let (ours, aligned) = ids_from_cli(&row.text, &ipa, &map);
        assert!(aligned);
        for s in &ours {
            assert!(
                s.unknown.is_empty(),
                "{name}, {:?}: unknown phonemes {:?}",
                row.text,
                s.unknown
            );
        }
        let ours: Vec<Vec<i64>> = ours.into_iter().map(|s| s.ids).collect();
        assert_eq!(
            ours.len(),
            row.ids.len(),
            "{name}, {:?}: sentence count",
            row.text
        );
        let mut same = true;
        for (a, b) in ours.iter().zip(&row.ids) {
            assert_eq!(
                a.len(),
                b.len(),
                "{name}, {:?}: {:?} vs {:?}",
                row.text,
                sentences(&cli.clauses),
                row.phonemes
            );
            for (&x, &y) in a.iter().zip(b) {
                ids_total += 1;
                if x == y {
                    ids_equal += 1;
                } else {
                    same = false;
                    let stress = [primary, secondary];
                    assert!(
                        stress.contains(&x) && stress.contains(&y),
                        "{name}, {:?}: id {x} vs Piper's {y} is not a stress difference",
                        row.text
                    );
                }
            }
        }
        if same {
            exact += 1;
        } else {
            println!(
                "{name} differs (stress): {:?}\n  ours:  {ipa:?}\n  piper: {:?}",
                row.text, row.phonemes
            );
        }
    }
    println!(
        "espeak-ng {name} vs piper-tts: {exact}/{} texts identical, {ids_equal}/{ids_total} ids equal",
        rows.len()
    );
    exact
}

#[test]
fn espeak_cli_ids_match_piper_up_to_stress() {
    let exact = compare_with_piper(&program("en-us"), "program");
    assert!(exact >= 4, "only {exact} of 5 texts match Piper exactly");
}

/// The library call is the one Piper makes, so its ids are Piper's on every fixture text.
#[test]
fn espeak_library_ids_match_piper() {
    let Some(library) = library("en-us") else {
        return;
    };
    assert_eq!(compare_with_piper(&library, "library"), 5);
}

/// The library's output has the program's shape: one line per clause, the same phonemes up
/// to stress marks, for sentences such as the voice loop speaks (numbers, abbreviations,
/// questions, lists, an unfinished clause), so `clauses_from_cli` reads both alike. A voice
/// espeak-ng does not have is an error naming it.
#[test]
fn espeak_library_and_program_agree_up_to_stress() {
    let Some(library) = library("en-us") else {
        return;
    };
    let program = program("en-us");
    let texts = [
        "What is the capital of France?",
        "The capital of France is Paris, and it has 2,100,000 people.",
        "It's 3:45 pm; the meeting starts at 4.",
        "Dr. Smith said: bring eggs, milk, and bread!",
        "Oh no, no no no! It'll only turn off your lights when you're",
        "I'm a robot (a small one) and I can't see outside... sorry.",
        "Über café naïve résumé",
        "1/2 + 3 = 3.5%",
    ];
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.replace(['ˈ', 'ˌ', '\u{200d}'], "").trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    };
    let mut identical = 0;
    for text in texts {
        let (a, b) = (ipa(&library, text), ipa(&program, text));
        assert_eq!(
            strip(&a),
            strip(&b),
            "{text:?}: library {a:?}, program {b:?}"
        );
        identical += usize::from(a.trim() == b.trim());
    }
    println!(
        "library and program identical on {identical}/{} texts",
        texts.len()
    );

    let e = Espeak::library("xx-no-such-voice")
        .unwrap()
        .ipa("Hello.")
        .unwrap_err();
    assert!(e.to_string().contains("xx-no-such-voice"), "{e}");
    // The lock recovers: the right voice works again after the error.
    assert_eq!(
        strip(&ipa(&library, "Hello.")),
        strip(&ipa(&program, "Hello."))
    );
}
