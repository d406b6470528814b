//! The text format `keel txn` reads from stdin, after etcdctl's interactive `txn`: compares,
//! a blank line, the requests run when every compare holds, a blank line, the requests run
//! otherwise.
//!
//! ```text
//! value("{user42}/balance") = "10"
//! version("{user42}/lock") = "0"
//!
//! put {user42}/balance "0"
//! put {user42}/spent 10
//!
//! get {user42}/balance
//! ```
//!
//! - A compare is `TARGET("KEY") OP "VALUE"`. `TARGET` is `value`, `version` (or `ver`),
//!   `create` (or `c`, the create revision) or `mod` (or `m`, the mod revision); `OP` is `=`,
//!   `!=`, `>` or `<`. For every target but `value` the value is a number.
//! - A request is `put KEY VALUE`, `get KEY [RANGE_END]` (etcd's range convention: no end is
//!   the single key, `"\x00"` every key from `KEY` on) or `del KEY`.
//! - A word is either bare (no whitespace, no `"`) or double-quoted, with the escapes `\"`,
//!   `\\`, `\n`, `\t`, `\r` and `\xHH` (any byte). Keys and values may hold any bytes.
//! - Lines starting with `#` are comments and are skipped (they do not end a section). Any
//!   section may be empty; the input may end early, leaving the later sections empty.
//!
//! Every key compared, put or deleted must belong to one raft group: give them a common
//! `{hash tag}`.

use keel_client::{
    Compare, CompareOp, CompareTarget, DeleteRequest, PutRequest, RangeRequest, TxnOp, TxnRequest,
};

/// A line of the script that does not parse: its 1-based number and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct ScriptError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses a whole script into a transaction.
pub fn parse(text: &str) -> Result<TxnRequest, ScriptError> {
    let mut txn = TxnRequest::default();
    // 0: compares, 1: success, 2: failure.
    let mut section = 0;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fail = |reason: String| ScriptError { line, reason };
        let trimmed = raw.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.is_empty() {
            section += 1;
            if section > 2 {
                // Trailing blank lines are harmless; anything after them is not.
                if let Some(extra) = text.lines().skip(index).position(is_content) {
                    return Err(ScriptError {
                        line: line + extra,
                        reason: "a fourth section: the format is compares, blank line, \
                                 success requests, blank line, failure requests"
                            .into(),
                    });
                }
                break;
            }
            continue;
        }
        match section {
            0 => txn.compares.push(parse_compare(trimmed).map_err(fail)?),
            1 => txn.success.push(parse_request(trimmed).map_err(fail)?),
            _ => txn.failure.push(parse_request(trimmed).map_err(fail)?),
        }
    }
    Ok(txn)
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// `TARGET("KEY") OP "VALUE"`.
fn parse_compare(line: &str) -> Result<Compare, String> {
    let open = line
        .find('(')
        .ok_or_else(|| format!("expected TARGET(\"KEY\") OP \"VALUE\", got {line:?}"))?;
    let target_name = line[..open].trim();
    let mut rest = Scanner::new(&line[open + 1..]);
    let key = rest
        .word()?
        .ok_or("expected a key inside the parentheses")?;
    rest.skip_space();
    if !rest.eat(")") {
        return Err("expected `)` after the key".into());
    }
    rest.skip_space();
    let op = if rest.eat("!=") {
        CompareOp::NotEqual
    } else if rest.eat("=") {
        CompareOp::Equal
    } else if rest.eat(">") {
        CompareOp::Greater
    } else if rest.eat("<") {
        CompareOp::Less
    } else {
        return Err("expected one of `=`, `!=`, `>`, `<` after `)`".into());
    };
    let value = rest.word()?.ok_or("expected a value after the operator")?;
    rest.end()?;
    let number = || -> Result<u64, String> {
        std::str::from_utf8(&value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{target_name} compares with a number, got {:?}",
                    String::from_utf8_lossy(&value)
                )
            })
    };
    let target = match target_name {
        "value" | "val" => CompareTarget::Value(value.clone()),
        "version" | "ver" => CompareTarget::Version(number()?),
        "create" | "c" => CompareTarget::CreateRevision(number()?),
        "mod" | "m" => CompareTarget::ModRevision(number()?),
        other => {
            return Err(format!(
                "unknown compare target {other:?}; expected value, version, create or mod"
            ));
        }
    };
    Ok(Compare { key, target, op })
}

/// `put KEY VALUE`, `get KEY [END]` or `del KEY`.
fn parse_request(line: &str) -> Result<TxnOp, String> {
    let mut s = Scanner::new(line);
    let verb = s.word()?.unwrap_or_default();
    let op = match verb.as_slice() {
        b"put" => {
            let key = s.word()?.ok_or("put needs a key and a value")?;
            let value = s.word()?.ok_or("put needs a value after the key")?;
            TxnOp::Put(PutRequest::new(key, value))
        }
        b"get" => {
            let key = s.word()?.ok_or("get needs a key")?;
            match s.word()? {
                Some(end) => TxnOp::Range(RangeRequest::between(key, end)),
                None => TxnOp::Range(RangeRequest {
                    key,
                    ..RangeRequest::default()
                }),
            }
        }
        b"del" | b"delete" => {
            TxnOp::Delete(DeleteRequest::new(s.word()?.ok_or("del needs a key")?))
        }
        other => {
            return Err(format!(
                "unknown request {:?}; expected put, get or del",
                String::from_utf8_lossy(other)
            ));
        }
    };
    s.end()?;
    Ok(op)
}

