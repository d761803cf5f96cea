//! Canonical decomposition (NFD) of phoneme text, limited to the tables in
//! [`super::nfd_table`]: enough for IPA, with no Unicode dependency.

use super::nfd_table::{COMBINING_CLASSES, DECOMPOSITIONS};

/// The canonical combining class of `c` (0 outside U+0300..U+036F).
pub(crate) fn combining_class(c: char) -> u8 {
    let c = u32::from(c);
    if !(0x300..0x370).contains(&c) {
        return 0;
    }
    COMBINING_CLASSES
        .iter()
        .find(|&&(first, last, _)| (first..=last).contains(&c))
        .map_or(0, |&(_, _, class)| class)
}

/// Appends the canonical decomposition of `c` (or `c` itself).
fn push_decomposed(c: char, out: &mut Vec<char>) {
    match DECOMPOSITIONS.binary_search_by_key(&c, |&(k, _)| k) {
        Ok(i) => {
            let (_, parts) = DECOMPOSITIONS[i];
            out.extend(parts.iter().copied().filter(|&p| p != '\0'));
        }
        Err(_) => out.push(c),
    }
}

/// `s` in NFD as code points: decomposed, then each run of combining marks stably sorted by
/// combining class (canonical ordering).
pub(crate) fn nfd(s: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        push_decomposed(c, &mut out);
    }
    let mut i = 0;
    while i < out.len() {
        if combining_class(out[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < out.len() && combining_class(out[i]) != 0 {
            i += 1;
        }
        out[start..i].sort_by_key(|&c| combining_class(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposes_and_reorders() {
        assert_eq!(nfd("ç"), vec!['c', '\u{327}']);
        assert_eq!(nfd("ɪç"), vec!['ɪ', 'c', '\u{327}']);
        // ễ: e + circumflex (230) + tilde (230), order kept.
        assert_eq!(nfd("\u{1ec5}"), vec!['e', '\u{302}', '\u{303}']);
        // tilde (230) before a below mark (220) is reordered.
        assert_eq!(nfd("a\u{303}\u{32f}"), vec!['a', '\u{32f}', '\u{303}']);
        assert_eq!(nfd("həlˈoʊ"), "həlˈoʊ".chars().collect::<Vec<_>>());
        // Every table entry decomposes to something different, in sorted order.
        assert!(DECOMPOSITIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
