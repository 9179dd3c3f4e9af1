//! Scraping the broker's `/metrics` and parsing it with the official Prometheus parsers
//! (`tests/interop/parse_metrics.py`), for the tests of its families.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::http::request_with;

/// Samples of one scrape, parsed by `tests/interop/parse_metrics.py`.
pub struct Scrape {
    /// Each sample's value by its name and labels (`name{label="v"}`).
    pub samples: HashMap<String, f64>,
    /// Each family's type by its name.
    pub types: HashMap<String, String>,
}

impl Scrape {
    /// The value of `sample` (panics if the scrape has none).
    pub fn get(&self, sample: &str) -> f64 {
        *self
            .samples
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in {:?}", self.samples.keys()))
    }
}

/// Scrapes `/metrics` as Prometheus does (asking for OpenMetrics), or as a plain `curl` does
/// (the classic text format), and parses it with the matching official parser.
pub async fn scrape_as(addr: SocketAddr, token: Option<&str>, openmetrics: bool) -> Scrape {
    let accept = if openmetrics {
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n"
    } else {
        ""
    };
    let response = request_with(addr, "GET", "/metrics", token, None, accept).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let (content_type, parser) = if openmetrics {
        ("application/openmetrics-text", "openmetrics")
    } else {
        ("text/plain; version=0.0.4", "classic")
    };
    assert!(
        response.headers["content-type"].starts_with(content_type),
        "{:?}",
        response.headers
    );
    let script = format!(
        "{}/tests/interop/parse_metrics.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = std::process::Command::new("python3")
        .args([script.as_str(), parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(response.body.as_bytes())
            .expect("to the parser");
    }
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        response.body
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let samples = parsed["samples"]
        .as_object()
        .expect("samples")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().expect("number")))
        .collect();
    let types = parsed["types"]
        .as_object()
        .expect("types")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("type").to_string()))
        .collect();
    Scrape { samples, types }
}

/// [`scrape_as`] as Prometheus scrapes: OpenMetrics.
pub async fn scrape(addr: SocketAddr, token: Option<&str>) -> Scrape {
    scrape_as(addr, token, true).await
}
