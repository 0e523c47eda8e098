"""Samplers on a Gaussian prior with the exact (closed-form) denoiser: they sample the analytic posterior.

x0 ~ N(μ, Σ) in 16 dimensions, y = M (x0 + γ n) observes every other coordinate. The clean denoiser is
E[x0 | x0 + σ n = x]; the ambient one is E[x0 | M̃(x0 + σ n) = M̃ x] for a fixed further mask M̃. Tolerances are
stated per sampler (DPS-type samplers are approximate even with an exact denoiser).
"""

import numpy as np
import pytest
import torch

import ambient_mri as am
from ambient_mri.sampling import Prior, adps, ald, dps, fast_dc, generate, one_step

torch.set_num_threads(1)
D, B, GAMMA = 16, 2000, 0.05


class ExactGaussianDenoiser:
    def __init__(self, mu, cov):
        self.mu, self.cov = mu, cov

    def __call__(self, x, sigma, mask):
        m = torch.ones(D, dtype=torch.bool) if mask is None else mask.reshape(-1, D)[0].bool()
        K = self.cov[:, m] @ torch.linalg.inv(self.cov[m][:, m] + sigma**2 * torch.eye(int(m.sum()), dtype=x.dtype))
        return (self.mu + (x.reshape(-1, D)[:, m] - self.mu[m]) @ K.T).reshape(x.shape)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    L = rng.standard_normal((D, D)) * 0.3
    cov = torch.tensor(L @ L.T + 0.1 * np.eye(D))
    mu = torch.tensor(rng.standard_normal(D) * 0.5)
    g = torch.Generator().manual_seed(1)
    x0 = mu + torch.linalg.cholesky(cov) @ torch.randn(D, dtype=torch.float64, generator=g)
    obs = torch.zeros(D, dtype=torch.bool)
    obs[::2] = True
    y1 = (x0 + GAMMA * torch.randn(D, dtype=torch.float64, generator=g)) * obs
    K = cov[:, obs] @ torch.linalg.inv(cov[obs][:, obs] + GAMMA**2 * torch.eye(int(obs.sum()), dtype=torch.float64))
    post_mean, post_cov = mu + K @ (y1[obs] - mu[obs]), cov - K @ cov[obs]
    mask = obs.double().reshape(1, 1, 1, D).expand(B, 1, 1, D)
    return dict(mu=mu, cov=cov, x0=x0, obs=obs, A=am.PixelMask(mask), mask=mask,
                y=y1.reshape(1, 1, 1, D).expand(B, 1, 1, D), mean=post_mean, var=post_cov.diag())


def further(seed=3, keep=14):
    mt = torch.zeros(D, dtype=torch.float64)
    mt[torch.randperm(D, generator=torch.Generator().manual_seed(seed))[:keep]] = 1
    return mt.reshape(1, 1, 1, D).expand(B, 1, 1, D)


CASES = [  # name, sampler, ambient prior?, options, max relative mean error, variance-ratio range (unobserved)
    ("dps", dps, False, dict(steps=500, zeta=0.1), 0.15, (0.7, 1.3)),
    ("adps", adps, True, dict(steps=500, zeta=0.1), 0.2, (0.6, 1.3)),
    ("ald", ald, False, dict(steps=200, gamma=GAMMA), 0.15, (0.7, 1.4)),
    ("fast_dc", fast_dc, False, dict(steps=50), 0.15, (0.7, 1.3)),
    ("fast_dc_ambient", fast_dc, True, dict(steps=50), 0.15, (0.7, 1.4)),
]


@pytest.mark.parametrize("name,sampler,ambient,opts,mean_tol,var_range", CASES, ids=[c[0] for c in CASES])
def test_sampler_matches_analytic_gaussian_posterior(problem, name, sampler, ambient, opts, mean_tol, var_range):
    p = problem
    den = ExactGaussianDenoiser(p["mu"], p["cov"])
    mt = further() if ambient else None
    prior = Prior(den, am.PixelMask(mt) if ambient else None, mt)
    x = sampler(prior, p["y"], p["A"], (B, 1, 1, D), dtype=torch.float64, seed=0, **opts).reshape(B, D)
    mean_err = float((x.mean(0) - p["mean"]).norm() / (p["mean"] - p["mu"]).norm())
    ratio = float((x.var(0)[~p["obs"]] / p["var"][~p["obs"]]).mean())
    assert mean_err < mean_tol, f"{name}: relative error of the posterior mean {mean_err:.3f}"
    assert var_range[0] < ratio < var_range[1], f"{name}: posterior variance ratio {ratio:.2f}"
    assert prior.nfe == opts["steps"]
    # The sample mean is closer to the truth than the zero-filled measurement.
    zf_err = float((p["y"][0].reshape(D) - p["x0"]).norm())
    assert float((x.mean(0) - p["x0"]).norm()) < 0.8 * zf_err


