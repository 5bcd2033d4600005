"""Table of the GPU smoke fits (``gpu_run.sh smoke``): one row per ``train.json`` in a folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    rows = ["| run | device | precision | compile | distributed | s/epoch | seconds total | final loss |",
            "|---|---|---|---|---|---|---|---|"]
    for f in sorted(Path(folder).glob("*.json")):
        d = json.loads(f.read_text())
        s = d.get("settings", {})
        loss = d.get("final_losses", {}).get("loss", float("nan"))
        rows.append(f"| {f.stem} | {s.get('device')} | {s.get('precision', '32')} | {s.get('compile', False)} | "
                    f"{json.dumps(d.get('distributed', s.get('distributed', '-')))} | "
                    f"{d['seconds_per_epoch']:.3f} | {d['seconds_total']:.1f} | {loss:.4g} |")
    text = "\n".join(rows) + "\n"
    (Path(folder) / "smoke.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
