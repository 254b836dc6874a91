//! What a machine is served, decided from its record and its selected profile: a pure
//! function, so the policy is one table with unit tests, and the inventory can run it under its
//! lock ([`super::Inventory::plan_boot`]) so that reading and using up the operator's one-shot
//! next boot is one step.
//!
//! `/ipxe` follows the machine's plan: the operator's one-shot next boot, else its profile's
//! `after_provision` once it is provisioned, else the selected profile. Its configs
//! (`/ignition`, `/metadata`, `/generic`) come from the profile its last `/ipxe` came from.

use super::NextBoot;
use crate::boot_state::Step;
use crate::profiles::{AfterProvision, Profile, ProfileSet, What};

/// What `/ipxe` serves a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The profile its selectors choose.
    Selected,
    /// Boot from its local disk.
    Local,
    /// This profile instead.
    Profile(String),
}

/// Decide what `/ipxe` serves: the operator's one-shot choice first, then the profile's
/// after-provision rule once the machine has been provisioned, else its selected profile.
pub fn plan(next: Option<&NextBoot>, provisioned: bool, after: Option<&AfterProvision>) -> Plan {
    match (next, provisioned, after) {
        (Some(NextBoot::Install), _, _) => Plan::Selected,
        (Some(NextBoot::Local), _, _) => Plan::Local,
        (Some(NextBoot::Profile { profile }), _, _) => Plan::Profile(profile.clone()),
        (None, true, Some(AfterProvision::Local)) => Plan::Local,
        (None, true, Some(AfterProvision::Profile(p))) => Plan::Profile(p.clone()),
        (None, _, _) => Plan::Selected,
    }
}

/// The parts of a machine's record that decide what it is served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootView {
    /// The operator's one-shot choice.
    pub next_boot: Option<NextBoot>,
    /// Whether it has reported `provisioned`.
    pub provisioned: bool,
    /// The profile its last `/ipxe` came from, when that was not its selected one.
    pub booting_profile: Option<String>,
}

/// What to serve a machine, and what that means for its record.
#[derive(Debug, Clone)]
pub struct Serve<'a> {
    /// The profile to render from.
    pub profile: &'a Profile,
    /// Render its iPXE script telling the machine to boot its local disk.
    pub local: bool,
    /// The profile `/ipxe` was redirected to (next boot or `after_provision`): its configs
    /// come from there too.
    pub redirected: Option<String>,
    /// This uses up the operator's one-shot next boot.
    pub uses_next_boot: bool,
    /// The boot step serving it means.
    pub step: Option<Step>,
    /// What it is, for the log and the record (`ipxe`, `ipxe (local disk)`, `ignition`, ...).
    pub served: String,
}

/// Why nothing can be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The plan names a profile that no longer exists.
    #[error("is to boot profile {0:?}, which no longer exists")]
    ProfileGone(String),
}

