//! The boot-state machine: a pure function from what a service saw to the next state.
//!
//! ```text
//! unknown ─wake─▶ waking ─DISCOVER─▶ dhcp ─iPXE binary─▶ firmware ─/ipxe─▶ ipxe
//!     ─kernel/initrd─▶ kernel ─Ignition/generic─▶ config ─report─▶ provisioned
//! ```
//!
//! Any in-progress state that lasts longer than its limit becomes `stalled` (remembering the
//! phase). A machine that boots but matches no profile is `discovered`.
//!
//! One boot produces several DHCP exchanges (the ROM, then iPXE, then the OS), so DHCP moves
//! the state only where it means a new boot: a PXE ROM's DISCOVER always does; iPXE's does
//! unless a boot is already past `dhcp` (iPXE chainloaded from it); the installed OS's DHCP
//! only answers a wake. HTTP and TFTP steps are unambiguous and move the state directly, also
//! backwards (a machine that fetches its iPXE binary again has rebooted), except that an OS
//! fetching files from `/assets/` after its config does not send it back to `kernel`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a machine is in its boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootState {
    /// Nothing seen yet (or off: Kindling cannot tell).
    Unknown,
    /// Booted, but no profile matches it: waiting for an operator to adopt it.
    Discovered,
    /// A magic packet was sent.
    Waking,
    /// Its firmware asked for an address.
    Dhcp,
    /// It fetched an iPXE binary (TFTP or HTTP).
    Firmware,
    /// It was served its iPXE script.
    Ipxe,
    /// It fetched its kernel or initrd.
    Kernel,
    /// It was served its Ignition or generic config.
    Config,
    /// The OS reported in (or it boots its installed OS from disk).
    Provisioned,
    /// An in-progress phase took longer than its limit (see `stalled_in`).
    Stalled,
}

impl BootState {
    /// Every state, in boot order.
    pub const ALL: [BootState; 10] = [
        BootState::Unknown,
        BootState::Discovered,
        BootState::Waking,
        BootState::Dhcp,
        BootState::Firmware,
        BootState::Ipxe,
        BootState::Kernel,
        BootState::Config,
        BootState::Provisioned,
        BootState::Stalled,
    ];

    /// The name used in JSON, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            BootState::Unknown => "unknown",
            BootState::Discovered => "discovered",
            BootState::Waking => "waking",
            BootState::Dhcp => "dhcp",
            BootState::Firmware => "firmware",
            BootState::Ipxe => "ipxe",
            BootState::Kernel => "kernel",
            BootState::Config => "config",
            BootState::Provisioned => "provisioned",
            BootState::Stalled => "stalled",
        }
    }

    /// Whether a timeout applies: the machine is on its way somewhere.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            BootState::Waking
                | BootState::Dhcp
                | BootState::Firmware
                | BootState::Ipxe
                | BootState::Kernel
                | BootState::Config
        )
    }
}

impl std::fmt::Display for BootState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BootState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BootState::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = BootState::ALL.iter().map(|b| b.as_str()).collect();
                format!("unknown state {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// Which DHCP client sent a message: tells a new boot from a later stage of the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpClient {
    /// A PXE ROM or UEFI network stack (vendor class `PXEClient`/`HTTPClient`, not iPXE).
    Firmware,
    /// iPXE (user class `iPXE`).
    Ipxe,
    /// Anything else: the installer or the installed OS.
    Os,
}

/// What a service saw a machine do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Kindling sent it a magic packet.
    Woken,
    /// A DHCP DISCOVER or REQUEST from it.
    Dhcp(DhcpClient),
    /// It fetched an iPXE binary.
    Firmware,
    /// It was served its netboot iPXE script.
    Script,
    /// It was told to boot from its local disk.
    LocalBoot,
    /// It fetched a kernel, initrd or other boot asset.
    Kernel,
    /// It was served its Ignition or generic config.
    Config,
    /// Its OS reported `provisioned`.
    Provisioned,
    /// It asked for a profile and none matches.
    NoProfile,
}

/// The part of a record the state machine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The current state.
    pub state: BootState,
    /// For `stalled`: the phase it stalled in.
    pub stalled_in: Option<BootState>,
    /// Whether it has reported `provisioned` before (so booting its OS means it is done).
    pub provisioned_before: bool,
}

/// How long each in-progress phase may last before the machine counts as stalled; zero means
/// never.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From the magic packet to its first DHCP DISCOVER.
    #[serde(with = "humantime_serde")]
    pub waking: Duration,
    /// From DHCP to the iPXE binary or script.
    #[serde(with = "humantime_serde")]
    pub dhcp: Duration,
    /// From the iPXE binary to the script.
    #[serde(with = "humantime_serde")]
    pub firmware: Duration,
    /// From the script to the kernel.
    #[serde(with = "humantime_serde")]
    pub ipxe: Duration,
    /// From the kernel to the config (kernel boot and the OS's network).
    #[serde(with = "humantime_serde")]
    pub kernel: Duration,
    /// From the config to the OS's report (the whole install).
    #[serde(with = "humantime_serde")]
    pub config: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            waking: Duration::from_secs(120),
            dhcp: Duration::from_secs(120),
            firmware: Duration::from_secs(120),
            ipxe: Duration::from_secs(300),
            kernel: Duration::from_secs(600),
            config: Duration::from_secs(1800),
        }
    }
}