/// Reads words off a line.
struct Scanner<'a> {
    rest: &'a str,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner { rest: text }
    }

    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: &str) -> bool {
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// Checks that nothing but whitespace is left.
    fn end(&mut self) -> Result<(), String> {
        self.skip_space();
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("unexpected {:?} at the end of the line", self.rest))
        }
    }

    /// The next word, bare or quoted; `None` at the end of the line. A bare word stops at
    /// whitespace, a quote or `)`.
    fn word(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.skip_space();
        if self.rest.is_empty() {
            return Ok(None);
        }
        if let Some(quoted) = self.rest.strip_prefix('"') {
            return self.quoted(quoted).map(Some);
        }
        let end = self
            .rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == ')')
            .unwrap_or(self.rest.len());
        if end == 0 {
            return Err(format!("expected a word at {:?}", self.rest));
        }
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(Some(word.as_bytes().to_vec()))
    }

    fn quoted(&mut self, body: &'a str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &body[i + 1..];
                    return Ok(out);
                }
                '\\' => {
                    let (_, e) = chars.next().ok_or("a `\\` ends the line")?;
                    match e {
                        '"' => out.push(b'"'),
                        '\\' => out.push(b'\\'),
                        'n' => out.push(b'\n'),
                        't' => out.push(b'\t'),
                        'r' => out.push(b'\r'),
                        'x' => {
                            let hex: String = chars.by_ref().take(2).map(|(_, h)| h).collect();
                            let byte = u8::from_str_radix(&hex, 16)
                                .ok()
                                .filter(|_| hex.len() == 2)
                                .ok_or_else(|| {
                                    format!("`\\x` needs two hex digits, got {hex:?}")
                                })?;
                            out.push(byte);
                        }
                        other => return Err(format!("unknown escape `\\{other}`")),
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        Err("a quoted word is not closed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_with_three_sections() {
        let txn = parse(
            "# move the balance\n\
             value(\"{u}/balance\") = \"10\"\n\
             mod(\"{u}/lock\") < \"7\"\n\
             \n\
             put {u}/balance 0\n\
             put \"{u}/spent\" \"ten\\x00\\n\"\n\
             del {u}/lock\n\
             \n\
             get {u}/balance\n\
             get {u}/a {u}/z\n",
        )
        .unwrap();
        assert_eq!(
            txn.compares,
            vec![
                Compare {
                    key: b"{u}/balance".to_vec(),
                    target: CompareTarget::Value(b"10".to_vec()),
                    op: CompareOp::Equal,
                },
                Compare {
                    key: b"{u}/lock".to_vec(),
                    target: CompareTarget::ModRevision(7),
                    op: CompareOp::Less,
                },
            ]
        );
        assert_eq!(
            txn.success,
            vec![
                TxnOp::Put(PutRequest::new("{u}/balance", "0")),
                TxnOp::Put(PutRequest::new("{u}/spent", b"ten\0\n".to_vec())),
                TxnOp::Delete(DeleteRequest::new("{u}/lock")),
            ]
        );
        assert_eq!(
            txn.failure,
            vec![
                TxnOp::Range(RangeRequest {
                    key: b"{u}/balance".to_vec(),
                    ..RangeRequest::default()
                }),
                TxnOp::Range(RangeRequest::between("{u}/a", "{u}/z")),
            ]
        );
    }

    #[test]
    fn sections_may_be_empty_or_missing() {
        let txn = parse("\nput k v\n").unwrap();
        assert!(txn.compares.is_empty() && txn.failure.is_empty());
        assert_eq!(txn.success.len(), 1);
        let txn = parse("version(k) > 0\n").unwrap();
        assert_eq!(txn.compares[0].target, CompareTarget::Version(0));
        assert!(parse("").unwrap().compares.is_empty());
        assert!(parse("\n\n\n\n").is_ok(), "trailing blank lines are fine");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("size(\"k\") = \"1\"", 1, "unknown compare target"),
            ("version(\"k\") = \"x\"", 1, "number"),
            ("value(\"k\") == \"1\"", 1, "unexpected"),
            ("value(\"k\" = \"1\"", 1, "`)`"),
            ("\nput k", 2, "value"),
            ("\nfrob k", 2, "unknown request"),
            ("\n\nput k \"open", 3, "not closed"),
            ("\n\nput k \"\\q\"", 3, "unknown escape"),
            ("\n\nput k \"\\x4\"", 3, "two hex digits"),
            ("\n\n\nput k v", 4, "fourth section"),
        ];
        for (text, line, needle) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.reason.contains(needle), "{text:?}: {err}");
        }
    }
}
