"""The hierarchy (--levels L >= 2): its importance-sampled NLL against the exact log p(x) of a
two-level linear-Gaussian model run through the model's own code paths, each group's KL against
a Monte Carlo estimate, and the bound's parts adding up."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vaekit.config import ModelConfig
from vaekit.evaluation.evaluate import group_kl_summary
from vaekit.models.ladder import GroupCell, group_resolutions
from vaekit.models.vae import VAE
from vaekit.objectives.bounds import elbo_terms, iwae_terms, log_likelihood_estimate, pathwise_terms
from vaekit.objectives.hierarchical import hierarchical_terms
from vaekit.report.group_kl import active_groups

D2, D1, SIZE = 3, 4, 32  # top group, lower group, image side (no zero frame at 32 pixels)
PIXELS = SIZE * SIZE


# --------------------------------------------------------------------------- a linear-Gaussian model
#   z2 ~ N(0, I),  z1 | z2 ~ N(A z2, diag(s1)),  x | z1 ~ N(B z1, s2 I),  p(x) = N(0, B (A A' + S1) B' + s2 I).
# The model's own GroupCell, prior, likelihood call, decode_groups and NLL estimator run it: the
# cell's convolutions act on 1x1 maps, where a 3x3 kernel's centre tap is a matrix.


def _linear_gaussian(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = np.zeros((D1, D2))
    a[np.arange(D2), np.arange(D2)] = rng.uniform(0.8, 1.6, D2)  # distinct columns: q(z2|x) is diagonal
    u, _ = np.linalg.qr(rng.normal(size=(PIXELS, D1)))  # orthonormal columns
    b = u * rng.uniform(0.5, 1.5, D1)
    return {"A": a, "B": b, "s1": rng.uniform(0.3, 0.8, D1), "s2": np.array(0.2)}


def _exact_log_px(m: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """log N(x; 0, B (A A' + S1) B' + s2 I), float64, by Cholesky."""
    cov = m["B"] @ (m["A"] @ m["A"].T + np.diag(m["s1"])) @ m["B"].T + m["s2"] * np.eye(PIXELS)
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, x.T)  # (PIXELS, N)
    return -0.5 * (sol**2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * PIXELS * math.log(2 * math.pi)


def _exact_posteriors(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """q(z2|x) = N(M2 x, diag(v2)) and q(z1|z2,x) = N(c_z A z2 + c_x B'x / s2, diag(v1)): the exact posteriors."""
    a, b, s1, s2 = m["A"], m["B"], m["s1"], float(m["s2"])
    cov_x_given_z2 = b @ np.diag(s1) @ b.T + s2 * np.eye(PIXELS)
    ba = b @ a
    precision2 = np.eye(D2) + ba.T @ np.linalg.solve(cov_x_given_z2, ba)
    assert np.allclose(precision2, np.diag(np.diag(precision2)), atol=1e-9)  # diagonal by construction
    v2 = 1 / np.diag(precision2)
    m2 = (v2[:, None] * ba.T) @ np.linalg.inv(cov_x_given_z2)  # (D2, PIXELS)
    precision1 = 1 / s1 + (b**2).sum(0) / s2  # B'B is diagonal
    return {"M2": m2, "v2": v2, "v1": 1 / precision1, "c_z": 1 / (s1 * precision1), "c_x": 1 / precision1}


class _LinearBottomUp(nn.Module):
    """x -> q(z2|x)'s (loc, logvar, logits) and the context B'x / s2 (N, D1, 1, 1)."""

    def __init__(self, m, post, widen: float = 0.0, shift: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("m2", torch.tensor(post["M2"]))
        self.register_buffer("logvar", torch.tensor(np.log(post["v2"]) + widen))
        self.register_buffer("ctx", torch.tensor(m["B"] / float(m["s2"])))
        self.shift = shift

    def forward(self, x):
        flat = x.flatten(1)  # (N, PIXELS)
        loc = (flat @ self.m2.T + self.shift)[:, None]  # (N, 1, D2)
        return (
            loc,
            self.logvar.expand_as(loc),
            torch.zeros(len(x), 1, dtype=x.dtype),
            (flat @ self.ctx)[..., None, None],
        )


class _LinearTopDown(nn.Module):
    """The hierarchy's contract (z2, *context, temperature, use_mean, noise) -> (params, terms) around
    one real GroupCell whose state is (z2, z1) on a 1x1 map and whose head reads B z1."""

    def __init__(self, m, post, widen: float = 0.0) -> None:
        super().__init__()
        self.cell = GroupCell(D2 + D1, D1, D1, "plain", (-30.0, 30.0))
        c = self.cell
        with torch.no_grad():
            for conv in (c.prior, c.posterior, c.merge, c.residual[0]):
                conv.weight.zero_()
                if conv.bias is not None:
                    conv.bias.zero_()
            a = torch.tensor(m["A"])
            c.prior.weight[:D1, :D2, 1, 1] = a  # loc_p = A z2
            c.prior.bias[D1:] = torch.tensor(np.log(m["s1"]))  # logvar_p = log s1
            # q = p shifted and scaled: loc_q - loc_p = (c_z - 1) A z2 + c_x ctx, logvar_q - logvar_p = log(v1 / s1)
            c.posterior.weight[:D1, :D2, 1, 1] = (torch.tensor(post["c_z"]) - 1)[:, None] * a
            c.posterior.weight[:D1, D2 + D1 :, 1, 1] = torch.diag(torch.tensor(post["c_x"]))
            c.posterior.bias[D1:] = torch.tensor(np.log(post["v1"] / m["s1"]) + widen)
            c.merge.weight[D2:, :, 1, 1] = torch.eye(D1)  # the state becomes (z2, z1)
        self.register_buffer("b", torch.tensor(m["B"]))

    def noise(self, n, device=None, dtype=torch.float64):
        return [torch.randn(n, D1, 1, 1, device=device, dtype=dtype)]

    def forward(self, z, *context, temperature=1.0, use_mean=False, noise=None):
        h = torch.cat([z, torch.zeros(len(z), D1, dtype=z.dtype)], 1)[..., None, None]  # (N, D2 + D1, 1, 1)
        h, terms = self.cell(h, context[0] if context else None, temperature, use_mean, noise[0] if noise else None)
        params = (h[:, D2:, 0, 0] @ self.b.T).reshape(len(z), 1, SIZE, SIZE)  # B z1
        return params, terms[:, None]  # (N, 1, 3)


class _FixedGaussian(nn.Module):
    def __init__(self, s2: float) -> None:
        super().__init__()
        self.scale = math.sqrt(s2)

    def forward(self, params):
        return torch.distributions.Independent(torch.distributions.Normal(params, self.scale), 3)


def _linear_model(widen: float = 0.0, shift: float = 0.0, seed: int = 0):
    m = _linear_gaussian(seed)
    post = _exact_posteriors(m)
    config = ModelConfig(levels=2, image_size=SIZE, latent_size=D2, group_channels=D1, prior="normal", width=32)
    model = VAE(config)
    model.encoder = _LinearBottomUp(m, post, widen, shift)
    model.decoder = _LinearTopDown(m, post, widen)
    model.likelihood = _FixedGaussian(float(m["s2"]))
    model = model.double().eval()
    gen = np.random.default_rng(seed + 1)
    z2 = gen.normal(size=(24, D2))
    z1 = z2 @ m["A"].T + gen.normal(size=(24, D1)) * np.sqrt(m["s1"])
    x = z1 @ m["B"].T + gen.normal(size=(24, PIXELS)) * np.sqrt(m["s2"])
    return model, torch.tensor(x).reshape(-1, 1, SIZE, SIZE), _exact_log_px(m, x)


def test_with_the_exact_posterior_every_importance_weight_is_the_exact_likelihood():
    model, x, exact = _linear_model()
    torch.manual_seed(0)
    with torch.no_grad():
        estimate = log_likelihood_estimate(model, x, samples=7).numpy()
        elbo = elbo_terms(model, x.repeat(400, 1, 1, 1)).elbo.reshape(400, -1).numpy()  # one draw per copy
    np.testing.assert_allclose(estimate, exact, rtol=1e-9, atol=0)  # float64 rounding of ~600-nat sums
    # KL(q || p(z|x)) = 0, so the ELBO's expectation is log p(x): its mean over draws is within 4 SEs
    se = elbo.std(0, ddof=1) / math.sqrt(len(elbo))
    assert (np.abs(elbo.mean(0) - exact) < 4 * se).all()
    assert (elbo.std(0) > 0.1).all()  # one draw's ELBO does vary (a recon and KLs that trade off)


def test_with_a_wider_shifted_posterior_the_estimate_tightens_with_s_to_the_exact_likelihood():
    model, x, exact = _linear_model(widen=1.2, shift=0.8)
    gaps = {}
    for samples in (1, 10, 1000):
        torch.manual_seed(samples)
        with torch.no_grad():
            runs = np.stack([log_likelihood_estimate(model, x, samples).numpy() for _ in range(8)])  # (8, N)
        gap = exact - runs.mean(0)  # per image, over 8 independent estimates
        gaps[samples] = (gap.mean(), runs.std(0, ddof=1).mean() / math.sqrt(runs.size))
    (g1, se1), (g10, se10), (g1000, se1000) = gaps[1], gaps[10], gaps[1000]
    assert g1 > 1.0  # the ELBO of a poor posterior is well below log p(x)
    assert g1 - g10 > 4 * math.hypot(se1, se10) and g10 - g1000 > 4 * math.hypot(se10, se1000)  # it tightens
    # Within 4 standard errors of log p(x), and not above it beyond them (Jensen: E[estimate] <= log p(x)).
    assert abs(g1000) < 4 * se1000 + 0.01, gaps


def _conv_model(levels: int = 3, components: int = 1, prior: str = "normal", seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    config = ModelConfig(
        levels=levels, latent_size=4, width=32, blocks="plain", components=components, prior=prior, group_channels=2
    )
    model = VAE(config).eval()
    with torch.no_grad():  # posteriors away from their priors, so each KL is well above zero
        model.encoder.loc_head.weight.normal_(0, 0.5)
        model.encoder.logvar_head.bias.fill_(-1.0)
        for cell in model.decoder.cells:
            cell.posterior.weight.normal_(0, 0.3)
            cell.posterior.bias.normal_(0, 0.3)
    return model


def _blobs(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Binary 28-pixel images in the zero frame of the 32-pixel network input, as the data module gives them."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.pad((torch.rand(n, 1, 28, 28, generator=g) > 0.6).float(), (2, 2, 2, 2))


def test_group_resolutions_go_coarse_to_fine():
    assert group_resolutions(2, 32) == [8]
    assert group_resolutions(3, 32) == [4, 8]
    assert group_resolutions(4, 32) == [4, 8, 16]
    assert group_resolutions(7, 32) == [4, 4, 8, 8, 16, 16]


@pytest.mark.parametrize("prior", ["normal", "vamp"])
def test_each_groups_kl_matches_its_monte_carlo_estimate(prior):
    """kl_groups (closed form for the lower groups, given the draws above) against the mean of
    log q(z_l | ...) - log p(z_l | z_>l) over R ancestral draws, within 4 standard errors."""
    model = _conv_model(levels=3, prior=prior)
    x = _blobs(4)
    reps = 400
    torch.manual_seed(1)
    with torch.no_grad():
        xs = x.repeat(reps, 1, 1, 1)
        terms = hierarchical_terms(model, xs)  # one draw per copy
        q, context = model.encode_with_context(xs)
        z = q.sample()
        _, lower = model.decode_groups(z, context)  # (R*B, L-1, 3)
        mc_top = q.log_prob(z) - model.prior().log_prob(z)
        mc = torch.cat([mc_top[:, None], lower[..., 1] - lower[..., 2]], 1)  # (R*B, L)
    closed = terms.kl_groups.reshape(reps, 4, 3)
    mc = mc.reshape(reps, 4, 3)
    for group in range(3):
        diff = closed[:, :, group].mean(0) - mc[:, :, group].mean(0)  # per image
        se = torch.sqrt(closed[:, :, group].var(0) / reps + mc[:, :, group].var(0) / reps)
        assert (diff.abs() < 4 * se + 1e-4).all(), (group, diff, se)
        if group > 0 or prior == "normal":  # the closed forms (the VampPrior's top KL is Monte Carlo in both)
            assert (mc[:, :, group].mean(0) > 0.05).all()  # a real KL, not a zero matched with zero


@pytest.mark.parametrize("bound, components", [(iwae_terms, 1), (pathwise_terms, 2)])
def test_the_single_level_bounds_called_on_a_hierarchy_weigh_every_group(bound, components):
    """iwae_terms and pathwise_terms with one sample are unbiased estimates of the ELBO, so on a
    hierarchy their mean over R draws matches elbo_terms' within 4 standard errors (with the lower
    groups drawn from their priors and left out of the weights, it would not)."""
    model = _conv_model(levels=2, components=components, prior="vamp")
    x, reps = _blobs(4), 300
    torch.manual_seed(2)
    with torch.no_grad():
        xs = x.repeat(reps, 1, 1, 1)
        one = bound(model, xs, None, 1).elbo.reshape(reps, 4)
        ref = elbo_terms(model, xs).elbo.reshape(reps, 4)
    diff = one.mean(0) - ref.mean(0)
    se = torch.sqrt(one.var(0) / reps + ref.var(0) / reps)
    assert (diff.abs() < 4 * se).all(), (diff, se)


@pytest.mark.parametrize("estimator", ["marginal", "pathwise", "stratified"])
def test_the_bounds_terms_add_up_and_every_parameter_gets_a_gradient(estimator):
    model = _conv_model(levels=3, components=2, prior="vamp").train()
    x = _blobs(5)
    terms = model(x, estimator=estimator)
    assert terms.kl_groups.shape == (5, 3)
    torch.testing.assert_close(terms.kl_groups.sum(-1), terms.kl)
    if not terms.importance_weighted:
        torch.testing.assert_close(terms.elbo, terms.recon - terms.kl)
    else:
        assert (terms.elbo >= terms.recon - terms.kl - 1e-4).all()
    (-terms.elbo.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_the_importance_weighted_training_bound_is_above_the_elbo_and_the_nll_does_not_depend_on_threads():
    model = _conv_model(levels=2)
    x = _blobs(6)
    torch.manual_seed(3)
    with torch.no_grad():
        elbo = torch.stack([elbo_terms(model, x).elbo for _ in range(50)]).mean(0)
        iwae = torch.stack([model(x, iw_samples=20).elbo for _ in range(50)]).mean(0)
    assert (iwae > elbo).all()
    estimates = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(5)
        with torch.no_grad():
            estimates.append(log_likelihood_estimate(model, x, samples=300, chunk=400))
    torch.set_num_threads(2)
    torch.testing.assert_close(estimates[0], estimates[1], rtol=0, atol=1e-9)


def test_lower_group_temperature_zero_is_deterministic_and_the_mean_reconstruction_draws_nothing():
    model = _conv_model(levels=3)
    z = torch.randn(3, 4)
    with torch.no_grad():
        cold = [model.decode(z, temperature=0.0).mean for _ in range(2)]
        warm = [model.decode(z, temperature=1.0).mean for _ in range(2)]
        x = _blobs(3)
        recon = [model.reconstruct(x) for _ in range(2)]
    torch.testing.assert_close(cold[0], cold[1], rtol=0, atol=0)
    assert not torch.equal(warm[0], warm[1])
    torch.testing.assert_close(recon[0], recon[1], rtol=0, atol=0)
    assert model.sample(5, temperature=0.7).shape == (5, 1, 28, 28)


def test_the_networks_draw_no_random_numbers_so_a_compiled_hierarchy_makes_the_eager_draws():
    """torch.compile gives random operations inside a compiled module inductor's own generator: the
    lower groups' noise is drawn outside the networks on every path, so `--compile` (which compiles
    the encoder and the decoder) leaves the global stream, and with it every draw, as eager has it."""
    model = _conv_model(levels=3)
    drawn_inside = []

    def before(module: nn.Module, args: object) -> None:
        module._rng_before = torch.get_rng_state()

    def after(module: nn.Module, args: object, out: object) -> None:
        drawn_inside.append(not torch.equal(module._rng_before, torch.get_rng_state()))

    for network in (model.encoder, model.decoder):
        network.register_forward_pre_hook(before)
        network.register_forward_hook(after)
    x = _blobs(3)
    hierarchical_terms(model, x, samples=2)
    log_likelihood_estimate(model, x, samples=4, chunk=8)
    model.sample(2, temperature=0.7)
    model.reconstruct(x)
    assert len(drawn_inside) >= 8 and not any(drawn_inside)
    with torch.no_grad():  # the hook sees a draw: the decoder left to draw its own noise does
        model.decoder(torch.randn(2, 4))
    assert drawn_inside[-1]


def test_one_level_is_the_single_level_model_and_own_networks_stay_single_level():
    torch.manual_seed(0)
    plain = VAE(ModelConfig())
    torch.manual_seed(0)
    one = VAE(ModelConfig(levels=1, group_channels=3))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), one.state_dict().values()))
    from vaekit.errors import VaekitError

    with pytest.raises(VaekitError, match="single-level"):
        VAE(ModelConfig(levels=2), encoder=nn.Identity())
    with pytest.raises(VaekitError, match="--levels 9"):
        ModelConfig(levels=9).validate()


def test_a_group_is_active_from_a_tenth_of_a_nat_in_the_report_and_in_the_evaluation():
    rows = [
        {"epoch": "1", "val_kl_z2": "3.0", "val_kl_z1": "0.5"},
        {"epoch": "2", "val_kl_z2": "2.5", "val_kl_z1": "0.09"},
    ]
    assert active_groups(rows) == {"z2": True, "z1": False}  # the last epoch decides
    assert active_groups([]) == {} and active_groups([{"epoch": "1", "val_kl": "2"}]) == {}  # a single level
    kl = torch.tensor([[2.0, 0.05], [4.0, 0.12], [3.0, 0.10]], dtype=torch.float64)
    summary = group_kl_summary(kl, ["z2", "z1"])
    assert summary["z2"]["active"] and not summary["z1"]["active"]  # z1's mean is 0.09
    assert summary["z2"]["mean"] == pytest.approx(3.0)
    assert summary["z2"]["stderr"] == pytest.approx(np.std([2.0, 4.0, 3.0], ddof=1) / math.sqrt(3))
