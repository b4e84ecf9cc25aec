//! Query strings: percent-decoding (`+` as space, as in forms; invalid
//! escapes stay as typed) and the first value of a name.

/// The decoded `name=value` pairs of a query string.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// The pairs of `raw` (the part after `?`), or none.
    #[must_use]
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        Query(pairs)
    }

    /// Every value named `name`, in order.
    #[must_use]
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Percent-decoding (`+` as space, as in forms); invalid escapes stay as typed.
#[must_use]
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_takes_the_first() {
        let q = Query::parse(Some("subject=%3E&x=a+b&x=c&flag"));
        assert_eq!(q.get("subject"), Some(">"));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("nope"), None);
        assert_eq!(Query::parse(None).get("x"), None);
    }

    #[test]
    fn decodes_and_tolerates_bad_escapes() {
        assert_eq!(decode("a%2Fb"), "a/b");
        assert_eq!(decode("%2F"), "/");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%4"), "%4");
    }
}
