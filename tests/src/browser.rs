//! Real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`),
//! with a few lines of JSON over HTTP instead of a WebDriver client crate.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use homeport_http1::client::Conn;
use serde_json::{json, Value};

/// W3C WebDriver's element key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: tokio::process::Child,
    addr: SocketAddr,
    session: String,
}

/// The chromedriver and chromium binaries, when installed.
pub fn installed() -> Option<(&'static str, &'static str)> {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let browser = ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    Some((driver, browser))
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium session.
    pub async fn start() -> Browser {
        let (driver_bin, browser_bin) = installed()
            .expect("chromium and chromium-driver are installed (scripts/ensure-services.sh)");
        let port = crate::procs::free_port();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Conn::connect(addr).await {
                if c.request("GET", "/status", &[], b"")
                    .await
                    .is_ok_and(|r| r.status == 200)
                {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let v = b
            .call(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": browser_bin,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                 "--window-size=1280,1000", "--no-first-run", "--disable-extensions"]
                    }
                }}})),
            )
            .await;
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        b
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut c = Conn::connect(self.addr)
            .await
            .expect("connect to chromedriver");
        c.timeout = Duration::from_secs(60);
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let r = c
            .request(
                method,
                path,
                &[("Content-Type", "application/json")],
                &bytes,
            )
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        v["value"].clone()
    }

    async fn session(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    pub async fn goto(&mut self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The first element matching `css`, if any.
    pub async fn find(&mut self, css: &str) -> Option<String> {
        let v = self
            .session(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits until `css` matches, up to `timeout`.
    pub async fn wait_for(&mut self, css: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if Instant::now() > deadline {
                let url = self.session("GET", "/url", None).await;
                let source = self.session("GET", "/source", None).await;
                let source: String = source
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(600)
                    .collect();
                panic!("{css} did not appear within {timeout:?} at {url}; the page is: {source}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    pub async fn click(&mut self, css: &str) {
        let e = self.wait_for(css, Duration::from_secs(20)).await;
        self.session("POST", &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }

    pub async fn type_into(&mut self, css: &str, text: &str) {
        let e = self.wait_for(css, Duration::from_secs(20)).await;
        self.session(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Visible text of the first element matching `css` ("" when none).
    pub async fn text_of(&mut self, css: &str) -> String {
        match self.find(css).await {
            Some(e) => self
                .session("GET", &format!("/element/{e}/text"), None)
                .await
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        }
    }

    /// Waits until the text of `css` satisfies `pred`; returns it.
    pub async fn wait_text(
        &mut self,
        css: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text_of(css).await;
            if pred(&t) {
                return t;
            }
            if Instant::now() > deadline {
                panic!("{css} still says {t:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `script` in the page and returns its result.
    pub async fn eval(&mut self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let v = self.session("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a screenshot"))
            .expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    pub async fn quit(mut self) {
        self.session("DELETE", "", None).await;
        let _ = self.driver.kill().await;
    }
}
