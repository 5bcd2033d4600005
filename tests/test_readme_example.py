"""The README's first Python example runs as written on the bundled data (issue 19).

The block is taken from README.md itself, so an edit that breaks it fails here; only the number
of epochs is lowered (200 -> 2) to keep the test fast.
"""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python block"
    return blocks[0]


def test_first_python_example_runs(tmp_path, monkeypatch):
    code = _first_python_block()
    assert "max_epochs=200" in code and "pbmc68k_reduced()" in code
    monkeypatch.chdir(tmp_path)  # model.save("model.pt") writes here
    ns: dict = {}
    exec(compile(code.replace("max_epochs=200", "max_epochs=2"), "README.md", "exec"), ns)
    adata, model = ns["adata"], ns["model"]
    assert (tmp_path / "model.pt").is_file()
    assert adata.obsm["X_sce2tm"].shape == (adata.n_obs, 20)
    assert "neighbors" in adata.uns and "topic_3" in adata.obs
    assert model.get_cell_topics(adata).shape == (adata.n_obs, 20)
