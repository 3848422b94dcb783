//! The crate's imports run one way: no module imports, directly or through others, a
//! module that imports it. Read from the source (every `crate::…` and `super::…` path
//! outside comments and test modules), file by file, so a cycle fails here with the
//! files that form it, before it grows. And no function outside `src/model/` is longer
//! than [`MAX_FN_LINES`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The `.rs` files under `src/`, as paths relative to it.
fn rust_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(&root).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// Module path (`http::tasks`) → the source text that counts (no comments, no tests).
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for rel in rust_files() {
        let path = root.join(&rel);
        let rel = rel.with_extension("");
        let module = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("::");
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let text = match text.find("#[cfg(test)]") {
            Some(i) => &text[..i],
            None => &text,
        };
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        out.insert(module, code);
    }
    out
}

/// The module paths that follow `prefix` in `code` (`crate::a::b::C` gives `a::b::C`),
/// with `{a, b::c}` groups expanded one level.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (i, _) in code.match_indices(prefix) {
        if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let head: String = rest.chars().take_while(|&c| ident(c)).collect();
        let after = &rest[head.len()..];
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let item: String = item.trim().chars().take_while(|&c| ident(c)).collect();
                if !item.is_empty() && item != "self" {
                    out.push(format!("{head}{item}"));
                }
            }
        }
        out.push(head.trim_end_matches(':').to_string());
    }
    out
}

