"""Training with --compile: the compiled networks train the model eager ones train, compile
once per process whatever the batch size, and never run in evaluation mode.

torch.compile's backend here records each graph and runs it as traced (no code generation),
so the tests check vaekit's use of compile in seconds; inductor's speed is benchmarks' business.
"""

import pytest
import torch
from torch import nn

from conftest import make_tiny_splits, tiny_config
from vaekit.models.fast_modules import twin
from vaekit.runs.run_dir import load_run, read_metrics
from vaekit.training import loop as training


def _config(compile: bool, epochs: int, precision: str = "fp32", levels: int = 1):
    # Gated blocks and the VampPrior: the default networks, and a second batch size (the
    # pseudo-inputs) through the encoder; batches of 40 leave a shorter last one.
    return tiny_config(
        model__blocks="gated",
        model__width=16,
        model__prior="vamp",
        model__prior_components=5,
        train__epochs=epochs,
        train__batch_size=40,
        train__compile=compile,
        train__precision=precision,
        model__levels=levels,
        model__group_channels=2,
    )


@pytest.mark.parametrize(("precision", "levels"), [("fp32", 1), ("bf16", 1), ("bf16", 3)])
def test_compiled_training_matches_eager_and_compiles_once(tmp_path, graphs, monkeypatch, precision, levels):
    data = make_tiny_splits()
    assert len(data.train.images) % 40 != 0
    eager = training.train(_config(False, 2, precision, levels), out=tmp_path / "eager", data=data, progress=False)
    assert graphs == []
    compiled_after_step = []
    training_step = training.training_step

    def counting_step(*args, **kwargs):
        out = training_step(*args, **kwargs)
        compiled_after_step.append(len(graphs))
        return out

    monkeypatch.setattr(training, "training_step", counting_step)
    compiled = training.train(_config(True, 2, precision, levels), out=tmp_path / "compiled", data=data, progress=False)

    # All in the first step: the short last batches, validation and the pictures compiled nothing more.
    assert len(compiled_after_step) == 2 * 5
    assert compiled_after_step[0] > 0
    assert compiled_after_step == [len(graphs)] * len(compiled_after_step)
    assert not any(g["inference_mode"] for g in graphs), "a compiled network ran under evaluation"
    assert all(g["grad"] for g in graphs)
    a, b = load_run(eager).model.state_dict(), load_run(compiled).model.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    rows_a, rows_b = read_metrics(eager), read_metrics(compiled)
    assert [round(float(r["val_elbo"]), 3) for r in rows_b] == [round(float(r["val_elbo"]), 3) for r in rows_a]
    assert load_run(compiled).config.train.compile is True
    assert load_run(compiled).config.train.precision == precision


def test_a_twin_of_a_compiled_module_runs_its_own_forward():
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = nn.Linear(3, 2)
    layer.compile(backend="eager")
    doubled = twin(layer, Doubled)
    x = torch.randn(4, 3)
    torch.testing.assert_close(doubled(x), 2 * layer(x))
