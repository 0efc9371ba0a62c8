"""Tests of vaekit.report.page: a self-contained page, checked as text and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit.errors import VaekitError
from vaekit.report import image_grids, plots
from vaekit.report.page import PICTURES, write_report

METRICS_CSV = """\
epoch,train_elbo,train_recon,train_kl,val_elbo,val_recon,val_kl,seconds,images_per_s
1,-120.5,100.25,20.25,-100.123456,82.1,18.023456,12.3,4878.9
2,-100.5,82.0,18.5,-104.2,86.0,18.2,11.9,5042.01
"""

EVALUATION = {
    "test": {"elbo": -103.98765, "recon": 85.1, "kl": 18.88765, "iwae_k5000": -98.1234},
    "n_images": 10000,
    "active_units": 5,
    "tiny": 0.0000123,
}

#: pictures the fake run has; the others in PICTURES are "not generated" (group_kl.png, a hierarchy's, is not listed)
MADE = ["samples.png", "loss_curves.png", "reconstructions.png", "latent_scatter.png"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    config = {
        "name": "demo <b>bold</b> & co",
        "model": {"latent_dim": 5, "components": 4, "hidden": [512, 256]},
        "train": {"epochs": 2, "lr": 0.001},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.csv").write_text(METRICS_CSV)
    (run / "evaluation.json").write_text(json.dumps(EVALUATION))
    gen = torch.Generator().manual_seed(0)
    rows = [dict(zip(METRICS_CSV.splitlines()[0].split(","), line.split(","))) for line in METRICS_CSV.splitlines()[1:]]
    plots.plot_loss_curves(rows, run / "loss_curves.png")
    image_grids.save_image_grid(torch.rand(16, 1, 12, 12, generator=gen), run / "samples.png")
    imgs = torch.rand(8, 1, 12, 12, generator=gen)
    image_grids.save_reconstructions(imgs, imgs.clamp(0.2, 0.8), run / "reconstructions.png")
    plots.plot_latent_scatter(
        torch.randn(100, 5, generator=gen),
        torch.randint(0, 3, (100,), generator=gen),
        run / "latent_scatter.png",
        ["a", "b", "c"],
    )
    write_report(run)
    return run


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


def _img_srcs(html_text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html_text)


# ----------------------------------------------------------------------------- static checks


def test_report_written_atomically(run_dir):
    assert (run_dir / "report.html").is_file()
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert write_report(str(run_dir)) == run_dir / "report.html"


def test_no_network_references_or_scripts(page):
    refs = re.findall(r"\b(?:src|href|action|srcset|poster)\s*=\s*[\"']?([^\"'\s>]*)", page, re.I)
    assert refs, "expected at least the image sources"
    assert all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "url(" not in page and "@import" not in page


def test_every_image_is_an_embedded_png(page, run_dir):
    srcs = _img_srcs(page)
    assert len(srcs) == len(MADE)
    for src, name in zip(srcs, MADE):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data == (run_dir / name).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG"
            im.verify()


def test_content_sections_and_escaping(page):
    assert "<title>vaekit report: demo &lt;b&gt;bold&lt;/b&gt; &amp; co</title>" in page
    assert "<b>bold</b>" not in page
    for key in ("model.latent_dim", "model.hidden", "train.lr"):  # configuration
        assert f"<th>{key}</th>" in page
    for column in METRICS_CSV.splitlines()[0].split(","):  # every metrics column
        assert f"<th>{column}</th>" in page
    assert "5042.01" in page and "-104.2" in page  # last row
    assert "-100.1235" in page and "4878.9" in page  # best validation row (epoch 1)
    assert "best validation val_elbo (highest)" in page
    assert "<th>test.elbo</th>" in page and "-103.9877" in page  # evaluation, formatted
    assert "1.2300e-05" in page and ">10000<" in page
    for name, heading, caption in PICTURES:
        if name in MADE:
            assert f"<h3>{heading}</h3>" in page
        elif name == "group_kl.png":  # a hierarchy's only: a single-level run does not miss it
            assert heading not in page
        else:
            assert f"{heading} ({name}): not generated" in page


def test_the_page_opens_on_the_test_nll_then_the_pictures_and_folds_the_configuration(tmp_path):
    shipped = Path(vaekit.__file__).parent / "zoo" / "fashion-mnist"
    (tmp_path / "config.json").write_text((shipped / "config.json").read_text())
    (tmp_path / "evaluation.json").write_text((shipped / "evaluation.json").read_text())
    image_grids.save_image_grid(torch.rand(4, 1, 12, 12), tmp_path / "samples.png")
    page = write_report(tmp_path).read_text()
    order = [
        page.index(s) for s in ("<h2>Test NLL</h2>", "<h3>Samples</h3>", "<h2>Metrics</h2>", "<h2>Configuration</h2>")
    ]
    assert order == sorted(order)
    nll = json.loads((shipped / "evaluation.json").read_text())["test"]["nll"]
    headline = page[order[0] : order[1]]
    assert f"test NLL {nll['mean']:.2f} ± {nll['stderr']:.2f} nats on 10000 test images of fashion-mnist" in headline
    assert "S=1000 importance samples" in headline and "binarised with seed 20190101" in headline
    configuration = page[order[3] :]
    assert configuration.index("<details>") < configuration.index("<th>model.latent_size</th>")


def test_missing_config_is_a_one_line_error(tmp_path):
    with pytest.raises(VaekitError) as exc:
        write_report(tmp_path)
    msg = str(exc.value)
    assert "not a vaekit run directory (no config.json)" in msg and "vaekit train --out" in msg
    assert "\n" not in msg
    assert not (tmp_path / "report.html").exists()


def test_minimal_run_and_loss_style_elbo(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    out = write_report(tmp_path)
    text = out.read_text()
    assert "metrics.csv not found" in text and "evaluation.json not found" in text
    assert f"vaekit evaluate {tmp_path} --test-subset 1000 --nll-samples 100" in text  # how to get the number
    assert "<img" not in text
    # a run that logs the negative ELBO (elbo = recon + kl): lowest is best
    (tmp_path / "metrics.csv").write_text("epoch,val_elbo,val_recon,val_kl\n1,110,90,20\n2,100,85,15\n3,105,88,17\n")
    text = write_report(tmp_path).read_text()
    assert "best validation val_elbo (lowest)" in text
    assert ">2<" in text  # epoch of the best row


def test_bad_json_is_a_vaekit_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(VaekitError, match="not valid JSON"):
        write_report(tmp_path)


# ----------------------------------------------------------------------------- Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install chromium")

# Injected by the test only (the report itself has no scripts).  It goes first in <head>,
# before the report's Content-Security-Policy meta tag, so it runs while the policy
# itself stays in force for everything after it.
CHECK_SCRIPT = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t.tagName ? "resource " + t.tagName : "js " + e.message);
  }, true);
  window.addEventListener("securitypolicyviolation", function (e) {
    errors.push("csp " + e.violatedDirective + " " + e.blockedURI);
  });
  window.addEventListener("load", function () {
    var imgs = document.images, bad = [];
    for (var i = 0; i < imgs.length; i++) {
      var im = imgs[i];
      if (!(im.complete && im.naturalWidth > 0 && im.naturalHeight > 0)) bad.push(i);
    }
    var ok = bad.length === 0 && errors.length === 0;
    document.title = (ok ? "IMAGES-OK" : "IMAGES-BAD") + " n=" + imgs.length +
      " bad=[" + bad.join(",") + "] errors=[" + errors.join(";") + "]";
  });
})();
</script>"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _console_lines(stderr: str) -> list[str]:
    # Chromium logs every console message (and uncaught errors, CSP violations, failed
    # loads) as "...:INFO:CONSOLE:<line>] "<message>", source: ..." whatever its level;
    # a script-free page should produce none at all.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _check_in_browser(html_text: str, tmp: Path) -> tuple[str, list[str]]:
    probe = tmp / "probe.html"
    probe.write_text(html_text.replace("<head>", "<head>\n" + CHECK_SCRIPT, 1), encoding="utf-8")
    proc = _chromium(tmp, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"<title>(.*?)</title>", proc.stdout, re.S)
    assert match, "no <title> in the dumped DOM:\n" + proc.stdout[:500]
    return match.group(1), _console_lines(proc.stderr)


@needs_chromium
def test_chromium_loads_every_image_without_errors(page, tmp_path):
    title, console = _check_in_browser(page, tmp_path)
    assert title == f"IMAGES-OK n={len(MADE)} bad=[] errors=[]", title
    assert console == [], console


@needs_chromium
def test_chromium_check_catches_broken_image(page, tmp_path):
    # the same check must fail on a page with an undecodable image and a blocked remote one
    broken = page.replace(
        "</main>",
        '<img src="data:image/png;base64,AAAA"><img src="http://127.0.0.1:9/x.png"></main>',
    )
    title, console = _check_in_browser(broken, tmp_path)
    assert title.startswith("IMAGES-BAD"), title
    assert f"bad=[{len(MADE)},{len(MADE) + 1}]" in title and "csp img-src" in title
    assert any("Content Security Policy" in line for line in console), console


@needs_chromium
def test_chromium_screenshot(run_dir, tmp_path):
    shot = tmp_path / "report.png"
    proc = _chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1200,3000",
        (run_dir / "report.html").as_uri(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []
    with Image.open(shot) as im:
        assert im.size == (1200, 3000)
        pixels = np.asarray(im.convert("RGB")).astype(np.uint32)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 50, "screenshot is (nearly) blank"
    if os.environ.get("VAEKIT_KEEP_ARTIFACTS"):
        artifacts = Path(__file__).parent / "artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copyfile(shot, artifacts / "report.png")
