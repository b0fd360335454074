//! The control protocol: any line is a command or a "bad request"; a silence command
//! carried out on an empty book never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigia_core::command::Command;
use vigia_core::silence::SilenceBook;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    let Ok(cmd) = serde_json::from_str::<Command>(line) else { return };
    let mut book = SilenceBook::default();
    let mut id = 0;
    let _ = vigia_engine::silences::execute(&mut book, &cmd, || { id += 1; id }, 1_796_130_000_000);
});
