//! A static file server for the built book on 127.0.0.1, one thread per connection.
//!
//! The book must be opened over HTTP, not `file://`: the search index and the sidebar are loaded
//! by scripts that a `file://` page may not fetch. Every 404 is remembered (with the page that
//! asked for it) so that a missing stylesheet, script or image is reported too.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A request the server could not answer: (path, referring page).
pub type Missing = (String, String);

pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    missing: Arc<Mutex<Vec<Missing>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `root` on a free port of 127.0.0.1 until dropped, at `/` and also under
    /// `site_path` (`/a-chat/`, the book's `site-url`): mdBook's 404 page loads its styles
    /// and scripts from there, as it will on the published site.
    pub fn start(root: &Path, site_path: &str) -> Result<Self> {
        let site_path = site_path.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(Mutex::new(Vec::new()));
        let root = root.to_path_buf();
        let thread = {
            let (stop, missing) = (stop.clone(), missing.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (root, missing) = (root.clone(), missing.clone());
                    let site_path = site_path.clone();
                    // Detached: a connection thread ends when its one request is answered or
                    // its read times out.
                    std::thread::spawn(move || {
                        let _ = serve(conn, &root, &site_path, &missing);
                    });
                }
            })
        };
        Ok(Self {
            addr,
            stop,
            missing,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything requested so far that does not exist.
    pub fn missing(&self) -> Vec<Missing> {
        // A poisoned lock means a connection thread panicked while pushing; what was pushed
        // before is still worth reporting.
        let list = self.missing.lock().unwrap_or_else(|e| e.into_inner());
        list.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request and closes the connection.
fn serve(
    conn: TcpStream,
    root: &Path,
    site_path: &str,
    missing: &Mutex<Vec<Missing>>,
) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut referer = String::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("referer") {
                referer = value.trim().to_string();
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let mut conn = conn;
    if method != "GET" && method != "HEAD" {
        return respond(&mut conn, 405, "text/plain", b"method not allowed", true);
    }
    let path = target.split(['?', '#']).next().unwrap_or("/");
    match locate(root, site_path, path) {
        Some(file) => {
            let body = std::fs::read(&file)?;
            respond(&mut conn, 200, content_type(&file), &body, method == "GET")
        }
        None => {
            if path != "/favicon.ico" {
                let mut list = missing.lock().unwrap_or_else(|e| e.into_inner());
                list.push((path.to_string(), referer));
            }
            respond(&mut conn, 404, "text/plain", b"not found", method == "GET")
        }
    }
}

fn respond(
    conn: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    if with_body {
        conn.write_all(body)?;
    }
    conn.flush()?;
    Ok(())
}

/// The file a URL path names under `root`: percent-decoded, `dir/` meaning `dir/index.html`,
/// and never outside `root`.
/// The file for `url_path`, at the root or under `site_path`.
fn locate(root: &Path, site_path: &str, url_path: &str) -> Option<PathBuf> {
    resolve(root, url_path).or_else(|| {
        let rest = url_path.strip_prefix(site_path.trim_end_matches('/'))?;
        rest.starts_with('/').then(|| resolve(root, rest)).flatten()
    })
}

pub fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(url_path)?;
    let mut file = root.to_path_buf();
    for c in Path::new(decoded.trim_start_matches('/')).components() {
        match c {
            Component::Normal(part) => file.push(part),
            Component::CurDir => {}
            // `..`, a root or a prefix would leave the book.
            _ => return None,
        }
    }
    if file.is_dir() {
        file.push("index.html");
    }
    file.is_file().then_some(file)
}

/// Decodes `%XX` escapes; `None` if they do not form UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        // Without this type an SVG in an `<img>` does not render.
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `%XX` escapes decode to UTF-8; a broken escape is not a path.
    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(
            percent_decode("/a%20b/%C3%A9.html").as_deref(),
            Some("/a b/é.html")
        );
        assert_eq!(percent_decode("/plain").as_deref(), Some("/plain"));
        assert_eq!(percent_decode("/bad%zz"), None);
    }

    /// Paths resolve inside the root only; a directory means its index.html.
    #[test]
    fn resolves_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("index.html"), "i").unwrap();
        std::fs::write(dir.path().join("sub/index.html"), "s").unwrap();
        assert_eq!(
            resolve(dir.path(), "/"),
            Some(dir.path().join("index.html"))
        );
        assert_eq!(
            resolve(dir.path(), "/sub/"),
            Some(dir.path().join("sub/index.html"))
        );
        assert_eq!(resolve(dir.path(), "/nope.html"), None);
        assert_eq!(resolve(dir.path(), "/../etc/passwd"), None);
        assert_eq!(resolve(dir.path(), "/sub/%2e%2e/%2e%2e/x"), None);
    }

    /// The book is found under its site path too (where the 404 page looks), and only there.
    #[test]
    fn serves_under_the_site_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("css")).unwrap();
        std::fs::write(dir.path().join("css/a.css"), "a").unwrap();
        let css = Some(dir.path().join("css/a.css"));
        assert_eq!(locate(dir.path(), "/a-chat/", "/css/a.css"), css);
        assert_eq!(locate(dir.path(), "/a-chat/", "/a-chat/css/a.css"), css);
        assert_eq!(locate(dir.path(), "/a-chat/", "/a-chatx/css/a.css"), None);
        assert_eq!(locate(dir.path(), "/", "/a-chat/css/a.css"), None);
    }
}