impl Timeouts {
    /// The limit of `state`, if it has one.
    pub fn limit(&self, state: BootState) -> Option<Duration> {
        let d = match state {
            BootState::Waking => self.waking,
            BootState::Dhcp => self.dhcp,
            BootState::Firmware => self.firmware,
            BootState::Ipxe => self.ipxe,
            BootState::Kernel => self.kernel,
            BootState::Config => self.config,
            _ => return None,
        };
        (!d.is_zero()).then_some(d)
    }
}

/// The phase a machine is in, looking through `stalled` to the phase it stalled in.
fn phase(s: &Status) -> BootState {
    match (s.state, s.stalled_in) {
        (BootState::Stalled, Some(p)) => p,
        (st, _) => st,
    }
}

/// The state after `step`, or `None` when the step does not move it.
pub fn next(s: &Status, step: Step) -> Option<BootState> {
    use BootState as B;
    let phase = phase(s);
    let to = match step {
        Step::Woken => B::Waking,
        Step::NoProfile => B::Discovered,
        Step::Dhcp(DhcpClient::Firmware) => B::Dhcp,
        Step::Dhcp(DhcpClient::Ipxe) => match phase {
            // iPXE chainloaded by this boot asks for its own address.
            B::Firmware | B::Ipxe | B::Kernel | B::Config => return None,
            _ => B::Dhcp,
        },
        Step::Dhcp(DhcpClient::Os) => match phase {
            // The OS came up after a wake without netbooting: if it was installed, it is done.
            B::Unknown | B::Waking if s.provisioned_before => B::Provisioned,
            B::Unknown | B::Waking => B::Dhcp,
            _ => return None,
        },
        Step::Firmware => B::Firmware,
        Step::Script => B::Ipxe,
        Step::LocalBoot => B::Provisioned,
        Step::Kernel => match phase {
            // The installer fetching images after its config is not a new boot.
            B::Config | B::Provisioned => return None,
            _ => B::Kernel,
        },
        Step::Config => match s.state {
            // An installed OS re-reading its config.
            B::Provisioned => return None,
            _ => B::Config,
        },
        Step::Provisioned => B::Provisioned,
    };
    (to != s.state || s.state == B::Stalled).then_some(to)
}

