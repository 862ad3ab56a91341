"""The report in a real browser (headless Chromium): sections render, every picture decodes, no console errors.

The report's own script marks each ``<img>`` with ``data-loaded`` and ``<body>`` with the number of broken pictures
after the load event; ``--dump-dom`` serializes the DOM after that, so the check reads the browser's verdict.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from runfactory import ALL_SECTIONS, make_run

from transferlab.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run scripts/services.sh)")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete run's report, shared: rendering it is the slow part."""
    return write_report(make_run(tmp_path_factory.mktemp("runs")))


def render_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """(DOM after load, console messages) of a local HTML file; network features of the browser are switched off."""
    completed = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]
    return completed.stdout, console


def test_console_errors_and_broken_images_are_detected(tmp_path: Path) -> None:
    """The check itself must be able to fail: a broken picture and a script error are both seen."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<html><body><img src="data:image/png;base64,AAAA"><script>'
        'window.addEventListener("load", function () { document.body.dataset.seen = "yes"; }); missing();'
        "</script></body></html>"
    )
    dom, console = render_in_chromium(page, tmp_path / "profile")
    assert 'data-seen="yes"' in dom
    assert any("missing is not defined" in line for line in console)


def test_report_renders_cleanly_in_chromium(report: Path, tmp_path: Path) -> None:
    dom, console = render_in_chromium(report, tmp_path / "profile")
    assert console == []
    assert 'data-broken-images="0"' in dom
    loaded = re.findall(r'data-loaded="(\w+)"', dom)
    assert len(loaded) == 12 and set(loaded) == {"yes"}
    for section in ALL_SECTIONS:
        assert f'id="{section}"' in dom
    assert dom.count("<script>") == 1 and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # text, not markup


def test_trial_table_sorts_on_click(report: Path, tmp_path: Path) -> None:
    html = report.read_text()
    click = '<script>document.querySelectorAll("#trial-table th")[2].click();</script></body>'  # the "value" column
    page = tmp_path / "clicked.html"
    page.write_text(html.replace("</body>", click))
    dom, console = render_in_chromium(page, tmp_path / "profile")
    table = dom.split('id="trial-table"')[1].split("</table>")[0]
    numbers = re.findall(r'<tr[^>]*><td data-sort="(\d+)"', table)
    assert console == []
    assert numbers == ["1", "2", "0", "3"]  # values 0.62, 0.77, 0.81, then the failed trial without a value
