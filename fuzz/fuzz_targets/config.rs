//! The configuration file loader: any text is accepted or refused with a
//! message, never a panic; what is accepted renders to text that parses
//! back to the same configuration and renders to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lvc_proto::config::ConfigFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = ConfigFile::parse(text) else {
        return;
    };
    let rendered = cfg.render();
    let again = ConfigFile::parse(&rendered)
        .unwrap_or_else(|e| panic!("rendered configuration refused: {e}\n{rendered}"));
    assert_eq!(again.render(), rendered, "render is not canonical");
    let _ = cfg.requests();
});
