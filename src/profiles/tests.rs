//! Loading, selection and validation, against profile trees written to a temp directory.

use std::path::Path;

use super::*;
use crate::diag::Diagnostics;

const BOOT: &str = "[boot]\nkernel = \"k\"\n";

/// Write `files` (relative path → text) under a fresh directory and load them.
fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<ProfileSet, Diagnostics>) {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    for (rel, text) in files {
        let p = profiles.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let sources = Sources {
        profiles,
        scripts: dir.path().join("no-such-dir"),
    };
    let set = ProfileSet::load(&sources, "http://10.0.0.2:8080");
    (dir, set)
}

fn ok(files: &[(&str, &str)]) -> (tempfile::TempDir, ProfileSet) {
    let (dir, set) = load(files);
    match set {
        Ok(set) => (dir, set),
        Err(e) => panic!("load failed:\n{e}"),
    }
}

/// Load, expect failure, and return the errors with the temp dir prefix removed.
fn errors(files: &[(&str, &str)]) -> Vec<String> {
    let (dir, set) = load(files);
    let errs = set.expect_err("load should fail");
    let prefix = format!("{}/", dir.path().display());
    errs.0
        .iter()
        .map(|d| d.to_string().replace(&prefix, ""))
        .collect()
}

fn facts(mac: &str) -> Facts {
    Facts::from_mac(mac.parse().unwrap())
}

fn chosen(set: &ProfileSet, f: &Facts) -> Option<String> {
    set.select(f).map(|m| m.profile.name.clone())
}

#[test]
fn precedence_exact_uuid_prefix_arch_label_default() {
    let (_d, set) = ok(&[
        (
            "exact.toml",
            &format!("{BOOT}[[machine]]\nmac = \"52:54:00:00:00:01\"\n"),
        ),
        (
            "byuuid.toml",
            &format!("{BOOT}[[select]]\nuuid = [\"00000000-0000-0000-0000-0000000000AA\"]\n"),
        ),
        (
            "prefix.toml",
            &format!("{BOOT}[[select]]\nmac_prefix = \"52:54:00\"\n"),
        ),
        (
            "longprefix.toml",
            &format!("{BOOT}[[select]]\nmac_prefix = \"52:54:00:00\"\n"),
        ),
        (
            "arm.toml",
            &format!("{BOOT}[[select]]\narch = [\"arm64\"]\n"),
        ),
        (
            "rack.toml",
            &format!("{BOOT}[[select]]\nlabels = {{ rack = \"r7\" }}\n"),
        ),
        ("fallback.toml", &format!("default = true\n{BOOT}")),
    ]);
    let mut f = facts("52:54:00:00:00:01");
    f.uuid = Some("00000000-0000-0000-0000-0000000000aa".into());
    assert_eq!(chosen(&set, &f).unwrap(), "exact", "exact MAC beats UUID");
    let mut f = facts("52:54:00:00:00:02");
    f.uuid = Some("00000000-0000-0000-0000-0000000000aa".into());
    assert_eq!(chosen(&set, &f).unwrap(), "byuuid", "UUID beats prefixes");
    assert_eq!(
        chosen(&set, &facts("52:54:00:00:00:02")).unwrap(),
        "longprefix",
        "longest prefix wins"
    );
    assert_eq!(chosen(&set, &facts("52:54:00:01:00:02")).unwrap(), "prefix");
    let mut f = facts("aa:00:00:00:00:01");
    f.arch = Some("arm64".into());
    f.labels.insert("rack".into(), "r7".into());
    assert_eq!(chosen(&set, &f).unwrap(), "arm", "arch beats labels");
    f.arch = Some("x86_64".into());
    assert_eq!(chosen(&set, &f).unwrap(), "rack");
    assert_eq!(
        chosen(&set, &facts("aa:00:00:00:00:01")).unwrap(),
        "fallback"
    );
    let m = set.select(&facts("aa:00:00:00:00:01")).unwrap();
    assert!(m.reason.to_string().contains("default"), "{}", m.reason);
}

#[test]
fn no_default_means_no_match() {
    let (_d, set) = ok(&[(
        "a.toml",
        &format!("{BOOT}[[machine]]\nmac = \"52:54:00:00:00:01\"\n"),
    )]);
    assert!(set.select(&facts("52:54:00:00:00:02")).is_none());
    assert!(set.select(&facts("52-54-00-00-00-01")).is_some());
}

#[test]
fn matchbox_install_then_installed_pattern() {
    // An exact MAC plus a label beats the exact MAC alone; the machine keeps its data.
    let (_d, set) = ok(&[
        (
            "install.toml",
            &format!("{BOOT}[[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"n1\"\n"),
        ),
        (
            "installed.toml",
            "[boot]\nlocal = true\n[[select]]\nmac = [\"52:54:00:00:00:01\"]\nlabels = { os = \"installed\" }\n",
        ),
    ]);
    let mut f = facts("52:54:00:00:00:01");
    assert_eq!(chosen(&set, &f).unwrap(), "install");
    f.labels.insert("os".into(), "installed".into());
    let m = set.select(&f).unwrap();
    assert_eq!(m.profile.name, "installed");
    assert_eq!(m.machine.unwrap().hostname.as_deref(), Some("n1"));
}

#[test]
fn conflicts_are_errors_with_file_and_line() {
    let errs = errors(&[
        (
            "a.toml",
            &format!("{BOOT}\n[[machine]]\nmac = \"52:54:00:00:00:01\"\n"),
        ),
        (
            "b.toml",
            &format!("{BOOT}\n[[machine]]\nmac = \"52-54-00-00-00-01\"\n"),
        ),
    ]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("profiles/b.toml:5: machine 52:54:00:00:00:01 is already declared at "),
        "{errs:?}"
    );
    assert!(errs[0].contains("profiles/a.toml:5"), "{errs:?}");

    let errs = errors(&[
        (
            "a.toml",
            &format!("{BOOT}[[machine]]\nmac = \"52:54:00:00:00:01\"\n"),
        ),
        (
            "b.toml",
            &format!("{BOOT}[[select]]\nmac = [\"52:54:00:00:00:01\"]\n"),
        ),
    ]);
    assert!(errs[0].contains("claimed by two profiles"), "{errs:?}");

    let errs = errors(&[
        ("a.toml", &format!("default = true\n{BOOT}")),
        (
            "b.toml",
            &format!("description = \"x\"\ndefault = true\n{BOOT}"),
        ),
    ]);
    assert_eq!(
        errs,
        vec![
            "profiles/b.toml:2: a second default profile: profiles/a.toml is already the default; \
             exactly one profile may set default = true"
        ]
    );

    let errs = errors(&[
        (
            "a.toml",
            &format!("{BOOT}[[select]]\nmac_prefix = \"52:54:00\"\n"),
        ),
        (
            "b.toml",
            &format!("{BOOT}[[select]]\nmac_prefix = \"52-54-00\"\n"),
        ),
    ]);
    assert!(
        errs[0].starts_with("profiles/b.toml:3: selector mac_prefix 52:54:00 overlaps"),
        "{errs:?}"
    );

    let errs = errors(&[
        (
            "a.toml",
            &format!("{BOOT}[[select]]\nlabels = {{ rack = \"1\" }}\n"),
        ),
        (
            "b.toml",
            &format!("{BOOT}[[select]]\nlabels = {{ role = \"db\" }}\n"),
        ),
    ]);
    assert!(errs[0].contains("overlaps"), "{errs:?}");
}

#[test]
fn disjoint_or_differently_specific_selectors_load() {
    ok(&[
        (
            "a.toml",
            &format!("{BOOT}[[select]]\nmac_prefix = \"52:54:00\"\n"),
        ),
        (
            "b.toml",
            &format!("{BOOT}[[select]]\nmac_prefix = \"52:54:01\"\n"),
        ),
        (
            "c.toml",
            &format!("{BOOT}[[select]]\narch = [\"x86_64\"]\n"),
        ),
        ("d.toml", &format!("{BOOT}[[select]]\narch = [\"arm64\"]\n")),
        (
            "e.toml",
            &format!("{BOOT}[[select]]\nlabels = {{ rack = \"1\" }}\n"),
        ),
        (
            "f.toml",
            &format!("{BOOT}[[select]]\nlabels = {{ rack = \"2\" }}\n"),
        ),
    ]);
}

#[test]
fn invalid_values_are_errors_with_line() {
    let errs = errors(&[(
        "a.toml",
        "[boot]\nkernel = \"k\"\n\n[[select]]\nmac_prefix = \"52:54:zz\"\n\n[[select]]\narch = [\"x86-64\"]\n\n[[machine]]\nmac = \"52:54:00:00:01\"\n\n[[machine]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"bad_name\"\n",
    )]);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(
        errs[0].starts_with("profiles/a.toml:5: invalid mac_prefix"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("profiles/a.toml:8: unknown arch \"x86-64\""),
        "{errs:?}"
    );
    assert!(
        errs[2].starts_with("profiles/a.toml:11: invalid MAC address"),
        "{errs:?}"
    );
    assert!(
        errs[3].starts_with("profiles/a.toml:15: invalid hostname"),
        "{errs:?}"
    );
}

#[test]
fn toml_errors_unknown_keys_and_reserved_vars() {
    let errs = errors(&[
        ("syntax.toml", "[boot\nkernel = \"k\"\n"),
        ("unknown.toml", "[boot]\nkernel = \"k\"\nkernal_args = []\n"),
        (
            "misplaced.toml",
            "[boot]\nkernel = \"k\"\nignition = \"x.j2\"\n",
        ),
        (
            "reserved.toml",
            "[boot]\nkernel = \"k\"\n[vars]\nfoo = 1\nmac = \"x\"\n",
        ),
    ]);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(
        errs[0].starts_with("profiles/misplaced.toml:3: unknown field `ignition`"),
        "{errs:?}"
    );
    assert!(
        errs[0].contains("move it above the first [table]"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("profiles/reserved.toml:5: variable \"mac\" is reserved"),
        "{errs:?}"
    );
    assert!(errs[2].starts_with("profiles/syntax.toml:1:"), "{errs:?}");
    assert!(
        errs[3].starts_with("profiles/unknown.toml:3: unknown field `kernal_args`"),
        "{errs:?}"
    );
}

#[test]
fn missing_and_escaping_templates() {
    let errs = errors(&[
        (
            "a.toml",
            "ignition = \"nope.ign.j2\"\n[boot]\nkernel = \"k\"\n",
        ),
        (
            "b.toml",
            "ignition = \"../../etc/passwd\"\n[boot]\nkernel = \"k\"\n",
        ),
        (
            "c.toml",
            "ignition = \"/etc/passwd\"\n[boot]\nkernel = \"k\"\n",
        ),
        ("d.toml", "[boot]\n"),
    ]);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(
        errs[0].starts_with("profiles/a.toml:1: template \"nope.ign.j2\" not found"),
        "{errs:?}"
    );
    assert!(
        errs[1]
            .starts_with("profiles/b.toml:1: template path \"../../etc/passwd\" must be relative"),
        "{errs:?}"
    );
    assert!(
        errs[2].starts_with("profiles/c.toml:1: template path \"/etc/passwd\" must be relative"),
        "{errs:?}"
    );
    assert!(
        errs[3].starts_with("profiles/d.toml:1: the profile boots nothing"),
        "{errs:?}"
    );
}

#[test]
fn undefined_variable_is_a_load_error_at_template_line() {
    let ign = "{\n  \"ignition\": {\"version\": \"3.4.0\"},\n  \"x\": {{ undefined_thing | tojson }}\n}\n";
    let errs = errors(&[
        (
            "a.toml",
            "ignition = \"t/a.ign.j2\"\n[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:00:00:01\"\n",
        ),
        ("t/a.ign.j2", ign),
    ]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("profiles/t/a.ign.j2:3: undefined value"),
        "{errs:?}"
    );
    assert!(errs[0].contains("undefined_thing"), "{errs:?}");
    assert!(
        errs[0].contains("52:54:00:00:00:01"),
        "names the machine: {errs:?}"
    );

    // In an inline boot arg: the profile file's line.
    let errs = errors(&[(
        "a.toml",
        "default = true\n[boot]\nkernel = \"k\"\nargs = [\n  \"a={{ nope }}\",\n]\n",
    )]);
    assert!(
        errs[0].starts_with("profiles/a.toml:5: undefined value"),
        "{errs:?}"
    );
}

#[test]
fn optional_variables_must_be_guarded() {
    // `ip` exists for the machine entry but not for machines reaching the default profile.
    let boot = "[boot]\nkernel = \"k\"\nargs = [\"ip={{ ip }}\"]\n";
    ok(&[(
        "a.toml",
        &format!("{boot}[[machine]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.5\"\n"),
    )]);
    let errs = errors(&[("a.toml", &format!("default = true\n{boot}"))]);
    assert!(errs[0].contains("undefined value"), "{errs:?}");
    ok(&[(
        "a.toml",
        "default = true\n[boot]\nkernel = \"k\"\nargs = [\"{% if ip is defined %}ip={{ ip }}{% endif %}\"]\n",
    )]);
}

#[test]
fn syntax_errors_and_invalid_ignition_are_load_errors() {
    let errs = errors(&[
        (
            "a.toml",
            "default = true\nignition = \"a.ign.j2\"\n[boot]\nkernel = \"k\"\n",
        ),
        (
            "a.ign.j2",
            "{\"ignition\": {\"version\": \"3.4.0\"}}\n{% if %}\n",
        ),
    ]);
    assert!(
        errs[0].starts_with("profiles/a.ign.j2:2: syntax error"),
        "{errs:?}"
    );
    let errs = errors(&[
        (
            "a.toml",
            "default = true\nignition = \"a.ign.j2\"\n[boot]\nkernel = \"k\"\n",
        ),
        ("a.ign.j2", "{\"ignition\": {\"version\": \"2.2.0\"}}\n"),
    ]);
    assert!(
        errs[0].contains("a.ign.j2") && errs[0].contains("not a 3.x spec version"),
        "{errs:?}"
    );
    let errs = errors(&[
        (
            "a.toml",
            "default = true\nignition = \"a.ign.j2\"\n[boot]\nkernel = \"k\"\n",
        ),
        (
            "a.ign.j2",
            "{\"ignition\": {\"version\": \"3.4.0\"}, \"sytemd\": {}}\n",
        ),
    ]);
    assert!(errs[0].contains("sytemd"), "{errs:?}");
}

#[test]
fn renders_ipxe_ignition_metadata_generic() {
    let (_d, set) = ok(&[
        (
            "node.toml",
            "ignition = \"n.ign.j2\"\n[generic]\nuser-data = \"ud.j2\"\n[boot]\nkernel = \"os/vmlinuz\"\ninitrd = [\"os/initrd.img\"]\nargs = [\"ign={{ base_url }}/ignition?mac={{ mac }}\", \"role={{ role }}\"]\n[vars]\nrole = \"worker\"\n[[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"w1\"\nip = \"10.0.0.21\"\n[machine.vars]\nrole = \"controller\"\n",
        ),
        (
            "n.ign.j2",
            "{\"ignition\": {\"version\": \"3.4.0\"}, \"storage\": {\"files\": [{\"path\": \"/etc/hostname\", \"contents\": {\"source\": {{ (\"data:,\" ~ hostname) | tojson }}}}]}}",
        ),
        (
            "ud.j2",
            "#cloud-config\nhostname: {{ hostname }}\nos: {{ query.os | default(\"none\") }}\n",
        ),
    ]);
    let mut f = facts("52:54:00:00:00:01");
    let m = set.select(&f).unwrap();
    let base = "http://10.0.0.2:8080";
    let ipxe = set
        .render(m.profile, m.machine, &f, base, &What::Ipxe)
        .unwrap()
        .body;
    assert_eq!(
        ipxe,
        "#!ipxe\n# Kindling: profile node for 52:54:00:00:00:01 (w1)\n\
         kernel http://10.0.0.2:8080/assets/os/vmlinuz initrd=initrd.img ign=http://10.0.0.2:8080/ignition?mac=52:54:00:00:00:01 role=controller\n\
         initrd http://10.0.0.2:8080/assets/os/initrd.img\nboot\n"
    );
    let ign = set
        .render(m.profile, m.machine, &f, base, &What::Ignition)
        .unwrap()
        .body;
    assert!(ign.contains("\"data:,w1\""), "{ign}");
    let md = set
        .render(m.profile, m.machine, &f, base, &What::Metadata)
        .unwrap()
        .body;
    assert!(
        md.contains("HOSTNAME=w1\n")
            && md.contains("IP=10.0.0.21\n")
            && md.contains("ROLE=controller\n"),
        "{md}"
    );
    f.labels.insert("os".into(), "flatcar".into());
    let ud = set
        .render(m.profile, m.machine, &f, base, &What::Generic(None))
        .unwrap()
        .body;
    assert_eq!(ud, "#cloud-config\nhostname: w1\nos: flatcar");
    let err = set
        .render(
            m.profile,
            m.machine,
            &f,
            base,
            &What::Generic(Some("nope".into())),
        )
        .unwrap_err();
    assert!(matches!(err, DocumentError::Missing { .. }), "{err}");
}

#[test]
fn local_boot_and_templates_cannot_reach_files() {
    let (_d, set) = ok(&[("disk.toml", "default = true\n[boot]\nlocal = true\n")]);
    let f = facts("52:54:00:00:00:09");
    let m = set.select(&f).unwrap();
    let ipxe = set
        .render(m.profile, m.machine, &f, "http://x", &What::Ipxe)
        .unwrap()
        .body;
    assert!(
        ipxe.contains("\nexit\n") && !ipxe.contains("kernel"),
        "{ipxe}"
    );

    // include of something outside the tree is unknown to the sandboxed environment
    let errs = errors(&[
        (
            "a.toml",
            "default = true\nignition = \"a.ign.j2\"\n[boot]\nkernel = \"k\"\n",
        ),
        ("a.ign.j2", "{% include \"/etc/passwd\" %}"),
    ]);
    assert!(errs[0].contains("template not found"), "{errs:?}");
}

#[test]
fn runaway_templates_run_out_of_fuel() {
    let errs = errors(&[(
        "a.toml",
        "default = true\n[boot]\nkernel = \"k\"\nargs = [\"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\"]\n",
    )]);
    assert!(errs[0].contains("fuel"), "{errs:?}");
}

#[test]
fn includes_within_the_tree_work_and_hidden_files_are_ignored() {
    let (_d, set) = ok(&[
        (
            "a.toml",
            "default = true\nignition = \"a.ign.j2\"\n[boot]\nkernel = \"k\"\n",
        ),
        ("a.ign.j2", "{\"ignition\": {% include \"parts/ign.j2\" %}}"),
        ("parts/ign.j2", "{\"version\": \"3.4.0\"}"),
        (".a.toml.swp", "garbage [[["),
        (".hidden/b.toml", "garbage [[["),
    ]);
    assert_eq!(set.profiles.len(), 1);
}

#[test]
fn shipped_example_profiles_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = Sources {
        profiles: root.join("profiles"),
        scripts: root.join("ipxe"),
    };
    let set = ProfileSet::load(&sources, "http://127.0.0.1:8080").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.profiles.len(), 2);
    assert_eq!(set.machines.len(), 3);
    for (mac, profile, host) in [
        ("52:54:00:10:00:11", "controller", "ctrl-1"),
        ("52:54:00:10:00:21", "worker", "worker-1"),
        ("52:54:00:10:00:22", "worker", "worker-2"),
    ] {
        let f = facts(mac);
        let m = set.select(&f).unwrap();
        assert_eq!(m.profile.name, profile);
        let ign = set
            .render(
                m.profile,
                m.machine,
                &f,
                "http://127.0.0.1:8080",
                &What::Ignition,
            )
            .unwrap()
            .body;
        assert!(ign.contains(&format!("data:,{host}")), "{ign}");
    }
}

#[test]
fn mutated_profiles_never_panic_the_loader() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let worker = std::fs::read_to_string(root.join("profiles/worker.toml")).unwrap();
    let ign = std::fs::read_to_string(root.join("profiles/templates/k8s-node.ign.j2")).unwrap();
    let mut rng = crate::testkit::Rng(0xdead_beef_0000_0042);
    let noise = [
        "[",
        "]",
        "\"",
        "=",
        "\n",
        "{{",
        "}}",
        "{%",
        "%}",
        "..",
        "/",
        "\u{fffd}",
        "52:54:00",
        "[[machine]]\n",
        "default = true\n",
        "\0",
    ];
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(profiles.join("templates")).unwrap();
    let sources = Sources {
        profiles: profiles.clone(),
        scripts: root.join("ipxe"),
    };
    let mut loaded = 0;
    for _ in 0..300 {
        let mut w = worker.clone().into_bytes();
        let mut t = ign.clone().into_bytes();
        for target in [&mut w, &mut t] {
            for _ in 0..rng.below(4) {
                let at = rng.below(target.len() + 1);
                match rng.below(3) {
                    0 => target.truncate(at),
                    1 => {
                        let n = noise[rng.below(noise.len())].as_bytes();
                        target.splice(at..at, n.iter().copied());
                    }
                    _ => {
                        if at < target.len() {
                            target.remove(at);
                        }
                    }
                }
            }
        }
        std::fs::write(profiles.join("worker.toml"), &w).unwrap();
        std::fs::write(profiles.join("templates/k8s-node.ign.j2"), &t).unwrap();
        if ProfileSet::load(&sources, "http://x").is_ok() {
            loaded += 1;
        }
    }
    assert!(
        loaded > 0 && loaded < 300,
        "mutations should both break and spare the profile: {loaded}"
    );
}

