r"""Check the built docs site as a reader sees it: links, anchors, math, nothing from outside.

Serves ``docs/_build/html`` on 127.0.0.1 (a free port, ``http.server`` in a thread), then

1. without a browser, for every HTML page (API source pages included): every internal link
   resolves with status 200 from the server, every ``#anchor`` exists on its target page,
   and no script, stylesheet, image or frame is loaded from another host (no CDN);
2. with Debian's headless Chromium driven by Selenium and Debian's chromedriver, for every
   content page: MathJax finished, every math element was typeset with no TeX error, no raw
   ``\(``/``\[`` delimiter is left in the text, every request the page made went to the
   local server and got 200, the console has no error, no table is wider than the column
   it sits in (a reader would have to scroll it sideways to see its last columns: at the
   default 1280 px window), and no executed cell's output shows a local install path
   (``site-packages``: a third-party library's log line); a full-page screenshot is saved.

Prints one line per page, closes with ``docs: N passed, N failed`` (pages) and exits
non-zero on any problem. ``--no-browser`` runs step 1 only. Chromium and chromedriver come
from Debian: ``apt-get update && apt-get install -y chromium chromium-driver``.

Usage: ``python scripts/check_docs.py [--html DIR] [--screenshots DIR] [--no-browser]
[--width PX] [--page PAGE ...]``
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.request import urlopen

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
# Pages a reader opens; the generated source listings (_modules/) are only link-checked.
SKIP_BROWSER_PREFIXES = ("_modules/",)
MAX_SCREENSHOT_HEIGHT = 16000


# -- A local server that records what it served -------------------------------------------
class _Handler(http.server.SimpleHTTPRequestHandler):
    log: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@dataclass
class Server:
    """``http.server`` on 127.0.0.1 and a free port, serving one folder, in a thread."""

    root: Path
    log: list[tuple[str, int]] = field(default_factory=list)

    def __enter__(self) -> Server:
        handler = type("Handler", (_Handler,), {"log": self.log})
        factory = functools.partial(handler, directory=str(self.root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- Static checks: links, anchors, external resources ------------------------------------
class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []  # <a href>
        self.resources: list[tuple[str, str]] = []  # (tag, url) loaded by the page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v for k, v in attrs if v is not None}
        for key in ("id", "name") if tag == "a" else ("id",):
            if key in a:
                self.ids.add(a[key])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag in ("script", "img", "iframe", "source", "video", "audio") and "src" in a:
            self.resources.append((tag, a["src"]))
        elif tag == "link" and "href" in a:
            rel = a.get("rel", "")
            if any(r in rel.split() for r in ("stylesheet", "icon", "preload", "modulepreload")):
                self.resources.append((tag, a["href"]))


def _is_local(url: str, base: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("", "http", "https") and (
        not parts.netloc or parts.netloc == urlsplit(base).netloc
    )


class LinkChecker:
    """Fetches pages from the local server once and answers 'does this URL#anchor exist'."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._pages: dict[str, tuple[int, _PageParser | None]] = {}

    def fetch(self, url: str) -> tuple[int, _PageParser | None]:
        """GET ``url``; parse it when it is HTML. Returns (status, parser or None)."""
        if url not in self._pages:
            try:
                with urlopen(url, timeout=10) as resp:
                    status, ctype, body = resp.status, resp.headers.get_content_type(), resp.read()
            except HTTPError as err:
                status, ctype, body = err.code, "", b""
            parser = None
            if status == 200 and ctype == "text/html":
                parser = _PageParser()
                parser.feed(body.decode("utf-8", errors="replace"))
            self._pages[url] = status, parser
        return self._pages[url]

    def check(self, page_url: str, href: str) -> str | None:
        """Return a problem with the link ``href`` found on ``page_url``, or None."""
        target, fragment = urldefrag(urljoin(page_url, href))
        if urlsplit(target).path.endswith("/"):
            target += "index.html"
        status, parser = self.fetch(target)
        if status != 200:
            return f"broken link {href!r}: {target[len(self.base) - 1 :]} answered {status}"
        if fragment and parser is not None and unquote(fragment) not in parser.ids:
            return f"missing anchor {href!r}: no id {unquote(fragment)!r} on the target page"
        return None


