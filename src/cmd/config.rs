//! `relay config`: show, get, set, validate and locate config.json.

use std::fs;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::access;
use crate::cli::{ConfigAction, ConfigArgs};
use crate::config::{self, Config};
use crate::context::Ctx;
use crate::error::{Error, IoContext, Result};
use crate::home;
use crate::output;

/// One setting in `relay config show --json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Setting {
    key: &'static str,
    value: Value,
    default: Value,
    /// `file` or `default`.
    source: &'static str,
}

/// Runs `relay config`. The home's config is not required to be valid here:
/// this is how a broken file gets inspected and fixed.
pub fn run(ctx: &Ctx, args: &ConfigArgs) -> Result<()> {
    let path = ctx.home.config_file();
    match &args.action {
        None | Some(ConfigAction::Show) => show(ctx, &path),
        Some(ConfigAction::Get { key }) => get(ctx, &path, key),
        Some(ConfigAction::Set { key, value }) => set(ctx, &path, key, value),
        Some(ConfigAction::Validate { file }) => {
            validate(ctx, file.as_deref().unwrap_or(&path), file.is_some())
        }
        Some(ConfigAction::Path) => output::line(&path.display().to_string()),
    }
}

fn show(ctx: &Ctx, path: &Path) -> Result<()> {
    let cfg = load_reporting(path)?;
    let raw = read_raw(path)?;
    let defaults = Config::default();
    let settings: Vec<Setting> = config::knobs()
        .map(|key| Setting {
            key,
            value: shown(key, cfg.get(key).unwrap_or(Value::Null)),
            default: defaults.get(key).unwrap_or(Value::Null),
            source: if lookup(&raw, key).is_some() {
                "file"
            } else {
                "default"
            },
        })
        .collect();
    if ctx.json {
        return output::json_line(&serde_json::json!({
            "path": path.display().to_string(),
            "exists": path.exists(),
            "settings": settings,
        }));
    }
    let mut t = output::table(&["key", "value", "source"]);
    for s in &settings {
        t.add_row(vec![
            s.key.to_string(),
            s.value.to_string(),
            s.source.to_string(),
        ]);
    }
    output::print_table(&t)
}

/// A setting's value as `show` lists it: a password or token in
/// `bridge.url` redacted (`get bridge.url` gives it as written).
fn shown(key: &str, value: Value) -> Value {
    match value {
        Value::String(url) if key == "bridge.url" => {
            Value::String(crate::bridge::auth::redact(&url))
        }
        other => other,
    }
}

fn get(ctx: &Ctx, path: &Path, key: &str) -> Result<()> {
    let prefix = format!("{key}.");
    if !config::knobs().any(|k| k.starts_with(&prefix)) {
        check_key(key)?;
    }
    let cfg = load_reporting(path)?;
    // A section (e.g. reliability.rateLimit) reads as the object of its knobs.
    let value = cfg.get(key).unwrap_or_else(|| {
        let mut section = Value::Object(Map::new());
        for k in config::knobs().filter(|k| k.starts_with(&prefix)) {
            let _ = set_path(
                &mut section,
                &k[prefix.len()..],
                cfg.get(k).unwrap_or(Value::Null),
            );
        }
        section
    });
    if ctx.json {
        return output::json_line(&serde_json::json!({ "key": key, "value": value }));
    }
    output::line(&value.to_string())
}

fn set(ctx: &Ctx, path: &Path, key: &str, value: &str) -> Result<()> {
    check_key(key)?;
    // A string knob (bridge.url, bridge.host) takes its text as written.
    let text_value =
        || crate::config::is_string_knob(key).then(|| Value::String(value.to_string()));
    let new: Value = serde_json::from_str(value).ok().or_else(text_value).ok_or_else(|| {
        Error::Config(format!(
            "value '{value}' for {key} is not JSON: write numbers and booleans bare (20, 0.5, true) and objects as JSON ({{\"ci.\": 500}})"
        ))
    })?;
    // Serialize writers: read-modify-write under the config lock.
    let lock_dir = ctx.home.root().join("locks");
    home::create_dir_secure(&lock_dir, false)?;
    home::check_dir(&lock_dir, "lock directory")?;
    let lock_path = lock_dir.join("config.lock");
    let (lock, _) = home::create_own(&lock_path, rustix::fs::OFlags::WRONLY, "lock file")?;
    crate::lockwait::flock(&lock, &lock_path, "the config lock")?;

    let mut raw = read_raw(path)?;
    set_path(&mut raw, key, new.clone()).map_err(|parent| {
        Error::Config(format!(
            "config {}: {parent} is not an object; fix the file first",
            path.display()
        ))
    })?;
    let text = serde_json::to_string_pretty(&raw)
        .map_err(|e| Error::Config(format!("cannot render config: {e}")))?;
    // Validate the whole result: nothing is written if any of it is wrong.
    let origin = path.display().to_string();
    config::parse(&text, &origin)?;
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    home::write_new_file(&tmp, format!("{text}\n").as_bytes(), true)?;
    fs::rename(&tmp, path).ctx("cannot replace", path)?;
    home::sync_dir(ctx.home.root())?;
    if ctx.json {
        return output::json_line(&serde_json::json!({ "key": key, "value": new }));
    }
    Ok(())
}

