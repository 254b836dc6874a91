//! A headless Chromium driven through WebDriver (Debian's `chromium` and `chromium-driver`).
//!
//! chromedriver runs in a process group of its own on a loopback port; dropping the handle
//! kills that group (chromedriver and the Chromium it started), also when a test fails.
//! Chromium is told not to reach out to anything (no background networking, no component
//! updates, every host name unresolvable): the pages under test are on 127.0.0.1.
//! Both keep their scratch files (profiles, `scoped_dir`s) in a temporary directory of the
//! handle's own (`TMPDIR`), removed with it: test runs leave nothing in /tmp.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub struct Browser {
    pub client: Client,
    /// chromedriver's port on loopback (for commands fantoccini has no call for, such as the
    /// DevTools protocol's `goog/cdp/execute`).
    pub port: u16,
    driver: Child,
    /// chromedriver's and Chromium's `TMPDIR`; declared after `driver`, removed after the
    /// group is killed.
    _scratch: tempfile::TempDir,
}

/// Why a browser test cannot run here, if it cannot.
pub fn missing() -> Option<&'static str> {
    if !super::have("chromium") {
        return Some("chromium is not installed (scripts/setup.sh test installs it)");
    }
    if !super::have("chromedriver") {
        return Some(
            "chromedriver is not installed (scripts/setup.sh test installs chromium-driver)",
        );
    }
    None
}

impl Browser {
    /// Start chromedriver and a headless Chromium with a `width`×`height` viewport.
    pub async fn start(width: u32, height: u32) -> Browser {
        Browser::start_in(None, "127.0.0.1", width, height).await
    }

    /// The same inside network namespace `netns` (`ip netns exec` execs in place, so the
    /// process group is chromedriver's). Call it on a thread that joined the namespace
    /// ([`super::in_netns`]): the WebDriver connection goes to the namespace's loopback. The
    /// browser resolves no name and reaches only `host` (an address).
    pub async fn start_in(netns: Option<&str>, host: &str, width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "chromedriver"]);
                c
            }
            None => Command::new("chromedriver"),
        };
        let scratch = tempfile::Builder::new()
            .prefix("kindling-browser-")
            .tempdir()
            .expect("a scratch directory for the browser");
        let driver = cmd
            .arg(format!("--port={port}"))
            .env("TMPDIR", scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--disable-extensions",
                    format!("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE {host}"),
                    format!("--window-size={width},{height}"),
                ],
                "binary": "/usr/bin/chromium",
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut driver = Some(driver);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    kill_group(driver.take().as_mut().unwrap());
                    panic!("no WebDriver session from chromedriver on {url}: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let b = Browser {
            client,
            port,
            driver: driver.take().unwrap(),
            _scratch: scratch,
        };
        b.viewport(width, height).await;
        b
    }

    /// Size the window so that the page's viewport (what a screenshot shows) is
    /// `width`×`height`: the window's frame takes some of its size.
    pub async fn viewport(&self, width: u32, height: u32) {
        let (mut w, mut h) = (width, height);
        for _ in 0..3 {
            self.client.set_window_size(w, h).await.unwrap();
            let got = self
                .js("return [window.innerWidth, window.innerHeight]")
                .await;
            let (gw, gh) = (
                got[0].as_u64().unwrap() as u32,
                got[1].as_u64().unwrap() as u32,
            );
            if (gw, gh) == (width, height) {
                return;
            }
            w = w + width - gw.min(w + width);
            h = h + height - gh.min(h + height);
        }
    }

    /// Run `script` in the page and return what it returns.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Wait (at most `secs`) until `expr` is true in the page; the last value of `show` is in
    /// the failure message.
    pub async fn until(&self, secs: u64, expr: &str, show: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let check = format!("return !!({expr});");
        loop {
            if self.js(&check).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let seen = self.js(&format!("return String({show});")).await;
                panic!("not true within {secs} s: {expr}\n(it shows: {seen})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Choose the option whose value is `value` in the select `css`, as a user does.
    pub async fn select(&self, css: &str, value: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("cannot choose {value} in {css}: {e}"));
    }

    /// Type `text` into the input `css` (cleared first).
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Close the session (Chromium exits) and stop chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        kill_group(&mut self.driver);
    }
}

fn kill_group(child: &mut Child) {
    // The group is chromedriver's own (process_group(0)): it and the browser it started.
    let pgid = child.id() as i32;
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        if matches!(self.driver.try_wait(), Ok(None)) {
            kill_group(&mut self.driver);
        }
    }
}
