//! `man/` and `completions/` are generated from the clap definitions and
//! committed; this fails when they drift from the CLI. `RELAY_BLESS=1`
//! rewrites them instead.

use std::fs;
use std::path::Path;

use crate::harness::Relay;

const FIX: &str = "regenerate with: RELAY_BLESS=1 cargo test --test integration generated";

fn check(committed: &Path, fresh: &[u8], bless: bool) {
    if bless {
        if let Some(dir) = committed.parent() {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        fs::write(committed, fresh).unwrap_or_else(|e| panic!("{}: {e}", committed.display()));
        return;
    }
    let old = fs::read(committed).unwrap_or_default();
    assert!(
        old == fresh,
        "{} is stale (it differs from what the CLI generates); {FIX}",
        committed.display()
    );
}

#[test]
fn man_pages_and_completions_match_the_cli() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("RELAY_BLESS").is_some_and(|v| v == "1");
    let r = Relay::new();
    let out = r.scratch().join("man");
    let out_arg = out.to_string_lossy().to_string();
    r.cmd(["man", "--out", &out_arg]).success();
    let mut fresh: Vec<String> = fs::read_dir(&out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    fresh.sort();
    assert!(
        fresh.contains(&"relay.1".to_string()) && fresh.len() > 10,
        "{fresh:?}"
    );
    for name in &fresh {
        let page = fs::read(out.join(name)).unwrap_or_default();
        assert!(page.starts_with(b".ie"), "{name} is not a roff page");
        check(&root.join("man").join(name), &page, bless);
    }
    if !bless {
        let mut committed: Vec<String> = fs::read_dir(root.join("man"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        committed.sort();
        assert_eq!(
            committed, fresh,
            "man/ has pages the CLI no longer makes, or lacks some; {FIX}"
        );
    }
    for (shell, file, marker) in [
        ("bash", "relay.bash", "_relay()"),
        ("zsh", "_relay", "#compdef relay"),
        ("fish", "relay.fish", "complete -c relay"),
    ] {
        let script = r.cmd(["completions", shell]).success().stdout;
        assert!(script.contains(marker), "{shell} completion lacks {marker}");
        assert!(script.contains("dlq") && script.contains("idempotency-key"));
        check(
            &root.join("completions").join(file),
            script.as_bytes(),
            bless,
        );
    }
}

#[test]
fn completions_reject_unknown_shells_with_usage_error() {
    Relay::new().cmd(["completions", "tcsh"]).code(64);
}

/// The README's generated tables: between `<!-- generated: NAME ... -->` and
/// `<!-- end generated -->`, exactly what relay's registries print.
#[test]
fn the_readme_tables_match_their_registries() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let bless = std::env::var_os("RELAY_BLESS").is_some_and(|v| v == "1");
    let mut md = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (name, fresh) in [
        ("envvars", relay::envvars::markdown_table()),
        ("exit-codes", relay::generate::exit_codes_markdown()),
        ("config", relay::config::markdown_table()),
    ] {
        let open = format!("<!-- generated: {name} ");
        let close = "<!-- end generated -->";
        let start = md
            .find(&open)
            .and_then(|i| md[i..].find("-->\n").map(|j| i + j + 4))
            .unwrap_or_else(|| {
                panic!("README.md lacks the `{open}...-->` marker of a generated table")
            });
        let end = start
            + md[start..]
                .find(close)
                .unwrap_or_else(|| panic!("README.md: the {name} table has no `{close}`"));
        if bless {
            md.replace_range(start..end, &fresh);
        } else {
            assert!(
                md[start..end] == fresh,
                "README.md's {name} table is stale; {FIX}\n--- expected\n{fresh}"
            );
        }
    }
    if bless {
        fs::write(&path, md).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Every `RELAY_*` name in `src/` is in the registry (src/envvars.rs).
#[test]
fn every_relay_environment_variable_is_registered() {
    fn names(dir: &Path, skip: &Path, found: &mut std::collections::BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.map(|e| e.path()).unwrap_or_default();
            if path.is_dir() {
                names(&path, skip, found);
                continue;
            }
            if path == skip {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            for (i, _) in text.match_indices("RELAY_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.len() > "RELAY_".len() && !name.ends_with('_') {
                    found.insert(name);
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut used = std::collections::BTreeSet::new();
    names(&root.join("src"), &root.join("src/envvars.rs"), &mut used);
    let registered: std::collections::BTreeSet<String> = relay::envvars::ALL
        .iter()
        .map(|v| v.name.to_string())
        .collect();
    let missing: Vec<&String> = used.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "src/ uses {missing:?}, which src/envvars.rs does not list: add an entry (name, scope, meaning, default), then {FIX}"
    );
}

/// `relay --help` ends with the exit codes, after the command list; each
/// command's long help lists its own; the man page has EXIT STATUS,
/// ENVIRONMENT (every variable relay reads or sets), FILES and EXAMPLES.
#[test]
fn help_and_man_pages_carry_exit_codes_environment_files_and_examples() {
    let r = Relay::new();
    let help = r.cmd(["--help"]).success().stdout;
    let commands = help.find("Commands:").unwrap_or(usize::MAX);
    let exits = help.find("Exit status:").unwrap_or(0);
    assert!(
        commands < exits,
        "no exit codes after the command list:\n{help}"
    );
    for (code, meaning) in relay::generate::EXIT_CODES {
        assert!(
            help.contains(&format!("{code:>3}  {meaning}")),
            "{code} missing:\n{help}"
        );
    }
    let send = r.cmd(["send", "--help"]).success().stdout;
    assert!(
        send.contains("Exit status:") && send.contains(" 66  no input"),
        "{send}"
    );
    assert!(!send.contains(" 130  "), "send never exits 130:\n{send}");
    let man = r.cmd(["man"]).success().stdout;
    assert!(man.starts_with(".ie"), "piped, `relay man` prints roff");
    for section in [
        ".SH \"EXIT STATUS\"",
        ".SH CONFIGURATION",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH EXAMPLES",
    ] {
        assert!(man.contains(section), "relay.1 lacks {section}");
    }
    for v in relay::envvars::ALL
        .iter()
        .filter(|v| v.scope != relay::envvars::Scope::Suite)
    {
        assert!(
            man.contains(v.name),
            "relay.1's ENVIRONMENT lacks {}",
            v.name
        );
    }
    // CONFIGURATION: every knob, with what it accepts and its default, in
    // relay.1 and relay-config.1 (whose committed copy the test above
    // keeps fresh).
    let config_page =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/relay-config.1"))
            .unwrap_or_default();
    let section = |page: &str| -> String {
        let start = page.find(".SH CONFIGURATION").unwrap_or(page.len());
        let end = page[start..]
            .find(".SH ENVIRONMENT")
            .map_or(page.len(), |i| start + i);
        page[start..end].to_string()
    };
    for (name, page) in [("relay.1", &man), ("relay-config.1", &config_page)] {
        let section = section(page);
        for d in relay::config::docs() {
            let entry = format!(".TP\n\\fB{}\\fR\n", d.key);
            let at = section
                .find(&entry)
                .unwrap_or_else(|| panic!("{name}'s CONFIGURATION lacks {}", d.key));
            let text = section[at + entry.len()..].lines().next().unwrap_or("");
            assert!(
                text.contains(&format!("default {}.", d.default.replace('-', "\\-"))),
                "{name}: {}: {text}",
                d.key
            );
        }
    }
}

/// Every page a man page names (`relay\-config\-validate(1)` in its
/// SUBCOMMANDS) is a page of man/: none points at a page that is not there.
#[test]
fn every_man_page_named_in_a_man_page_exists() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut named = Vec::new();
    for entry in fs::read_dir(&dir).expect("man/").flatten() {
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for word in text.split_whitespace() {
            if let Some(page) = word.strip_suffix("(1)")
                && page.starts_with("relay")
            {
                named.push((entry.file_name(), page.replace("\\-", "-")));
            }
        }
    }
    assert!(
        named.iter().any(|(_, p)| p == "relay-config-validate"),
        "relay-config.1 names its subcommands' pages: {named:?}"
    );
    for (from, page) in &named {
        assert!(
            dir.join(format!("{page}.1")).is_file(),
            "{from:?} names {page}(1), which man/ lacks; {FIX}"
        );
    }
    let validate = fs::read_to_string(dir.join("relay-config-validate.1")).unwrap_or_default();
    assert!(
        validate.contains("an unknown key") && validate.contains("78"),
        "relay-config-validate.1 says what validate does:\n{validate}"
    );
}
