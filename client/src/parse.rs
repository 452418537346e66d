//! Parsing of command-line values: addresses, sizes, protections, mmap
//! flags, durations and operation mixes; and the short names the client
//! prints for fault outcomes and paths.
//!
//! Every function returns `Result<_, String>` so it can be used directly as
//! a clap `value_parser`; the message is what the user sees after
//! `error: invalid value ...`.

use std::time::Duration;
use vmasim_proto::v1::{FaultOutcome, FaultPath, MapFlag, Prot};

/// Parses an address: hex with a `0x` prefix (`0x7f00_0000`) or decimal.
/// Underscores are allowed as digit separators.
pub fn parse_addr(s: &str) -> Result<u64, String> {
    let t: String = s.trim().chars().filter(|&c| c != '_').collect();
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        t.parse::<u64>()
    };
    r.map_err(|_| format!("`{s}` is not an address (use hex 0x... or decimal)"))
}

/// Parses a size: a number (hex or decimal) with an optional binary suffix
/// `K`, `M`, `G`, `T` (powers of 1024; `KiB`/`KB`/`k` spellings accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let err = || format!("`{s}` is not a size (e.g. 4096, 0x1000, 4K, 2M, 1G)");
    if t.starts_with("0x") || t.starts_with("0X") {
        return parse_addr(t).map_err(|_| err());
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n = parse_addr(num).map_err(|_| err())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Parses a protection: `rw-`/`r-x`/`---` style (as in `/proc/PID/maps`,
/// a trailing `p`/`s` is ignored), a comma list `r,w,x` / `read,write`,
/// `none`, or a number.
pub fn parse_prot(s: &str) -> Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let err = || format!("`{s}` is not a protection (e.g. rw-, r-x, r,w, none)");
    if t.is_empty() {
        return Err(err());
    }
    if t == "none" || t == "---" {
        return Ok(Prot::None as u32);
    }
    if let Ok(n) = parse_addr(&t) {
        return u32::try_from(n).map_err(|_| err());
    }
    if t.contains(',') || ["read", "write", "exec"].contains(&t.as_str()) {
        let mut p = 0;
        for part in t.split(',') {
            p |= match part.trim() {
                "r" | "read" => Prot::Read as u32,
                "w" | "write" => Prot::Write as u32,
                "x" | "exec" => Prot::Exec as u32,
                "none" => 0,
                _ => return Err(err()),
            };
        }
        return Ok(p);
    }
    // rwx style, positional or not: every char must be r, w, x or -.
    let body = t
        .strip_suffix('p')
        .or_else(|| t.strip_suffix('s'))
        .filter(|b| b.len() == 3)
        .unwrap_or(&t);
    let mut p = 0;
    for c in body.chars() {
        p |= match c {
            'r' => Prot::Read as u32,
            'w' => Prot::Write as u32,
            'x' => Prot::Exec as u32,
            '-' => 0,
            _ => return Err(err()),
        };
    }
    Ok(p)
}

/// Formats a protection as in `/proc/PID/maps` (`rw-`).
pub fn format_prot(prot: u32) -> String {
    let b = |bit: Prot, c: char| if prot & bit as u32 != 0 { c } else { '-' };
    [b(Prot::Read, 'r'), b(Prot::Write, 'w'), b(Prot::Exec, 'x')]
        .iter()
        .collect()
}

/// Parses mmap flags: a comma list of `private`, `shared`, `anonymous`
/// (`anon`), `fixed`, `fixed_noreplace` (`noreplace`), each with or without
/// a `MAP_` prefix, or a number.
pub fn parse_map_flags(s: &str) -> Result<u32, String> {
    if let Ok(n) = parse_addr(s) {
        return u32::try_from(n).map_err(|_| format!("`{s}`: flags do not fit in 32 bits"));
    }
    let mut f = 0;
    for part in s.split([',', '|']) {
        let p = part.trim().to_ascii_lowercase();
        let p = p.strip_prefix("map_").unwrap_or(&p);
        f |= match p.replace('-', "_").as_str() {
            "private" => MapFlag::MapPrivate as u32,
            "shared" => MapFlag::MapShared as u32,
            "anonymous" | "anon" => MapFlag::MapAnonymous as u32,
            "fixed" => MapFlag::MapFixed as u32,
            "fixed_noreplace" | "noreplace" => MapFlag::MapFixedNoreplace as u32,
            "" => 0,
            other => {
                return Err(format!(
                    "unknown mmap flag `{other}` (private, shared, anonymous, fixed, fixed_noreplace)"
                ));
            }
        };
    }
    Ok(f)
}

/// `mmap --flags` as given: named flags are added to the defaults, a
/// number is sent exactly (see `cmd::mmap::mmap_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapFlagsArg {
    /// The `MAP_*` bits named or written.
    pub bits: u32,
    /// Written as a number.
    pub exact: bool,
}

