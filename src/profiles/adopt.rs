//! Adopting a discovered machine: a `[[machine]]` entry appended to a profile file.
//!
//! The entry is plain TOML with a comment saying when and how it got there, appended after
//! the operator's own text (comments and layout untouched), so the file stays the single
//! place an operator reads. The write is atomic (a hidden temporary file renamed over the
//! original, which the watcher ignores until the rename). The profiles are then reloaded; if
//! they no longer load, the old text is put back and the reasons are returned.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use super::watch::Live;
use crate::mac::MacAddr;

/// Why an adoption did not happen.
#[derive(Debug)]
pub enum AdoptError {
    /// The file could not be read or written.
    Write(String),
    /// The profiles do not load with the entry (file put back); the diagnostics.
    Invalid(Vec<String>),
}

/// Why an entry cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not an RFC 1123 host name.
    #[error("invalid hostname {0:?}")]
    Hostname(String),
    /// A label name TOML and selectors cannot carry as a bare key.
    #[error("label name {0:?}: letters, digits, '-' and '_' only")]
    LabelName(String),
}

/// The TOML text of a `[[machine]]` entry.
pub fn entry(
    mac: MacAddr,
    hostname: Option<&str>,
    ip: Option<Ipv4Addr>,
    labels: &BTreeMap<String, String>,
    comment: &str,
) -> Result<String, EntryError> {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = String::new();
    for line in comment.lines() {
        // TOML comments may hold no control characters (a CR from a reported fact would make
        // the whole file invalid).
        let line: String = line
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        out.push_str(&format!("# {line}\n"));
    }
    out.push_str("[[machine]]\n");
    out.push_str(&format!("mac = {}\n", quote(&mac.to_string())));
    if let Some(h) = hostname {
        if !super::valid_hostname(h) {
            return Err(EntryError::Hostname(h.to_string()));
        }
        out.push_str(&format!("hostname = {}\n", quote(h)));
    }
    if let Some(ip) = ip {
        out.push_str(&format!("ip = {}\n", quote(&ip.to_string())));
    }
    if !labels.is_empty() {
        out.push_str("[machine.labels]\n");
        for (k, v) in labels {
            let key_ok = !k.is_empty()
                && k.len() <= 63
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !key_ok {
                return Err(EntryError::LabelName(k.clone()));
            }
            out.push_str(&format!("{k} = {}\n", quote(v)));
        }
    }
    Ok(out)
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kindling-tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Append `entry` to the profile file at `path` and reload `live` (blocking), with other
/// reloads held off until it is done. On a failed reload the file is restored and reloaded
/// again. Returns the generation that serves the entry.
pub fn append_and_reload(live: &Live, path: &Path, entry: &str) -> Result<u64, AdoptError> {
    live.serialized(|reloader| {
        let old = std::fs::read_to_string(path)
            .map_err(|e| AdoptError::Write(format!("cannot read {}: {e}", path.display())))?;
        let mut new = old.clone();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push('\n');
        new.push_str(entry);
        write_atomic(path, &new)
            .map_err(|e| AdoptError::Write(format!("cannot write {}: {e}", path.display())))?;
        match reloader.reload() {
            Ok(generation) => Ok(generation),
            Err(diags) => {
                let errors = diags.0.iter().map(|d| d.to_string()).collect();
                if let Err(e) = write_atomic(path, &old) {
                    tracing::error!(path = %path.display(), error = %e, "cannot restore the profile file after a failed adoption");
                }
                let _ = reloader.reload();
                Err(AdoptError::Invalid(errors))
            }
        }
    })
}

/// Append `entry` (adopted into `profile` on another instance) to this instance's copy of
/// the profile's file, unless the machine is declared here already: `Ok(None)` then.
pub fn apply_shared(
    live: &Live,
    mac: MacAddr,
    profile: &str,
    entry: &str,
) -> Result<Option<u64>, AdoptError> {
    let set = live.current();
    if set.machines.contains_key(&mac) {
        return Ok(None);
    }
    let Some(p) = set.profile(profile) else {
        return Err(AdoptError::Write(format!(
            "no profile named {profile:?} here"
        )));
    };
    append_and_reload(live, &p.path, entry).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_valid_toml_and_quotes_everything() {
        let mac: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
        let labels = BTreeMap::from([("rack".to_string(), "a\"1".to_string())]);
        let text = entry(
            mac,
            Some("node-4"),
            Some(Ipv4Addr::new(10, 0, 0, 4)),
            &labels,
            "adopted\nby test",
        )
        .unwrap();
        assert!(
            text.starts_with("# adopted\n# by test\n[[machine]]\n"),
            "{text}"
        );
        let v: toml::Table = toml::from_str(&text).unwrap();
        let m = &v["machine"].as_array().unwrap()[0];
        assert_eq!(m["mac"].as_str(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(m["ip"].as_str(), Some("10.0.0.4"));
        assert_eq!(m["labels"]["rack"].as_str(), Some("a\"1"));
        assert!(entry(mac, Some("bad host"), None, &BTreeMap::new(), "").is_err());
        let odd = entry(mac, None, None, &BTreeMap::new(), "arch x86\r_64\u{1b}[31m").unwrap();
        assert!(toml::from_str::<toml::Table>(&odd).is_ok(), "{odd:?}");
        assert!(odd.starts_with("# arch x86?_64?[31m\n"), "{odd:?}");
        let bad_label = BTreeMap::from([("a b".to_string(), "x".to_string())]);
        assert!(entry(mac, None, None, &bad_label, "").is_err());
    }
}
