"""The README's and the user guide's code runs: every ```python block is executed by a test of
its own that checks what it made, and every `vaekit` command (in ```sh blocks and inline) is
parsed by the real command line, with `train`'s flags built into a validated config.

A Python block is matched to its test by a line only it contains (`@covers`); a block that no
test covers fails `test_every_python_block_has_exactly_one_test`."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import re
import shlex
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import vaekit
from conftest import make_tiny_splits, tiny_config
from vaekit.cli.flags import config_from_args
from vaekit.cli.main import COMMANDS, build_parser, main
from vaekit.config import registry

ROOT = Path(__file__).parent.parent
DOCS = ("README.md", "docs/guide.md")
README_MAX_LINES = 200
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _read(doc: str) -> str:
    return (ROOT / doc).read_text()


def _blocks(language: str) -> list[tuple[str, str]]:
    """(doc, code) for every fenced block of `language` in the docs."""
    return [(doc, m.group(2)) for doc in DOCS for m in FENCE.finditer(_read(doc)) if m.group(1) == language]


# --- the Python blocks ---------------------------------------------------------------------

COVERED: dict[str, str] = {}  # a line only one block holds -> the test that runs that block


def covers(key: str) -> Callable:
    def register(test: Callable) -> Callable:
        COVERED[key] = test.__name__
        return test

    return register


def _block(key: str) -> tuple[str, str]:
    found = [(doc, code) for doc, code in _blocks("python") if key in code]
    assert len(found) == 1, f"{len(found)} python blocks contain {key!r}; its test expects exactly one"
    return found[0]


def _run(key: str, scope: dict | None = None) -> dict:
    doc, code = _block(key)
    scope = {"__name__": "docs_example", **(scope or {})}
    exec(compile(code, doc, "exec"), scope)
    return scope


def test_every_python_block_has_exactly_one_test() -> None:
    blocks = _blocks("python")
    assert len(blocks) >= len(COVERED)
    for doc, code in blocks:
        keys = [key for key in COVERED if key in code]
        first = code.splitlines()[0]
        assert keys, f"a python block in {doc} (starting {first!r}) has no test in tests/test_docs.py: add one"
        assert len(keys) == 1, f"a python block in {doc} matches several tests: {', '.join(COVERED[k] for k in keys)}"


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """The snippets train on Fashion-MNIST; here the tiny generated data stands in, in tmp_path."""
    splits = make_tiny_splits()
    monkeypatch.setattr(vaekit, "train", functools.partial(vaekit.train, data=splits, progress=False))
    monkeypatch.setattr(vaekit, "evaluate_run", functools.partial(vaekit.evaluate_run, data=splits, progress=False))
    monkeypatch.setattr(vaekit, "load_dataset", lambda *args, **kwargs: splits)
    monkeypatch.chdir(tmp_path)
    return splits


@covers('out="runs/py"')
def test_the_readme_python_example_trains_evaluates_and_encodes(tiny, tmp_path) -> None:
    scope = _run('out="runs/py"')
    config, result, run = scope["config"], scope["result"], scope["run"]
    assert config.model.components == 5 and config.train.epochs == 3  # left as it was
    assert math.isfinite(result["test"]["nll"]["mean"]) and result["test"]["nll"]["mean"] > 0
    assert json.loads((tmp_path / "runs/py/evaluation.json").read_text())["settings"]["nll_samples"] == 100
    assert scope["x"].shape == (8, 1, 32, 32)
    q = scope["q"]
    assert isinstance(q, vaekit.MixtureOfGaussians) and q.weights.shape == (8, 5)
    assert scope["px"].mean.shape == (8, 1, 28, 28)
    assert scope["images"].shape == (16, 1, 28, 28)
    assert isinstance(run.model, vaekit.VAE) and run.path.resolve() == (tmp_path / "runs/py").resolve()


@covers('vaekit.load_run("zoo:fashion-mnist")')
def test_the_readme_loads_a_shipped_model() -> None:
    run = _run('vaekit.load_run("zoo:fashion-mnist")')["run"]
    assert isinstance(run.model, vaekit.VAE)
    assert (run.config.model.blocks, run.config.model.width, run.config.model.prior) == ("gated", 96, "vamp")
    assert run.model.sample(4).shape == (4, 1, 28, 28)


@covers('likelihood="gaussian", latent_size=16')
def test_the_guide_config_example_resolves_and_refuses(capsys) -> None:
    scope = _run('likelihood="gaussian", latent_size=16')
    assert scope["config"].data.binarize is True and scope["resolved"].data.binarize is False
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "True False"
    assert printed[1].startswith("--free-bits is a per-dimension KL floor")


@covers('np.load("runs/k5/evaluation_per_image.npz"')
def test_the_guide_evaluation_example_reads_the_per_image_file(tiny, tmp_path, capsys) -> None:
    vaekit.train(tiny_config(), out="runs/k5")
    scope = _run('np.load("runs/k5/evaluation_per_image.npz"')
    result, per_image = scope["result"], scope["per_image"]
    n = result["settings"]["test_images"]
    assert result["settings"]["binarize_seed"] == 20190101 and result["settings"]["nll_samples"] == 100
    assert np.array_equal(per_image["index"], np.arange(n)) and per_image["nll"].shape == (n,)
    assert per_image["nll"].mean() == pytest.approx(result["test"]["nll"]["mean"], rel=1e-9)


@covers("terms = hierarchical_terms(model, x)")
def test_the_guide_hierarchy_example_prints_each_groups_kl(capsys) -> None:
    scope = _run("terms = hierarchical_terms(model, x)")
    assert scope["model"].levels == 3
    assert capsys.readouterr().out.splitlines() == ["torch.Size([4, 3])", "True"]


@covers('compare_runs(["zoo:fashion-mnist", "zoo:fashion-mnist-long"])')
def test_the_guide_compares_the_shipped_models_as_the_readme_quotes() -> None:
    table = _run('compare_runs(["zoo:fashion-mnist", "zoo:fashion-mnist-long"])')["table"]
    assert table["images"] == 10_000 and table["protocol"]["nll_samples"] == 1000
    first, long = table["runs"]
    assert first["nll"]["mean"] == pytest.approx(227.99, abs=0.005)
    assert long["nll"]["mean"] == pytest.approx(225.50, abs=0.005)
    assert long["minus_first"]["mean"] == pytest.approx(-2.485, abs=0.0005)
    assert long["minus_first"]["stderr"] == pytest.approx(0.031, abs=0.0005)


@covers("from vaekit import MixtureOfGaussians")
def test_the_guide_example_fits_a_two_component_mixture() -> None:
    torch.manual_seed(0)
    scope = _run("from vaekit import MixtureOfGaussians")
    params, target = scope["params"], scope["target"]
    q = vaekit.MixtureOfGaussians(params[0], params[1].exp(), params[2])
    z = q.sample((20_000,))
    kl = (q.log_prob(z) - target.log_prob(z)).mean()
    assert kl < 0.05, f"KL(q || target) is still {kl:.3f} nats"
    assert sorted(q.weights.tolist()) == pytest.approx(sorted(target.weights.tolist()), abs=0.05)


@covers('out="runs/mlp"')
def test_the_guide_example_trains_and_reloads_its_own_lazy_networks(tiny, tmp_path) -> None:
    scope = _run('out="runs/mlp"')
    assert scope["images"].shape == (16, 1, 28, 28)
    model = scope["run"].model
    assert isinstance(model.encoder, scope["Encoder"])
    assert not any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters())
    saved = json.loads((tmp_path / "runs/mlp/config.json").read_text())["model"]
    assert (saved["custom_encoder"], saved["custom_decoder"]) == ("Encoder", "Sequential")


@covers('@vaekit.register_likelihood("laplace"')
def test_the_guide_likelihood_example_registers_and_trains(tiny, tmp_path) -> None:
    try:
        scope = _run('@vaekit.register_likelihood("laplace"')
        saved = json.loads((tmp_path / "runs/laplace/config.json").read_text())
        assert saved["model"]["likelihood"] == "laplace" and saved["data"]["binarize"] is False
        run = vaekit.load_run(scope["run_dir"])
        assert isinstance(run.model.likelihood, scope["LaplaceHead"])
        images = run.model.sample(4)
        assert images.shape == (4, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    finally:
        registry.unregister("likelihood", "laplace")


# --- the commands --------------------------------------------------------------------------

# Commands cheap enough to run for real (in a temporary folder), with what they must produce.
RUN_FOR_REAL = {
    "vaekit train --help": lambda out, folder: "model settings (ModelConfig)" in out and "--mixture-estimator" in out,
    "vaekit sample zoo:fashion-mnist -n 64 --out samples.png": lambda out, folder: (
        (folder / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ),
}


def _sh_lines() -> list[tuple[str, str]]:
    return [(doc, line.strip()) for doc, code in _blocks("sh") for line in code.splitlines() if line.strip()]


def _inline_commands() -> list[tuple[str, str]]:
    """`vaekit ...` spans in the docs' prose and tables (a span may wrap a line)."""
    found = []
    for doc in DOCS:
        prose = FENCE.sub("", _read(doc)).replace("\n", " ")
        found += [(doc, span) for span in re.findall(r"`([^`]+)`", prose) if re.match(r"(python -m )?vaekit ", span)]
    return found


