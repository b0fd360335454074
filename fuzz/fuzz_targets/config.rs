//! config.yaml: parsing and validation never panic, whatever the bytes; the YAML tree
//! of any text that parses reads back to the same content from its flow form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigia_api::Node;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((node, _)) = Node::parse_lenient(text) {
        if let Ok(back) = Node::parse(&node.to_flow()) {
            assert!(node.same_content(&back), "flow form differs: {}", node.to_flow());
        }
    }
    let _ = vigia_config::Config::parse_partial(text, std::path::Path::new("config.yaml"));
});
