//! Headless Chromium driven through chromedriver's WebDriver protocol (JSON over HTTP).
//!
//! WebDriver is the stable, documented interface to a browser: navigation waits for the load
//! event, scripts return JSON, screenshots come back as PNG. Chromium and chromedriver come from
//! the same Debian source package, so their versions always match.
//!
//! Every wait has a deadline, and `Drop` always ends the session, chromedriver, and any Chromium
//! process left behind (found by the unique profile directory on its command line), so a failed
//! check never leaves a browser running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// Flags that make Chromium work in a sandboxed CI container with no network.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,1000",
];

/// The WebDriver name of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Finds an executable: `$VAR` if set, else the first of `candidates` that exists.
fn find_binary(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

pub struct Browser {
    agent: ureq::Agent,
    base: String,
    session: Option<String>,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Logs go to `log_dir`.
    pub fn launch(log_dir: &Path) -> Result<Self> {
        let install = "install them with `apt-get install -y chromium chromium-driver`";
        let chromium = find_binary(
            "CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        )
        .ok_or_else(|| anyhow!("no Chromium at /usr/bin/chromium (or $CHROMIUM): {install}"))?;
        let chromedriver =
            find_binary("CHROMEDRIVER", &["/usr/bin/chromedriver"]).ok_or_else(|| {
                anyhow!("no chromedriver at /usr/bin/chromedriver (or $CHROMEDRIVER): {install}")
            })?;

        // A free port: bind, read it, release it. chromedriver binds it a moment later; another
        // process taking it in between would make the start below fail clearly, not hang.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let profile =
            std::env::temp_dir().join(format!("xtask-chromium-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&profile)
            .with_context(|| format!("creating {}", profile.display()))?;
        let log = log_dir.join("chromedriver.log");
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;

        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut browser = Self {
            agent,
            base: format!("http://127.0.0.1:{port}"),
            session: None,
            driver,
            profile,
        };

        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = browser
                .request("GET", "/status", None)
                .ok()
                .and_then(|v| v["ready"].as_bool())
                == Some(true);
            if ready {
                break;
            }
            if let Some(status) = browser.driver.try_wait()? {
                bail!(
                    "chromedriver exited at start ({status}); see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "chromedriver was not ready within 20 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        let mut args: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", browser.profile.display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "pageLoad": 30000, "script": 15000, "implicit": 0 },
                    "goog:chromeOptions": {
                        "binary": chromium.to_string_lossy(),
                        "args": args,
                    },
                }
            }
        });
        let created = browser
            .request("POST", "/session", Some(caps))
            .with_context(|| format!("starting Chromium; see {}", log.display()))?;
        let id = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver returned no session id: {created}"))?;
        browser.session = Some(id.to_string());
        Ok(browser)
    }

    /// One WebDriver command; returns its `value`, or the WebDriver error as an `Err`.
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path} answered with non-JSON: {text:.200}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() {
            let error = value["error"].as_str().unwrap_or("error");
            let message = value["message"].as_str().unwrap_or("");
            let first = message.lines().next().unwrap_or("");
            if first.starts_with(error) {
                bail!("{method} {path}: {first}");
            }
            bail!("{method} {path}: {error}: {first}");
        }
        Ok(value)
    }

    fn session_path(&self, rest: &str) -> Result<String> {
        let id = self.session.as_deref().context("no browser session")?;
        Ok(format!("/session/{id}{rest}"))
    }

    /// Opens `url` and waits for its load event (bounded by the page-load timeout).
    pub fn goto(&self, url: &str) -> Result<()> {
        self.request(
            "POST",
            &self.session_path("/url")?,
            Some(json!({ "url": url })),
        )?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value> {
        self.request(
            "POST",
            &self.session_path("/execute/sync")?,
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Polls `script` until it returns something other than `null` or `false`.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.execute(script, json!([]))?;
            if !(v.is_null() || v == Value::Bool(false)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {} s waiting for {what}", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<String> {
        let v = self.request(
            "POST",
            &self.session_path("/element")?,
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT_KEY]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("no element reference for {css}: {v}"))
    }

    pub fn click(&self, element: &str) -> Result<()> {
        self.request(
            "POST",
            &self.session_path(&format!("/element/{element}/click"))?,
            None,
        )?;
        Ok(())
    }

    /// Types `text` into an element, as a user's keystrokes.
    pub fn type_into(&self, element: &str, text: &str) -> Result<()> {
        self.request(
            "POST",
            &self.session_path(&format!("/element/{element}/value"))?,
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.request("GET", &self.session_path("/screenshot")?, None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot is not a string")?)
            .context("decoding the screenshot")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver close Chromium properly.
        if let Ok(path) = self.session_path("") {
            let _ = self.request("DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Whatever Chromium process survived (a crashed driver, a stuck renderer) has our
        // unique profile directory on its command line: end exactly those, by pid.
        let marker = format!("--user-data-dir={}", self.profile.display());
        for pid in processes_with_arg(&marker) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Pids of the processes whose command line contains `arg` exactly.
pub fn processes_with_arg(arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}