def _vaekit_argv(words: list[str]) -> list[str] | None:
    """The arguments after `vaekit` in a command line, or None when it does not run vaekit."""
    if words[:1] == ["vaekit"]:
        return words[1:]
    for i in range(len(words) - 1):
        if words[i : i + 2] == ["-m", "vaekit"] and words[0] in ("python", "python3", "torchrun"):
            return words[i + 2 :]
    return None


def _check_vaekit(argv: list[str], line: str) -> None:
    if len(argv) == 1 and argv[0] in COMMANDS:  # prose naming a command, e.g. `vaekit compare`
        return
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
        if args.command == "train":
            config_from_args(args)  # builds the config the flags describe and validates it
    except SystemExit as exit:  # --help, --version
        assert exit.code == 0, f"{line!r} exits with {exit.code}"
    except vaekit.VaekitError as error:
        raise vaekit.VaekitError(f"{line!r}: {error}") from None


def test_every_shell_command_in_the_docs_is_one_the_cli_accepts() -> None:
    lines = _sh_lines()
    assert any(_vaekit_argv(shlex.split(line, comments=True)) for _, line in lines)
    makefile = (ROOT / "Makefile").read_text()
    for doc, line in lines:
        words = shlex.split(line, comments=True)
        if words[0] == "make":
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{doc}: {line!r}: no such make target"
            continue
        argv = _vaekit_argv(words)
        assert argv is not None, f"{doc}: {line!r} is neither a vaekit nor a make command; test_docs cannot check it"
        _check_vaekit(argv, f"{doc}: {line}")


