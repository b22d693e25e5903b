//! The browser check: opens every page of the built book in headless Chromium, as a reader
//! would, and fails naming the page and the element when something a reader would see is broken.
//!
//! Checked on every page: no raw `{{#` (a directive mdBook left unexpanded), no empty code block
//! (a missing anchor renders as one), every image loaded (SVG diagrams included), every link
//! inside the book pointing to a page and an id that exist, no code block wider than its box
//! at the 1280 px window (a reader would scroll sideways), no step chapter longer than
//! [`MAX_STEP_WORDS`]. Then the search box must find
//! `CancellationToken`. Screenshots of two chapters are saved for a person to look at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

mod server;
mod webdriver;

use server::Server;
use webdriver::Browser;

/// The most words a step chapter may have (main text and code, folded blocks excluded): one
/// sitting. The Rust Book's longest chapters have about 10 000.
pub const MAX_STEP_WORDS: u64 = 8_000;

/// The word the search box must find.
pub const SEARCH_TERM: &str = "CancellationToken";

/// Collects, in the page, everything the checks need. Returns JSON.
const AUDIT_JS: &str = r#"
const headings = [...document.querySelectorAll('main h1, main h2, main h3, main h4')];
// Where an element is, in words a person can find: the heading above it.
function where(el) {
  let h = null;
  for (const x of headings) {
    if (x.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) h = x; else break;
  }
  return h ? 'under "' + h.textContent.trim() + '"' : 'before the first heading';
}
// The length of the chapter as read: main text and code, folded blocks (`<details>`) and
// mdBook's hidden lines excluded. Counted before the wide-code check opens the folds.
const shownMain = (document.querySelector('main') || document.body).cloneNode(true);
shownMain.querySelectorAll('details, .boring').forEach(e => e.remove());
const words = shownMain.textContent.split(/\s+/).filter(w => w !== '').length;
const text = document.body.innerText;
const raw = [];
for (let i = text.indexOf('{{#'); i >= 0 && raw.length < 10; i = text.indexOf('{{#', i + 3)) {
  raw.push(text.slice(i, i + 80).split('\n')[0]);
}
const emptyCode = [];
document.querySelectorAll('pre code').forEach((c, k) => {
  // mdBook wraps Rust in hidden ("boring") `fn main() {` lines; they are not content.
  const shown = c.cloneNode(true);
  shown.querySelectorAll('.boring').forEach(b => b.remove());
  if (shown.textContent.trim() === '') emptyCode.push('code block ' + (k + 1) + ' ' + where(c));
});
// A code block wider than its box makes the reader scroll sideways (and hides the end of
// long comments). Folded blocks (`<details>`) are measured too: they are opened for this.
document.querySelectorAll('details').forEach(d => d.open = true);
const wideCode = [];
document.querySelectorAll('pre code').forEach((c, k) => {
  if (c.scrollWidth > c.clientWidth + 1) {
    const line = c.textContent.split('\n').reduce((a, b) => (b.length > a.length ? b : a), '');
    wideCode.push('code block ' + (k + 1) + ' ' + where(c) + ' is ' + c.scrollWidth +
      ' px wide in a box of ' + c.clientWidth + ' px; its longest line: ' + line.trim().slice(0, 60));
  }
});
const images = [...document.images].map(img => ({
  src: img.getAttribute('src') || '',
  complete: img.complete,
  ok: img.complete && img.naturalWidth > 0,
  where: where(img),
}));
const links = [...document.querySelectorAll('a[href]')].map(a => ({
  href: a.href,
  raw: a.getAttribute('href'),
  text: a.textContent.trim().replace(/\s+/g, ' ').slice(0, 60),
}));
const ids = [...document.querySelectorAll('[id]')].map(e => e.id)
  .concat([...document.querySelectorAll('a[name]')].map(e => e.getAttribute('name')));
return { title: document.title, words, raw, emptyCode, wideCode, images, links, ids, codeBlocks: document.querySelectorAll('pre code').length };
"#;

/// One problem, named by page and element.
fn problem(page: &str, what: String) -> String {
    format!("{page}: {what}")
}

