//! Tidy checks on the daemon's source tree (no build, no I/O beyond reading `src/`).
//!
//! No import circle: every `crate::…` and `super::…` path in a file (outside its unit tests)
//! is an edge from that file's module to the deepest module file the path names; the graph
//! must have no cycle. A parent module's own `mod` declarations are not edges, so a
//! `mod.rs` may use its children freely, as long as they do not reach back into it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`voice::turn`, `` for the crate root) → source without unit tests.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
                parts.clear();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.insert(parts.join("::"), text);
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The `crate::`/`super::` paths in `text`, expanded over one level of `{…}` groups.
fn paths(text: &str) -> Vec<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for start in ["crate::", "super::"] {
        let mut rest = text;
        while let Some(i) = rest.find(start) {
            if i > 0 && rest[..i].ends_with(ident) {
                rest = &rest[i + start.len()..];
                continue;
            }
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(ident(c) || c == ':'))
                .unwrap_or(tail.len());
            let head = tail[..end].trim_end_matches(':').to_string();
            if tail[end..].starts_with('{') && tail[..end].ends_with("::") {
                let close = tail[end..].find('}').map_or(tail.len(), |j| end + j);
                for item in tail[end + 1..close].split(',') {
                    let item: String = item.trim().chars().take_while(|&c| ident(c)).collect();
                    if !item.is_empty() && item != "self" {
                        found.push(format!("{head}::{item}"));
                    }
                }
            }
            found.push(head);
            rest = &rest[i + start.len()..];
        }
    }
    found
}

/// The deepest module file that `path`, used in module `from`, names.
fn resolve(modules: &BTreeMap<String, String>, from: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = Vec::new();
    if parts[0] == "crate" {
        parts.remove(0);
    } else {
        base = if from.is_empty() {
            Vec::new()
        } else {
            from.split("::").collect()
        };
        while parts.first() == Some(&"super") {
            base.pop();
            parts.remove(0);
        }
    }
    let mut best = modules
        .contains_key(&base.join("::"))
        .then(|| base.join("::"));
    for part in parts {
        base.push(part);
        let name = base.join("::");
        if modules.contains_key(&name) {
            best = Some(name);
        }
    }
    best
}

#[test]
fn no_import_circle_between_the_daemons_files() {
    let modules = modules();
    assert!(modules.len() > 20, "found {} files", modules.len());
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in &modules {
        let out = edges.entry(name).or_default();
        for path in paths(text) {
            if let Some(to) = resolve(&modules, name, &path)
                && to != *name
            {
                out.insert(to);
            }
        }
    }
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<&str, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| *n == node) {
            let mut circle: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
            circle.push(node.to_string());
            return Some(circle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(circle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
    // The check sees the edges it should: the turn uses the stages, never the reverse.
    assert!(
        edges["voice::turn"].contains("stages"),
        "{:?}",
        edges["voice::turn"]
    );
    assert!(
        edges["telemetry"].is_empty(),
        "telemetry is a leaf: {:?}",
        edges["telemetry"]
    );
}