#[test]
fn boot_file_overrides_per_profile() {
    use crate::pxe::{Firmware, MachineBoot};
    let (_d, set) = ok(&[
        (
            "a.toml",
            "[boot]\nkernel = \"k\"\n[boot.files]\nuefi_x64 = \"snponly.efi\"\n[[machine]]\nmac = \"52:54:00:00:00:01\"\n",
        ),
        (
            "disk.toml",
            "[boot]\nlocal = true\n[[machine]]\nmac = \"52:54:00:00:00:02\"\n",
        ),
    ]);
    let (m, _) = set.machine_boot(&facts("52:54:00:00:00:01"));
    assert_eq!(
        m,
        MachineBoot::Netboot {
            profile: "a".into(),
            files: [(Firmware::UefiX64, "snponly.efi".to_string())].into(),
            loader: crate::pxe::Loader::Ipxe,
        }
    );
    assert_eq!(
        set.machine_boot(&facts("52:54:00:00:00:02")).0,
        MachineBoot::LocalDisk {
            profile: "disk".into()
        }
    );
    assert_eq!(
        set.machine_boot(&facts("52:54:00:00:00:03")).0,
        MachineBoot::NoProfile
    );
    let errs = errors(&[(
        "a.toml",
        "[boot]\nkernel = \"k\"\n[boot.files]\nuefi_x65 = \"a.efi\"\nbios = \"../x\"\n",
    )]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("profiles/a.toml:4: boot.files.uefi_x65: unknown firmware"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with(
            "profiles/a.toml:5: boot.files.bios: boot file \"../x\" must be a relative path"
        ),
        "{errs:?}"
    );
}

#[test]
fn an_address_belongs_to_one_machine() {
    let errs = errors(&[
        (
            "a.toml",
            &format!("{BOOT}[[machine]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.5\"\n"),
        ),
        (
            "b.toml",
            &format!("{BOOT}\n[[machine]]\nmac = \"52:54:00:00:00:02\"\nip = \"10.0.0.5\"\n"),
        ),
    ]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("profiles/b.toml:6: address 10.0.0.5 is already assigned to machine 52:54:00:00:00:01 at profiles/a.toml:4"),
        "{errs:?}"
    );
}

#[test]
fn after_provision_names_local_or_another_profile() {
    let (_d, set) = ok(&[
        (
            "install.toml",
            &format!(
                "after_provision = \"local\"\n{BOOT}[[machine]]\nmac = \"52:54:00:00:00:01\"\nlabels = {{ rack = \"a\" }}\n"
            ),
        ),
        (
            "rescue.toml",
            &format!("after_provision = \"install\"\n{BOOT}"),
        ),
    ]);
    let install = set.profile("install").unwrap();
    assert_eq!(install.after_provision, Some(AfterProvision::Local));
    assert_eq!(
        set.profile("rescue").unwrap().after_provision,
        Some(AfterProvision::Profile("install".into()))
    );
    let m = &set.machines[&"52:54:00:00:00:01".parse().unwrap()];
    assert_eq!(m.labels["rack"], "a");
    // The local-disk script of an install profile.
    let f = facts("52:54:00:00:00:01");
    let local = set
        .render_local(install, Some(m), &f, "http://10.0.0.2:8080", &What::Ipxe)
        .unwrap();
    assert!(local.body.contains("\nexit"), "{}", local.body);
    assert!(!local.body.contains("kernel "), "{}", local.body);

    let errs = errors(&[
        ("a.toml", &format!("after_provision = \"ghost\"\n{BOOT}")),
        ("b.toml", &format!("after_provision = \"b\"\n{BOOT}")),
    ]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("profiles/a.toml:1: after_provision = \"ghost\": no such profile"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("profiles/b.toml:1: after_provision = \"b\" names this profile itself"),
        "{errs:#?}"
    );
}

/// Symlinks back into the tree (a loop) are walked once, not 3^16 times; a linked directory
/// elsewhere in the tree still counts.
#[test]
fn symlink_loops_in_the_profiles_tree_are_walked_once() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(profiles.join("t")).unwrap();
    std::fs::write(
        profiles.join("p.toml"),
        "ignition = \"t/n.ign.j2\"\n[boot]\nkernel = \"k\"\n",
    )
    .unwrap();
    std::fs::write(
        profiles.join("t/n.ign.j2"),
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    )
    .unwrap();
    for n in ["a", "b", "c"] {
        std::os::unix::fs::symlink(&profiles, profiles.join(format!("t/{n}"))).unwrap();
        std::os::unix::fs::symlink(profiles.join("t"), profiles.join(format!("t-{n}"))).unwrap();
    }
    let sources = Sources {
        profiles,
        scripts: dir.path().join("no-such-dir"),
    };
    let started = std::time::Instant::now();
    let set = ProfileSet::load(&sources, "http://10.0.0.2:8080").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(set.profiles.len(), 1);
}

/// `loader = "grub"`: the grub.cfg has the kernel and initrd as TFTP paths, every argument
/// single-quoted for GRUB (a quote inside too), and the local-disk version `exit`s; a bad
/// loader name is an error at its line; a kernel from elsewhere cannot go to GRUB.
#[test]
fn grub_cfg_for_the_secure_boot_chain() {
    let (_d, set) = ok(&[(
        "secure.toml",
        "[boot]\nloader = \"grub\"\nkernel = \"vmlinuz\"\ninitrd = [\"initrd.img\"]\n\
         args = [\"console=ttyS0\", \"ignition.config.url={{ ignition_url }}\", \"msg=it's {{ hostname }}\"]\n\
         [[machine]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"sb-1\"\n",
    )]);
    let p = set.profile("secure").unwrap();
    assert_eq!(p.boot.loader, crate::pxe::Loader::Grub);
    let f = facts("52:54:00:00:00:01");
    let m = set.machines.get(&f.mac);
    let cfg = set
        .render(p, m, &f, "http://10.0.0.2:8080", &What::Grub(GrubVia::Tftp))
        .unwrap()
        .body;
    assert!(
        cfg.contains("linux (tftp)/vmlinuz 'console=ttyS0' 'ignition.config.url=http://10.0.0.2:8080/ignition?mac=52:54:00:00:00:01"),
        "{cfg}"
    );
    assert!(cfg.contains("'msg=it'\\''s sb-1'"), "{cfg}");
    assert!(cfg.contains("\ninitrd (tftp)/initrd.img\n"), "{cfg}");
    assert!(cfg.contains("\nboot"), "{cfg}");
    // A GRUB that came over HTTP boot fetches its kernel over HTTP, port included.
    let cfg = set
        .render(p, m, &f, "http://10.0.0.2:8080", &What::Grub(GrubVia::Http))
        .unwrap()
        .body;
    assert!(
        cfg.contains("linux (http,10.0.0.2:8080)/assets/vmlinuz 'console=ttyS0'"),
        "{cfg}"
    );
    assert!(
        cfg.contains("\ninitrd (http,10.0.0.2:8080)/assets/initrd.img\n"),
        "{cfg}"
    );
    let local = set
        .render_local(p, m, &f, "http://10.0.0.2:8080", &What::Grub(GrubVia::Http))
        .unwrap()
        .body;
    assert!(local.contains("\nexit"), "{local}");
    assert!(!local.contains("linux "), "{local}");

    let errs = errors(&[("a.toml", "[boot]\nloader = \"shim\"\nkernel = \"k\"\n")]);
    assert!(errs[0].contains("boot.loader = \"shim\""), "{errs:#?}");
    let (_d, set) = ok(&[(
        "far.toml",
        "[boot]\nloader = \"grub\"\nkernel = \"http://mirror.example/vmlinuz\"\n",
    )]);
    let far = |via| {
        set.render(
            set.profile("far").unwrap(),
            None,
            &f,
            "http://10.0.0.2:8080",
            &What::Grub(via),
        )
    };
    let err = far(GrubVia::Tftp).unwrap_err();
    assert!(
        err.to_string().contains("files under assets/ only"),
        "{err}"
    );
    let cfg = far(GrubVia::Http).unwrap().body;
    assert!(cfg.contains("linux (http,mirror.example)/vmlinuz"), "{cfg}");
}

/// A machine entry may choose its own loader: one Secure Boot machine in an iPXE profile.
#[test]
fn a_machine_chooses_its_own_loader() {
    let (_d, set) = ok(&[(
        "rack.toml",
        "[boot]\nkernel = \"vmlinuz\"\n\
         [[machine]]\nmac = \"52:54:00:00:00:01\"\nloader = \"grub\"\n\
         [[machine]]\nmac = \"52:54:00:00:00:02\"\n",
    )]);
    let loader = |mac: &str| match set.machine_boot(&facts(mac)).0 {
        crate::pxe::MachineBoot::Netboot { loader, .. } => loader,
        other => panic!("{other:?}"),
    };
    assert_eq!(loader("52:54:00:00:00:01"), crate::pxe::Loader::Grub);
    assert_eq!(loader("52:54:00:00:00:02"), crate::pxe::Loader::Ipxe);
    let errs = errors(&[(
        "a.toml",
        "[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:00:00:03\"\nloader = \"pxe\"\n",
    )]);
    assert!(errs[0].contains("invalid loader"), "{errs:#?}");
}

/// A machine asking again gets its boot script from the cache: the same text, its new secret
/// in it; a template that does more with the secret than print it is rendered every time.
#[test]
fn boot_scripts_are_cached_with_the_secret_put_in() {
    let (_d, set) = ok(&[
        (
            "plain.toml",
            "[boot]\nkernel = \"vmlinuz\"\nargs = [\"console=ttyS0\", \"ignition.config.url={{ ignition_url }}\", \"t={{ token }}\"]\n\
             [[machine]]\nmac = \"52:54:00:00:00:01\"\n",
        ),
        (
            "cut.toml",
            "[boot]\nkernel = \"vmlinuz\"\nargs = [\"short={{ token[:4] }}\"]\n\
             [[machine]]\nmac = \"52:54:00:00:00:02\"\n",
        ),
    ]);
    let base = "http://10.0.0.2:8080";
    let render = |mac: &str, secret: &str, what: &What| {
        let mut f = facts(mac);
        f.secret = Some(secret.to_string());
        let chosen = set.select(&f).unwrap();
        set.render(chosen.profile, chosen.machine, &f, base, what)
            .unwrap()
            .body
    };
    let secrets: Vec<String> = (0..5u8)
        .map(|i| format!("{:032x}", 0x1234_5678_9abc_def0_u128 * u128::from(i + 1)))
        .collect();
    for what in [What::Ipxe, What::Grub(GrubVia::Http)] {
        for (i, s) in secrets.iter().enumerate() {
            let body = render("52:54:00:00:00:01", s, &what);
            assert!(
                body.contains(&format!("token={s}")),
                "{what:?} #{i}: {body}"
            );
            assert!(body.contains(&format!("t={s}")), "{what:?} #{i}: {body}");
            // Exactly what rendering it afresh gives.
            let mut f = facts("52:54:00:00:00:01");
            f.secret = Some(s.clone());
            let chosen = set.select(&f).unwrap();
            let fresh = set
                .boot_script_uncached(
                    super::documents::Doc {
                        profile: chosen.profile,
                        machine: chosen.machine,
                        base_url: base,
                        what: &what,
                        local: false,
                    },
                    &f,
                )
                .unwrap();
            assert_eq!(body, fresh, "{what:?} #{i}");
        }
        let cut = render("52:54:00:00:00:02", &secrets[0], &what);
        assert!(
            cut.contains(&format!("short={}", &secrets[0][..4])),
            "{cut}"
        );
        for s in &secrets[1..] {
            let body = render("52:54:00:00:00:02", s, &what);
            assert!(body.contains(&format!("short={}", &s[..4])), "{body}");
        }
    }
    let entries = set.scripts.entries.lock().unwrap();
    assert!(
        entries
            .values()
            .any(|c| matches!(c, super::documents::Cached::Parts(_))),
        "{entries:?}"
    );
    assert!(
        entries
            .values()
            .any(|c| matches!(c, super::documents::Cached::Uncacheable)),
        "{entries:?}"
    );
}

/// Ignition configs are cached the same way, still valid with each machine's secret.
#[test]
fn ignition_configs_are_cached_with_the_secret_put_in() {
    let ign = |expr: &str| {
        format!(
            "{{\"ignition\": {{\"version\": \"3.4.0\"}}, \"storage\": {{\"files\": [{{\"path\": \"/etc/k\", \
             \"contents\": {{\"source\": \"data:,{expr}\"}}}}]}}}}"
        )
    };
    let (_d, set) = ok(&[
        (
            "plain.toml",
            "ignition = \"p.ign.j2\"\n[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:00:00:01\"\n",
        ),
        ("p.ign.j2", &ign("{{ token }}")),
        (
            "cut.toml",
            "ignition = \"c.ign.j2\"\n[boot]\nkernel = \"k\"\n[[machine]]\nmac = \"52:54:00:00:00:02\"\n",
        ),
        ("c.ign.j2", &ign("{{ token[:4] }}")),
    ]);
    let base = "http://10.0.0.2:8080";
    for (mac, want) in [
        ("52:54:00:00:00:01", 32usize),
        ("52:54:00:00:00:02", 4usize),
    ] {
        for i in 0..5u8 {
            let s = format!("{:032x}", 0xfeed_beef_u128 * u128::from(i + 3));
            let mut f = facts(mac);
            f.secret = Some(s.clone());
            let chosen = set.select(&f).unwrap();
            let body = set
                .render(chosen.profile, chosen.machine, &f, base, &What::Ignition)
                .unwrap()
                .body;
            assert!(
                body.contains(&format!("data:,{}\"", &s[..want])),
                "{mac} #{i}: {body}"
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["ignition"]["version"], "3.4.0");
        }
    }
    // Only Ignition was rendered here: one kept, one (cut secret) refused.
    let entries = set.scripts.entries.lock().unwrap();
    let kept = entries
        .values()
        .filter(|c| matches!(c, super::documents::Cached::Parts(_)))
        .count();
    assert_eq!(kept, 1, "{entries:?}");
}
