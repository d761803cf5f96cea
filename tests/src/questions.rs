//! The spoken question set (`benches/data/questions.tsv`) and how an answer is scored: the
//! voice and brain benches score every answer with it, the brain test a few.

use sotad_engines::llm::language::{self, Language};

/// The question set's file, in the repository.
pub const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/data/questions.tsv");

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
        median(&ttft),
        median(&tok_s)
    )
}

/// The median (the mean of the two middle values for an even count; NaN for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
