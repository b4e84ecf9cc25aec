//! The module graph of `src/`: every file is a module, and every path that
//! names another module is an edge from the module whose file holds it:
//! `use crate::a::b`, `crate::a::f()`, `super::x`, `self::x::y`, a child
//! module by its bare name (`log::append()`), and a parent's re-export of
//! its child (`pub use log::Entry`). No edge may close a circle.
//!
//! The rule is strict about parents and children. The only path that is
//! not an edge is a bare declaration, `mod x;` / `pub mod x;` /
//! `pub(crate) mod x;`: it names no item of `x`, so it orders nothing (and
//! the tokenizer never reads it as a path: no `::` follows the name).
//! Everything else a parent's file says about its child is a dependency of
//! the parent on the child, and everything a child says about its parent
//! (`super::App`, `crate::serve::lock`) is one of the child on the parent.
//! In particular a re-export counts: `pub use x::Y` makes every user of
//! `parent::Y` depend on `x` through the parent, so if the re-export were
//! no edge, `x` naming `parent::Z` while another child reached `x` through
//! `parent::Y` would be a loop the graph could not show. So a child may
//! not name its parent at all while the parent uses or re-exports
//! anything of that child: what the two share belongs in a leaf module
//! of its own (e.g. `serve/state.rs`), which both name and which names
//! neither.
//!
//! Circles that are known and being broken are listed in `KNOWN_CIRCLES`;
//! the test fails on any circle not listed there, and on a listed one that
//! is no longer a circle exactly as written (so whoever breaks one, or part
//! of one, removes or shrinks its entry in the same change).
//!
//! Test-only code (`#[cfg(test)]` items) is left out: it is not part of the
//! program's structure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A token of Rust source with comments, strings and chars removed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Path, // `::`
    Punct(char),
}

fn tokens(src: &str) -> Vec<Tok> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && raw_string(&b, i) {
            // r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if c == 'b' && next == Some('"') {
            i += 1;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '.') {
                i += 1;
            }
        } else if c == ':' && next == Some(':') {
            out.push(Tok::Path);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Tok::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// Whether `r` at `i` starts a raw string rather than ending an identifier.
fn raw_string(b: &[char], i: usize) -> bool {
    if i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_') {
        return false;
    }
    let mut j = i + 1;
    while b.get(j) == Some(&'#') {
        j += 1;
    }
    b.get(j) == Some(&'"')
}

