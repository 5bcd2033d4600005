"""``sctopic transfer``: embed new data zero-shot with a trained model."""
from __future__ import annotations

import time

from pathlib import Path

from sctopic.commands.common import add_overwrite_arg, verify_run_input, write_json


def register(sub) -> None:
    p = sub.add_parser(
        "transfer", help="embed new data with a trained model (zero-shot)",
        description="Embed NEW.h5ad with the model in DIR (written by 'sctopic fit'): genes are "
                    "aligned by name, model genes missing from the new data are filled with zeros "
                    "(with a warning stating the fraction). Writes DIR2/result.h5ad (the new data "
                    "plus the model's outputs), DIR2/transfer.json (gene overlap, seconds) and "
                    "DIR2/manifest.json, swapped in as one unit. DIR2 must not hold another "
                    "command's run (e.g. the fit's own folder); a previous transfer there is "
                    "replaced only with --overwrite.",
    )
    p.add_argument("model_dir", metavar="DIR", help="output directory of 'sctopic fit' (or a model.pt file)")
    p.add_argument("data", metavar="NEW.h5ad", help="new data with raw counts")
    p.add_argument("--out", required=True, metavar="DIR2", help="output directory")
    add_overwrite_arg(p)
    p.add_argument("--layer", default=None, help="layer of NEW.h5ad with raw counts (default X)")
    p.add_argument("--orthologs", default=None, metavar="TABLE",
                   help="two-column ortholog table (CSV/TSV; e.g. human and mouse symbols) for "
                        "cross-species transfer; only one-to-one pairs are used")
    p.add_argument("--min-shared", type=float, default=0.1,
                   help="refuse when fewer than this fraction of model genes are shared (default 0.1)")
    p.set_defaults(func=run)


def run(args) -> int:
    import warnings

    from sctopic.data import rundir
    from sctopic.data.io import write_h5ad_atomic
    from sctopic.errors import InputError
    from sctopic.models.transfer import load_model, transfer

    t0 = time.perf_counter()
    out, src = Path(args.out), Path(args.model_dir)
    src_dir = src if src.is_dir() else src.parent
    if out.exists() and src_dir.exists() and out.resolve() == src_dir.resolve():
        raise InputError(f"--out {out} is the folder of the model being transferred ({src}); write the "
                         "transferred cells to another folder.")
    rundir.check_target(out, "transfer", overwrite=args.overwrite)  # before any work
    rundir.check_parent_writable(out)
    verify_run_input(src)
    model = load_model(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, report = transfer(model, args.data, layer=args.layer, orthologs=args.orthologs,
                                  min_shared=args.min_shared)
    for w in caught:
        print(f"warning: {w.message}")
    model_file = src / "model.pt" if src.is_dir() else src
    source = rundir.read_manifest(src_dir) if (src_dir / rundir.MANIFEST).is_file() else None
    with rundir.RunWriter(out, "transfer", overwrite=args.overwrite) as writer:
        write_h5ad_atomic(result, writer.path / "result.h5ad")
        report.update(model=model.model_name, model_dir=str(args.model_dir), data=str(args.data),
                      orthologs=args.orthologs, seconds=time.perf_counter() - t0, run_id=writer.run_id,
                      model_run_id=None if source is None else source.get("run_id"),
                      outputs={"result": str(out / "result.h5ad"), "obsm_theta": f"X_{model.model_name}"})
        write_json(report, writer.path / "transfer.json")
        settings = {"layer": args.layer, "orthologs": args.orthologs, "min_shared": args.min_shared,
                    "model_sha256": rundir.file_sha256(model_file)}
        writer.commit(settings=settings, data=rundir.input_file_info(args.data),
                      extra={"model": str(model_file), "model_run_id": report["model_run_id"]})
    print(f"embedded {report['n_cells']} cells with {model.model_name}; {report['n_shared_genes']} of "
          f"{report['n_model_genes']} model genes shared ({report['fraction_shared']:.1%})")
    print(f"wrote {out}/result.h5ad, {out}/transfer.json, {out}/manifest.json")
    return 0
