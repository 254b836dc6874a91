//! The command-line client of the REST API: `kindling machines`, `kindling watch`,
//! `kindling wake`. Plain HTTP to the daemon's API (`--url`, `KINDLING_URL`), with the bearer
//! token from `--token`/`KINDLING_TOKEN` or `--token-file`.

use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::inventory::{Summary, Transition};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached.
    #[error("cannot reach {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The daemon answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// Its `error` message.
        message: String,
    },
    /// The answer was not what the API describes.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// Writing the output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A connection to one daemon's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the daemon at `base` (e.g. `http://10.0.0.2:8080`).
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = r.send().await.map_err(|source| ClientError::Connect {
            url: self.base.clone(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(r).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `GET /api/v1/machines`, filtered.
    pub async fn machines(
        &self,
        state: Option<&str>,
        profile: Option<&str>,
    ) -> Result<Vec<Summary>, ClientError> {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = state {
            query.append_pair("state", s);
        }
        if let Some(p) = profile {
            query.append_pair("profile", p);
        }
        let q = query.finish();
        let path = if q.is_empty() {
            "/api/v1/machines".to_string()
        } else {
            format!("/api/v1/machines?{q}")
        };
        let v = self.json(self.request(reqwest::Method::GET, &path)).await?;
        serde_json::from_value(v["machines"].clone())
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// A group call (`POST /api/v1/wake`, `/api/v1/power` with `action`): the answer (`woken`
    /// or `done`, and `failed`).
    pub async fn group(
        &self,
        path: &str,
        action: Option<&str>,
        group: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let mut body = group.clone();
        if let Some(a) = action {
            body["action"] = serde_json::json!(a);
        }
        let r = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.json(r).await
    }

    /// `POST /api/v1/machines/{mac}/reinstall`, with `power_cycle`.
    pub async fn reinstall(
        &self,
        mac: &str,
        power_cycle: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let r = self
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/machines/{mac}/reinstall"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "power_cycle": power_cycle }).to_string());
        self.json(r).await
    }

    /// Follow `GET /api/v1/events`, writing one line per transition (or the raw JSON with
    /// `json`), until the daemon ends the stream.
    pub async fn watch(
        &self,
        mac: Option<&str>,
        json: bool,
        out: &mut impl Write,
    ) -> Result<(), ClientError> {
        let path = match mac {
            Some(m) => format!("/api/v1/events?mac={m}"),
            None => "/api/v1/events".to_string(),
        };
        let mut resp = self.send(self.request(reqwest::Method::GET, &path)).await?;
        let mut parser = SseParser::default();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?
        {
            for (event, data) in parser.feed(&chunk) {
                match event.as_str() {
                    "transition" if json => writeln!(out, "{data}")?,
                    "transition" => {
                        let t: Transition = serde_json::from_str(&data)
                            .map_err(|e| ClientError::Decode(e.to_string()))?;
                        writeln!(out, "{}", crate::diag::printable(&transition_line(&t)))?;
                    }
                    // The JSON lines stay transitions only (what scripts parse).
                    "power" if !json => {
                        let p: crate::events::PowerChanged = serde_json::from_str(&data)
                            .map_err(|e| ClientError::Decode(e.to_string()))?;
                        writeln!(out, "{}", crate::diag::printable(&power_line(&p)))?;
                    }
                    "ready" => writeln!(out, "# following {}{path}", self.base)?,
                    "resync" => writeln!(out, "# fell behind: some transitions were missed")?,
                    _ => {}
                }
                out.flush()?;
            }
        }
        Ok(())
    }
}

/// Splits a Server-Sent Events byte stream into `(event, data)` pairs.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    /// Add bytes; return every complete event.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut event = "message".to_string();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if !data.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
        out
    }
}

/// One transition as a line: time, MAC, hostname, from -> to, and why.
pub fn transition_line(t: &Transition) -> String {
    let to = match t.stalled_in {
        Some(p) => format!("stalled (in {p})"),
        None => t.to.to_string(),
    };
    format!(
        "{}  {}  {:<16} {:>11} -> {:<20} {}: {}",
        humantime::format_rfc3339_seconds(t.at.0),
        t.mac,
        t.hostname.as_deref().unwrap_or("-"),
        t.from,
        to,
        t.source,
        t.event
    )
}

/// One line for a changed power reading: when, the machine, and what its BMC says.
pub fn power_line(p: &crate::events::PowerChanged) -> String {
    let r = &p.power;
    let at = r
        .error_at
        .max(r.read_at)
        .unwrap_or(crate::time_fmt::Stamp(SystemTime::now()));
    let what = match (&r.error, &r.state) {
        (Some(e), _) => format!("BMC ERROR {e}"),
        (None, Some(s)) => format!("power {s}"),
        (None, None) => "power unknown".to_string(),
    };
    format!(
        "{}  {}  {what} ({})",
        humantime::format_rfc3339_seconds(at.0),
        p.mac,
        r.bmc
    )
}

/// The machines as an aligned table.
pub fn table(machines: &[Summary], now: SystemTime) -> String {
    // The POWER column only where some machine has a BMC.
    let with_power = machines.iter().any(|m| m.power.is_some());
    let mut head = vec![
        "MAC".to_string(),
        "HOSTNAME".into(),
        "PROFILE".into(),
        "IP".into(),
        "STATE".into(),
        "SINCE".into(),
        "NEXT BOOT".into(),
    ];
    if with_power {
        head.push("POWER (BMC)".into());
    }
    let mut rows = vec![head];
    for m in machines {
        let state = match m.stalled_in {
            Some(p) => format!("stalled ({p})"),
            None => m.state.to_string(),
        };
        let ago = now.duration_since(m.state_since.0).unwrap_or_default();
        let next = match &m.next_boot {
            Some(crate::inventory::NextBoot::Install) => "install".to_string(),
            Some(crate::inventory::NextBoot::Local) => "local".to_string(),
            Some(crate::inventory::NextBoot::Profile { profile }) => format!("profile {profile}"),
            None => "-".to_string(),
        };
        let mut row = vec![
            m.mac.to_string(),
            m.hostname.clone().unwrap_or_else(|| "-".into()),
            m.profile.clone().unwrap_or_else(|| "-".into()),
            m.ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            state,
            format!(
                "{} ago",
                humantime::format_duration(Duration::from_secs(ago.as_secs()))
            ),
            next,
        ];
        if with_power {
            row.push(
                m.power
                    .as_ref()
                    .map_or_else(|| "-".into(), |p| power_cell(p, now)),
            );
        }
        rows.push(row);
    }
    // What machines reported reaches the operator's terminal: no escape sequences.
    for r in rows.iter_mut().skip(1) {
        for cell in r.iter_mut() {
            *cell = crate::diag::printable(cell);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `On, read 12s ago`, or the BMC's error (after the last good reading, if any).
fn power_cell(p: &crate::inventory::PowerReading, now: SystemTime) -> String {
    let ago = |t: &crate::time_fmt::Stamp| {
        let d = now.duration_since(t.0).unwrap_or_default();
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    };
    let last = match (&p.state, &p.read_at) {
        (Some(s), Some(t)) => format!("{s}, read {} ago", ago(t)),
        _ => "never read".to_string(),
    };
    match &p.error {
        Some(e) => format!("ERROR {e} ({last})"),
        None => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: ready\ndata: {\"machines\"").is_empty());
        let got = p.feed(b": 1}\n\n:keep-alive\n\nevent: transition\ndata: {}\n\n");
        assert_eq!(
            got,
            vec![
                ("ready".to_string(), "{\"machines\": 1}".to_string()),
                ("transition".to_string(), "{}".to_string())
            ]
        );
    }

    #[test]
    fn a_power_change_is_one_line() {
        use crate::events::{PowerChanged, PowerReading};
        use crate::time_fmt::Stamp;
        let at = |s: u64| Some(Stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s)));
        let mut p = PowerChanged {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            power: PowerReading {
                bmc: "https://10.0.5.21".into(),
                state: Some("on".into()),
                read_at: at(1_800_000_000),
                error: None,
                error_at: None,
            },
        };
        assert_eq!(
            power_line(&p),
            "2027-01-15T08:00:00Z  52:54:00:00:00:01  power on (https://10.0.5.21)"
        );
        p.power.error = Some("no answer within 10 s".into());
        p.power.error_at = at(1_800_000_060);
        assert_eq!(
            power_line(&p),
            "2027-01-15T08:01:00Z  52:54:00:00:00:01  BMC ERROR no answer within 10 s (https://10.0.5.21)"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let m = Summary {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            hostname: Some("worker-1".into()),
            profile: Some("worker".into()),
            ip: Some("10.0.0.21".parse().unwrap()),
            state: crate::inventory::BootState::Stalled,
            stalled_in: Some(crate::inventory::BootState::Kernel),
            state_since: crate::time_fmt::Stamp(t0),
            provisioned: false,
            next_boot: Some(crate::inventory::NextBoot::Install),
            labels: BTreeMap::new(),
            last_seen: crate::time_fmt::Stamp(t0),
            arch: None,
            platform: None,
            hardware: BTreeMap::new(),
            entered: BTreeMap::new(),
            provisioned_at: None,
            wake: None,
            power: None,
            bmc: false,
        };
        let text = table(std::slice::from_ref(&m), t0 + Duration::from_secs(125));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("MAC                HOSTNAME  PROFILE  IP"),
            "{text}"
        );
        assert!(
            lines[1].contains("stalled (kernel)  2m 5s ago  install"),
            "{text}"
        );
        assert_eq!(lines[0].find("STATE"), lines[1].find("stalled"));
        assert!(!text.contains("POWER"), "no BMC, no column: {text}");
        let mut on = m.clone();
        on.power = Some(crate::inventory::PowerReading {
            bmc: "https://10.0.5.21".into(),
            state: Some("On".into()),
            read_at: Some(crate::time_fmt::Stamp(t0 + Duration::from_secs(113))),
            error: None,
            error_at: None,
        });
        let mut failing = on.clone();
        failing.mac = "52:54:00:00:00:02".parse().unwrap();
        failing.power.as_mut().unwrap().error = Some("BMC https://10.0.5.21: HTTP 401".into());
        let text = table(&[on, failing], t0 + Duration::from_secs(125));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("POWER (BMC)"), "{text}");
        assert!(lines[1].ends_with("On, read 12s ago"), "{text}");
        assert!(
            lines[2].ends_with("ERROR BMC https://10.0.5.21: HTTP 401 (On, read 12s ago)"),
            "{text}"
        );
    }
}
