//! The lexical layer of strace's notation: the argument list of a call
//! (nesting, string literals, `-y` `<...>` annotations), `/* ... */`
//! comments and C-style escapes. Nothing here knows a syscall.

/// Index just past the string literal that starts at `i` (a `"`).
pub(super) fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Index just past the `-y` annotation `<...>` that starts at `i` (a `<`).
/// strace escapes `<` and `>` inside paths; `[...]` (sockets with `-yy`,
/// e.g. `1.2.3.4:5->6.7.8.9:10`) may contain a raw `>`.
pub(super) fn skip_annotation(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            b'>' if depth == 0 => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the `<` at `i` opens an fd annotation (`3</path>`) rather than a
/// shift (`21<<MAP_HUGE_SHIFT`).
pub(super) fn is_annotation(b: &[u8], i: usize) -> bool {
    i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1) != Some(&b'<')
}

/// Scans an argument list that starts right after `(`: returns the trimmed
/// top-level arguments and the index of the closing `)`.
pub(super) fn scan_args(s: &str) -> Option<(Vec<&str>, usize)> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut start = 0;
    let mut args = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = skip_string(b, i)?;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = i + 2 + s.get(i + 2..)?.find("*/")? + 2;
                continue;
            }
            b'<' if is_annotation(b, i) => {
                i = skip_annotation(b, i)?;
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' if depth == 0 => {
                let last = s[start..i].trim();
                if !(args.is_empty() && last.is_empty()) {
                    args.push(last);
                }
                return Some((args, i));
            }
            b')' | b']' | b'}' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                args.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Strips `/* ... */` comments (`0x10 /* MAP_??? */`).
pub(super) fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find("*/") {
            Some(j) => rest = &rest[i + 2 + j + 2..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes strace's C-style escapes (`\t`, `\76`, `\x3e`, `\\`).
pub(super) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        let c = b[i];
        i += 1;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'v' => out.push(0x0b),
            b'f' => out.push(0x0c),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'x' => {
                let n = b[i..]
                    .iter()
                    .take(2)
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
                let h = std::str::from_utf8(&b[i..i + n]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => out.push(v),
                    Err(_) => out.extend_from_slice(b"\\x"),
                }
                i += n;
            }
            b'0'..=b'7' => {
                let n = 1 + b[i..]
                    .iter()
                    .take(2)
                    .take_while(|c| (b'0'..=b'7').contains(c))
                    .count();
                let o = std::str::from_utf8(&b[i - 1..i - 1 + n]).unwrap_or("");
                out.push(u32::from_str_radix(o, 8).map_or(b'?', |v| v as u8));
                i += n - 1;
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The identifier before `(`, or "" if there is none.
pub(super) fn call_name(s: &str) -> &str {
    let s = s.trim_start();
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if s.as_bytes().get(n) == Some(&b'(') {
        &s[..n]
    } else {
        ""
    }
}
