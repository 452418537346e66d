//! The strace log parser: any bytes parse without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (lines, errors) = vmasim_client::strace::parse(&text);
    assert!(lines.len() + errors.len() <= text.lines().count() + 1);
});