/// The longest module of `modules` that `path` is in.
fn module_of(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = sources();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &sources {
        let parent: Vec<&str> = module.split("::").collect();
        let parent = parent[..parent.len() - 1].join("::");
        let mut uses: BTreeSet<String> = paths_after(code, "crate::")
            .into_iter()
            .filter_map(|p| module_of(&p, &modules))
            .collect();
        for p in paths_after(code, "super::") {
            let full = if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            };
            uses.extend(module_of(&full, &modules));
        }
        uses.remove(module);
        graph.insert(module.clone(), uses);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        for u in w.graph.get(v).into_iter().flatten() {
            let u = u.as_str();
            if !w.index.contains_key(u) {
                visit(w, u);
                let l = w.low[u].min(w.low[v]);
                w.low.insert(v, l);
            } else if w.stack.contains(&u) {
                let l = w.index[u].min(w.low[v]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(u) = w.stack.pop() {
                component.push(u.to_string());
                if u == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.found
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let graph = import_graph();
    assert!(
        graph.len() > 40,
        "the source was read: {} modules",
        graph.len()
    );
    let found = cycles(&graph);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = graph[m]
                        .iter()
                        .filter(|u| c.contains(u))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", inside.join(", "))
                })
                .collect();
            edges.join("; ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", shown.join("\n"));
}

/// The layers, top to bottom: a module may import only from its own layer's other
/// modules (without a cycle) or from layers below it.
#[test]
fn layers_import_only_downwards() {
    const LAYERS: &[&[&str]] = &[
        &["app"],
        &["http", "node"],
        &["state"],
        &["backend"],
        &["broker", "actors"],
        &["task"],
        &["metrics"],
        &["pool_shared", "model"],
        &["error"],
        &["outbox"],
        &["config", "store"],
    ];
    let layer = |m: &str| {
        let top = m.split("::").next().unwrap();
        LAYERS
            .iter()
            .position(|l| l.contains(&top))
            .unwrap_or_else(|| panic!("module `{top}` has no layer: add it to LAYERS"))
    };
    let mut wrong = Vec::new();
    for (module, uses) in import_graph() {
        for used in uses {
            let (from, to) = (layer(&module), layer(&used));
            let same_top = module.split("::").next() == used.split("::").next();
            if to < from || (to == from && !same_top) {
                wrong.push(format!("{module} imports {used}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_sees_paths_and_groups() {
    let code = "use crate::a::b::{C, d::E};\nlet x = super::f::g();\nmycrate::z";
    let got = paths_after(code, "crate::");
    assert!(got.contains(&"a::b::C".to_string()), "{got:?}");
    assert!(got.contains(&"a::b::d::E".to_string()), "{got:?}");
    assert!(!got.iter().any(|p| p.starts_with('z')), "{got:?}");
    assert_eq!(paths_after(code, "super::"), ["f::g"]);
}

/// The longest a function may be outside `src/model/` (the kernels and encoder code keep
/// long straight-line bodies): longer ones hide several jobs in one.
const MAX_FN_LINES: usize = 120;

/// `(first line, lines)` of every `fn` with a body in `code`: from its `fn` line to
/// the line of its closing brace. Braces inside strings, raw strings, character
/// literals and comments do not count.
fn function_lengths(code: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let mut words = line.split_whitespace().peekable();
        while let Some(w) = words.peek() {
            if ["pub", "async", "const", "unsafe", "extern", "\"C\""].contains(w)
                || w.starts_with("pub(")
            {
                words.next();
            } else {
                break;
            }
        }
        if words.next() != Some("fn") {
            continue;
        }
        if let Some(end) = body_end(&lines, start) {
            out.push((start + 1, end - start + 1));
        }
    }
    out
}

/// The line index of the brace that closes the body opened at or after line `start`;
/// `None` for a declaration without a body.
fn body_end(lines: &[&str], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut raw: Option<usize> = None; // inside r#"…"# with this many #s
    let mut string = false;
    let mut block_comment = 0usize;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let c: Vec<char> = line.chars().collect();
        let mut j = 0;
        while j < c.len() {
            let rest = |k: usize| c.get(j + k).copied();
            if block_comment > 0 {
                if c[j] == '*' && rest(1) == Some('/') {
                    block_comment -= 1;
                    j += 1;
                } else if c[j] == '/' && rest(1) == Some('*') {
                    block_comment += 1;
                    j += 1;
                }
            } else if let Some(hashes) = raw {
                if c[j] == '"' && (1..=hashes).all(|k| rest(k) == Some('#')) {
                    raw = None;
                    j += hashes;
                }
            } else if string {
                if c[j] == '\\' {
                    j += 1;
                } else if c[j] == '"' {
                    string = false;
                }
            } else if c[j] == '/' && rest(1) == Some('/') {
                break;
            } else if c[j] == '/' && rest(1) == Some('*') {
                block_comment = 1;
                j += 1;
            } else if c[j] == 'r' && (rest(1) == Some('"') || rest(1) == Some('#')) {
                let hashes = (1..).take_while(|&k| rest(k) == Some('#')).count();
                if rest(hashes + 1) == Some('"') && (j == 0 || !c[j - 1].is_alphanumeric()) {
                    raw = Some(hashes);
                    j += hashes + 1;
                }
            } else if c[j] == '"' {
                string = true;
            } else if c[j] == '\'' {
                // A character literal ('{', '\'', '\u{7b}'), not a lifetime ('a).
                if rest(1) == Some('\\') {
                    j += (2..).find(|&k| rest(k) == Some('\'') || rest(k).is_none())?;
                } else if rest(2) == Some('\'') {
                    j += 2;
                }
            } else if c[j] == ';' && depth == 0 {
                return None;
            } else if c[j] == '{' {
                depth += 1;
            } else if c[j] == '}' {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            j += 1;
        }
    }
    None
}

#[test]
fn no_function_outside_the_model_is_longer_than_the_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<_> = rust_files()
        .into_iter()
        .filter(|rel| !rel.starts_with("model"))
        .collect();
    let mut long = Vec::new();
    for rel in &files {
        let code = std::fs::read_to_string(root.join(rel)).unwrap();
        for (line, n) in function_lengths(&code) {
            if n > MAX_FN_LINES {
                long.push(format!("src/{}:{line}: {n} lines", rel.display()));
            }
        }
    }
    let files = files.len();
    assert!(files > 30, "read {files} files");
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_scanner_counts_bodies_not_braces_in_text() {
    let code = r##"pub(crate) async fn a() {
    let s = "}}}";
    let r = r#"{"x": "}"}"#;
    let c = '}';
    // }
    /* { */
    let l: &'static str = "x";
}
fn decl();
    fn b<'a>(x: &'a str) -> &'a str {
        x
    }
"##;
    assert_eq!(function_lengths(code), [(1, 8), (10, 3)]);
}
