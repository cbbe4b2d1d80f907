"""The demo's report in a real browser (Debian's Chromium, headless): it renders offline, every image
decodes, and the duplicate section lists the demo's groups. ``make test`` installs Chromium where it can
(root on Debian, as in CI); elsewhere this test is skipped and says why."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from curate.ledger import read_ledger

CHROMIUM = shutil.which("chromium")

# appended to a copy of the page: once everything has loaded, count the images the browser decoded
PROBE = """<script>
addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.decoded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.sections = [...document.querySelectorAll("h2")].map((h) => h.textContent).join("|");
});
</script>"""


def _rendered(page: str, tmp_path) -> str:
    path = tmp_path / "report.html"
    path.write_text(page + PROBE)
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=20000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_report_renders_in_a_browser_with_every_image_and_the_duplicate_groups(demo_local, tmp_path):
    page = (demo_local / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # offline as written
    dom = _rendered(page, tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert int(attrs["images"]) >= 30 and attrs["decoded"] == attrs["images"], attrs  # every image decoded
    sections = attrs["sections"].split("|")
    for title in ("Outcomes by modality", "Kept images", "OCR pages and the lines read", "Duplicate groups"):
        assert title in sections

    ledger = read_ledger(str(demo_local))
    groups = ledger["meta"].map(json.loads).map(lambda m: m.get("dedup_group")).dropna()
    members = groups[groups.duplicated(keep=False)]
    section = dom.split(">Duplicate groups</h2>")[1].split("<h2")[0]
    assert f"{members.nunique()} groups" in section
    for key in ledger.loc[members.index, "key"]:  # every member of every group, as the browser shows it
        assert key in section