/// `toks` without the items under `#[cfg(test)]`.
fn without_tests(toks: Vec<Tok>) -> Vec<Tok> {
    let attr: Vec<Tok> = tokens("#[cfg(test)]");
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i..].starts_with(&attr) {
            i += attr.len();
            // Skip the item: up to a `;` at depth 0, or the end of its first
            // brace block.
            let mut depth = 0usize;
            while i < toks.len() {
                match &toks[i] {
                    Tok::Punct('{' | '(' | '[') => depth += 1,
                    Tok::Punct('}' | ')' | ']') => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 && toks[i] == Tok::Punct('}') {
                            i += 1;
                            break;
                        }
                    }
                    Tok::Punct(';') if depth == 0 => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// Every module path of `src/` (`crate`, `crate::store`, ...) and its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .expect("read src")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().expect("stem").to_string_lossy().to_string();
            if p.is_dir() {
                walk(&p, &format!("{prefix}::{name}"), out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "mod" => prefix.to_string(),
                    "lib" if prefix == "crate" => prefix.to_string(),
                    "main" if prefix == "crate" => continue, // the binary
                    _ => format!("{prefix}::{name}"),
                };
                out.insert(module, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, "crate", &mut out);
    out
}

/// The paths (as segments, absolute from `crate`) that `toks` of module
/// `here` names.
fn paths(toks: &[Tok], here: &str, known: &BTreeSet<String>) -> Vec<Vec<String>> {
    let here: Vec<String> = here.split("::").map(String::from).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let Tok::Ident(first) = &toks[i] else {
            i += 1;
            continue;
        };
        // A path starts here only if not preceded by `::` or `.`.
        if i > 0 && matches!(toks[i - 1], Tok::Path | Tok::Punct('.')) {
            i += 1;
            continue;
        }
        // `pub(crate)`, `&self`: a keyword is a path only when `::` follows.
        if toks.get(i + 1) != Some(&Tok::Path) {
            i += 1;
            continue;
        }
        let base: Option<Vec<String>> = match first.as_str() {
            "crate" => Some(vec!["crate".into()]),
            "super" => Some(here[..here.len() - 1].to_vec()),
            "self" => Some(here.clone()),
            name => {
                let mut child = here.clone();
                child.push(name.to_string());
                known.contains(&child.join("::")).then_some(here.clone())
            }
        };
        let Some(mut base) = base else {
            i += 1;
            continue;
        };
        // A bare child module name is its own first segment (`mod name;`
        // declares it, which is no edge).
        let mut j = if matches!(first.as_str(), "crate" | "super" | "self") {
            i + 1
        } else {
            i
        };
        // `super::super::`
        while toks.get(j) == Some(&Tok::Path)
            && toks.get(j + 1) == Some(&Tok::Ident("super".into()))
        {
            base.pop();
            j += 2;
        }
        j = tree(toks, j, &base, &mut out);
        if j <= i {
            j = i + 1;
        }
        i = j;
    }
    out
}

/// Reads a use tree or path continuing at `j` (`::a::b`, `::{a, b::c}`,
/// or for a bare child `name::...`) under `base`, pushing each leaf.
fn tree(toks: &[Tok], mut j: usize, base: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = base.to_vec();
    loop {
        // Optional leading `::` (absent for a bare child's first segment).
        if toks.get(j) == Some(&Tok::Path) {
            j += 1;
        }
        match toks.get(j) {
            Some(Tok::Ident(s)) if s != "self" => {
                path.push(s.clone());
                j += 1;
                if toks.get(j) != Some(&Tok::Path) {
                    out.push(path);
                    return j;
                }
            }
            Some(Tok::Ident(_)) => {
                // `self` inside a group: the group's own path.
                out.push(path);
                return j + 1;
            }
            Some(Tok::Punct('{')) => {
                j += 1;
                loop {
                    match toks.get(j) {
                        Some(Tok::Punct('}')) | None => return j + 1,
                        Some(Tok::Punct(',')) => j += 1,
                        Some(Tok::Ident(a)) if a == "as" => j += 2,
                        _ => {
                            let before = j;
                            j = tree(toks, j, &path, out);
                            if j == before {
                                j += 1;
                            }
                        }
                    }
                }
            }
            _ => {
                out.push(path);
                return j;
            }
        }
    }
}

/// The module graph: for each module, the other modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = modules(src);
    let known: BTreeSet<String> = files.keys().cloned().collect();
    let mut g = BTreeMap::new();
    for (module, file) in &files {
        let text = fs::read_to_string(file).expect("read source");
        let toks = without_tests(tokens(&text));
        let mut edges = BTreeSet::new();
        for path in paths(&toks, module, &known) {
            // The longest prefix that is a module.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|p| known.contains(p));
            if let Some(t) = target
                && &t != module
            {
                edges.insert(t);
            }
        }
        g.insert(module.clone(), edges);
    }
    g
}

