//! The web console in headless Chromium, driven over the W3C WebDriver protocol (chromedriver),
//! against a real 3-node cluster: it shows the members, turns a killed member's row `down` within the
//! detection time, and its drain button drains a member. A screenshot lands in
//! `target/console-screenshot.png`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, free_port, wait_for};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// chromedriver and the Chromium it starts; both are killed on drop.
struct Browser {
    driver: Child,
    base: String,
    port: u16,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
    /// chromedriver's log: kept when the test fails, removed when it passes.
    log: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver = find_program("chromedriver");
        if !Path::new(CHROMIUM).is_file() || chromedriver.is_none() {
            panic!(
                "the console test needs Chromium and chromedriver ({CHROMIUM} and chromedriver on PATH): \
                 apt-get install chromium chromium-driver (.ci/run installs them when missing)"
            );
        }
        let port = free_port();
        let log = std::env::temp_dir().join(format!("chromedriver-{port}.log"));
        let mut command = Command::new(chromedriver.expect("checked above"));
        command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so the guard can end chromedriver and every Chromium process
        // it started, even when the session is not closed cleanly.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().expect("spawn chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            base,
            port,
            session: String::new(),
            http,
            _profile: profile,
            log: log.clone(),
        };
        wait_for("chromedriver ready", Duration::from_secs(20), || async {
            let status: Value = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            status["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1440,1080",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let created = browser
            .command(
                reqwest::Method::POST,
                "/session",
                json!({ "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
                }}}),
            )
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "chromedriver could not start Chromium: {err}\nchromedriver log: {}",
                    log.display()
                )
            });
        browser.session = created["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        browser
    }

    /// One WebDriver command; the `value` of the answer, or the WebDriver error.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| err.to_string())?;
        let status = response.status();
        let doc: Value = response.json().await.map_err(|err| err.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", doc["value"]));
        }
        Ok(doc["value"].clone())
    }

    async fn session(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body)
            .await
            .unwrap_or_else(|err| panic!("WebDriver {path}: {err}"))
    }

    async fn goto(&self, url: &str) {
        self.session(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Element references matching a CSS selector.
    async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .session(
                reqwest::Method::POST,
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        found
            .as_array()
            .map(|elements| {
                elements
                    .iter()
                    .filter_map(|element| element[ELEMENT_KEY].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn find(&self, css: &str) -> Option<String> {
        self.find_all(css).await.into_iter().next()
    }

    /// Rendered text; `None` when the element went away meanwhile (the page re-rendered).
    async fn text(&self, element: &str) -> Option<String> {
        let path = format!("/session/{}/element/{element}/text", self.session);
        let value = self
            .command(reqwest::Method::GET, &path, Value::Null)
            .await
            .ok()?;
        value.as_str().map(str::to_string)
    }

    async fn attribute(&self, element: &str, name: &str) -> Option<String> {
        let path = format!(
            "/session/{}/element/{element}/attribute/{name}",
            self.session
        );
        let value = self
            .command(reqwest::Method::GET, &path, Value::Null)
            .await
            .ok()?;
        value.as_str().map(str::to_string)
    }

    async fn click(&self, element: &str) {
        self.session(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    /// The text of the first element matching `css`, if any.
    async fn text_of(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        self.text(&element).await
    }

    /// `(member, state)` of every row of the members table, as rendered.
    async fn member_rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        for row in self.find_all("#members tbody tr[data-member]").await {
            let Some(name) = self.attribute(&row, "data-member").await else {
                continue;
            };
            let css = format!("#members tr[data-member=\"{name}\"] .state");
            let state = self.text_of(&css).await.unwrap_or_default();
            rows.push((name, state));
        }
        rows
    }

    async fn screenshot(&self) -> Vec<u8> {
        let encoded = self
            .session(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        decode_base64(encoded.as_str().expect("base64 screenshot"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Close the session (Chromium quits), then end whatever is left of the process group.
        if !self.session.is_empty() {
            close_session(self.port, &self.session);
        }
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `DELETE /session/{id}` with a blocking socket: `Drop` cannot await, and a panicking test must still
/// let Chromium quit.
fn close_session(port: u16, session: &str) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
}

/// Standard base64 (with padding), as WebDriver returns screenshots.
fn decode_base64(text: &str) -> Vec<u8> {
    fn value(byte: u8) -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other:#x}"),
        }
    }
    let clean: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace() && *byte != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut bits = 0u32;
        for (index, byte) in chunk.iter().enumerate() {
            bits |= value(*byte) << (18 - 6 * index);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decoding() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGk="), b"hi");
    assert_eq!(decode_base64("YWJj"), b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium_shows_members_a_kill_and_drains() {
    let mut cluster = Cluster::new(3);
    cluster.start_all();
    cluster.wait_ready(Duration::from_secs(30)).await;
    cluster.wait_all_up(3, Duration::from_secs(20)).await;
    let node1 = cluster.nodes["node-1"].url();

    // The page and its assets are served by every node, from the binary.
    for (path, content_type) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ] {
        let response = cluster
            .client
            .get(format!("{node1}{path}"))
            .send()
            .await
            .expect("console asset");
        assert_eq!(response.status(), 200, "{path}");
        let served = response.headers()["content-type"].to_str().unwrap_or("");
        assert!(served.starts_with(content_type), "{path}: {served}");
    }
    // Some sessions and requests, so the figures are not all zero.
    for index in 0..5 {
        cluster
            .create_session("node-1", &json!({ "user": format!("user-{index}") }))
            .await
            .expect("session created");
    }
    for _ in 0..20 {
        let _ = cluster
            .client
            .get(format!("{node1}/app/hello"))
            .send()
            .await;
    }

    let browser = Browser::start().await;
    browser.goto(&format!("{node1}/console")).await;
    let rows = wait_for(
        "the console lists 3 members, all up",
        Duration::from_secs(20),
        || async {
            let rows = browser.member_rows().await;
            (rows.len() == 3 && rows.iter().all(|(_, state)| state == "up")).then_some(rows)
        },
    )
    .await;
    let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    wait_for(
        "the console names the leader",
        Duration::from_secs(10),
        || async { (browser.text_of("#leader").await? == leader).then_some(()) },
    )
    .await;
    wait_for("the stream is live", Duration::from_secs(10), || async {
        (browser.text_of("#conn-text").await? == "live").then_some(())
    })
    .await;
    // The session card shows the cluster's cap and says when to make the cookie Secure.
    wait_for(
        "the session card shows the limits",
        Duration::from_secs(10),
        || async {
            let sub = browser.text_of("#sessions-sub").await?;
            let cookie = browser.text_of("#sessions-cookie").await?;
            (sub.contains("1,000,000 max") && cookie.contains("cookie-secure")).then_some(())
        },
    )
    .await;

    // kill -9 node-3: its row turns down within the detection time (about a second with the
    // test's 150 ms gossip; the bound leaves room for a loaded machine).
    let killed = Instant::now();
    cluster.kill9("node-3");
    wait_for(
        "node-3's row shows down",
        Duration::from_secs(10),
        || async {
            let state = browser
                .text_of("#members tr[data-member=\"node-3\"] .state")
                .await?;
            (state == "down").then_some(())
        },
    )
    .await;
    eprintln!("node-3 shown down {:?} after kill -9", killed.elapsed());
    wait_for(
        "the event log shows node-3 down",
        Duration::from_secs(5),
        || async {
            let item = browser.find("#events li[data-kind=\"node_down\"]").await?;
            let text = browser.text(&item).await?;
            text.contains("node-3").then_some(())
        },
    )
    .await;

    // An admin token typed into the console is kept in the browser and sent with drain calls
    // (a cluster without a token accepts them either way).
    browser
        .click(&browser.find("#token-toggle").await.expect("token button"))
        .await;
    let input = browser.find("#token-input").await.expect("token input");
    browser
        .session(
            reqwest::Method::POST,
            &format!("/element/{input}/value"),
            json!({ "text": "console-test-admin-token" }),
        )
        .await;
    browser
        .click(
            &browser
                .find("#token-form button[type=submit]")
                .await
                .expect("save button"),
        )
        .await;
    let token_button = browser.find("#token-toggle").await.expect("token button");
    assert_eq!(
        browser
            .attribute(&token_button, "data-set")
            .await
            .as_deref(),
        Some("true"),
        "the console shows that a token is set"
    );

    // The drain button of node-2 drains it, and the console shows it.
    let button = browser
        .find("button.action[data-node=\"node-2\"]")
        .await
        .expect("node-2 has an action button");
    assert_eq!(
        browser.attribute(&button, "data-action").await.as_deref(),
        Some("drain")
    );
    browser.click(&button).await;
    cluster
        .wait_state("node-1", "node-2", "draining", Duration::from_secs(10))
        .await;
    wait_for(
        "node-2's row shows draining with an undrain button",
        Duration::from_secs(10),
        || async {
            let state = browser
                .text_of("#members tr[data-member=\"node-2\"] .state")
                .await?;
            let button = browser.find("button.action[data-node=\"node-2\"]").await?;
            let action = browser.attribute(&button, "data-action").await?;
            (state == "draining" && action == "undrain").then_some(())
        },
    )
    .await;
    let mut toasts = Vec::new();
    for toast in browser.find_all("#toasts .toast").await {
        toasts.push(browser.text(&toast).await.unwrap_or_default());
    }
    assert!(
        toasts
            .iter()
            .any(|toast| toast.contains("node-2 is draining")),
        "visible feedback after the click: {toasts:?}"
    );

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshot.png");
    std::fs::create_dir_all(path.parent().expect("target dir")).expect("target dir");
    std::fs::write(&path, &png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}
