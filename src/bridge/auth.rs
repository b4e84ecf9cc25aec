//! Credentials in the bridge's NATS URL: `nats://USER:PASSWORD@HOST:PORT`
//! or `nats://TOKEN@HOST:PORT` (percent-encoded where they need it), the
//! same on every server of a cluster's comma-separated list. The client is
//! given the addresses without them and the credentials apart (it would
//! not take them from the URL), and what relay shows of the URL (status
//! lines, `relay status`, events, errors) is `redact`ed: the password or
//! token is `***`. A leaf of `bridge`.

use crate::error::{Error, Result};

/// How the bridge authenticates.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// No credentials in the URL.
    #[default]
    None,
    /// `USER:PASSWORD@`.
    User {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// `TOKEN@`.
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::User { user, .. } => write!(f, "User({user}:***)"),
            Auth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl Auth {
    /// What the credentials are, for an error (never the secret).
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Auth::None => "the URL has no credentials".into(),
            Auth::User { user, .. } => format!("user '{user}' and its password"),
            Auth::Token(_) => "the token in the URL".into(),
        }
    }
}

/// The servers of a NATS URL list, without their credentials, and those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// Each server's URL, credentials removed.
    pub addrs: Vec<String>,
    /// The credentials.
    pub auth: Auth,
    /// The list as shown (`redact`ed).
    pub shown: String,
}

/// Parses a comma-separated NATS URL list: a usage error (naming the
/// server, redacted) if one is no URL, or if the servers carry different
/// credentials (a client has one identity).
pub fn parse(url: &str) -> Result<Servers> {
    let mut addrs = Vec::new();
    let mut auth: Option<Auth> = None;
    for server in url.split(',').map(str::trim) {
        let bad = || {
            Error::Usage(format!(
                "invalid NATS URL '{}': use nats://HOST:PORT, with credentials nats://USER:PASSWORD@HOST:PORT or nats://TOKEN@HOST:PORT (comma-separated for a cluster)",
                crate::output::printable(&redact(server))
            ))
        };
        let with_scheme = if server.contains("://") {
            server.to_string()
        } else {
            format!("nats://{server}")
        };
        let (plain, mine) = split_userinfo(&with_scheme);
        if plain.parse::<async_nats::ServerAddr>().is_err() {
            return Err(bad());
        }
        let mine = match mine {
            None => Auth::None,
            Some(info) => match info.split_once(':') {
                Some((u, p)) => Auth::User {
                    user: decode(u).ok_or_else(bad)?,
                    password: decode(p).ok_or_else(bad)?,
                },
                None => Auth::Token(decode(info).ok_or_else(bad)?),
            },
        };
        match &auth {
            Some(a) if *a != mine => {
                return Err(Error::Usage(format!(
                    "the NATS URLs '{}' carry different credentials: give every server the same (one user or token)",
                    crate::output::printable(&redact(url))
                )));
            }
            Some(_) => {}
            None => auth = Some(mine),
        }
        addrs.push(plain);
    }
    Ok(Servers {
        addrs,
        auth: auth.unwrap_or_default(),
        shown: redact(url),
    })
}

/// `url` (one server or a comma-separated list) with every password or
/// token replaced by `***`; the user stays. Works on any text, a URL or not.
#[must_use]
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (plain, info) = split_userinfo(server);
            match info {
                None => server.to_string(),
                Some(info) => {
                    let shown = match info.split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None => "***".to_string(),
                    };
                    let at = plain.find("://").map_or(0, |i| i + 3);
                    format!("{}{shown}@{}", &plain[..at], &plain[at..])
                }
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `server` without its userinfo (`USER:PASS@` or `TOKEN@`), and that.
fn split_userinfo(server: &str) -> (String, Option<&str>) {
    let start = server.find("://").map_or(0, |i| i + 3);
    let rest = &server[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => (
            format!("{}{}", &server[..start], &rest[at + 1..]),
            Some(&rest[..at]),
        ),
        None => (server.to_string(), None),
    }
}

/// Percent-decodes `s`; `None` if it is not valid UTF-8 once decoded.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_urls_and_redacted() {
        let s = parse("nats://u:p%40ss@h1:4222, nats://u:p%40ss@h2:4222")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.addrs, ["nats://h1:4222", "nats://h2:4222"]);
        assert_eq!(
            s.auth,
            Auth::User {
                user: "u".into(),
                password: "p@ss".into()
            }
        );
        assert_eq!(s.shown, "nats://u:***@h1:4222, nats://u:***@h2:4222");
        assert!(!format!("{s:?}").contains("p@ss"));
        let t = parse("nats://s3cret@h:4222").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.auth, Auth::Token("s3cret".into()));
        assert_eq!(t.shown, "nats://***@h:4222");
        assert!(!format!("{t:?}").contains("s3cret"));
        let n = parse("nats://h:4222").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((n.auth, n.shown), (Auth::None, "nats://h:4222".into()));
        let m = parse("127.0.0.1:4222").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.addrs, ["nats://127.0.0.1:4222"]);
    }

    #[test]
    fn different_credentials_and_bad_urls_are_usage_errors_without_the_secret() {
        let e = parse("nats://u:pw1xx@h1:4222,nats://u:pw2yy@h2:4222")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("different credentials"), "{e}");
        assert!(!e.contains("pw1xx") && !e.contains("pw2yy"), "{e}");
        let e = parse("nats://u:secret@:::")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("invalid NATS URL") && !e.contains("secret"),
            "{e}"
        );
        assert_eq!(redact("no url at all"), "no url at all");
        assert_eq!(redact("tls://a:b@h/x@y"), "tls://a:***@h/x@y");
    }
}