fn validate(ctx: &Ctx, path: &Path, explicit: bool) -> Result<()> {
    // An access rules file named on the command line is checked as one.
    if explicit && path.file_name().is_some_and(|n| n == access::FILE_NAME) {
        if !path.exists() {
            return Err(Error::NoInput(format!(
                "access rules file {} does not exist",
                path.display()
            )));
        }
        let rules = check_rules(path);
        if ctx.json {
            output::json_line(&rules.json)?;
        }
        return rules.verdict(ctx.json);
    }
    let rules = (!explicit).then(|| check_rules(&ctx.home.root().join(access::FILE_NAME)));
    if !path.exists() {
        if explicit {
            return Err(Error::NoInput(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        if ctx.json {
            let mut out = serde_json::json!({
                "path": path.display().to_string(), "exists": false, "valid": true, "warnings": [],
            });
            if let Some(r) = &rules {
                out["accessRules"] = r.json.clone();
            }
            output::json_line(&out)?;
        } else {
            eprintln!("relay: no {} (the defaults apply)", path.display());
        }
        return rules.map_or(Ok(()), |r| r.verdict(ctx.json));
    }
    // Unknown keys are warnings, as DorkOS ignores them; only invalid
    // values make the file invalid (exit 78, from config::load).
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            if let Some(r) = &rules {
                let _ = r.verdict(ctx.json);
            }
            return Err(e);
        }
    };
    if ctx.json {
        let mut out = serde_json::json!({
            "path": path.display().to_string(),
            "exists": true,
            "valid": true,
            "warnings": cfg.warnings,
        });
        if let Some(r) = &rules {
            out["accessRules"] = r.json.clone();
        }
        output::json_line(&out)?;
    } else {
        for w in &cfg.warnings {
            output::warn(w);
        }
        let note = if cfg.warnings.is_empty() {
            String::new()
        } else {
            format!(" ({} unknown key(s) ignored)", cfg.warnings.len())
        };
        eprintln!("relay: {} is valid{note}", path.display());
    }
    rules.map_or(Ok(()), |r| r.verdict(ctx.json))
}

/// What `config validate` found in an access rules file.
struct RulesReport {
    path: String,
    exists: bool,
    /// Why every send is refused, if it is.
    problem: Option<String>,
    warnings: Vec<String>,
    json: Value,
}

impl RulesReport {
    /// Prints the text report (unless `json`) and fails (78) when the file
    /// refuses every send.
    fn verdict(&self, json: bool) -> Result<()> {
        if !json {
            for w in &self.warnings {
                output::warn(w);
            }
        }
        match &self.problem {
            Some(why) => Err(Error::Config(format!(
                "{why}; every send is refused (exit 77) until you {}",
                access::FIX
            ))),
            None => {
                if !json && self.exists {
                    eprintln!("relay: {} is valid", self.path);
                }
                Ok(())
            }
        }
    }
}

/// Checks the access rules file at `path` as sends read it.
fn check_rules(path: &Path) -> RulesReport {
    let checked = access::Rules::check_file(path);
    let exists = std::fs::symlink_metadata(path).is_ok();
    let (problem, count) = match &checked.rules {
        access::Rules::None => (None, 0),
        access::Rules::Some(r) => (None, r.len()),
        access::Rules::Quarantined(why) => (Some(why.clone()), 0),
    };
    let json = serde_json::json!({
        "path": path.display().to_string(),
        "exists": exists,
        "valid": problem.is_none(),
        "rules": count,
        "problem": problem,
        "warnings": checked.warnings,
    });
    RulesReport {
        path: path.display().to_string(),
        exists,
        problem,
        warnings: checked.warnings,
        json,
    }
}

/// Loads the config, printing its warnings.
fn load_reporting(path: &Path) -> Result<Config> {
    let cfg = config::load(path)?;
    for w in &cfg.warnings {
        output::warn(w);
    }
    Ok(cfg)
}

/// The file as a JSON object (`{}` when missing or blank).
fn read_raw(path: &Path) -> Result<Value> {
    let Some(bytes) = config::read_file(path)? else {
        return Ok(Value::Object(Map::new()));
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::Config(format!(
            "config {}: not valid UTF-8 (bad byte at offset {}); fix or remove the file",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    // Validation (with file, line and column) comes from config::parse.
    config::parse(&text, &path.display().to_string())?;
    serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| Error::Config(format!("config {}: invalid JSON: {e}", path.display())))
}

/// Sets the dotted `key` in a JSON object tree, creating objects on the way;
/// fails with the dotted path of a member that is not an object.
fn set_path(root: &mut Value, key: &str, value: Value) -> std::result::Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let Value::Object(map) = node else {
            return Err(parts[..i].join("."));
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return Ok(());
        }
        node = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// The value at a dotted key in a raw config object.
fn lookup<'a>(raw: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(raw, |node, part| node.get(part))
}

fn check_key(key: &str) -> Result<()> {
    if config::knobs().any(|k| k == key) {
        return Ok(());
    }
    // A mistyped key is a usage error (64), not a broken configuration.
    Err(Error::Usage(match config::nearest_key(key) {
        Some(near) => format!(
            "unknown config key '{key}'; did you mean '{near}'? (every key: relay config show)"
        ),
        None => format!("unknown config key '{key}'; every key: relay config show"),
    }))
}