def test_every_inline_vaekit_command_in_the_docs_is_one_the_cli_accepts() -> None:
    spans = _inline_commands()
    assert len(spans) > 5
    for doc, span in spans:
        _check_vaekit(_vaekit_argv(shlex.split(span)), f"{doc}: {span}")


@pytest.mark.parametrize("bad", ["vaekit train --no-such-flag", "vaekit train --prior bogus", "vaekit train --lr fast"])
def test_the_command_check_refuses_a_flag_or_value_that_does_not_exist(bad) -> None:
    with pytest.raises(vaekit.VaekitError):
        _check_vaekit(_vaekit_argv(shlex.split(bad)), bad)


@pytest.mark.parametrize("command", sorted(RUN_FOR_REAL))
def test_the_cheap_commands_run_for_real(command, tmp_path, monkeypatch) -> None:
    assert command in {line.split("#")[0].strip() for _, line in _sh_lines()}, f"{command!r} is no longer in the docs"
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(shlex.split(command)[1:])
        except SystemExit as exit:  # --help
            code = exit.code
    assert code == 0
    assert RUN_FOR_REAL[command](out.getvalue(), tmp_path)


# --- the pages themselves ------------------------------------------------------------------


def test_the_readme_fits_on_200_lines() -> None:
    lines = len(_read("README.md").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the rest belongs in docs/guide.md"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", [*DOCS, "benchmarks/README.md"])
def test_the_links_between_the_pages_lead_somewhere(doc) -> None:
    text = FENCE.sub("", _read(doc))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / doc).parent / path if path else ROOT / doc
        assert file.exists(), f"{doc} links to {target}, which does not exist"
        if anchor:
            headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", FENCE.sub("", file.read_text()), re.M)}
            assert anchor in headings, f"{doc} links to {target}, but {path or doc} has no such heading"