/// Every circle of `g` (one per strongly connected component of more than
/// one module), each as the modules of its component.
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm.
    struct S<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut S<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in &s.g[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("low");
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("low");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = S {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Within a circle's component, the edges between its members.
fn describe(g: &BTreeMap<String, BTreeSet<String>>, comp: &[String]) -> String {
    let mut lines = Vec::new();
    for a in comp {
        for b in &g[a] {
            if comp.contains(b) {
                lines.push(format!("  {a} -> {b}"));
            }
        }
    }
    lines.join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The import circles still in `src/`, each as its component's modules,
/// sorted, exactly as the test reports them. This list must only shrink:
/// never add an entry, never add a module to one. Each is being broken by
/// its owner, who removes (or shrinks) the entry in the change that does.
const KNOWN_CIRCLES: &[&[&str]] = &[];

/// The circles of `found` not in `known`, and the entries of `known` that
/// are not exactly a circle of `found`, as messages.
fn unexpected(
    g: &BTreeMap<String, BTreeSet<String>>,
    found: &[Vec<String>],
    known: &[&[&str]],
) -> Vec<String> {
    let known: Vec<Vec<String>> = known
        .iter()
        .map(|c| {
            let mut c: Vec<String> = c.iter().map(|m| m.to_string()).collect();
            c.sort();
            c
        })
        .collect();
    let mut out: Vec<String> = found
        .iter()
        .filter(|c| !known.contains(c))
        .map(|c| format!("an import circle: {}\n{}", c.join(" <-> "), describe(g, c)))
        .collect();
    for k in known.iter().filter(|k| !found.contains(k)) {
        let now: Vec<String> = found
            .iter()
            .filter(|c| c.iter().any(|m| k.contains(m)))
            .map(|c| format!("{c:?}"))
            .collect();
        out.push(format!(
            "KNOWN_CIRCLES lists {k:?}, which is no longer a circle exactly: remove the entry{}",
            if now.is_empty() {
                String::new()
            } else {
                format!(" (or shrink it to what is left: {})", now.join(", "))
            }
        ));
    }
    out
}

#[test]
fn no_module_of_src_imports_itself_through_others() {
    let g = graph(&src());
    let found = circles(&g);
    let problems = unexpected(&g, &found, KNOWN_CIRCLES);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn known_circles_are_sorted_and_disjoint() {
    let mut seen = BTreeSet::new();
    for c in KNOWN_CIRCLES {
        assert!(c.len() > 1, "{c:?} is no circle");
        assert!(c.windows(2).all(|w| w[0] < w[1]), "{c:?} is not sorted");
        for m in *c {
            assert!(seen.insert(*m), "{m} is in two entries");
        }
    }
}

#[test]
fn the_checker_sees_a_circle_and_its_kinds_of_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = dir.path();
    fs::create_dir_all(s.join("store")).expect("mkdir");
    let write = |rel: &str, text: &str| fs::write(s.join(rel), text).expect("write");
    write(
        "lib.rs",
        "pub mod a; pub(crate) mod b; pub mod c; pub mod store;",
    );
    // a -> b through a use group; b -> a through an inline path.
    write(
        "a.rs",
        "use crate::{b::{self, X}, store::Y as Z};\n// crate::c::nothing\n",
    );
    write(
        "b.rs",
        "fn f() { let _ = \"crate::c\"; crate::a::g(); }\n#[cfg(test)]\nmod tests { use crate::c::T; }\n",
    );
    // A parent's declaration of its child is no edge; its code naming the
    // child is, and so is the child naming its parent: store <-> log.
    write("store/mod.rs", "pub mod log;\nfn f() { log::append(); }");
    write("store/log.rs", "use super::Tx;\nfn g() { crate::c::h(); }");
    // c -> store::log -> c.
    write(
        "c.rs",
        "pub(crate) fn h(r: &'static str) { let _ = '}'; crate::store::log::k(); }",
    );
    // A parent that only declares its children: no edge to them, so the
    // child may name it.
    fs::create_dir_all(s.join("serve")).expect("mkdir");
    write(
        "serve/mod.rs",
        "mod state;\npub(crate) mod routes;\nfn run() {}",
    );
    write("serve/state.rs", "pub struct App;");
    write(
        "serve/routes.rs",
        "use super::state::App;\nfn f() { super::run(); }",
    );
    // A parent's re-export of its child is an edge: re <-> re::x.
    fs::create_dir_all(s.join("re")).expect("mkdir");
    write("re/mod.rs", "mod x;\npub use x::Y;\npub struct Z;");
    write("re/x.rs", "pub struct Y(crate::re::Z);");
    let g = graph(s);
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(g["crate::a"], set(&["crate::b", "crate::store"]));
    assert_eq!(
        g["crate::b"],
        set(&["crate::a"]),
        "a string or test code is no edge"
    );
    assert_eq!(g["crate::store"], set(&["crate::store::log"]));
    assert_eq!(g["crate::store::log"], set(&["crate::store", "crate::c"]));
    assert_eq!(g["crate::c"], set(&["crate::store::log"]));
    assert_eq!(g["crate::serve"], set(&[]), "declarations are no edge");
    assert_eq!(
        g["crate::serve::routes"],
        set(&["crate::serve", "crate::serve::state"])
    );
    assert_eq!(g["crate::re"], set(&["crate::re::x"]), "a re-export is");
    assert_eq!(g["crate::re::x"], set(&["crate::re"]));
    assert_eq!(g["crate"], set(&[]));
    let c = circles(&g);
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(c.contains(&vec!["crate::a".into(), "crate::b".into()]));
    assert!(c.contains(&vec![
        "crate::c".into(),
        "crate::store".into(),
        "crate::store::log".into()
    ]));
    assert!(c.contains(&vec!["crate::re".into(), "crate::re::x".into()]));
    // The allowlist: a listed circle passes, an unlisted one fails, and so
    // does a listed one that is gone or has shrunk.
    let ab: &[&str] = &["crate::b", "crate::a"];
    let re: &[&str] = &["crate::re", "crate::re::x"];
    let store: &[&str] = &["crate::c", "crate::store", "crate::store::log"];
    assert!(unexpected(&g, &c, &[ab, re, store]).is_empty());
    let missing = unexpected(&g, &c, &[ab, re]);
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].contains("crate::store::log -> crate::c"),
        "{missing:?}"
    );
    let gone: &[&str] = &["crate::serve", "crate::serve::routes"];
    let stale = unexpected(&g, &c, &[ab, re, store, gone]);
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0].contains("remove the entry"), "{stale:?}");
    let bigger: &[&str] = &["crate::d", "crate::re", "crate::re::x"];
    let shrunk = unexpected(&g, &c, &[ab, bigger, store]);
    assert_eq!(shrunk.len(), 2, "{shrunk:?}");
    assert!(shrunk.iter().any(|m| m.contains("shrink it")), "{shrunk:?}");
}