/// Decide what `what` serves a machine whose selectors chose `selected`.
pub fn serve<'a>(
    set: &'a ProfileSet,
    selected: &'a Profile,
    view: &BootView,
    what: &What,
) -> Result<Serve<'a>, ServeError> {
    let mut local = false;
    let mut redirected = None;
    let mut uses_next_boot = false;
    let profile = if what.is_boot_script() {
        uses_next_boot = view.next_boot.is_some();
        match plan(
            view.next_boot.as_ref(),
            view.provisioned,
            selected.after_provision.as_ref(),
        ) {
            Plan::Selected => selected,
            Plan::Local => {
                local = true;
                selected
            }
            Plan::Profile(name) => {
                let p = set
                    .profile(&name)
                    .ok_or_else(|| ServeError::ProfileGone(name.clone()))?;
                redirected = Some(name);
                p
            }
        }
    } else {
        view.booting_profile
            .as_deref()
            .and_then(|n| set.profile(n))
            .unwrap_or(selected)
    };
    let (step, served) = match what {
        What::Ipxe if local || profile.boot.local => {
            (Some(Step::LocalBoot), "ipxe (local disk)".to_string())
        }
        What::Ipxe => (Some(Step::Script), "ipxe".to_string()),
        What::Grub(_) if local || profile.boot.local => {
            (Some(Step::LocalBoot), "grub.cfg (local disk)".to_string())
        }
        What::Grub(_) => (Some(Step::Script), "grub.cfg".to_string()),
        What::Ignition | What::Generic(_) => (Some(Step::Config), what.label()),
        What::Metadata => (None, what.label()),
    };
    Ok(Serve {
        profile,
        local,
        redirected,
        uses_next_boot,
        step,
        served,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::profiles::Sources;

    fn set() -> (tempfile::TempDir, ProfileSet) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join("install.toml"),
            "ignition = \"i.ign.j2\"\nafter_provision = \"local\"\n[boot]\nkernel = \"k\"\n",
        )
        .unwrap();
        std::fs::write(
            p.join("i.ign.j2"),
            "{\"ignition\": {\"version\": \"3.4.0\"}}",
        )
        .unwrap();
        std::fs::write(p.join("rescue.toml"), "[boot]\nkernel = \"r\"\n").unwrap();
        std::fs::write(p.join("disk.toml"), "[boot]\nlocal = true\n").unwrap();
        let sources = Sources {
            profiles: p,
            scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe"),
        };
        let set = ProfileSet::load(&sources, "http://x").unwrap();
        (dir, set)
    }

    /// (view, what) → (profile, local, redirected, uses_next_boot, step, served)
    #[test]
    fn the_table() {
        let (_dir, set) = set();
        let install = set.profile("install").unwrap();
        let disk = set.profile("disk").unwrap();
        let view = |next: Option<NextBoot>, provisioned: bool, booting: Option<&str>| BootView {
            next_boot: next,
            provisioned,
            booting_profile: booting.map(str::to_string),
        };
        let rescue = || {
            Some(NextBoot::Profile {
                profile: "rescue".into(),
            })
        };
        type Row<'a> = (
            BootView,
            &'a Profile,
            What,
            &'a str,
            bool,
            Option<&'a str>,
            bool,
            Option<Step>,
            &'a str,
        );
        let rows: Vec<Row<'_>> = vec![
            // A new machine: its profile's install.
            (
                view(None, false, None),
                install,
                What::Ipxe,
                "install",
                false,
                None,
                false,
                Some(Step::Script),
                "ipxe",
            ),
            // Provisioned, after_provision = local: its disk, through its own script.
            (
                view(None, true, None),
                install,
                What::Ipxe,
                "install",
                true,
                None,
                false,
                Some(Step::LocalBoot),
                "ipxe (local disk)",
            ),
            // Reinstall: the install once more, using up the one-shot.
            (
                view(Some(NextBoot::Install), true, None),
                install,
                What::Ipxe,
                "install",
                false,
                None,
                true,
                Some(Step::Script),
                "ipxe",
            ),
            (
                view(Some(NextBoot::Local), false, None),
                install,
                What::Ipxe,
                "install",
                true,
                None,
                true,
                Some(Step::LocalBoot),
                "ipxe (local disk)",
            ),
            (
                view(rescue(), true, None),
                install,
                What::Ipxe,
                "rescue",
                false,
                Some("rescue"),
                true,
                Some(Step::Script),
                "ipxe",
            ),
            // A profile that boots from disk by itself.
            (
                view(None, false, None),
                disk,
                What::Ipxe,
                "disk",
                false,
                None,
                false,
                Some(Step::LocalBoot),
                "ipxe (local disk)",
            ),
            // Configs follow the profile /ipxe came from; the one-shot is never used by them.
            (
                view(Some(NextBoot::Install), false, Some("rescue")),
                install,
                What::Ignition,
                "rescue",
                false,
                None,
                false,
                Some(Step::Config),
                "ignition",
            ),
            (
                view(None, false, None),
                install,
                What::Ignition,
                "install",
                false,
                None,
                false,
                Some(Step::Config),
                "ignition",
            ),
            (
                view(None, false, Some("gone")),
                install,
                What::Metadata,
                "install",
                false,
                None,
                false,
                None,
                "metadata",
            ),
            (
                view(None, false, None),
                install,
                What::Generic(Some("x".into())),
                "install",
                false,
                None,
                false,
                Some(Step::Config),
                "generic:x",
            ),
        ];
        for (v, selected, what, profile, local, redirected, uses, step, served) in rows {
            let s = serve(&set, selected, &v, &what).unwrap();
            let got = (
                s.profile.name.as_str(),
                s.local,
                s.redirected.as_deref(),
                s.uses_next_boot,
                s.step,
                s.served.as_str(),
            );
            assert_eq!(
                got,
                (profile, local, redirected, uses, step, served),
                "{v:?} {what:?}"
            );
        }
    }

    #[test]
    fn a_next_boot_into_a_vanished_profile_is_an_error() {
        let (_dir, set) = set();
        let install = set.profile("install").unwrap();
        let v = BootView {
            next_boot: Some(NextBoot::Profile {
                profile: "memtest".into(),
            }),
            ..BootView::default()
        };
        assert_eq!(
            serve(&set, install, &v, &What::Ipxe).err(),
            Some(ServeError::ProfileGone("memtest".into()))
        );
    }
}
