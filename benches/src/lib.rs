//! Benchmarks of sotad against its peers. Each benchmark runs the peer side by side in one run and prints the ratio.
//!
//! What the benchmark binaries in `benches/` share.

use std::path::PathBuf;

/// The models directory: `$SOTAD_MODELS_DIR`, else `~/.cache/sotad/models` (where
/// `scripts/install-models.sh` puts them).
pub fn models_dir() -> PathBuf {
    std::env::var_os("SOTAD_MODELS_DIR").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sotad/models"),
        PathBuf::from,
    )
}

/// The median (the mean of the two middle values for an even count; NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(super::median(&[]).is_nan());
    }
}

/// A field of `/proc/self/status` in KiB (`"RssAnon:"`, `"RssFile:"`, `"VmRSS:"`); 0 if absent.
pub fn self_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the LLM benchmarks share: the model, the thread count and the prompt.
pub mod llm {
    use std::path::{Path, PathBuf};

    use sotad_engines::llm::{LoadOptions, Model};

    /// The GGUF (`SOTAD_BENCH_MODEL`, a file name in the models directory; default SmolLM2)
    /// and the thread count (`SOTAD_BENCH_THREADS`, default 2).
    pub fn model_and_threads() -> (PathBuf, usize) {
        let file =
            std::env::var("SOTAD_BENCH_MODEL").unwrap_or("smollm2-135m-instruct-q4_1.gguf".into());
        let threads = std::env::var("SOTAD_BENCH_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(2);
        (super::models_dir().join(file), threads)
    }

    /// The prompt both sides evaluate: a paragraph repeated, tokenized by sotad, cut to
    /// `tokens`. Written as space-separated ids to a temporary file named after `tag`, for
    /// the peer's process; returns the ids and the file.
    pub fn prompt_ids(model: &Path, tokens: usize, tag: &str) -> (Vec<u32>, PathBuf) {
        let probe = Model::load(
            model,
            &LoadOptions {
                context_len: 1024,
                threads: 1,
            },
        )
        .expect("load model");
        let para = "The small robot rolled across the kitchen floor, listening for its name. \
            It had learned to answer questions about the weather, to read recipes aloud, and to \
            remind the family when the plants needed water. ";
        let mut ids = probe.tokenizer().encode(&para.repeat(60), true, false);
        ids.truncate(tokens);
        let file = std::env::temp_dir().join(format!("{tag}-{}.txt", std::process::id()));
        let text: Vec<String> = ids.iter().map(|t| t.to_string()).collect();
        std::fs::write(&file, text.join(" ")).expect("write the prompt ids");
        (ids, file)
    }
}

/// The spoken question set (`benches/data/questions.tsv`) and how an answer is scored.
pub mod questions {
    use sotad_engines::llm::language::{self, Language};

    /// The question set's file, in the repository.
    pub const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/questions.tsv");

    /// A question and the keywords a correct answer contains (any of them).
    #[derive(Debug, Clone)]
    pub struct Question {
        pub text: String,
        /// Normalized (see [`normalize`]), each one or more words.
        pub keywords: Vec<String>,
    }

    /// The question set from [`FILE`].
    pub fn load() -> Vec<Question> {
        let text = std::fs::read_to_string(FILE).unwrap_or_else(|e| panic!("{FILE}: {e}"));
        parse(&text).unwrap_or_else(|e| panic!("{FILE}: {e}"))
    }

