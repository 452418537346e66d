//! What the recorder reads from `/proc` about a stopped task: its maps
//! with the hidden flags (`smaps`), `start_brk`, its executable, the line
//! of a new mapping, and the machine's kernel.
//!
//! Everything is read through `/proc/TID/...` of the *task* that stopped
//! (not the thread group's leader): at `PTRACE_EVENT_EXIT` the leader may
//! already have dropped its `mm`, the stopped task still holds it.

use std::fs;

/// A task's maps: the lines as printed, and each line's `VmFlags`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `/proc/TID/maps` lines, without newlines.
    pub maps: Vec<String>,
    /// The `VmFlags:` values, one per maps line.
    pub vmflags: Vec<String>,
}

/// Is this `smaps` line a maps header (`start-end perms ...`) rather than
/// a `Key: value` line?
fn is_maps_header(l: &str) -> bool {
    let Some(range) = l.split(' ').next() else {
        return false;
    };
    range
        .split_once('-')
        .is_some_and(|(a, b)| is_hex(a) && is_hex(b))
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits `smaps` text into maps lines and their `VmFlags`.
pub fn parse_smaps(text: &str) -> Snapshot {
    let mut s = Snapshot::default();
    for l in text.lines() {
        if is_maps_header(l) {
            s.maps.push(l.to_string());
            s.vmflags.push(String::new());
        } else if let Some(f) = l.strip_prefix("VmFlags:")
            && let Some(last) = s.vmflags.last_mut()
        {
            *last = f.trim().to_string();
        }
    }
    s
}

/// `/proc/TID/smaps` of a task, split.
pub fn snapshot(tid: i32) -> std::io::Result<Snapshot> {
    Ok(parse_smaps(&fs::read_to_string(format!(
        "/proc/{tid}/smaps"
    ))?))
}

/// `start_brk`: field 47 of `/proc/TID/stat` (`proc(5)`). The command
/// name (field 2) may contain spaces and parentheses, so fields are
/// counted after its closing `)`.
pub fn start_brk(tid: i32) -> std::io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{tid}/stat"))?;
    parse_start_brk(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/PID/stat has no field 47",
        )
    })
}

/// See [`start_brk`].
pub fn parse_start_brk(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 3 is the first after ")"; field 47 is the 45th from there.
    after.split_whitespace().nth(47 - 3)?.parse().ok()
}

/// `/proc/TID/exe`.
pub fn exe(tid: i32) -> String {
    fs::read_link(format!("/proc/{tid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The maps line of the mapping that starts at `addr`, from
/// `/proc/TID/maps` (for a new file mapping's dev, inode and path).
pub fn line_at(tid: i32, addr: u64) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{tid}/maps")).ok()?;
    text.lines()
        .find(|l| {
            l.split_once('-')
                .and_then(|(s, rest)| {
                    let e = rest.split(' ').next()?;
                    Some((
                        u64::from_str_radix(s, 16).ok()?,
                        u64::from_str_radix(e, 16).ok()?,
                    ))
                })
                .is_some_and(|(s, e)| s <= addr && addr < e)
        })
        .map(str::to_string)
}

/// The `Anonymous:` kB of the VMA that contains `addr`, from
/// `/proc/TID/smaps` (anonymous pages mean the VMA has an `anon_vma`).
pub fn anon_kb_at(tid: i32, addr: u64) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{tid}/smaps")).ok()?;
    let mut inside = false;
    for l in text.lines() {
        if is_maps_header(l) {
            let (s, rest) = l.split_once('-')?;
            let e = rest.split(' ').next()?;
            let (s, e) = (
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            );
            inside = s <= addr && addr < e;
        } else if inside && let Some(v) = l.strip_prefix("Anonymous:") {
            return v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

/// `uname -r` and `uname -m`.
pub fn uname() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            u.release().to_string_lossy().into_owned(),
            u.machine().to_string_lossy().into_owned(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_split_keeps_lines_and_flags() {
        let text = "\
55d0c0000000-55d0c0001000 r--p 00000000 fe:01 42                         /usr/bin/true
Size:                  4 kB
VmFlags: rd mr mw me dw sd
7ffc1000-7ffc2000 rw-p 00000000 00:00 0                                  [stack]
Rss:                   4 kB
VmFlags: rd wr mr mw me gd ac
";
        let s = parse_smaps(text);
        assert_eq!(s.maps.len(), 2);
        // This test's own heap-or-stack has anonymous pages.
        let local = 0u64;
        let kb = anon_kb_at(std::process::id() as i32, &local as *const u64 as u64);
        assert!(kb.is_some_and(|k| k > 0), "{kb:?}");
        assert!(s.maps[0].ends_with("/usr/bin/true"));
        assert_eq!(s.vmflags, vec!["rd mr mw me dw sd", "rd wr mr mw me gd ac"]);
    }

    #[test]
    fn start_brk_is_field_47_even_with_spaces_in_comm() {
        // Fields 3..=52 after "(comm)"; field 47 set to 4096*9.
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[47 - 3] = "36864".into();
        let stat = format!("123 (a b) c) {}", fields.join(" "));
        assert_eq!(parse_start_brk(&stat), Some(36864));
        let own = start_brk(std::process::id() as i32).unwrap();
        assert!(own > 0 && own.is_multiple_of(4096), "start_brk {own:#x}");
    }
}
