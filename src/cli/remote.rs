//! The commands that talk to a running daemon's API: `machines`, `watch`, `wake`, `power`,
//! `reinstall`.

use std::process::ExitCode;

use super::client::{Client, ClientError};
use super::{ApiArgs, EXIT_CONFIG, GroupArgs};
use crate::mac::MacAddr;

/// `kindling machines`: the table (or JSON) of machines.
pub(super) fn machines(
    api: &ApiArgs,
    state: Option<String>,
    profile: Option<String>,
    json: bool,
) -> ExitCode {
    client_command(api, |c| async move {
        let list = c.machines(state.as_deref(), profile.as_deref()).await?;
        if json {
            let text = serde_json::to_string_pretty(&list).unwrap_or_default();
            println!("{text}");
        } else {
            print!(
                "{}",
                super::client::table(&list, std::time::SystemTime::now())
            );
        }
        Ok(())
    })
}

/// `kindling watch`: one line per boot-state transition until the daemon stops.
pub(super) fn watch(api: &ApiArgs, mac: Option<MacAddr>, json: bool) -> ExitCode {
    client_command(api, |c| async move {
        let mac = mac.map(|m| m.to_string());
        c.watch(mac.as_deref(), json, &mut std::io::stdout().lock())
            .await
    })
}

/// `kindling wake`: magic packets (or the BMC) to a list, a profile or labels.
pub(super) fn wake(api: &ApiArgs, group: GroupArgs) -> ExitCode {
    if group.names_none("wake") {
        return ExitCode::from(EXIT_CONFIG);
    }
    client_command(api, |c| async move {
        let v = c.group("/api/v1/wake", None, &group.body()).await?;
        for w in v["woken"].as_array().into_iter().flatten() {
            let how = match w["sent"]["method"].as_str() {
                Some("bmc") => format!(
                    "through its BMC {} ({})",
                    w["sent"]["bmc"].as_str().unwrap_or("?"),
                    w["sent"]["reset"].as_str().unwrap_or("?")
                ),
                _ => "with Wake-on-LAN".to_string(),
            };
            println!("woken  {} {how}", w["mac"].as_str().unwrap_or("?"));
        }
        failures(&v, "machines were not woken")
    })
}

impl GroupArgs {
    /// Whether it names no machine (said on stderr for `command`).
    fn names_none(&self, command: &str) -> bool {
        let none = self.macs.is_empty() && self.profile.is_none() && self.labels.is_empty();
        if none {
            eprintln!("kindling {command}: name MACs, --profile or --label");
        }
        none
    }

    /// The group in a request body.
    fn body(&self) -> serde_json::Value {
        let labels: std::collections::BTreeMap<&str, &str> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        serde_json::json!({
            "macs": self.macs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "profile": self.profile,
            "labels": labels,
            "stagger_ms": self.stagger_ms,
            "concurrency": self.concurrency,
        })
    }
}

/// `kindling power ACTION MAC... [--profile P] [--label k=v]`: one line per machine (its power
/// state and boot override after the action); a machine whose BMC failed is named with the
/// error, and the others go on.
pub(super) fn power(api: &ApiArgs, action: &str, group: GroupArgs) -> ExitCode {
    if group.names_none("power") {
        return ExitCode::from(EXIT_CONFIG);
    }
    let action = action.to_string();
    client_command(api, |c| async move {
        let v = c
            .group("/api/v1/power", Some(&action), &group.body())
            .await?;
        for d in v["done"].as_array().into_iter().flatten() {
            println!(
                "{}  {:<12} boot override {}/{}  ({})",
                d["mac"].as_str().unwrap_or("?"),
                d["power_state"].as_str().unwrap_or("?"),
                d["boot_override"]["target"].as_str().unwrap_or("-"),
                d["boot_override"]["enabled"].as_str().unwrap_or("-"),
                d["bmc"].as_str().unwrap_or("?"),
            );
        }
        failures(&v, "machines failed")
    })
}

/// Print the `failed` entries of a group answer; an error (exit 1) when there are any.
fn failures(v: &serde_json::Value, what: &str) -> Result<(), ClientError> {
    let failed = v["failed"].as_array().map_or(0, Vec::len);
    for f in v["failed"].as_array().into_iter().flatten() {
        println!(
            "FAILED {}: {}",
            f["mac"].as_str().unwrap_or("?"),
            f["error"].as_str().unwrap_or("?")
        );
    }
    if failed > 0 {
        return Err(ClientError::Api {
            status: 207,
            message: format!("{failed} {what}"),
        });
    }
    Ok(())
}

/// `kindling reinstall MAC... [--power-cycle]`.
pub(super) fn reinstall(api: &ApiArgs, macs: Vec<MacAddr>, power_cycle: bool) -> ExitCode {
    client_command(api, |c| async move {
        let mut failed = 0;
        for mac in &macs {
            match c.reinstall(&mac.to_string(), power_cycle).await {
                Ok(v) if power_cycle => println!(
                    "{mac}  next boot: install; booted through its BMC {} ({})",
                    v["power"]["bmc"].as_str().unwrap_or("?"),
                    v["power"]["reset"].as_str().unwrap_or("no reset"),
                ),
                Ok(_) => println!("{mac}  next boot: install"),
                Err(e) => {
                    failed += 1;
                    println!("FAILED {mac}: {e}");
                }
            }
        }
        if failed > 0 {
            return Err(ClientError::Api {
                status: 207,
                message: format!("{failed} of {} machines failed", macs.len()),
            });
        }
        Ok(())
    })
}

/// Run one API client command; errors go to stderr with exit code 1.
fn client_command<F, Fut>(api: &ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let token = match (&api.token, &api.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.lines().next().unwrap_or("").trim().to_string()),
            Err(e) => {
                eprintln!("kindling: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kindling: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = Client::new(&api.url, token);
    let result = runtime.block_on(async {
        tokio::select! {
            r = f(client) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kindling: {e}");
            ExitCode::FAILURE
        }
    }
}
