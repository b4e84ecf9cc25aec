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
