"""The static HTML site: self-contained (relative links that all resolve, nothing fetched from outside,
no script), with the tables, flags, charts, per-commit history and provenance in it."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from report_synthetic import make_site_store, teswap
from teswap.reporting.frame import load_frame
from teswap.reporting.html import write_site


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    store = make_site_store(tmp_path_factory.mktemp("site"))
    index = write_site(load_frame(store["results"]), store["results"].parent / "site", repo=store["repo"],
                       store=str(store["results"]))
    return {**store, "index": index, "page": index.read_text(encoding="utf-8")}


def test_site_is_self_contained(site):
    parser = _Links()
    parser.feed(site["page"])
    links = [attrs.get("src") or attrs.get("href") for tag, attrs in parser.tags if tag in ("img", "a", "link")]
    local = [link for link in links if link and not link.startswith("#")]
    assert local and all("://" not in link for link in local)
    missing = [link for link in local if not (site["index"].parent / link).is_file()]
    assert not missing
    assert not any(tag == "script" for tag, _ in parser.tags)
    images = [attrs["src"] for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 3 + 8  # throughput, speedup, memory/energy; one history chart per configuration
    assert all(src.endswith(".svg") for src in images)


def test_site_shows_tables_flags_history_and_provenance(site):
    page, newest = site["page"], site["shas"][-1][:7]
    assert f"NVIDIA H200 · nvidia-h200_gpu-1 @ {newest}" in page
    assert page.count('<table class="results">') == 1 and page.count('<table class="commits">') == 1
    results = page.split('<table class="results">')[1].split("</table>")[0]
    assert results.count('class="flag num"') == 4  # fp8 tok/s and speedup at two sequence lengths
    assert results.count('<td class="flag">') == 2 and results.count("<tr>") == 7
    commits = page.split('<table class="commits">')[1].split("</table>")[0]
    assert commits.count("<tr>") == 4 and commits.count('class="flag num">2/3<') == 1
    assert "⚠ parity failed" in page
    assert page.count(f"regressed at {newest}</figcaption>") == 2  # te/bf16 at both sequence lengths
    assert "driver 570.86.15" in page and "transformer_engine 2.8.0" in page
    for name in ("results.csv", "results.md", "results.tex"):
        assert f'href="{name}"' in page


def test_report_cli_writes_the_site(site, tmp_path, capsys):
    code = teswap(["report", "--results", str(site["results"]), "--repo", str(site["repo"]),
                   "--html", str(tmp_path / "site")])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "site" / "index.html")
    assert (tmp_path / "site" / "index.html").read_text(encoding="utf-8").count("<figure>") == 11