def static_checks(base: str, pages: list[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Check links, anchors and resources of every page; return problems and link counts."""
    checker = LinkChecker(base)
    problems: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for page in pages:
        url = base + page
        status, parser = checker.fetch(url)
        found: list[str] = []
        if parser is None:
            found.append(f"page answered {status}")
        else:
            internal = [h for h in parser.links if _is_local(h, base)]
            counts[page] = len(internal)
            for href in internal:
                problem = checker.check(url, href)
                if problem:
                    found.append(problem)
            for tag, src in parser.resources:
                if src.startswith("data:"):
                    continue
                if not _is_local(src, base):
                    found.append(f"<{tag}> loads {src} from outside the site")
                elif (problem := checker.check(url, src)) is not None:
                    found.append(f"<{tag}> {problem}")
        problems[page] = found
    return problems, counts


# -- Browser checks ---------------------------------------------------------------------
_WAIT_FOR_MATH = """
const done = arguments[arguments.length - 1];
const ready = () => new Promise(r => document.readyState === 'complete'
    ? r() : window.addEventListener('load', () => r(), {once: true}));
ready().then(() => {
  if (!document.querySelector('.math')) { done('no-math'); return; }
  const wait = (n) => {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(() => done('typeset'), (e) => done('error: ' + e));
    } else if (n <= 0) { done('MathJax never started'); }
    else { setTimeout(() => wait(n - 1), 100); }
  };
  wait(100);
});
"""

_INSPECT = r"""
const math = [...document.querySelectorAll('.math')];
const unrendered = math.filter(e => !e.querySelector('mjx-container'))
    .map(e => e.textContent.trim().slice(0, 60));
const containers = [...document.querySelectorAll('mjx-container')];
const invisible = containers.filter(e => {
  const r = e.getBoundingClientRect(); return r.width === 0 || r.height === 0;
}).length;
const errors = [...document.querySelectorAll('mjx-merror')]
    .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80));
const raw = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  if (n.parentElement.closest('pre, code, script, style, textarea, mjx-container')) continue;
  if (/\\[\(\)\[\]]/.test(n.textContent)) raw.push(n.textContent.trim().slice(0, 60));
}
const resources = performance.getEntriesByType('resource')
    .map(r => ({url: r.name, status: r.responseStatus || 0}));
const fontsOk = [...document.fonts].filter(f => f.family.startsWith('MJX'))
    .every(f => f.status !== 'error');
return {math: math.length, containers: containers.length, unrendered, invisible, errors, raw,
        resources, fontsOk, title: document.title};
"""

# Tables wider than their column. A table sits in a column (the article, or a cell output,
# an admonition, a list item); furo wraps it in a `.table-wrapper` that scrolls sideways, so
# the wrapper is skipped when looking for the column. The table's width is the larger of its
# box and its scroll width (a `display: block` table scrolls inside its own box).
_WIDE_TABLES = r"""
const found = [];
for (const table of document.querySelectorAll('article table')) {
  if (table.closest('.highlight, .highlighttable')) continue;  // code with line numbers
  let column = table.parentElement;
  while (column && column.matches('.table-wrapper, .table-wrapper *')) {
    column = column.parentElement;
  }
  if (!column) continue;
  const style = getComputedStyle(column);
  const room = column.clientWidth - parseFloat(style.paddingLeft)
      - parseFloat(style.paddingRight);
  const width = Math.max(table.getBoundingClientRect().width, table.scrollWidth);
  if (width <= room + 1) continue;
  const header = (table.querySelector('tr') || table).textContent.replace(/\s+/g, ' ').trim();
  const section = table.closest('section');
  const heading = section && section.querySelector('h1, h2, h3, h4, h5, h6');
  found.push({width: Math.round(width), room: Math.round(room), header: header.slice(0, 70),
              section: heading ? heading.textContent.replace('#', '').trim().slice(0, 50) : ''});
}
return found;
"""

# Output of executed cells that shows where Python packages are installed: a third-party
# library logging from inside its folder, noise on the page (docs/conf.py quietens the
# known ones in the kernels).
_LOCAL_PATHS = r"""
return [...document.querySelectorAll('.cell_output')]
  .map(e => (e.textContent.match(/[^\n]*(site-packages|\/\.venv\/)[^\n]*/) || [null])[0])
  .filter(line => line !== null).map(line => line.trim().slice(0, 120));