def test_one_step_with_exact_ambient_denoiser_is_the_posterior_mean(problem):
    p = problem
    prior = Prior(ExactGaussianDenoiser(p["mu"], p["cov"]))
    x = one_step(prior, p["y"][:1], am.PixelMask(p["mask"][:1]), p["mask"][:1], sigma=GAMMA).reshape(D)
    torch.testing.assert_close(x, p["mean"], rtol=1e-10, atol=1e-10)
    assert prior.nfe == 1


def test_samplers_are_deterministic_for_a_seed(problem):
    p = problem
    prior = Prior(ExactGaussianDenoiser(p["mu"], p["cov"]))
    a = fast_dc(prior, p["y"][:4], am.PixelMask(p["mask"][:4]), (4, 1, 1, D), steps=10, dtype=torch.float64, seed=5)
    b = fast_dc(prior, p["y"][:4], am.PixelMask(p["mask"][:4]), (4, 1, 1, D), steps=10, dtype=torch.float64, seed=5)
    c = fast_dc(prior, p["y"][:4], am.PixelMask(p["mask"][:4]), (4, 1, 1, D), steps=10, dtype=torch.float64, seed=6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_generate_samples_the_prior(problem):
    p = problem
    prior = Prior(ExactGaussianDenoiser(p["mu"], p["cov"]))
    x = generate(prior, (B, 1, 1, D), steps=18, dtype=torch.float64, seed=0).reshape(B, D)
    assert prior.nfe == 2 * 18 - 1
    assert float((x.mean(0) - p["mu"]).norm() / p["cov"].diag().sum().sqrt()) < 0.1
    ratio = x.var(0) / p["cov"].diag()
    assert 0.85 < float(ratio.mean()) < 1.15


def _noisy_gaussian_case(draw: int, gamma: float):
    """(μ, Σ, y, A, analytic posterior mean) of the Gaussian toy with measurement noise γ, one draw of x0."""
    rng = np.random.default_rng(0)
    L = rng.standard_normal((D, D)) * 0.3
    cov, mu = torch.tensor(L @ L.T + 0.1 * np.eye(D)), torch.tensor(rng.standard_normal(D) * 0.5)
    g = torch.Generator().manual_seed(10 + draw)
    x0 = mu + torch.linalg.cholesky(cov) @ torch.randn(D, dtype=torch.float64, generator=g)
    obs = torch.zeros(D, dtype=torch.bool)
    obs[::2] = True
    y = (x0 + gamma * torch.randn(D, dtype=torch.float64, generator=g)) * obs
    K = cov[:, obs] @ torch.linalg.inv(cov[obs][:, obs] + gamma**2 * torch.eye(int(obs.sum()), dtype=torch.float64))
    mask = obs.double().reshape(1, 1, 1, D).expand(500, 1, 1, D)
    return mu, cov, y.reshape(1, 1, 1, D).expand(500, 1, 1, D), am.PixelMask(mask), mu + K @ (y[obs] - mu[obs])


@pytest.mark.parametrize("draw", [0, 1, 2])
def test_fast_dc_noise_weight_follows_the_posterior_on_noisy_data(draw):
    """With noisy data (γ = 0.5) plain early-stopped CG fits the noise; λ_i = ρ γ²/σ_i² weighs D against it and
    brings the sample mean closer to the analytic posterior mean (error ~0.2 -> ~0.12 of its distance from μ)."""
    mu, cov, y, A, post = _noisy_gaussian_case(draw, gamma=0.5)
    err = {}
    for rho in (0.0, 10.0):
        x = fast_dc(Prior(ExactGaussianDenoiser(mu, cov)), y, A, (500, 1, 1, D), steps=50, dtype=torch.float64,
                    rho=rho, noise_std=0.5).reshape(500, D)
        err[rho] = float((x.mean(0) - post).norm() / (post - mu).norm())
    assert err[10.0] < 0.8 * err[0.0], err


def test_fast_dc_noise_weight_is_per_example(problem):
    """noise_std per example: an example with σ_n = 0 is reconstructed exactly as without the weight."""
    p = problem
    prior = Prior(ExactGaussianDenoiser(p["mu"], p["cov"]))
    args = (prior, p["y"][:2], am.PixelMask(p["mask"][:2]), (2, 1, 1, D))
    plain = fast_dc(*args, steps=10, dtype=torch.float64, seed=1)
    mixed = fast_dc(*args, steps=10, dtype=torch.float64, seed=1, rho=10.0, noise_std=torch.tensor([0.0, 0.3]))
    torch.testing.assert_close(mixed[0], plain[0], rtol=0, atol=1e-12)
    assert not torch.allclose(mixed[1], plain[1], atol=1e-3)
    with pytest.raises(am.AmbientMRIError, match="noise_std"):
        fast_dc(*args, steps=2, dtype=torch.float64, rho=10.0)
