//! The dashboard at `/ui`, in a real headless Chromium driven through WebDriver, against the
//! real daemon. Machines boot by curl from addresses of their own on loopback (127.6.0.0/24),
//! along the path iPXE takes: `/ipxe` → `/assets/` → `/ignition` → report.

mod common;

use std::path::Path;
use std::time::Duration;

use common::browser::{self, Browser};
use common::{Daemon, write};

const TOKEN: &str = "dash-s3cret";
/// Declared machines: (MAC, hostname in the profile, its address).
const MACHINES: [(&str, &str, &str); 4] = [
    ("52:54:00:da:00:01", "alpha", "127.6.0.1"),
    ("52:54:00:da:00:02", "beta", "127.6.0.2"),
    ("52:54:00:da:00:03", "", "127.6.0.3"),
    ("52:54:00:da:00:04", "delta", "127.6.0.4"),
];
const XSS: &str = "<img src=x onerror=alert(1)>";

fn lab(read_requires_token: bool) -> tempfile::TempDir {
    lab_with(&format!(
        "[api]\ntoken = \"{TOKEN}\"\nread_requires_token = {read_requires_token}\n"
    ))
}

/// The lab with `extra` config (which must set `[api]`).
fn lab_with(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "kindling.toml",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n{extra}\
             [paths]\nipxe_scripts = \"{}\"\nstate = \"state\"\n\
             [inventory.stall_after]\nipxe = \"3s\"\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ipxe").display()
        ),
    );
    let mut machines = String::new();
    for (mac, host, _) in MACHINES {
        machines.push_str(&format!("[[machine]]\nmac = \"{mac}\"\n"));
        if !host.is_empty() {
            machines.push_str(&format!("hostname = \"{host}\"\n"));
        }
    }
    write(
        root,
        "profiles/node.toml",
        &format!(
            "ignition = \"node.ign.j2\"\nafter_provision = \"local\"\n\
             [boot]\nkernel = \"vmlinuz\"\n\
             args = [\"ignition.config.url={{{{ ignition_url }}}}\", \"kindling.report={{{{ report_url }}}}\"]\n\
             {machines}"
        ),
    );
    write(
        root,
        "profiles/node.ign.j2",
        "{\"ignition\": {\"version\": \"3.4.0\"}}",
    );
    write(root, "assets/vmlinuz", "a kernel");
    dir
}

/// A machine's boot, by curl from its own address.
struct Machine<'a> {
    d: &'a Daemon,
    mac: &'a str,
    ip: &'a str,
    token: String,
}