    /// Parses the question file: `question<TAB>kw|kw|…` lines, `#` comments, blank lines.
    pub fn parse(text: &str) -> Result<Vec<Question>, String> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (q, kws) = line
                .split_once('\t')
                .ok_or_else(|| format!("line {}: no tab between question and keywords", i + 1))?;
            let keywords: Vec<String> = kws
                .split('|')
                .map(normalize)
                .filter(|k| !k.is_empty())
                .collect();
            if q.trim().is_empty() || keywords.is_empty() {
                return Err(format!(
                    "line {}: a question and a keyword are needed",
                    i + 1
                ));
            }
            out.push(Question {
                text: q.trim().to_string(),
                keywords,
            });
        }
        Ok(out)
    }

    /// Lower-case words separated by single spaces; anything not a letter or digit separates
    /// words, except apostrophes, which are dropped ("I'm" → "im").
    pub fn normalize(text: &str) -> String {
        text.to_lowercase()
            .replace(['\'', '’'], "")
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    impl Question {
        /// Whether `answer` contains one of the keywords as whole words.
        pub fn has_keyword(&self, answer: &str) -> bool {
            let answer = format!(" {} ", normalize(answer));
            self.keywords
                .iter()
                .any(|k| answer.contains(&format!(" {k} ")))
        }

        /// Correct: a keyword, and not in another language ([`language::guess`]).
        pub fn is_answered_by(&self, answer: &str) -> bool {
            self.has_keyword(answer) && language::guess(answer).is_not_other()
        }
    }

    /// One answer's figures.
    #[derive(Debug, Clone)]
    pub struct Answered {
        pub correct: bool,
        /// Not another language: [`Language::English`] or [`Language::Unknown`].
        pub english: bool,
        pub words: usize,
        pub ttft_ms: f64,
        pub tok_s: f64,
    }

    impl Answered {
        pub fn new(q: &Question, answer: &str, ttft_ms: f64, tok_s: f64) -> Answered {
            Answered {
                correct: q.is_answered_by(answer),
                english: language::guess(answer) != Language::Other,
                words: answer.split_whitespace().count(),
                ttft_ms,
                tok_s,
            }
        }
    }

    /// A run's totals: fraction correct, fraction in English, mean answer length in words,
    /// median time to first token and median decode rate (NaN where not measured).
    pub fn summary(all: &[Answered]) -> String {
        let n = all.len().max(1) as f64;
        let frac = |f: fn(&Answered) -> bool| all.iter().filter(|a| f(a)).count() as f64 / n;
        let words = all.iter().map(|a| a.words as f64).sum::<f64>() / n;
        let ttft: Vec<f64> = all
            .iter()
            .map(|a| a.ttft_ms)
            .filter(|x| x.is_finite())
            .collect();
        let tok_s: Vec<f64> = all
            .iter()
            .map(|a| a.tok_s)
            .filter(|x| x.is_finite() && *x > 0.0)
            .collect();
        format!(
            "correct {:3.0} %  English {:3.0} %  mean {:4.1} words  first token {:5.0} ms  {:5.1} tok/s",
            100.0 * frac(|a| a.correct),
            100.0 * frac(|a| a.english),
            words,
            super::median(&ttft),
            super::median(&tok_s)
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_question_set_has_at_least_30_questions_with_keywords() {
            let set = load();
            assert!(set.len() >= 30, "{}", set.len());
            assert!(set.iter().all(|q| !q.keywords.is_empty()));
        }

        #[test]
        fn keywords_match_whole_words_case_and_punctuation_aside() {
            let q = &parse("How many hours?\t24|twenty-four\n").unwrap()[0];
            assert!(q.has_keyword("There are 24 hours in a day."));
            assert!(q.has_keyword("Twenty-four."));
            assert!(!q.has_keyword("There are 240 of them."));
            let q = &parse("Capital?\tparis\n").unwrap()[0];
            assert!(q.is_answered_by("The capital of France is PARIS."));
            assert!(!q.is_answered_by("La capitale de la France est Paris."));
            assert!(!q.is_answered_by("It is Lyon."));
        }

        #[test]
        fn a_line_without_keywords_is_refused_with_its_number() {
            let e = parse("# c\nQ?\t\n").unwrap_err();
            assert!(e.contains("line 2"), "{e}");
            assert!(parse("Q? paris\n").unwrap_err().contains("no tab"));
        }
    }
}
