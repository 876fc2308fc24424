//! Counters from the relay's `GET /server-status` endpoint.
//!
//! The load generator reads the endpoint before connecting and after the
//! run and reports how every numeric field changed, such as frames out and
//! frames dropped. Fields the relay adds later show up without changes here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time allowed for one status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest status response read, bytes.
const MAX_RESPONSE: usize = 64 << 10;

/// Fetches `GET /server-status` from `addr` and returns its numeric fields.
/// Returns an error text when the request fails or the response is not a
/// JSON object.
pub async fn fetch_counters(addr: SocketAddr, host: &str) -> Result<BTreeMap<String, f64>, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request =
            format!("GET /server-status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(STATUS_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no response within {} s", STATUS_TIMEOUT.as_secs()))??;
    parse_response(&response)
}

/// Parses an HTTP/1.1 response with a JSON object body into its numeric fields.
pub fn parse_response(response: &[u8]) -> Result<BTreeMap<String, f64>, String> {
    let text = std::str::from_utf8(response).map_err(|_| "response is not UTF-8".to_owned())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "response has no header end".to_owned())?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_ascii_whitespace().nth(1) != Some("200") {
        return Err(format!("unexpected status line '{status_line}'"));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err("chunked responses are not supported".to_owned());
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "body is not a JSON object".to_owned())?;
    Ok(object
        .iter()
        .filter_map(|(key, value)| value.as_f64().map(|number| (key.clone(), number)))
        .collect())
}

/// Returns `after - before` for every field present in both.
pub fn counter_deltas(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(key, value)| before.get(key).map(|old| (key.clone(), value - old)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_status_body() {
        let response =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n\
            {\"version\":\"0.1.0\",\"sessions\":600,\"framesOut\":12,\"framesDropped\":0}";
        let counters = parse_response(response).unwrap();
        assert_eq!(counters.get("sessions"), Some(&600.0));
        assert_eq!(counters.get("framesOut"), Some(&12.0));
        assert!(!counters.contains_key("version"));
    }

    #[test]
    fn reject_error_status() {
        let err = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n{}").unwrap_err();
        assert!(err.contains("404"), "{err}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n[1]").is_err());
    }

    #[test]
    fn deltas_of_shared_fields() {
        let before = BTreeMap::from([("framesOut".to_owned(), 10.0), ("gone".to_owned(), 1.0)]);
        let after = BTreeMap::from([("framesOut".to_owned(), 25.0), ("new".to_owned(), 3.0)]);
        let deltas = counter_deltas(&before, &after);
        assert_eq!(deltas, BTreeMap::from([("framesOut".to_owned(), 15.0)]));
    }
}
