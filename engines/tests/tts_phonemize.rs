//! Phoneme ids for the real joe-medium voice, compared with what Piper itself produces.
//!
//! `tests/data/piper/phoneme_ids.tsv` holds piper-tts 1.8.0's phonemes and ids for five
//! texts (made by `tests/data/piper/make_phoneme_ids.py`). Two comparisons:
//!
//! - Piper's own phonemes through our id scheme must give Piper's ids exactly (this checks
//!   the `^ _ p _ … $` scheme, the code-point split and the map).
//! - The `espeak-ng` command line (Debian's 1.51) through `clauses_from_cli` gives the same
//!   clause structure and ids, except where the command line's synthesis mode stresses a
//!   word differently from the library call Piper makes: the only difference in these texts
//!   is one primary stress (`ˈ`) where Piper has a secondary stress (`ˌ`).

mod common;

use common::models_dir;
use std::path::PathBuf;
use std::process::Command;

use sotad_engines::tts::VoiceConfig;
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

fn espeak_ipa(voice: &str, text: &str) -> String {
    let out = Command::new("espeak-ng")
        .args(["-q", "--ipa", "-v", voice, "--", text])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run espeak-ng ({e}): install it with `apt-get install espeak-ng` (scripts/setup.sh)")
        });
    assert!(
        out.status.success(),
        "espeak-ng failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

#[test]
fn espeak_cli_ids_match_piper_up_to_stress() {
    let config = joe_config();
    assert_eq!(config.espeak_voice, "en-us");
    let map = PhonemeIdMap::new(&config.phoneme_id_map).unwrap();
    let primary = map.get('ˈ').unwrap()[0];
    let secondary = map.get('ˌ').unwrap()[0];

    let rows = fixture();
    let (mut exact, mut ids_total, mut ids_equal) = (0, 0, 0);
    for row in &rows {
        let ipa = espeak_ipa(&config.espeak_voice, &row.text);
        let cli = clauses_from_cli(&row.text, &ipa);
        assert!(
            cli.aligned,
            "{:?}: {:?} vs clause ends {:?}",
            row.text,
            ipa,
            clause_ends(&row.text)
        );
        let (ours, aligned) = ids_from_cli(&row.text, &ipa, &map);
        assert!(aligned);
        for s in &ours {
            assert!(
                s.unknown.is_empty(),
                "{:?}: unknown phonemes {:?}",
                row.text,
                s.unknown
            );
        }
        let ours: Vec<Vec<i64>> = ours.into_iter().map(|s| s.ids).collect();
        assert_eq!(ours.len(), row.ids.len(), "{:?}: sentence count", row.text);
        let mut same = true;
        for (a, b) in ours.iter().zip(&row.ids) {
            assert_eq!(
                a.len(),
                b.len(),
                "{:?}: {:?} vs {:?}",
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
                        "{:?}: id {x} vs Piper's {y} is not a stress difference",
                        row.text
                    );
                }
            }
        }
        if same {
            exact += 1;
        } else {
            println!(
                "differs (stress): {:?}\n  ours:  {ipa:?}\n  piper: {:?}",
                row.text, row.phonemes
            );
        }
    }
    println!(
        "espeak-ng CLI vs piper-tts: {exact}/{} texts identical, {ids_equal}/{ids_total} ids equal",
        rows.len()
    );
    assert!(
        exact >= 4,
        "only {exact} of {} texts match Piper exactly",
        rows.len()
    );
}
