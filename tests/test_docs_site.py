"""The documentation site as a reader sees it: built by mkdocs, served on loopback, opened in headless Chromium
(tests/browser.py) with nothing outside this machine reachable. ``MOBITUNE_SCREENSHOTS=DIR`` keeps the screenshot
there (docs/screenshots/docs-site.png)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser, Page
from helpers import ROOT, run

pytestmark = pytest.mark.e2e

# what every page shows: text in the content, Material's navigation with the four sections, the search box
RENDERED = """
(() => {
  const article = document.querySelector('article.md-content__inner');
  const top = 'nav.md-nav--primary > ul > li';
  const sections = [...document.querySelectorAll(`${top} > label, ${top} > a`)].map((item) => item.innerText.trim());
  const search = document.querySelector('input.md-search__input');
  return article && article.innerText.length > 200 && search && search.offsetParent !== null && sections;
})()
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site built from this checkout (``make docs`` builds it strictly), served on a loopback port."""
    folder = tmp_path_factory.mktemp("site")
    quiet = {"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}  # notices, as in make docs
    run(["mkdocs", "build", "--site-dir", str(folder)], ROOT, env_extra=quiet)
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def rendered(page: Page) -> list[str]:
    """The primary navigation's section titles, once the page shows its text, navigation and search box."""
    page.wait_for("document.readyState === 'complete'")
    return page.wait_for(RENDERED)


def test_home_and_a_reference_page_render_offline(site: str, browser: Browser, tmp_path: Path) -> None:
    home = browser.open(f"{site}/index.html")
    sections = rendered(home)
    for section in ("Tutorial", "How-to guides", "Reference", "Explanation"):
        assert any(title.startswith(section) for title in sections), sections
    assert home.evaluate("document.querySelector('article img').naturalWidth") > 0  # the dvc plots picture

    home.evaluate("document.querySelector('input.md-search__input').focus()")
    home.call("Input.insertText", text="trainable_layers")  # typed, as a person does
    found = home.wait_for("document.querySelectorAll('.md-search-result__item').length")
    assert found > 0  # the search index answers, from this site alone

    params = browser.open(f"{site}/reference/params.html#finetune.epochs")
    rendered(params)
    heading = params.evaluate("document.getElementById('finetune.epochs').innerText")
    assert heading.startswith("finetune.epochs")
    body = params.evaluate("document.querySelector('article').innerText")
    assert "default 5" in body and "one of constant, cosine, onecycle" in body

    for page in (home, params):
        outside = [url for url in page.requested if not url.startswith((site, "data:", "about:", "blob:"))]
        assert outside == [], outside  # no web font, no CDN script
    folder = Path(os.environ.get("MOBITUNE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    params.screenshot(folder / "docs-site.png", full_page=False)