/// Every `.html` file under `dir`, as URL paths relative to it (`step-02.html`, `sub/x.html`).
fn html_pages(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}/"), out)?;
            } else if name.ends_with(".html") {
                out.push(format!("{prefix}{name}"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// The two chapters to photograph: step 02 and step 04 if the book has them, else the first
/// two chapters in the order the sidebar lists them.
fn pick_screenshot_pages(pages: &[String], toc_order: &[String]) -> Vec<String> {
    let chapter = |p: &&String| {
        !matches!(
            p.as_str(),
            "index.html" | "print.html" | "toc.html" | "404.html"
        )
    };
    let mut chosen: Vec<String> = ["step-02", "step-04"]
        .iter()
        .filter_map(|key| {
            let name = |p: &&String| p.rsplit('/').next().unwrap_or(p).contains(key);
            toc_order
                .iter()
                .filter(chapter)
                .find(name)
                .or_else(|| pages.iter().filter(chapter).find(name))
        })
        .cloned()
        .collect();
    for p in toc_order.iter().chain(pages).filter(chapter) {
        if chosen.len() >= 2 {
            break;
        }
        if !chosen.contains(p) {
            chosen.push(p.clone());
        }
    }
    chosen
}

/// Runs the browser check on the book built in `book_html_dir`; screenshots and the driver's
/// log go to `out_dir`. Fails listing every problem found.
/// Checks the book built in `book_html_dir`; `site_path` is its `site-url` (see
/// [`Server::start`]).
pub fn check(book_html_dir: &Path, out_dir: &Path, site_path: &str) -> Result<()> {
    let book = book_html_dir
        .canonicalize()
        .with_context(|| format!("no built book at {}", book_html_dir.display()))?;
    if !book.join("index.html").is_file() {
        bail!("{} has no index.html: build the book first", book.display());
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let pages = html_pages(&book)?;

    let server = Server::start(&book, site_path)?;
    let origin = server.origin();
    // Declared after the server, so dropped before it: the browser goes first.
    let browser = Browser::launch(out_dir)?;

    let mut problems = Vec::new();
    // Ids present on each page, for links with a `#fragment`.
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // (page, link text, href, target page, fragment)
    let mut links: Vec<(String, String, String, String, Option<String>)> = Vec::new();
    let (mut image_count, mut code_count) = (0, 0);
    let mut toc_order: Vec<String> = Vec::new();
    let mut step_words: Vec<String> = Vec::new();

    for page in &pages {
        let url = format!("{origin}/{page}");
        if let Err(e) = browser.goto(&url) {
            problems.push(problem(page, format!("did not load: {e:#}")));
            continue;
        }
        // The load event has fired; give images that are still decoding a bounded moment.
        let _ = browser.wait_for(
            "images",
            Duration::from_secs(10),
            "return [...document.images].every(i => i.complete);",
        );
        let audit = browser
            .execute(AUDIT_JS, json!([]))
            .with_context(|| format!("inspecting {page}"))?;

        for raw in audit["raw"].as_array().into_iter().flatten() {
            problems.push(problem(
                page,
                format!("shows a raw directive: {}", raw.as_str().unwrap_or("")),
            ));
        }
        for c in audit["emptyCode"].as_array().into_iter().flatten() {
            problems.push(problem(
                page,
                format!("empty {}", c.as_str().unwrap_or("code block")),
            ));
        }
        for c in audit["wideCode"].as_array().into_iter().flatten() {
            problems.push(problem(
                page,
                c.as_str().unwrap_or("code block").to_string(),
            ));
        }
        code_count += audit["codeBlocks"].as_u64().unwrap_or(0);
        if page.starts_with("step-") {
            let words = audit["words"].as_u64().unwrap_or(0);
            step_words.push(format!("{} {words}", page.trim_end_matches(".html")));
            if words > MAX_STEP_WORDS {
                problems.push(problem(
                    page,
                    format!(
                        "is {words} words long (main text and code, folded blocks excluded); \
                         a step chapter has at most {MAX_STEP_WORDS}, to be read in one sitting"
                    ),
                ));
            }
        }
        for img in audit["images"].as_array().into_iter().flatten() {
            image_count += 1;
            if img["ok"] != Value::Bool(true) {
                let state = if img["complete"] == Value::Bool(true) {
                    "failed to load"
                } else {
                    "still loading after 10 s"
                };
                problems.push(problem(
                    page,
                    format!(
                        "image {} {} {state}",
                        img["src"].as_str().unwrap_or("?"),
                        img["where"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
        ids.insert(
            page.clone(),
            audit["ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        );
        for link in audit["links"].as_array().into_iter().flatten() {
            let href = link["href"].as_str().unwrap_or("");
            let Some(rest) = href.strip_prefix(&format!("{origin}/")) else {
                continue; // Outside the book (another site, mailto:, javascript:): not ours.
            };
            // The 404 page's links go through the site path, where the server serves the
            // book too.
            let site_dir = site_path.trim_matches('/');
            let rest = match rest.strip_prefix(site_dir) {
                Some(inside) if !site_dir.is_empty() && inside.starts_with('/') => &inside[1..],
                _ => rest,
            };
            // mdBook gives 404.html a `<base href>` of the site root, so its headings'
            // self-links resolve against index.html. That is mdBook's page, not ours.
            if page == "404.html" && link["raw"].as_str().is_some_and(|r| r.starts_with('#')) {
                continue;
            }
            let (before_hash, fragment) = match rest.split_once('#') {
                Some((p, f)) => (p, Some(f.to_string())),
                None => (rest, None),
            };
            let path = before_hash.split('?').next().unwrap_or("");
            let target = if path.is_empty() || path.ends_with('/') {
                format!("{path}index.html")
            } else {
                path.to_string()
            };
            links.push((
                page.clone(),
                link["text"].as_str().unwrap_or("").to_string(),
                link["raw"].as_str().unwrap_or(href).to_string(),
                target,
                fragment.filter(|f| !f.is_empty()),
            ));
        }
        if page == "index.html" {
            // The sidebar of the first page lists the chapters in reading order.
            toc_order = audit["links"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| {
                    l["href"]
                        .as_str()?
                        .strip_prefix(&format!("{origin}/"))
                        .map(String::from)
                })
                .map(|p| p.split(['#', '?']).next().unwrap_or("").to_string())
                .filter(|p| pages.contains(p))
                .collect();
        }
    }

    // Links are checked once every page's ids are known.
    let mut checked = BTreeSet::new();
    for (page, text, raw, target, fragment) in &links {
        if !checked.insert((page.clone(), target.clone(), fragment.clone())) {
            continue;
        }
        let Some(file) = server::resolve(&book, &format!("/{target}")) else {
            problems.push(problem(
                page,
                format!("link \"{text}\" ({raw}) points to {target}, which does not exist"),
            ));
            continue;
        };
        let Some(fragment) = fragment else { continue };
        let decoded = server::percent_decode(fragment).unwrap_or_else(|| fragment.clone());
        let rel = file
            .strip_prefix(&book)
            .map(PathBuf::from)
            .unwrap_or_default();
        let rel = rel.to_string_lossy().replace('\\', "/");
        if let Some(target_ids) = ids.get(&rel) {
            if !target_ids.contains(&decoded) {
                problems.push(problem(
                    page,
                    format!(
                        "link \"{text}\" ({raw}) points to #{decoded}, which {rel} does not have"
                    ),
                ));
            }
        }
    }

    // The search box, used as a reader would: open it, type, wait for results.
    let search = search(&browser, &origin);
    match &search {
        Ok(n) => println!("browser check: search for {SEARCH_TERM} found {n} result(s)"),
        Err(e) => problems.push(problem("index.html", format!("search: {e:#}"))),
    }

    let mut shots = Vec::new();
    for page in pick_screenshot_pages(&pages, &toc_order) {
        let stem = page.trim_end_matches(".html").replace('/', "-");
        let path = out_dir.join(format!("browser-{stem}.png"));
        let taken = browser
            .goto(&format!("{origin}/{page}"))
            .and_then(|()| browser.screenshot(&path));
        match taken {
            Ok(()) => shots.push(path),
            Err(e) => problems.push(problem(&page, format!("screenshot failed: {e:#}"))),
        }
        // The first picture of the chapter, in the dark "coal" theme, to show the diagrams
        // stay readable there.
        let has_image = browser
            .execute(
                "const i = document.querySelector('main img'); if (!i) return false; \
                 localStorage.setItem('mdbook-theme', 'coal'); return true;",
                json!([]),
            )
            .unwrap_or(Value::Bool(false));
        if has_image == Value::Bool(true) {
            let dark = out_dir.join(format!("browser-{stem}-dark.png"));
            let taken = browser.goto(&format!("{origin}/{page}")).and_then(|()| {
                browser.execute(
                    "document.querySelector('main img').scrollIntoView({block: 'center'});",
                    json!([]),
                )?;
                std::thread::sleep(Duration::from_millis(300));
                browser.screenshot(&dark)
            });
            match taken {
                Ok(()) => shots.push(dark),
                Err(e) => problems.push(problem(&page, format!("dark screenshot failed: {e:#}"))),
            }
            let _ = browser.execute("localStorage.removeItem('mdbook-theme');", json!([]));
        }
    }
    drop(browser);

    for (path, referer) in server.missing() {
        let from = referer
            .strip_prefix(&format!("{origin}/"))
            .unwrap_or(&referer);
        let from = if from.is_empty() { "a page" } else { from };
        problems.push(problem(
            from,
            format!("requested {path}, which the book does not have (404)"),
        ));
    }
    drop(server);

    problems.sort();
    problems.dedup();
    println!(
        "browser check: {} pages, {code_count} code blocks, {image_count} images, {} internal links",
        pages.len(),
        links.len()
    );
    println!(
        "browser check: words per step chapter (main text and code, folded blocks excluded): {}",
        step_words.join(", ")
    );
    for s in &shots {
        println!("browser check: screenshot {}", s.display());
    }
    if !problems.is_empty() {
        bail!(
            "browser check found {} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Opens the search bar on the first page, types the term and waits for results that contain
/// it. Returns the number of results.
fn search(browser: &Browser, origin: &str) -> Result<u64> {
    browser.goto(&format!("{origin}/index.html"))?;
    let toggle = browser
        .find("#mdbook-search-toggle")
        .context("the page has no search button (is search enabled in book.toml?)")?;
    browser.click(&toggle)?;
    let bar = browser.find("#mdbook-searchbar")?;
    browser.type_into(&bar, SEARCH_TERM)?;
    let found = browser.wait_for(
        &format!("results for {SEARCH_TERM}"),
        Duration::from_secs(15),
        r#"
        const items = document.querySelectorAll('#mdbook-searchresults li');
        const header = document.getElementById('mdbook-searchresults-header');
        if (items.length > 0) return items.length;
        if (header && /No search results/.test(header.textContent)) return -1;
        return null;
        "#,
    )?;
    let n = found.as_i64().unwrap_or(0);
    if n <= 0 {
        bail!("no results for {SEARCH_TERM}");
    }
    let mentions = browser.execute(
        &format!(
            "return [...document.querySelectorAll('#mdbook-searchresults li')]
               .filter(li => li.textContent.toLowerCase().includes('{}')).length;",
            SEARCH_TERM.to_lowercase()
        ),
        json!([]),
    )?;
    if mentions.as_u64().unwrap_or(0) == 0 {
        bail!("{n} result(s), but none shows the word {SEARCH_TERM}");
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two chapters photographed are step 02 and step 04 when they exist.
    #[test]
    fn picks_steps_two_and_four_for_screenshots() {
        let pages: Vec<String> = [
            "404.html",
            "index.html",
            "print.html",
            "step-01-accept.html",
            "step-02-broker.html",
            "step-04-notify.html",
            "toc.html",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            pick_screenshot_pages(&pages, &[]),
            ["step-02-broker.html", "step-04-notify.html"]
        );
        let few: Vec<String> = ["index.html", "intro.html", "step-01.html"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            pick_screenshot_pages(&few, &["step-01.html".into(), "intro.html".into()]),
            ["step-01.html", "intro.html"]
        );
    }

    /// A book with a raw directive, an empty code block, a code block wider than its box, a
    /// broken image, a dead link, a missing fragment and a step chapter too long to read in one
    /// sitting (and no search) fails, naming each; what is fine is not reported.
    /// Needs Chromium and chromedriver: outside CI it says so and does nothing when they are
    /// missing; under CI (where `cargo xtask ci` installs them before the tests) it fails.
    #[test]
    fn reports_every_kind_of_breakage() {
        let have = Path::new("/usr/bin/chromedriver").is_file()
            || std::env::var_os("CHROMEDRIVER").is_some();
        if !have {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have chromium-driver: `cargo xtask ci` installs it before the tests"
            );
            eprintln!(
                "SKIPPED reports_every_kind_of_breakage: no chromedriver \
                 (apt-get install -y chromium chromium-driver)"
            );
            return;
        }
        let book = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="teal"/></svg>"#;
        std::fs::write(book.path().join("ok.svg"), svg).unwrap();
        std::fs::write(
            book.path().join("index.html"),
            r##"<!DOCTYPE html><html><head><title>fixture</title></head><body><main>
            <h1 id="top">Fixture</h1>
            <p><a href="good.html">good</a> <a href="good.html#here">good anchor</a>
               <a href="#top">self</a> <a href="gone.html">dead link</a>
               <a href="good.html#nowhere">dead anchor</a> <a href="https://example.invalid/">external</a></p>
            <h2 id="code">Code</h2>
            <pre><code class="language-rust">fn main() {}</code></pre>
            <pre><code class="language-rust">  </code></pre>
            <pre class="playground"><code class="language-rust"><span class="boring">fn main() {
</span>
<span class="boring">}</span></code></pre>
            <pre class="playground"><code class="language-rust"><span class="boring">fn main() {
</span>let x = 1;
<span class="boring">}</span></code></pre>
            <pre><code style="display: block; overflow-x: auto; width: 300px">let fine = 1;</code></pre>
            <pre><code style="display: block; overflow-x: auto; width: 300px">let too_wide = "WIDE";</code></pre>
            <p>{{#include ../steps/missing.rs:anchor}}</p>
            <h2 id="pics">Pictures</h2>
            <img src="ok.svg" alt="fine"><img src="diagrams/missing.svg" alt="broken">
            </main></body></html>"##
                .replace("WIDE", &"x".repeat(200)),
        )
        .unwrap();
        std::fs::write(
            book.path().join("good.html"),
            r#"<!DOCTYPE html><html><body><main><h1 id="here">Good</h1><pre><code>x</code></pre></main></body></html>"#,
        )
        .unwrap();

        // Two step chapters: one at the limit once its folded block is left out, one over it.
        let words = |n: usize| "word ".repeat(n);
        std::fs::write(
            book.path().join("step-08-at-limit.html"),
            format!(
                "<!DOCTYPE html><html><body><main><p>{}</p><details><summary>diff</summary>\
                 <pre><code>{}</code></pre></details></main></body></html>",
                words(MAX_STEP_WORDS as usize),
                words(50)
            ),
        )
        .unwrap();
        std::fs::write(
            book.path().join("step-09-too-long.html"),
            format!(
                "<!DOCTYPE html><html><body><main><p>{}</p></main></body></html>",
                words(MAX_STEP_WORDS as usize + 1)
            ),
        )
        .unwrap();

        let e = format!("{:#}", check(book.path(), out.path(), "/").unwrap_err());
        for expected in [
            "index.html: shows a raw directive: {{#include ../steps/missing.rs:anchor}}",
            "index.html: empty code block 2 under \"Code\"",
            "index.html: empty code block 3 under \"Code\"",
            "index.html: image diagrams/missing.svg under \"Pictures\" failed to load",
            "index.html: link \"dead link\" (gone.html) points to gone.html, which does not exist",
            "index.html: link \"dead anchor\" (good.html#nowhere) points to #nowhere, which good.html does not have",
            "index.html: requested /diagrams/missing.svg, which the book does not have (404)",
            "index.html: search: the page has no search button",
            "index.html: code block 6 under \"Code\" is ",
            "step-09-too-long.html: is 8001 words long",
        ] {
            assert!(e.contains(expected), "missing {expected:?} in:\n{e}");
        }
        for fine in [
            "ok.svg",
            "good anchor",
            "\"self\"",
            "external",
            "code block 1 ",
            "code block 4",
            "code block 5",
            "step-08-at-limit",
        ] {
            assert!(!e.contains(fine), "{fine} was reported but is fine:\n{e}");
        }
        assert_eq!(
            e.matches("\n  ").count(),
            10,
            "exactly the ten problems:\n{e}"
        );
        // No browser outlives the check.
        let profile_marker = "xtask-chromium-";
        let leftovers: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        c.contains(profile_marker)
                            && c.contains(&format!("-{}-", std::process::id()))
                    })
                    .unwrap_or(false)
            })
            .collect();
        assert!(
            leftovers.is_empty(),
            "Chromium processes left running: {leftovers:?}"
        );
    }
}
