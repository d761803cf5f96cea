#!/usr/bin/env python3
# SPDX-License-Identifier: MIT OR Apache-2.0
"""Regenerate engines/src/tts/nfd_table.rs from Python's unicodedata.

Usage: python3 engines/tests/data/piper/gen_nfd_table.py > engines/src/tts/nfd_table.rs
(then run cargo fmt). The tables cover what espeak-ng's IPA output can contain in
precomposed form: Latin letters with diacritics, and the combining classes of U+0300..U+036F.
"""
import unicodedata as u

RANGES = [(0xC0, 0x250), (0x1E00, 0x1F00)]


def ch(x):
    return "'\\u{%04x}'" % x


def main():
    entries = []
    for a, b in RANGES:
        for c in range(a, b):
            d = u.normalize("NFD", chr(c))
            if d != chr(c):
                entries.append((c, [ord(x) for x in d]))
    runs = []
    for c in range(0x300, 0x370):
        v = u.combining(chr(c))
        if runs and runs[-1][2] == v and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c, v])
    print(
        """//! Canonical decomposition (Unicode NFD) for the characters espeak-ng's IPA output can
//! contain in precomposed form: Latin letters with diacritics (U+00C0..U+024F,
//! U+1E00..U+1EFF), plus the canonical combining classes of the combining diacritical marks
//! (U+0300..U+036F) for canonical reordering.
//!
//! Piper decomposes espeak's output to NFD before mapping code points to ids ("ç" becomes
//! "c" + U+0327). Phoneme text is IPA, so these ranges cover it; other characters are left
//! as they are (documented in [`super::phonemize`]).
//!
//! Generated from Python's `unicodedata` (Unicode %s) by
//! `engines/tests/data/piper/gen_nfd_table.py`; do not edit by hand.
"""
        % u.unidata_version
    )
    print("/// (code point, full canonical decomposition padded with `'\\0'`), sorted by code point.")
    print("pub(crate) const DECOMPOSITIONS: &[(char, [char; 3])] = &[")
    for c, d in entries:
        d = d + [0] * (3 - len(d))
        print("    (%s, [%s])," % (ch(c), ", ".join(ch(x) for x in d)))
    print("];\n")
    print("/// Canonical combining classes of U+0300..U+036F as inclusive runs `(first, last, class)`.")
    print("pub(crate) const COMBINING_CLASSES: &[(u32, u32, u8)] = &[")
    for a, b, v in runs:
        print("    (0x%04x, 0x%04x, %d)," % (a, b, v))
    print("];")


if __name__ == "__main__":
    main()
