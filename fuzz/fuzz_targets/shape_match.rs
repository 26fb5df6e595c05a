//! The shaping filter parser (`lvc-ctl shape add-filter --match EXPR`):
//! any text is a match or an error; a match prints as text that parses
//! back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lvc_proto::shape::Match;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = text.parse::<Match>() else {
        return;
    };
    let shown = m.to_string();
    let back: Match = shown
        .parse()
        .unwrap_or_else(|e| panic!("`{text}` printed as `{shown}`, which does not parse: {e}"));
    assert_eq!(back, m, "`{text}` → `{shown}`");
});
