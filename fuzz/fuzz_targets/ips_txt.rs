//! ips.txt: every line either a terminal or a warning with its line; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (terminals, warnings) =
        vigia_plugins::terminals::parse_terminals(&text, std::path::Path::new("ips.txt"));
    let lines = text.lines().count();
    assert!(terminals.len() + warnings.len() <= lines.max(1) * 2);
});
