"""notebooks/analysis.ipynb runs top to bottom against a synthetic store and shows the tables and charts,
decode's included."""

from __future__ import annotations

from pathlib import Path

import pytest

from report_synthetic import make_site_store, write_decode_commit

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test dependency group")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test dependency group")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analysis.ipynb"


def test_notebook_is_clean_and_uses_only_teswap_functions():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit it without outputs"
    # "no logic only in the notebook": it defines no functions or classes of its own
    assert not any(line.lstrip().startswith(("def ", "class ", "lambda")) for cell in code
                   for line in cell.source.splitlines())


def test_notebook_executes_against_a_store(tmp_path, monkeypatch):
    store = make_site_store(tmp_path)
    write_decode_commit(store["results"], store["shas"][-1], "2026-04-03T09:00:00+00:00", seed=5, seq_lens=(128, 512),
                        new_tokens=16)
    monkeypatch.setenv("TESWAP_RESULTS", str(store["results"]))
    monkeypatch.setenv("TESWAP_REPO", str(store["repo"]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert html.count('<table class="results">') == 1 and 'class="flag num"' in html
    assert html.count('<table class="decode">') == 1 and "TPOT vs stock" in html
    # throughput, speedup, memory/energy; decode latency, speedup, throughput; history
    assert "regressed" in html and len(images) == 7
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert "regression at the newest commit: True" in streams
