//! The one normalization of transcripts and template words: lower case, no punctuation,
//! numbers split from units, and number words read as numbers.
//!
//! Both sides go through [`tokenize`], so a template word and a transcript word compare
//! equal exactly when they normalize to the same token.

/// A word of a transcript, normalized, with where it came from in the original text.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub text: String,
    /// Byte range in the original text.
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Letter,
    Digit,
}

/// Splits `text` into normalized tokens: runs of letters or of digits, lower-cased.
/// Apostrophes inside a word are dropped ("what's" → "whats"); a '.' between digits is a
/// decimal point and a ',' between digits a thousands separator ("1,000.5" → "1000.5");
/// `%` reads "percent", `°` "degrees", and a '-' before a number at the start of a word
/// "minus". Every other character separates words.
pub fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut tokens = Vec::new();
    let mut current: Option<(String, usize, usize, Class)> = None;
    let flush = |current: &mut Option<(String, usize, usize, Class)>, tokens: &mut Vec<Token>| {
        if let Some((text, start, end, _)) = current.take() {
            tokens.push(Token { text, start, end });
        }
    };
    let digit_at = |i: usize| chars.get(i).is_some_and(|(_, c)| c.is_ascii_digit());
    for (i, &(at, c)) in chars.iter().enumerate() {
        let end = at + c.len_utf8();
        let class = if c.is_ascii_digit() {
            Some(Class::Digit)
        } else if c.is_alphanumeric() {
            Some(Class::Letter)
        } else {
            None
        };
        if let Some(class) = class {
            match &mut current {
                Some((t, _, e, k)) if *k == class => {
                    t.extend(c.to_lowercase());
                    *e = end;
                }
                _ => {
                    flush(&mut current, &mut tokens);
                    current = Some((c.to_lowercase().collect(), at, end, class));
                }
            }
            continue;
        }
        let in_number = matches!(&current, Some((_, _, _, Class::Digit))) && digit_at(i + 1);
        let in_word = matches!(&current, Some((_, _, _, Class::Letter)))
            && chars.get(i + 1).is_some_and(|(_, n)| n.is_alphabetic());
        match c {
            '.' if in_number => {
                if let Some((t, _, e, _)) = &mut current {
                    t.push('.');
                    *e = end;
                }
            }
            ',' if in_number => {}
            '\'' | '\u{2019}' if in_word => {}
            '%' => {
                flush(&mut current, &mut tokens);
                tokens.push(Token {
                    text: "percent".into(),
                    start: at,
                    end,
                });
            }
            '°' => {
                flush(&mut current, &mut tokens);
                tokens.push(Token {
                    text: "degrees".into(),
                    start: at,
                    end,
                });
            }
            '-' if current.is_none() && digit_at(i + 1) => {
                tokens.push(Token {
                    text: "minus".into(),
                    start: at,
                    end,
                });
            }
            _ => flush(&mut current, &mut tokens),
        }
    }
    flush(&mut current, &mut tokens);
    tokens
}

fn unit(word: &str) -> Option<u64> {
    Some(match word {
        "zero" | "oh" => 0,
        "one" => 1,
        "two" => 2,
        "three" => 3,
        "four" => 4,
        "five" => 5,
        "six" => 6,
        "seven" => 7,
        "eight" => 8,
        "nine" => 9,
        _ => return None,
    })
}

fn teen(word: &str) -> Option<u64> {
    Some(match word {
        "ten" => 10,
        "eleven" => 11,
        "twelve" => 12,
        "thirteen" => 13,
        "fourteen" => 14,
        "fifteen" => 15,
        "sixteen" => 16,
        "seventeen" => 17,
        "eighteen" => 18,
        "nineteen" => 19,
        _ => return None,
    })
}

fn tens(word: &str) -> Option<u64> {
    Some(match word {
        "twenty" => 20,
        "thirty" => 30,
        "forty" | "fourty" => 40,
        "fifty" => 50,
        "sixty" => 60,
        "seventy" => 70,
        "eighty" => 80,
        "ninety" => 90,
        _ => return None,
    })
}

/// Words a transcriber writes for a spoken "one", "two", "four" or "eight".
pub(crate) fn homophone(word: &str) -> Option<f64> {
    Some(match word {
        "won" => 1.0,
        "to" | "too" => 2.0,
        "for" => 4.0,
        "ate" => 8.0,
        _ => return None,
    })
}

