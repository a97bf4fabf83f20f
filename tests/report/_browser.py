"""Open a report page in headless Chromium and read back what a person would notice: a horizontal scrollbar
and images that did not load. Under CI a missing Chromium fails the test (``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

#: Runs after every image has loaded or failed; writes the measurements into the DOM for --dump-dom.
_CHECK = """<script>window.addEventListener("load", () => {
  const d = document.documentElement;
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"));
  const wide = [...document.querySelectorAll("body *")].filter(e => e.getBoundingClientRect().right > d.clientWidth + 1)
    .slice(0, 5).map(e => e.tagName + (e.className ? "." + e.className : ""));
  const out = document.createElement("pre");
  out.id = "spinelab-check";
  out.textContent = JSON.stringify({scrollWidth: d.scrollWidth, clientWidth: d.clientWidth,
    images: document.images.length, broken: broken, wide: wide});
  document.body.appendChild(out);
});</script>"""


def chromium() -> str:
    """The Chromium executable; skip when it is missing, fail under CI."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium not found (Debian: apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def check_page(page: Path, *, width: int = 1400, height: int = 1000) -> dict[str, Any]:
    """Load ``page`` at ``width`` x ``height`` and return ``{scrollWidth, clientWidth, images, broken, wide}``.

    The page is copied beside itself with the check script added, so relative image paths still resolve.
    """
    probe = page.with_name(f".check_{page.name}")
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    try:
        with tempfile.TemporaryDirectory() as profile:
            run = subprocess.run(
                [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
                 "--run-all-compositor-stages-before-draw", "--dump-dom", probe.resolve().as_uri()],
                capture_output=True, text=True, timeout=120, check=False)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="spinelab-check">(.*?)</pre>', run.stdout, re.S)
    assert found, f"chromium gave no result (exit {run.returncode}): {run.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
