//! A check script's declaration part (its top level and returned table): loaded under
//! the sandbox's budget, an error or a check, never a panic or a hang.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vigia_lua::{script, HostEnv};

fuzz_target!(|data: &[u8]| {
    let env = Arc::new(HostEnv {
        hostname: "fuzz".into(),
        commands: Arc::default(),
        clients: Arc::default(),
    });
    if let Ok(loaded) = script::load_text(data, "checks/fuzz.lua", env, 4 << 20) {
        let _ = vigia_lua::LuaCheck::new(loaded, "fuzz", None, "fuzz");
    }
});
