//! The control protocol decoder: any line is a request or an error reply,
//! never a panic; a decoded request encodes to one line that decodes back
//! to it, and its kind is known.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lvc_proto::{RequestEnvelope, ResponseEnvelope};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<RequestEnvelope>(data) {
        let line = serde_json::to_string(&req).expect("a request encodes");
        assert!(!line.contains('\n'));
        let back: RequestEnvelope = serde_json::from_str(&line).expect("and decodes");
        assert_eq!(back, req);
        let _ = req.request.kind();
    }
    // lvc-ctl's side: whatever a daemon answers.
    let _ = serde_json::from_slice::<ResponseEnvelope>(data);
});