/// Parses `mmap --flags` ([`parse_map_flags`], remembering whether it was
/// a number).
pub fn parse_map_flags_arg(s: &str) -> Result<MapFlagsArg, String> {
    Ok(MapFlagsArg {
        bits: parse_map_flags(s)?,
        exact: parse_addr(s).is_ok(),
    })
}

/// Parses mremap flags: a comma list of `maymove`, `fixed`, `dontunmap`
/// (with or without `MREMAP_`), or a number.
pub fn parse_mremap_flags(s: &str) -> Result<u32, String> {
    use vmasim_proto::v1::MremapFlag;
    if let Ok(n) = parse_addr(s) {
        return u32::try_from(n).map_err(|_| format!("`{s}`: flags do not fit in 32 bits"));
    }
    let mut f = 0;
    for part in s.split([',', '|']) {
        let p = part.trim().to_ascii_lowercase();
        let p = p.strip_prefix("mremap_").unwrap_or(&p);
        f |= match p {
            "maymove" => MremapFlag::MremapMaymove as u32,
            "fixed" => MremapFlag::MremapFixed as u32,
            "dontunmap" => MremapFlag::MremapDontunmap as u32,
            "" => 0,
            // A bit without a name, as format_mremap_flags prints it.
            other if parse_addr(other).is_ok_and(|n| n <= u64::from(u32::MAX)) => {
                parse_addr(other).map_or(0, |n| n as u32)
            }
            other => {
                return Err(format!(
                    "unknown mremap flag `{other}` (maymove, fixed, dontunmap)"
                ));
            }
        };
    }
    Ok(f)
}

/// Parses madvise advice: `dontneed`, `free`, `dontfork`, `dofork`,
/// `wipeonfork`, `keeponfork` (with or without `MADV_`), or a number.
pub fn parse_advice(s: &str) -> Result<u32, String> {
    use vmasim_proto::v1::Advice;
    if let Ok(n) = parse_addr(s) {
        return u32::try_from(n).map_err(|_| format!("`{s}`: advice does not fit in 32 bits"));
    }
    let p = s.trim().to_ascii_uppercase();
    let name = if p.starts_with("MADV_") {
        p
    } else {
        format!("MADV_{p}")
    };
    match Advice::from_str_name(&name) {
        Some(a) if a != Advice::MadvNormal => Ok(a as u32),
        _ => Err(format!(
            "unknown advice `{s}` (dontneed, free, dontfork, dofork, wipeonfork, keeponfork)"
        )),
    }
}

/// Parses a duration: `30s`, `1m30s`, `500ms`, or a plain number of
/// seconds (`0` = no limit where the command allows it).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(t).map_err(|e| format!("`{s}` is not a duration (e.g. 30s, 2m): {e}"))
}

/// Short name of a fault outcome (`ANON_ZERO_FILL`).
pub fn outcome_name(o: i32) -> String {
    FaultOutcome::try_from(o)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("FAULT_OUTCOME_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("outcome {o}"))
}

/// Short name of a fault path (`PER_VMA_LOCK`).
pub fn path_name(p: i32) -> String {
    FaultPath::try_from(p)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("FAULT_PATH_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("path {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("0x7f00").unwrap(), 0x7f00);
        assert_eq!(parse_addr("4096").unwrap(), 4096);
        assert_eq!(parse_addr("0x7fff_0000").unwrap(), 0x7fff_0000);
        assert!(parse_addr("zz").is_err());
        assert!(parse_addr("-1").is_err());
        assert!(parse_addr("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("2M").unwrap(), 2 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert_eq!(parse_size("0x2000").unwrap(), 0x2000);
        assert_eq!(parse_size("4kib").unwrap(), 4096);
        assert!(parse_size("4Q").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn prots() {
        assert_eq!(parse_prot("rw-").unwrap(), 3);
        assert_eq!(parse_prot("r-x").unwrap(), 5);
        assert_eq!(parse_prot("r,w,x").unwrap(), 7);
        assert_eq!(parse_prot("rw").unwrap(), 3);
        assert_eq!(parse_prot("none").unwrap(), 0);
        assert_eq!(parse_prot("---").unwrap(), 0);
        assert_eq!(parse_prot("rw-p").unwrap(), 3);
        assert_eq!(parse_prot("read").unwrap(), 1);
        assert_eq!(parse_prot("5").unwrap(), 5);
        assert!(parse_prot("rq").is_err());
        assert_eq!(format_prot(5), "r-x");
        assert_eq!(format_prot(0), "---");
    }

    #[test]
    fn flags() {
        assert_eq!(parse_map_flags("private,anonymous").unwrap(), 0x22);
        assert_eq!(parse_map_flags("MAP_SHARED|MAP_FIXED").unwrap(), 0x11);
        assert_eq!(
            parse_map_flags("private,fixed-noreplace").unwrap(),
            0x10_0002
        );
        assert_eq!(parse_map_flags("0x22").unwrap(), 0x22);
        assert!(parse_map_flags("private,bogus").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
    }
}