/// The numbers that the tokens from `pos` on can be read as, each with how many tokens it
/// takes, longest first: "20" → 20; "twenty five" → 25 (2 tokens) and 20 (1 token);
/// "one hundred and five", "a hundred", "two point five", "minus 3", "3.5".
pub fn numbers_at(tokens: &[Token], pos: usize) -> Vec<(f64, usize)> {
    let mut out = Vec::new();
    let (sign, start) = match tokens.get(pos).map(|t| t.text.as_str()) {
        Some("minus" | "negative") => (-1.0, pos + 1),
        _ => (1.0, pos),
    };
    let Some(first) = tokens.get(start) else {
        return out;
    };
    // Whisper writes a lone small number as its homophone ("move forward to meters"): read
    // as a number only here, where a template has a number slot, and never combined.
    if sign > 0.0
        && let Some(v) = homophone(&first.text)
    {
        out.push((v, 1));
        return out;
    }
    if first.text.starts_with(|c: char| c.is_ascii_digit()) {
        if let Ok(v) = first.text.parse::<f64>() {
            out.push((sign * v, start + 1 - pos));
            // Whisper writes "one hundred and eighty" as "100 and 80".
            if v >= 100.0
                && v % 100.0 == 0.0
                && tokens.get(start + 1).is_some_and(|t| t.text == "and")
                && let Some(w) = tokens
                    .get(start + 2)
                    .and_then(|t| t.text.parse::<f64>().ok())
                && w > 0.0
                && w < 100.0
                && w.fract() == 0.0
            {
                out.insert(0, (sign * (v + w), start + 3 - pos));
            }
        }
        return out;
    }
    // Number words: a small state machine; every prefix that is a whole number is a reading.
    #[derive(Clone, Copy, PartialEq)]
    enum Last {
        None,
        A,
        Unit,
        Teen,
        Tens,
        Hundred,
        Thousand,
        And,
    }
    let mut total = 0u64;
    let mut current = 0u64;
    let mut last = Last::None;
    let mut i = start;
    while let Some(t) = tokens.get(i) {
        let w = t.text.as_str();
        let ok = if let Some(u) = unit(w) {
            // "one two" is not a number; "twenty five" and "hundred (and) five" are.
            if matches!(last, Last::Unit | Last::Teen | Last::A) || (u == 0 && last != Last::None) {
                false
            } else {
                current += u;
                last = Last::Unit;
                true
            }
        } else if let Some(v) = teen(w).or_else(|| tens(w)) {
            if matches!(last, Last::Unit | Last::Teen | Last::Tens | Last::A) {
                false
            } else {
                current += v;
                last = if v < 20 { Last::Teen } else { Last::Tens };
                true
            }
        } else if w == "a" && last == Last::None {
            last = Last::A;
            true
        } else if w == "hundred" && matches!(last, Last::None | Last::A | Last::Unit | Last::Teen) {
            if current >= 100 {
                false
            } else {
                current = current.max(1) * 100;
                last = Last::Hundred;
                true
            }
        } else if w == "thousand"
            && matches!(
                last,
                Last::None | Last::A | Last::Unit | Last::Teen | Last::Tens | Last::Hundred
            )
            && total == 0
        {
            total = current.max(1) * 1000;
            current = 0;
            last = Last::Thousand;
            true
        } else if w == "and" && matches!(last, Last::Hundred | Last::Thousand) {
            last = Last::And;
            true
        } else if w == "point"
            && matches!(
                last,
                Last::Unit | Last::Teen | Last::Tens | Last::Hundred | Last::Thousand
            )
        {
            // Digits after the point, one word each: "two point five", "one point two five".
            let mut frac = String::new();
            let mut j = i + 1;
            while let Some(d) = tokens.get(j).and_then(|t| unit(&t.text)) {
                frac.push(char::from(b'0' + d as u8));
                j += 1;
                if let Ok(f) = format!("0.{frac}").parse::<f64>() {
                    out.push((sign * ((total + current) as f64 + f), j - pos));
                }
            }
            break;
        } else {
            false
        };
        if !ok {
            break;
        }
        i += 1;
        if !matches!(last, Last::A | Last::And) {
            out.push((sign * (total + current) as f64, i - pos));
        }
    }
    out.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokenize(text).into_iter().map(|t| t.text).collect()
    }

    fn number(text: &str) -> Option<f64> {
        let t = tokenize(text);
        numbers_at(&t, 0)
            .into_iter()
            .find(|&(_, len)| len == t.len())
            .map(|(v, _)| v)
    }

    #[test]
    fn punctuation_case_and_units_are_normalized() {
        assert_eq!(words("Turn LEFT, please!"), ["turn", "left", "please"]);
        assert_eq!(words("What's the battery?"), ["whats", "the", "battery"]);
        assert_eq!(words("Move 2.5m forward."), ["move", "2.5", "m", "forward"]);
        assert_eq!(words("twenty-five 1,000"), ["twenty", "five", "1000"]);
        assert_eq!(words("set it to 50%"), ["set", "it", "to", "50", "percent"]);
        assert_eq!(words("turn 90°"), ["turn", "90", "degrees"]);
        assert_eq!(words("-5 and a-b"), ["minus", "5", "and", "a", "b"]);
        assert_eq!(words("Ça va"), ["ça", "va"]);
        let t = tokenize("Go  forward.");
        assert_eq!((t[1].start, t[1].end), (4, 11));
    }

    #[test]
    fn number_forms_read_as_numbers() {
        for (text, v) in [
            ("10", 10.0),
            ("ten", 10.0),
            ("twenty five", 25.0),
            ("twenty-five", 25.0),
            ("one hundred", 100.0),
            ("a hundred", 100.0),
            ("one hundred and twenty", 120.0),
            ("two hundred five", 205.0),
            ("three thousand", 3000.0),
            ("two point five", 2.5),
            ("2.5", 2.5),
            ("minus three", -3.0),
            ("-3", -3.0),
            ("zero", 0.0),
            ("nineteen", 19.0),
            ("ninety", 90.0),
        ] {
            assert_eq!(number(text), Some(v), "{text}");
        }
        for text in [
            "one two",
            "twenty thirty",
            "five twenty",
            "a",
            "hundred and",
            "and",
            "point five",
            "fifteen five",
        ] {
            assert_eq!(number(text), None, "{text}");
        }
        // Whisper's "100 and 80".
        assert_eq!(number("100 and 80"), Some(180.0));
        assert_eq!(number("180 and 5"), None);
        // Homophones of small numbers, alone only.
        assert_eq!(number("to"), Some(2.0));
        assert_eq!(number("for"), Some(4.0));
        assert_eq!(number("to hundred"), None);
        // Every prefix that is a number is a reading, longest first.
        let t = tokenize("twenty five meters");
        assert_eq!(numbers_at(&t, 0), vec![(25.0, 2), (20.0, 1)]);
    }
}