impl<'a> Machine<'a> {
    fn new(d: &'a Daemon, i: usize) -> Machine<'a> {
        Machine::other(d, MACHINES[i].0, MACHINES[i].2)
    }

    /// A machine no profile declares.
    fn other(d: &'a Daemon, mac: &'a str, ip: &'a str) -> Machine<'a> {
        Machine {
            d,
            mac,
            ip,
            token: String::new(),
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        common::curl(&["--interface", self.ip], &self.d.url(path))
    }

    /// `/ipxe` with extra facts (`&k=v...`): the script, whose secret the next steps use.
    fn ipxe(&mut self, facts: &str) -> String {
        let (code, script) = self.get(&format!(
            "/ipxe?mac={}&arch=x86_64&platform=efi{facts}",
            self.mac
        ));
        assert_eq!(code, 200, "{script}");
        if let Some(at) = script.find("token=") {
            self.token = script[at + 6..at + 38].to_string();
        }
        script
    }

    fn kernel(&self) {
        assert_eq!(self.get("/assets/vmlinuz").0, 200);
    }

    fn ignition(&self) {
        let (code, body) = self.get(&format!("/ignition?mac={}&token={}", self.mac, self.token));
        assert_eq!(code, 200, "{body}");
    }

    fn report(&self) {
        let (code, body) = common::curl(
            &["--interface", self.ip, "-X", "POST"],
            &self.d.url(&format!(
                "/api/v1/report?mac={}&token={}&state=provisioned",
                self.mac, self.token
            )),
        );
        assert!((200..300).contains(&code), "report: {code} {body}");
    }
}

fn skip(test: &str) -> bool {
    if let Some(why) = browser::missing() {
        eprintln!("SKIP {test}: {why}");
        return true;
    }
    if !common::have("curl") {
        eprintln!("SKIP {test}: curl is not installed");
        return true;
    }
    false
}

/// A browser on `d`'s dashboard at 1280×800, once the page follows the event stream.
async fn open_live(d: &Daemon) -> Browser {
    let b = Browser::start(1280, 800).await;
    b.client.goto(&d.url("/ui")).await.unwrap();
    b.until(
        10,
        "document.getElementById('live').textContent === 'live'",
        "document.getElementById('live').textContent",
    )
    .await;
    b
}

/// The badge of `mac`'s row.
fn badge(mac: &str) -> String {
    format!("document.querySelector('#fleet tr[data-mac=\"{mac}\"] .badge')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_follows_boots_live_and_acts_with_the_token() {
    if skip("the_fleet_view_follows_boots_live_and_acts_with_the_token") {
        return;
    }
    let dir = lab(false);
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let b = Browser::start(1280, 800).await;

    // `/` sends a browser to the dashboard.
    b.client.goto(&d.url("/")).await.unwrap();
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/ui")
    );
    // A marker that a reload would wipe out.
    b.until(
        10,
        "document.querySelectorAll('#fleet tbody tr').length === 4",
        "document.querySelector('#fleet tbody').innerText",
    )
    .await;
    b.js(
        "window.kindlingMarker = 42; window.alerts = 0; window.alert = () => { window.alerts++; };",
    )
    .await;

    // Every declared machine is listed with `unknown`.
    for (mac, host, _) in MACHINES {
        assert_eq!(
            b.js(&format!("return {}.textContent", badge(mac))).await,
            "unknown"
        );
        if !host.is_empty() {
            let cell = b.js(&format!("return document.querySelector('#fleet tr[data-mac=\"{mac}\"] .hostname').textContent")).await;
            assert_eq!(cell, host);
        }
    }
    assert_eq!(b.text("#count-unknown .n").await, "4");
    // Every machine has a profile: no bulk adoption bar (hidden means not displayed).
    assert_eq!(
        b.js("return getComputedStyle(document.getElementById('bulk')).display")
            .await,
        "none"
    );
    b.until(
        10,
        "document.getElementById('live').textContent === 'live'",
        "document.getElementById('live').textContent",
    )
    .await;

    // A boot moves its row through its states, live.
    let mut alpha = Machine::new(&d, 0);
    alpha.ipxe("&manufacturer=QEMU&product=Standard%20PC&memory=2048");
    b.until(
        10,
        &format!("{}.textContent === 'ipxe'", badge(alpha.mac)),
        &format!("{}.textContent", badge(alpha.mac)),
    )
    .await;
    // Facts come with the record the page fetches after the transition.
    let cell = |c: &str| {
        format!(
            "document.querySelector('#fleet tr[data-mac=\"{}\"] .{c}').textContent",
            alpha.mac
        )
    };
    b.until(
        10,
        &format!("{} === 'QEMU Standard PC · 2 GiB'", cell("facts")),
        &cell("facts"),
    )
    .await;
    b.until(
        10,
        &format!("{} === 'UEFI x86_64'", cell("firmware")),
        &cell("firmware"),
    )
    .await;
    alpha.kernel();
    b.until(
        10,
        &format!("{}.textContent === 'kernel'", badge(alpha.mac)),
        &format!("{}.textContent", badge(alpha.mac)),
    )
    .await;
    alpha.ignition();
    b.until(
        10,
        &format!("{}.textContent === 'config'", badge(alpha.mac)),
        &format!("{}.textContent", badge(alpha.mac)),
    )
    .await;
    alpha.report();
    b.until(
        10,
        &format!("{}.textContent === 'provisioned'", badge(alpha.mac)),
        &format!("{}.textContent", badge(alpha.mac)),
    )
    .await;
    assert_eq!(b.text("#count-provisioned .n").await, "1");
    assert_eq!(b.text("#count-unknown .n").await, "3");

    // The storm view follows too.
    b.js("location.hash = '#/storm';").await;
    b.until(10, "document.getElementById('storm-summary').textContent.startsWith('1 of 4 provisioned, 0 stalled')", "document.getElementById('storm-summary').textContent").await;
    assert_eq!(
        b.js("return document.getElementById('storm-progress').value")
            .await,
        1.0
    );
    assert_eq!(
        b.js("return document.getElementById('storm-progress').max")
            .await,
        4.0
    );
    b.until(
        5,
        "document.querySelectorAll('#histogram .bin').length > 0",
        "document.getElementById('histogram-note').textContent",
    )
    .await;
    b.js("location.hash = '#/';").await;

    // A machine that never fetches its kernel stalls in `ipxe` (limit 3 s) and stands out.
    let mut beta = Machine::new(&d, 1);
    beta.ipxe("");
    b.until(
        15,
        &format!("{}.textContent === 'stalled (ipxe)'", badge(beta.mac)),
        &format!("{}.textContent", badge(beta.mac)),
    )
    .await;
    let stalled_row = b.js(&format!("return document.querySelector('#fleet tr[data-mac=\"{}\"]').classList.contains('stalled')", beta.mac)).await;
    assert_eq!(stalled_row, true);
    assert_eq!(b.text("#count-stalled .n").await, "1");

    // Whatever a machine reports is text. The daemon refuses a hostname that is not one at
    // the gate (/ipxe, DHCP option 12 and the report all check it), so the page must also be
    // safe with one that got into a record some other way (an older store, another
    // instance): one arrives in a transition, as the stream would carry it. Hardware facts
    // are free text from SMBIOS and reach the page through the daemon.
    let mut gamma = Machine::new(&d, 2);
    let (code, body) = gamma.get(&format!(
        "/ipxe?mac={}&hostname=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
        gamma.mac
    ));
    assert_eq!(code, 400, "{body}");
    gamma.ipxe("&manufacturer=%3Cscript%3Ealert(2)%3C%2Fscript%3E&product=%3Cimg%20src%3Dx%20onerror%3Dalert(3)%3E");
    let cell = |c: &str| {
        format!(
            "document.querySelector('#fleet tr[data-mac=\"{}\"] .{c}').textContent",
            gamma.mac
        )
    };
    b.until(
        10,
        &format!(
            "{} === '<script>alert(2)</script> <img src=x onerror=alert(3)>'",
            cell("facts")
        ),
        &cell("facts"),
    )
    .await;
    b.js(&format!(
        "apply({{mac: '{}', from: 'ipxe', to: 'kernel', stalled_in: null, at: new Date().toISOString(), \
          source: 'http', event: 'asset', hostname: '{XSS}', profile: 'node'}});",
        gamma.mac
    ))
    .await;
    b.until(
        10,
        &format!("{} === '{XSS}'", cell("hostname")),
        &cell("hostname"),
    )
    .await;
    assert_eq!(
        b.js("return document.querySelectorAll('main img, main script').length")
            .await,
        0
    );

    // Without the token the actions are disabled.
    let reinstall = format!(
        "#fleet tr[data-mac=\"{}\"] button[data-action=\"reinstall\"]",
        alpha.mac
    );
    assert_eq!(
        b.js(&format!(
            "return document.querySelector('{reinstall}').disabled"
        ))
        .await,
        true
    );
    // A wrong token enables them, and the API's refusal is shown.
    b.type_into("#token", "not-the-token").await;
    b.click("#token-use").await;
    assert_eq!(
        b.js(&format!(
            "return document.querySelector('{reinstall}').disabled"
        ))
        .await,
        false
    );
    b.click(&reinstall).await;
    b.until(
        10,
        "!document.getElementById('action-result').hidden",
        "document.getElementById('action-result').hidden",
    )
    .await;
    let said = b.text("#action-result-text").await;
    assert!(
        said.contains("missing or wrong bearer token") && said.contains("401"),
        "{said}"
    );
    // The right one: reinstall makes the next `/ipxe` serve the install, once.
    assert!(
        !alpha.ipxe("").contains("vmlinuz"),
        "a provisioned machine boots from disk"
    );
    b.type_into("#token", TOKEN).await;
    b.click("#token-use").await;
    b.click(&reinstall).await;
    b.until(10, &format!("document.getElementById('action-result-text').textContent === 'the next boot reinstalls {}'", alpha.mac), "document.getElementById('action-result-text').textContent").await;
    let next = format!(
        "document.querySelector('#fleet tr[data-mac=\"{}\"] .next').textContent",
        alpha.mac
    );
    b.until(10, &format!("{next} === 'install'"), &next).await;
    assert!(
        alpha.ipxe("").contains("vmlinuz"),
        "reinstall serves the install"
    );
    assert!(!alpha.ipxe("").contains("vmlinuz"), "once");
    b.until(10, &format!("{next} === ''"), &next).await;
    // The token lives in sessionStorage only.
    assert_eq!(
        b.js("return sessionStorage.getItem('kindling-api-token')")
            .await,
        TOKEN
    );
    assert_eq!(b.js("return localStorage.length").await, 0);

    // No reload happened, no script of a machine's ran, no alert is open.
    assert_eq!(b.js("return window.kindlingMarker").await, 42);
    assert_eq!(b.js("return window.alerts").await, 0);
    assert!(b.client.get_alert_text().await.is_err(), "an alert is open");

    // The filter box looks through every column; headers sort.
    b.type_into("#filter", "beta").await;
    b.until(
        5,
        "document.querySelectorAll('#fleet tbody tr').length === 1",
        "document.getElementById('shown').textContent",
    )
    .await;
    assert_eq!(b.text("#shown").await, "1 of 4 machines");
    b.type_into("#filter", "acme").await; // no such fact
    b.until(
        5,
        "document.querySelectorAll('#fleet tbody tr').length === 0",
        "document.getElementById('shown').textContent",
    )
    .await;
    b.type_into("#filter", "").await;
    b.js("const f = document.getElementById('filter'); f.dispatchEvent(new Event('input'));")
        .await;
    b.until(
        5,
        "document.querySelectorAll('#fleet tbody tr').length === 4",
        "document.getElementById('shown').textContent",
    )
    .await;
    b.click("#fleet th[data-sort='hostname']").await;
    b.click("#fleet th[data-sort='hostname']").await;
    let order = "[...document.querySelectorAll('#fleet tbody tr')].map((r) => r.querySelector('.hostname').textContent).join(',')";
    b.until(5, &format!("{order} === 'delta,beta,alpha,{XSS}'"), order)
        .await;

    // The machine page: its timeline, facts and what it would get now.
    b.js(&format!("location.hash = '#/m/{}';", alpha.mac)).await;
    b.until(
        10,
        "document.querySelectorAll('#m-timeline tbody tr').length >= 4",
        "document.getElementById('m-timeline').innerText",
    )
    .await;
    b.until(
        10,
        "document.getElementById('m-preview').textContent.startsWith('#!ipxe')",
        "document.getElementById('m-preview-note').textContent",
    )
    .await;
    let facts = b.text("#m-facts").await;
    assert!(facts.contains("QEMU") && facts.contains("2 GiB"), "{facts}");

    // The artifact: the fleet view at 1280×800.
    b.js("location.hash = '#/';").await;
    b.until(
        5,
        "!document.getElementById('view-fleet').hidden",
        "location.hash",
    )
    .await;
    let png = b.client.screenshot().await.unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-fleet.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(png_size(&png), (1280, 800));
    b.close().await;
    drop(d);
}

/// Width and height from a PNG's IHDR.
fn png_size(png: &[u8]) -> (u32, u32) {
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_read_requires_token_the_page_shows_nothing_until_the_token_is_given() {
    if skip("with_read_requires_token_the_page_shows_nothing_until_the_token_is_given") {
        return;
    }
    let dir = lab(true);
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let b = Browser::start(1280, 800).await;
    b.client.goto(&d.url("/ui")).await.unwrap();
    b.until(
        10,
        "!document.getElementById('need-token').hidden",
        "document.body.innerText",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('main').hidden").await,
        true
    );
    assert_eq!(
        b.js("return document.querySelectorAll('#fleet tbody tr').length")
            .await,
        0
    );
    b.type_into("#token", TOKEN).await;
    b.click("#token-use").await;
    b.until(
        10,
        "document.querySelectorAll('#fleet tbody tr').length === 4",
        "document.body.innerText",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('main').hidden").await,
        false
    );
    // Live with the token too (the stream is read with the Authorization header).
    b.until(
        10,
        "document.getElementById('live').textContent === 'live'",
        "document.getElementById('live').textContent",
    )
    .await;
    let mut delta = Machine::new(&d, 3);
    delta.ipxe("");
    b.until(
        10,
        &format!("{}.textContent === 'ipxe'", badge(delta.mac)),
        &format!("{}.textContent", badge(delta.mac)),
    )
    .await;
    // A page that fell behind gets `resync` with every machine from the stream, and shows
    // exactly that (here fed to the page's stream handler: a real lag needs more than the
    // channel's capacity of transitions while this page stops reading).
    b.js(&format!(
        "const list = [...S.machines.values()].filter((m) => m.mac !== '{}')\
           .map((m) => Object.assign({{}}, m, {{state: 'provisioned', state_since: new Date(Date.now() + 1000).toISOString()}}));\
         event('event: resync\\ndata: ' + JSON.stringify({{missed: 7, machines: list}}));",
        MACHINES[0].0
    ))
    .await;
    b.until(
        10,
        "document.querySelectorAll('#fleet tbody tr').length === 3",
        "document.getElementById('shown').textContent",
    )
    .await;
    assert_eq!(b.text("#count-provisioned .n").await, "3");
    b.close().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// `[discovery]` on: machines no profile knows show up as `discovered` with their facts, the
/// operator adopts all of them from the page in one go, and their next ask boots the
/// profile. A profile that stops loading is shown on every view until it loads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_machines_are_adopted_from_the_page_and_reload_errors_show() {
    if skip("discovered_machines_are_adopted_from_the_page_and_reload_errors_show") {
        return;
    }
    let dir = lab_with(&format!(
        "[api]\ntoken = \"{TOKEN}\"\n[discovery]\nenabled = true\nretry = \"2s\"\n"
    ));
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let b = open_live(&d).await;
    let new = [
        ("52:54:00:dd:00:01", "127.6.0.51"),
        ("52:54:00:dd:00:02", "127.6.0.52"),
        ("52:54:00:dd:00:03", "127.6.0.53"),
    ];
    for (i, (mac, ip)) in new.iter().enumerate() {
        let script = Machine::other(&d, mac, ip)
            .ipxe(&format!("&manufacturer=Acme&product=R{i}&serial=SN{i}"));
        assert!(script.contains("is discovered"), "{script}");
    }
    b.until(
        10,
        "document.getElementById('count-discovered').querySelector('.n').textContent === '3'",
        "document.getElementById('counts').innerText",
    )
    .await;
    let facts = format!(
        "document.querySelector('#fleet tr[data-mac=\"{}\"] .facts').textContent",
        new[1].0
    );
    b.until(10, &format!("{facts} === 'Acme R1 · S/N SN1'"), &facts)
        .await;
    // Show only the discovered ones: the bulk bar offers to adopt the three.
    b.click("#count-discovered").await;
    b.until(
        5,
        "document.querySelectorAll('#fleet tbody tr').length === 3",
        "document.getElementById('shown').textContent",
    )
    .await;
    b.until(
        5,
        "!document.getElementById('bulk').hidden",
        "document.getElementById('bulk').hidden",
    )
    .await;
    assert_eq!(
        b.text("#bulk-text").await,
        "3 machines shown belong to no profile:"
    );
    assert_eq!(
        b.js("return document.getElementById('bulk-adopt').disabled")
            .await,
        true
    );
    b.type_into("#token", TOKEN).await;
    b.click("#token-use").await;
    b.click("#bulk-adopt").await;
    assert!(
        b.text("#bulk-adopt")
            .await
            .starts_with("Click again: adopt 3 into node")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = std::fs::read_to_string(dir.path().join("profiles/node.toml")).unwrap();
    assert!(!text.contains("52:54:00:dd"), "one click adopted: {text}");
    b.click("#bulk-adopt").await;
    b.until(
        20,
        "document.getElementById('action-result-text').textContent === 'adopted 3 of 3 into node'",
        "document.getElementById('action-result-text').textContent",
    )
    .await;
    for (mac, ip) in new {
        let profile = format!(
            "document.querySelector('#fleet tr[data-mac=\"{mac}\"] .profile')?.textContent"
        );
        b.until(10, &format!("{profile} === 'node'"), &profile)
            .await;
        let script = Machine::other(&d, mac, ip).ipxe("");
        assert!(
            script.contains("vmlinuz"),
            "adopted {mac} boots its profile: {script}"
        );
    }
    let text = std::fs::read_to_string(dir.path().join("profiles/node.toml")).unwrap();
    for (mac, _) in new {
        assert!(text.contains(&format!("mac = \"{mac}\"")), "{text}");
    }

    // A profile that does not load: the error with its place, on every view, until fixed.
    let good = std::fs::read_to_string(dir.path().join("profiles/node.toml")).unwrap();
    common::replace(
        dir.path(),
        "profiles/node.toml",
        &format!("{good}\n[boot\n"),
    );
    b.until(
        20,
        "!document.getElementById('reload-error').hidden",
        "document.getElementById('reload-error').hidden",
    )
    .await;
    let shown = b.text("#reload-error-text").await;
    assert!(shown.contains("node.toml:"), "{shown}");
    b.js("location.hash = '#/storm';").await;
    assert_eq!(
        b.js("return document.getElementById('reload-error').hidden")
            .await,
        false
    );
    common::replace(dir.path(), "profiles/node.toml", &good);
    b.until(
        20,
        "document.getElementById('reload-error').hidden",
        "document.getElementById('reload-error-text').textContent",
    )
    .await;
    b.close().await;
}

/// The boot storm view lists each DHCP pool's size and use (DHCP served on loopback only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_view_shows_the_dhcp_pools() {
    if skip("the_storm_view_shows_the_dhcp_pools") {
        return;
    }
    let dir = lab_with(&format!(
        "[api]\ntoken = \"{TOKEN}\"\n[dhcp]\nmode = \"full\"\ninterfaces = [\"lo\"]\n\
         [[dhcp.subnet]]\nnetwork = \"127.6.0.0/24\"\nrange = [\"127.6.0.100\", \"127.6.0.199\"]\n\
         server_ip = \"127.6.0.1\"\n"
    ));
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let b = Browser::start(1280, 800).await;
    b.client.goto(&d.url("/ui#/storm")).await.unwrap();
    b.until(
        10,
        "document.querySelectorAll('#pools tbody tr').length === 1",
        "document.getElementById('pools').innerText",
    )
    .await;
    let cells = b.js("return [...document.querySelectorAll('#pools tbody td')].slice(0, 4).map((c) => c.textContent)").await;
    assert_eq!(
        cells,
        serde_json::json!(["127.6.0.0/24", "100", "0", "100"])
    );
    assert_eq!(
        b.js("return document.getElementById('no-pools').hidden")
            .await,
        true
    );
    b.close().await;
}

/// The fleet's state and profile filters; a machine's page previews each thing it would get
/// (iPXE script, grub.cfg, Ignition), sets its next boot to the local disk or another profile
/// and clears it, each as the next `/ipxe` then serves; a discovered machine is adopted from
/// its own page with a hostname.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machines_page_previews_sets_the_next_boot_and_adopts() {
    if skip("a_machines_page_previews_sets_the_next_boot_and_adopts") {
        return;
    }
    let dir = lab_with(&format!(
        "[api]\ntoken = \"{TOKEN}\"\n[discovery]\nenabled = true\nretry = \"2s\"\n"
    ));
    write(
        dir.path(),
        "profiles/rescue.toml",
        "[boot]\nkernel = \"rescue-kernel\"\n",
    );
    let d = Daemon::start(&dir.path().join("kindling.toml"));
    let b = open_live(&d).await;
    let mut alpha = Machine::new(&d, 0);
    alpha.ipxe("");
    let (new_mac, new_ip) = ("52:54:00:dd:00:09", "127.6.0.59");
    let script = Machine::other(&d, new_mac, new_ip).ipxe("&manufacturer=Acme&product=R9");
    assert!(script.contains("is discovered"), "{script}");
    b.until(
        10,
        "document.querySelectorAll('#fleet tbody tr').length === 5",
        "document.getElementById('shown').textContent",
    )
    .await;

    // The row says where it is and for how long.
    let cell = |mac: &str, c: &str| {
        format!("document.querySelector('#fleet tr[data-mac=\"{mac}\"] .{c}')?.textContent")
    };
    b.until(
        10,
        &format!("{} === '{}'", cell(alpha.mac, "ip"), alpha.ip),
        &cell(alpha.mac, "ip"),
    )
    .await;
    b.until(
        5,
        &format!("/^\\d+s$/.test({})", cell(alpha.mac, "since")),
        &cell(alpha.mac, "since"),
    )
    .await;

    // Filters: by state, then by profile.
    let rows =
        "[...document.querySelectorAll('#fleet tbody tr')].map((r) => r.dataset.mac).join(',')";
    // A phase lists the machines in it and those stalled in it: alpha stalls in `ipxe` 3 s
    // after its script. Each choice below shows a different list.
    b.until(
        10,
        &format!("{}?.textContent === 'stalled (ipxe)'", badge(alpha.mac)),
        &format!("{}?.textContent", badge(alpha.mac)),
    )
    .await;
    for (state, want) in [
        ("ipxe", alpha.mac),
        ("discovered", new_mac),
        ("stalled", alpha.mac),
        (
            "unknown",
            "52:54:00:da:00:02,52:54:00:da:00:03,52:54:00:da:00:04",
        ),
    ] {
        b.select("#state-filter", state).await;
        b.until(5, &format!("{rows} === '{want}'"), rows).await;
    }
    b.select("#state-filter", "").await;
    b.until(
        10,
        "document.querySelectorAll('#profile-filter option').length === 3",
        "document.getElementById('profile-filter').innerText",
    )
    .await;
    b.select("#profile-filter", "node").await;
    b.until(
        5,
        "document.getElementById('shown').textContent === '4 of 5 machines'",
        "document.getElementById('shown').textContent",
    )
    .await;
    b.select("#profile-filter", "rescue").await;
    b.until(
        5,
        "document.getElementById('shown').textContent === '0 of 5 machines'",
        "document.getElementById('shown').textContent",
    )
    .await;
    b.select("#profile-filter", "").await;

    // A machine's page: what it would get now, each kind.
    b.js(&format!("location.hash = '#/m/{}';", alpha.mac)).await;
    let preview = "document.getElementById('m-preview').textContent";
    b.until(10, &format!("{preview}.startsWith('#!ipxe')"), preview)
        .await;
    b.click("[data-preview=\"grub\"]").await;
    b.until(
        10,
        &format!("{preview}.includes('linux ') && {preview}.includes('set timeout=0')"),
        preview,
    )
    .await;
    b.click("[data-preview=\"ignition\"]").await;
    b.until(
        10,
        &format!(
            "(() => {{ try {{ return JSON.parse({preview}).ignition.version === '3.4.0'; }} catch (_) {{ return false; }} }})()"
        ),
        preview,
    )
    .await;
    b.click("[data-preview=\"ipxe\"]").await;
    b.until(10, &format!("{preview}.startsWith('#!ipxe')"), preview)
        .await;

    // Its next boot, from its page.
    b.type_into("#token", TOKEN).await;
    b.click("#token-use").await;
    let next = "[...document.querySelectorAll('#m-facts tr')].find((r) => r.cells[0].textContent === 'next boot')?.cells[1].textContent";
    let said = "document.getElementById('action-result-text').textContent";
    b.click("#m-actions [data-action=\"local\"]").await;
    b.until(
        10,
        &format!(
            "{said} === 'the next boot is from local disk for {}'",
            alpha.mac
        ),
        said,
    )
    .await;
    b.until(10, &format!("{next} === 'local'"), next).await;
    let script = alpha.ipxe("");
    assert!(script.contains("boots from its local disk"), "{script}");
    b.until(10, &format!("{next} === undefined"), next).await;

    b.select("#m-next-profile", "rescue").await;
    b.click("#m-actions [data-action=\"profile\"]").await;
    b.until(10, &format!("{next} === 'profile rescue'"), next)
        .await;
    b.until(10, &format!("{preview}.includes('rescue-kernel')"), preview)
        .await;
    let script = alpha.ipxe("");
    assert!(script.contains("rescue-kernel"), "{script}");
    let script = alpha.ipxe("");
    assert!(
        script.contains("vmlinuz") && !script.contains("rescue-kernel"),
        "once: {script}"
    );

    b.click("#m-actions [data-action=\"local\"]").await;
    b.until(10, &format!("{next} === 'local'"), next).await;
    b.click("#m-actions [data-action=\"clear\"]").await;
    b.until(
        10,
        &format!("{said} === 'next boot cleared for {}'", alpha.mac),
        said,
    )
    .await;
    b.until(10, &format!("{next} === undefined"), next).await;
    assert!(alpha.ipxe("").contains("vmlinuz"), "cleared");

    // The discovered machine, adopted from its own page (its row's button opens it) with a
    // hostname.
    b.js("location.hash = '#/';").await;
    let adopt_open = format!("#fleet tr[data-mac=\"{new_mac}\"] [data-action=\"adopt-open\"]");
    b.until(
        10,
        &format!("document.querySelector('{adopt_open}')?.hidden === false"),
        "document.getElementById('shown').textContent",
    )
    .await;
    b.click(&adopt_open).await;
    b.until(
        10,
        &format!("location.hash === '#/m/{new_mac}'"),
        "location.hash",
    )
    .await;
    b.until(
        10,
        "!document.getElementById('m-adopt').hidden",
        "document.getElementById('m-title').textContent",
    )
    .await;
    b.select("#m-adopt-profile", "node").await;
    b.type_into("#m-adopt-hostname", "epsilon").await;
    b.click("#m-adopt [data-action=\"adopt\"]").await;
    b.until(10, &format!("{said} === 'adopted {new_mac}'"), said)
        .await;
    let text = std::fs::read_to_string(dir.path().join("profiles/node.toml")).unwrap();
    assert!(
        text.contains(&format!("mac = \"{new_mac}\"")) && text.contains("epsilon"),
        "{text}"
    );
    b.until(
        10,
        "document.getElementById('m-title').textContent.includes('epsilon')",
        "document.getElementById('m-title').textContent",
    )
    .await;
    let script = Machine::other(&d, new_mac, new_ip).ipxe("");
    assert!(script.contains("vmlinuz"), "adopted: {script}");
    b.close().await;
    drop(d);
}
