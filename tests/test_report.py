"""The HTML report (sctopic report) and the figures it embeds."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from sctopic.errors import InputError

EVIL = "<script>alert('x')</script>&"
N_TOPICS = 5


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cards: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "article" and "topic-card" in (a.get("class") or ""):
            self.cards.append(a.get("data-topic"))


@pytest.fixture(scope="module")
def report(tmp_path_factory, pbmc_small):
    """A tiny SCETM fit on the bundled data, an evaluation JSON, and its report (GSEA on; PCA
    layout, since UMAP's first call compiles for tens of seconds)."""
    from sctopic.cli import main

    d = tmp_path_factory.mktemp("report")
    a = pbmc_small.copy()
    lab = a.obs["bulk_labels"].astype(str)
    a.obs["labels"] = lab.where(lab != "CD14+ Monocyte", EVIL).to_numpy()
    a.write_h5ad(d / "data.h5ad")
    fit = d / "fit"
    assert main(["-q", "fit", str(d / "data.h5ad"), "--model", "scetm", "--n-topics", str(N_TOPICS),
                 "--n-hvg", "0", "--max-epochs", "4", "--device", "cpu", "--out", str(fit)]) == 0
    (fit / "evaluate.json").write_text(json.dumps({"ari_oracle": 0.4321, "td": 0.9, "tc": None}))
    out = d / "report.html"
    assert main(["-q", "report", str(fit), "--out", str(out), "--labels", "labels", "--gsea",
                 "--permutations", "50", "--layout", "pca"]) == 0
    text = out.read_text()
    p = _Collect()
    p.feed(text)
    return out, text, p


def test_every_topic_has_a_card(report):
    _, text, p = report
    assert p.cards == [f"topic_{k}" for k in range(N_TOPICS)]
    for k in range(N_TOPICS):
        assert f'id="topic-{k}"' in text


def test_self_contained_no_remote_resources_no_script(report):
    _, text, p = report
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(imgs) >= N_TOPICS + 2
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    assert not [t for t, _ in p.tags if t == "script"]
    for t, a in p.tags:
        for key in ("src", "href"):
            v = (a.get(key) or "").lower()
            assert not v.startswith(("http:", "https:", "//")), (t, v)
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text


def test_text_is_escaped_and_summary_has_metrics(report):
    _, text, _ = report
    assert EVIL not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in text
    assert "0.4321" in text and "evaluate.json" in text  # the evaluation summary
    assert "max_epochs" in text  # from train.json
    assert "GSEA" in text


def test_report_errors(tmp_path, pbmc_small):
    from sctopic.report import build_report

    with pytest.raises(InputError, match="no such"):
        build_report(tmp_path / "missing")
    pbmc_small.write_h5ad(tmp_path / "raw.h5ad")
    with pytest.raises(InputError, match="no topics"):
        build_report(tmp_path / "raw.h5ad")


def test_find_evaluation(tmp_path):
    from sctopic.report import find_evaluation

    (tmp_path / "train.json").write_text(json.dumps({"td": 1}))
    assert find_evaluation(tmp_path) == (None, None)
    (tmp_path / "zz.json").write_text(json.dumps({"ari_oracle": 0.5}))
    (tmp_path / "bad.json").write_text("{")
    obj, path = find_evaluation(tmp_path)
    assert obj == {"ari_oracle": 0.5} and path.name == "zz.json"


def test_running_sum_matches_enrichment_scores():
    from sctopic.genesets import enrichment_scores
    from sctopic.plotting.enrichment import gsea_running_sum, running_sum

    rng = np.random.default_rng(0)
    w = rng.gamma(0.5, size=200)
    genes = [f"g{i}" for i in range(200)]
    members = [3, 17, 40, 41, 120, 199]
    curve, hits, es = running_sum(w, genes, [genes[i] for i in members])
    assert es == pytest.approx(enrichment_scores(w[None], [members])[0, 0], abs=1e-10)
    assert curve[-1] == pytest.approx(0.0, abs=1e-10) and len(hits) == len(members)
    assert gsea_running_sum(w, genes, [genes[i] for i in members]) is not None
    with pytest.raises(InputError, match="shares 0 genes"):
        running_sum(w, genes, ["nope"])


def test_manhattan_and_maps_inputs(tmp_path):
    import pandas as pd

    from sctopic.plotting import enrichment_manhattan, gene_topic_map, topic_label_heatmap

    tab = pd.DataFrame({"topic": [0, 0, 1, 1], "set": list("abcd"), "p": [1e-5, 0.3, 0.01, 1.0],
                        "fdr": [1e-4, 0.5, 0.03, 1.0]})
    enrichment_manhattan(tab, path=tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 3000
    with pytest.raises(InputError, match="column 'fdr'"):
        enrichment_manhattan(tab.drop(columns="fdr"))
    rng = np.random.default_rng(0)
    fig = gene_topic_map(rng.normal(size=(30, 4)), rng.normal(size=(3, 4)), [f"g{i}" for i in range(30)],
                         rng.random((3, 30)), top_n=2)  # 3 topics + <= 6 genes: the PCA layout
    assert fig.axes
    with pytest.raises(InputError, match="share their dimension"):
        gene_topic_map(np.ones((30, 4)), np.ones((3, 5)), [f"g{i}" for i in range(30)], np.ones((3, 30)))
    with pytest.raises(InputError, match="labels"):
        topic_label_heatmap(np.ones((4, 2)) / 2, ["a", "b"], ["t0", "t1"])


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")


def test_report_renders_in_headless_chromium(report, tmp_path):
    from matplotlib.image import imread

    exe = _chromium()
    out, _, _ = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-extensions", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,2000", out.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert shot.is_file()
    img = imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    assert float(img[..., :3].std()) > 0.05  # not a blank page
    dom = subprocess.run([exe, *flags, "--dump-dom", out.as_uri()], check=True, capture_output=True,
                         timeout=120, text=True).stdout
    p = _Collect()
    p.feed(dom)
    assert p.cards == [f"topic_{k}" for k in range(N_TOPICS)]


# ---------------------------------------------------------------- layout at K=20 and K=100

OVERFLOW_JS = """
<script>
window.addEventListener('load', () => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });  // measure the tables opened
  const bad = [];
  document.querySelectorAll('.topic-card, section').forEach(box => {
    const r = box.getBoundingClientRect();
    if (box.scrollWidth > box.clientWidth + 1) bad.push(`${box.id}: scrollWidth ${box.scrollWidth} > ${box.clientWidth}`);
    box.querySelectorAll('*').forEach(el => {
      const e = el.getBoundingClientRect();
      if (e.width === 0 || e.height === 0) return;
      if (e.right > r.right + 1 || e.left < r.left - 1) bad.push(`${box.id}: ${el.tagName} ${Math.round(e.right - r.right)} px out`);
    });
  });
  const pre = document.createElement('pre');
  pre.id = 'overflow-result';
  pre.textContent = JSON.stringify({cards: document.querySelectorAll('.topic-card').length,
                                    details: document.querySelectorAll('details').length,
                                    n_bad: bad.length, bad: bad.slice(0, 20)});
  document.body.appendChild(pre);
});
</script>
"""


def synthetic_result(path, pbmc_small, k: int, seed: int = 0):
    """A result.h5ad with k topics over real gene names, each topic's top genes drawn partly from
    one GO BP set (so ORA finds terms) and partly from genes outside the library."""
    from sctopic.data.outputs import write_outputs
    from sctopic.genesets import load

    rng = np.random.default_rng(seed)
    a = pbmc_small.copy()
    genes = [str(g) for g in a.var_names]
    m = load("go_bp_human").match(genes)
    inc = m.incidence.tocsr()
    sizes = np.diff(inc.indptr)
    usable = np.flatnonzero((sizes >= 8) & (sizes <= 60))
    w = rng.dirichlet(np.full(len(genes), 0.05), size=k) * 0.2
    outside = np.flatnonzero(~m.in_library)
    for t in range(k):
        s = rng.choice(usable)
        members = inc.indices[inc.indptr[s]:inc.indptr[s + 1]]
        w[t, rng.choice(members, 6, replace=False)] += np.linspace(0.5, 0.3, 6)
        if len(outside):
            w[t, rng.choice(outside, 2, replace=False)] += 0.4  # top genes ORA cannot test
    w /= w.sum(1, keepdims=True)
    theta = rng.dirichlet(np.full(k, 0.1), size=a.n_obs)
    write_outputs(a, "scetm", logits=np.log(theta), theta=theta, topic_gene=w.astype(np.float32), genes=genes,
                  topic_names=[f"topic_{i}" for i in range(k)], params="{}")
    a.obs["cell_type"] = a.obs["bulk_labels"].astype(str)
    path.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path / "result.h5ad")
    (path / "evaluate.json").write_text(json.dumps({"ari_oracle": 0.61, "td": 0.8, "tq": 0.05, "ora_q": 12.3,
                                                    "gsea_u": 0.4}))
    return path


@pytest.fixture(scope="module", params=[20, 100], ids=["K20", "K100"])
def report_k(request, tmp_path_factory, pbmc_small):
    from sctopic.report import build_report

    k = request.param
    d = synthetic_result(tmp_path_factory.mktemp(f"report_k{k}") / "fit", pbmc_small, k)
    out = build_report(d, labels="cell_type", layout="pca")
    return k, out, out.read_text()


def test_report_explains_itself(report_k):
    from sctopic.report.html import METRIC_HELP

    k, _, text = report_k
    assert "How to read this report" in text and "id='contents'" in text
    for anchor in ("how-to-read", "summary", "cells", "topics-overview", "enrichment", "topic-cards"):
        assert f'href="#{anchor}"' in text  # the table of contents reaches every section
    for key in ("ari_oracle", "td", "tq", "ora_q", "gsea_u"):  # the evaluation's raw keys get a definition
        name, what, better = METRIC_HELP[key]
        assert name in text and what.replace("'", "&#x27;") in text and better in text
    assert text.count("<details") >= k // 2  # enrichment tables fold away
    p = _Collect()
    p.feed(text)
    assert p.cards == [f"topic_{i}" for i in range(k)]


def test_cards_name_the_genes_ora_tested(report_k):
    import re

    from sctopic.genesets import load, ora
    from sctopic.data.outputs import model_outputs, read_result

    k, out, text = report_k
    res = read_result(out.parent)
    o = model_outputs(res)
    tab = ora(o.topic_gene, o.genes, load("go_bp_human"), top_n=10)
    cards = re.findall(r'<article class="topic-card" id="topic-(\d+)".*?</article>', text, flags=re.S)
    assert len(cards) == k
    bodies = re.split(r'<article class="topic-card"', text)[1:]
    n_checked = 0
    for body in bodies[:10]:
        t = int(re.match(r' id="topic-(\d+)"', body).group(1))
        m = re.search(r"ORA tested the top 10 genes found in [^(]*\([^)]*\): ([^<]*)</p>", body)
        assert m, "the synthetic topics have top genes outside the library: the card must say so"
        tested = [g.strip() for g in m.group(1).split(",")]
        hits = tab[(tab["topic"] == t) & (tab["statistic"] > 0)]["genes"]
        assert set(g for s in hits for g in s.split(",") if g) <= set(tested)  # ORA's genes are on the card
        assert "class='notlib'" in body
        n_checked += 1
    assert n_checked == 10


def test_report_layout_no_overflow_in_chromium(report_k, tmp_path):
    """The report at K=20 and K=100 in headless Chromium: no element sticks out of its card or
    section (all tables opened), screenshot kept under tmp_path."""
    from matplotlib.image import imread

    exe = _chromium()
    k, out, text = report_k
    probe = tmp_path / f"report_k{k}_probe.html"
    probe.write_text(text.replace("</body>", OVERFLOW_JS + "</body>"))  # the report itself stays script-free
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-extensions", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1200,2000", "--virtual-time-budget=10000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", probe.as_uri()], check=True, capture_output=True,
                         timeout=180, text=True).stdout
    import re

    m = re.search(r'<pre id="overflow-result">(.*?)</pre>', dom, flags=re.S)
    assert m, "the probe script did not run"
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&"))
    assert result["cards"] == k and result["details"] >= k // 2
    assert result["n_bad"] == 0, result["bad"]
    shot = tmp_path / f"report_k{k}.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", out.as_uri()], check=True, capture_output=True, timeout=180)
    img = imread(shot)
    assert img.shape[1] >= 1000 and float(img[..., :3].std()) > 0.05


