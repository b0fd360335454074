//! The Telegram HTML splitter, on any text and any limit: never a panic, and plain text
//! (no tag, no entity) always comes back in parts within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigia_engine::alerting::sink::split_html;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limit = 16 + (data.len() % 200);
    let parts = split_html(text, limit);
    if !text.contains(['<', '>', '&']) {
        for part in &parts {
            assert!(part.encode_utf16().count() <= limit, "{limit}: {part:?}");
        }
    }
});