/// Whether a machine in `s` since `since` has stalled at `now`: the phase it stalled in.
pub fn stalled(
    s: &Status,
    since: std::time::SystemTime,
    now: std::time::SystemTime,
    limits: &Timeouts,
) -> Option<BootState> {
    let limit = limits.limit(s.state)?;
    let waited = now.duration_since(since).unwrap_or_default();
    (waited >= limit).then_some(s.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BootState as B;
    use std::time::{Duration, SystemTime};

    fn st(state: B) -> Status {
        Status {
            state,
            stalled_in: None,
            provisioned_before: false,
        }
    }

    fn walk(start: Status, steps: &[Step]) -> Vec<B> {
        let mut s = start;
        let mut seen = Vec::new();
        for step in steps {
            if let Some(to) = next(&s, *step) {
                s.stalled_in = None;
                s.state = to;
                if to == B::Provisioned {
                    s.provisioned_before = true;
                }
                seen.push(to);
            }
        }
        seen
    }

    #[test]
    fn uefi_pxe_install_walks_every_state_once() {
        let steps = [
            Step::Woken,
            Step::Dhcp(DhcpClient::Firmware), // ROM DISCOVER
            Step::Dhcp(DhcpClient::Firmware), // ROM REQUEST
            Step::Firmware,                   // ipxe.efi over TFTP
            Step::Dhcp(DhcpClient::Ipxe),     // iPXE's own DHCP
            Step::Script,
            Step::Kernel,
            Step::Kernel, // initrd
            Step::Dhcp(DhcpClient::Os),
            Step::Config,
            Step::Kernel, // the installer pulls an image from /assets/
            Step::Provisioned,
        ];
        assert_eq!(
            walk(st(B::Unknown), &steps),
            [
                B::Waking,
                B::Dhcp,
                B::Firmware,
                B::Ipxe,
                B::Kernel,
                B::Config,
                B::Provisioned
            ]
        );
    }

    #[test]
    fn ipxe_rom_boot_skips_firmware() {
        let steps = [
            Step::Dhcp(DhcpClient::Ipxe),
            Step::Script,
            Step::Kernel,
            Step::Config,
            Step::Provisioned,
        ];
        assert_eq!(
            walk(st(B::Unknown), &steps),
            [B::Dhcp, B::Ipxe, B::Kernel, B::Config, B::Provisioned]
        );
    }

    #[test]
    fn every_step_from_every_state() {
        // The whole table, so a change to one rule shows up here.
        use DhcpClient::*;
        let steps = [
            Step::Woken,
            Step::Dhcp(Firmware),
            Step::Dhcp(Ipxe),
            Step::Dhcp(Os),
            Step::Firmware,
            Step::Script,
            Step::LocalBoot,
            Step::Kernel,
            Step::Config,
            Step::Provisioned,
            Step::NoProfile,
        ];
        let expect = |from: B, step: Step| -> Option<B> {
            let to = match step {
                Step::Woken => B::Waking,
                Step::NoProfile => B::Discovered,
                Step::Dhcp(Firmware) => B::Dhcp,
                Step::Dhcp(Ipxe)
                    if matches!(from, B::Firmware | B::Ipxe | B::Kernel | B::Config) =>
                {
                    return None;
                }
                Step::Dhcp(Ipxe) => B::Dhcp,
                Step::Dhcp(Os) if matches!(from, B::Unknown | B::Waking) => B::Dhcp,
                Step::Dhcp(Os) => return None,
                Step::Firmware => B::Firmware,
                Step::Script => B::Ipxe,
                Step::LocalBoot | Step::Provisioned => B::Provisioned,
                Step::Kernel if matches!(from, B::Config | B::Provisioned) => return None,
                Step::Kernel => B::Kernel,
                Step::Config if from == B::Provisioned => return None,
                Step::Config => B::Config,
            };
            (to != from).then_some(to)
        };
        for from in BootState::ALL.into_iter().filter(|b| *b != B::Stalled) {
            for step in steps {
                assert_eq!(
                    next(&st(from), step),
                    expect(from, step),
                    "{from} + {step:?}"
                );
            }
        }
    }

    #[test]
    fn stalled_resumes_in_its_phase() {
        let s = Status {
            state: B::Stalled,
            stalled_in: Some(B::Kernel),
            provisioned_before: false,
        };
        // iPXE's DHCP while stalled in kernel is still that boot; the config moves it on.
        assert_eq!(next(&s, Step::Dhcp(DhcpClient::Ipxe)), None);
        assert_eq!(next(&s, Step::Kernel), Some(B::Kernel));
        assert_eq!(next(&s, Step::Config), Some(B::Config));
        // A ROM DISCOVER is a reboot.
        assert_eq!(next(&s, Step::Dhcp(DhcpClient::Firmware)), Some(B::Dhcp));
        // A wake that went unanswered, then the OS shows up late.
        let w = Status {
            state: B::Stalled,
            stalled_in: Some(B::Waking),
            provisioned_before: true,
        };
        assert_eq!(next(&w, Step::Dhcp(DhcpClient::Os)), Some(B::Provisioned));
    }

    #[test]
    fn installed_os_after_a_wake_counts_as_provisioned() {
        let s = Status {
            state: B::Waking,
            stalled_in: None,
            provisioned_before: true,
        };
        assert_eq!(next(&s, Step::Dhcp(DhcpClient::Os)), Some(B::Provisioned));
        // The installed OS renewing its lease changes nothing.
        let p = Status {
            state: B::Provisioned,
            ..s
        };
        assert_eq!(next(&p, Step::Dhcp(DhcpClient::Os)), None);
        assert_eq!(next(&p, Step::Config), None);
    }

    #[test]
    fn timeouts_per_phase() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let limits = Timeouts::default();
        for state in BootState::ALL {
            let s = st(state);
            match limits.limit(state) {
                Some(limit) => {
                    assert_eq!(
                        stalled(&s, t0, t0 + limit - Duration::from_millis(1), &limits),
                        None
                    );
                    assert_eq!(stalled(&s, t0, t0 + limit, &limits), Some(state));
                }
                None => assert_eq!(
                    stalled(&s, t0, t0 + Duration::from_secs(1 << 30), &limits),
                    None
                ),
            }
        }
        let off = Timeouts {
            config: Duration::ZERO,
            ..limits
        };
        assert_eq!(
            stalled(&st(B::Config), t0, t0 + Duration::from_secs(1 << 30), &off),
            None
        );
        // A clock that went backwards is not a stall.
        assert_eq!(
            stalled(&st(B::Dhcp), t0, t0 - Duration::from_secs(5), &limits),
            None
        );
    }

    #[test]
    fn names_round_trip() {
        for s in BootState::ALL {
            assert_eq!(s.as_str().parse::<BootState>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!(
            "booting"
                .parse::<BootState>()
                .unwrap_err()
                .contains("provisioned")
        );
    }
}