def test_cli_progress_quiet_and_closing_line(tmp_path, pbmc_small, capsys):
    """report and evaluate say what they do on stderr (silenced by -q), always end with where the
    outputs went and what to run next, and keep stdout clean (evaluate's JSON still parses)."""
    from sctopic.cli import main

    d = synthetic_result(tmp_path / "fit", pbmc_small, 10)
    assert main(["report", str(d), "--layout", "pca", "--genesets", "none", "--labels", "cell_type"]) == 0
    cap = capsys.readouterr()
    assert "sctopic report: done in" in cap.err and f"outputs in {d / 'report.html'}" in cap.err
    assert "next: open it in a web browser" in cap.err
    assert "report: 10 topic cards" in cap.err  # a stage message
    assert cap.out == ""
    assert main(["-q", "report", str(d), "--layout", "pca", "--genesets", "none"]) == 0
    cap = capsys.readouterr()
    assert "report: 10 topic cards" not in cap.err and "sctopic report: done in" in cap.err
    (d / "evaluate.json").unlink()
    assert main(["evaluate", str(d), "--genesets", "none", "--permutations", "0", "--labels", "cell_type"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["ari_oracle"] is not None  # stdout is only the JSON
    assert "sctopic evaluate: ari computed" in cap.err or "computed in" in cap.err
    assert "next: --json" in cap.err and "sctopic evaluate: done in" in cap.err
