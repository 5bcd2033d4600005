"""``sctopic transfer``: embed new data zero-shot with a trained model."""
from __future__ import annotations

import time

from sctopic.commands.common import prepare_out_dir, write_json


def register(sub) -> None:
    p = sub.add_parser(
        "transfer", help="embed new data with a trained model (zero-shot)",
        description="Embed NEW.h5ad with the model in DIR (written by 'sctopic fit'): genes are "
                    "aligned by name, model genes missing from the new data are filled with zeros "
                    "(with a warning stating the fraction). Writes DIR2/result.h5ad (the new data "
                    "plus the model's outputs) and DIR2/transfer.json (gene overlap, seconds).",
    )
    p.add_argument("model_dir", metavar="DIR", help="output directory of 'sctopic fit' (or a model.pt file)")
    p.add_argument("data", metavar="NEW.h5ad", help="new data with raw counts")
    p.add_argument("--out", required=True, metavar="DIR2", help="output directory")
    p.add_argument("--layer", default=None, help="layer of NEW.h5ad with raw counts (default X)")
    p.add_argument("--orthologs", default=None, metavar="TABLE",
                   help="two-column ortholog table (CSV/TSV; e.g. human and mouse symbols) for "
                        "cross-species transfer; only one-to-one pairs are used")
    p.add_argument("--min-shared", type=float, default=0.1,
                   help="refuse when fewer than this fraction of model genes are shared (default 0.1)")
    p.set_defaults(func=run)


def run(args) -> int:
    import warnings

    from sctopic.data.io import write_h5ad_atomic
    from sctopic.models.transfer import load_model, transfer

    t0 = time.perf_counter()
    model = load_model(args.model_dir)
    out = prepare_out_dir(args.out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, report = transfer(model, args.data, layer=args.layer, orthologs=args.orthologs,
                                  min_shared=args.min_shared)
    for w in caught:
        print(f"warning: {w.message}")
    write_h5ad_atomic(result, out / "result.h5ad")
    report.update(model=model.model_name, model_dir=str(args.model_dir), data=str(args.data),
                  orthologs=args.orthologs, seconds=time.perf_counter() - t0,
                  outputs={"result": str(out / "result.h5ad"), "obsm_theta": f"X_{model.model_name}"})
    write_json(report, out / "transfer.json")
    print(f"embedded {report['n_cells']} cells with {model.model_name}; {report['n_shared_genes']} of "
          f"{report['n_model_genes']} model genes shared ({report['fraction_shared']:.1%})")
    print(f"wrote {out}/result.h5ad, {out}/transfer.json")
    return 0
