"""Table of the GPU smoke fits (``gpu_run.sh smoke``): one row per ``train.json`` in a folder.

Usage: ``python benchmarks/gpu_smoke_summary.py FOLDER`` (writes ``FOLDER/smoke.md``).
"""
from __future__ import annotations

import json
from pathlib import Path

from harness import make_parser, md_table, write_text


def main(argv=None) -> int:
    p = make_parser(__doc__)
    p.add_argument("folder", help="folder of the fits' train.json files (renamed <run>.json)")
    folder = Path(p.parse_args(argv).folder)
    rows = []
    for f in sorted(folder.glob("*.json")):
        d = json.loads(f.read_text())
        s = d.get("settings", {})
        loss = d.get("final_losses", {}).get("loss", float("nan"))
        rows.append([f.stem, s.get("device"), s.get("precision", "32"), s.get("compile", False),
                     s.get("cuda_graphs", False),
                     json.dumps(d.get("distributed", s.get("distributed", "-"))),
                     f"{d['seconds_per_epoch']:.3f}", f"{d['seconds_total']:.1f}", f"{loss:.4g}"])
    text = "\n".join(md_table(["run", "device", "precision", "compile", "cuda graphs", "distributed", "s/epoch",
                               "seconds total", "final loss"], rows)) + "\n"
    write_text(folder / "smoke.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