"""


def _driver(chromium: str, chromedriver: str, profile: str, width: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1000"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_script_timeout(30)
    driver.set_page_load_timeout(30)
    return driver


def _screenshot(driver: Any, path: Path, width: int) -> None:
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    height = min(int(size["height"]) + 1, MAX_SCREENSHOT_HEIGHT)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def browser_check(
    driver: Any, server: Server, page: str, shot: Path, width: int
) -> tuple[list[str], dict[str, Any]]:
    """Open one page, save its screenshot; return its problems and what the page held."""
    problems: list[str] = []
    start = len(server.log)
    driver.get(server.base + page)
    state = driver.execute_async_script(_WAIT_FOR_MATH)
    if state not in ("typeset", "no-math"):
        problems.append(f"MathJax: {state}")
    info = driver.execute_script(_INSPECT)
    if info["unrendered"]:
        problems.append(
            f"{len(info['unrendered'])} math elements not typeset, e.g. {info['unrendered'][0]!r}"
        )
    if info["invisible"]:
        problems.append(f"{info['invisible']} typeset formulas have no size")
    if info["errors"]:
        problems.append(f"{len(info['errors'])} TeX errors, e.g. {info['errors'][0]!r}")
    if info["raw"]:
        problems.append(f"raw TeX delimiters left in the text, e.g. {info['raw'][0]!r}")
    if not info["fontsOk"]:
        problems.append("a MathJax font failed to load")
    for line in driver.execute_script(_LOCAL_PATHS):
        problems.append(f"an executed cell shows a local install path: {line!r}")
    for table in driver.execute_script(_WIDE_TABLES):
        problems.append(
            f"table {table['width']} px wide in a {table['room']} px column (scrolls sideways at "
            f"{width} px): {table['header']!r} in {table['section']!r}"
        )
    for res in info["resources"]:
        if not _is_local(res["url"], server.base) and not res["url"].startswith("data:"):
            problems.append(f"loaded from outside the site: {res['url']}")
    for path, code in server.log[start:]:
        if code not in (200, 304) and not path.startswith("/favicon.ico"):
            problems.append(f"request {path} answered {code}")
    for entry in driver.get_log("browser"):
        if entry.get("level") == "SEVERE" and "favicon.ico" not in entry.get("message", ""):
            problems.append(f"console: {entry['message'][:160]}")
    _screenshot(driver, shot, width)
    return problems, info


# -- Main ---------------------------------------------------------------------------------
def _pages(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(("_static/", "_sources/", "_images/")):
            yield rel


def main(argv: list[str] | None = None) -> int:
    """Run the checks; return the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", type=Path, default=REPO / "docs/_build/html")
    ap.add_argument("--screenshots", type=Path, default=REPO / "docs/_build/screenshots")
    ap.add_argument("--no-browser", action="store_true", help="links and resources only")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument(
        "--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver"
    )
    ap.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    ap.add_argument(
        "--page",
        action="append",
        default=[],
        help="check only this page, e.g. tera-science.html (repeatable; default: every page)",
    )
    args = ap.parse_args(argv)

    if not (args.html / "index.html").is_file():
        print(f"no built site at {args.html}: run `make docs` first", file=sys.stderr)
        return 2
    pages = list(_pages(args.html))
    if args.page:
        unknown = sorted(set(args.page) - set(pages))
        if unknown:
            print(f"no such page in {args.html}: {', '.join(unknown)}", file=sys.stderr)
            return 2
        pages = [p for p in pages if p in args.page]
    browser_pages = [p for p in pages if not p.startswith(SKIP_BROWSER_PREFIXES)]
    if not args.no_browser:
        missing = [p for p in (args.chromium, args.chromedriver) if not Path(p).is_file()]
        if missing:
            print(
                f"not found: {', '.join(missing)}; install Debian's browser and driver with\n"
                "  apt-get update && apt-get install -y chromium chromium-driver\n"
                "or run with --no-browser for the link and resource checks only",
                file=sys.stderr,
            )
            return 2

    failed = 0
    t0 = time.monotonic()
    with Server(args.html) as server:
        static, link_counts = static_checks(server.base, pages)
        if args.no_browser:
            for page in pages:
                status = "FAIL" if static[page] else "ok  "
                failed += bool(static[page])
                print(f"{status} {page:<42} links={link_counts.get(page, 0):<4}")
                for problem in static[page]:
                    print(f"       - {problem}")
        else:
            if args.screenshots.exists():
                shutil.rmtree(args.screenshots)
            for page in pages:  # source listings: static checks only
                if page.startswith(SKIP_BROWSER_PREFIXES) and static[page]:
                    failed += 1
                    print(f"FAIL {page}")
                    for problem in static[page]:
                        print(f"       - {problem}")
            checked = len(pages) - len(browser_pages)
            with tempfile.TemporaryDirectory(prefix="check-docs-chromium-") as profile:
                driver = _driver(args.chromium, args.chromedriver, profile, args.width)
                try:
                    for page in browser_pages:
                        t = time.monotonic()
                        shot = args.screenshots / (page.removesuffix(".html") + ".png")
                        found, info = browser_check(driver, server, page, shot, args.width)
                        problems = static[page] + found
                        failed += bool(problems)
                        math = f"{info['containers']}/{info['math']}"
                        print(
                            f"{'FAIL' if problems else 'ok  '} {page:<30} "
                            f"math={math:<8} links={link_counts.get(page, 0):<4} "
                            f"requests={len(info['resources']):<3} "
                            f"{time.monotonic() - t:4.1f}s  {shot.relative_to(REPO)}"
                        )
                        for problem in problems:
                            print(f"       - {problem}")
                finally:
                    driver.quit()
            print(f"{checked} source listing pages link-checked without a browser")
    mode = "links only" if args.no_browser else "links and browser"
    print(f"checked {len(pages)} pages ({mode}) in {time.monotonic() - t0:.1f}s at {server.base}")
    print(f"docs: {len(pages) - failed} passed, {failed} failed")  # the plain closing line
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
