//! Fuzzes `parse_request` with any UTF-8 line. An accepted request must
//! serialize and parse back to an equal request, and a rejected one must
//! produce a failure response that repeats the request's `id` when it has one.

#![no_main]

use krt_shared::control::parse_request;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(request) => {
            let json = serde_json::to_string(&request).expect("control requests serialize to JSON");
            assert_eq!(parse_request(&json), Ok(request), "json {json}");
        }
        Err(response) => {
            assert!(!response.ok);
            assert!(response.error.is_some());
            let sent_id = serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|value| value.get("id").and_then(Value::as_u64));
            assert_eq!(response.id, sent_id.unwrap_or(0));
            serde_json::to_string(&response).expect("control responses serialize to JSON");
        }
    }
});
