//! The crate's imports run one way: no module imports, directly or through others, a
//! module that imports it. Read from the source (every `crate::…` and `super::…` path
//! outside comments and test modules), file by file, so a cycle fails here with the
//! files that form it, before it grows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`http::tasks`) → the source text that counts (no comments, no tests).
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
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
