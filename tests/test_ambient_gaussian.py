"""The ambient and Tweedie losses learn the clean distribution from corrupted data alone.

x0 ~ N(μ, Σ) in 6 dimensions (an image of 2x3 pixels), observed only through fixed random pixel masks
(and, separately, only with Gaussian noise). The trained denoiser must match the closed-form posterior mean of
the *clean* distribution; training that treats the corrupted data as clean must measurably miss it.
"""

import numpy as np
import pytest
import torch
from torch import nn

from ambient_mri.masks import further_mask, pixel_mask
from ambient_mri.nets import EDMPrecond
from ambient_mri.training import measurement_loss, sample_sigma

# Tiny matmuls: thread hand-offs cost more than they save, badly so on a busy 2-core machine.
torch.set_num_threads(1)

SHAPE = (1, 2, 3)
D = 6


class MLP(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: int = 256):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.body = nn.Sequential(nn.Linear(in_channels * D + 1, width), nn.SiLU(), nn.Linear(width, width),
                                  nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out_channels * D))

    def forward(self, x, c_noise):
        h = torch.cat([x.flatten(1), c_noise.reshape(-1, 1).expand(x.shape[0], 1)], dim=1)
        return self.body(h).reshape(x.shape[0], self.out_channels, *SHAPE[1:])


def gaussian(seed=0):
    rng = np.random.default_rng(seed)
    L = rng.standard_normal((D, D)) * 0.4
    cov = L @ L.T + 0.05 * np.eye(D) + 0.3 * np.ones((D, D)) * 0.5
    mu = rng.standard_normal(D) * 0.3
    return torch.tensor(mu, dtype=torch.float32), torch.tensor(cov, dtype=torch.float32)


def draw(mu, cov, n, gen):
    z = torch.randn(n, D, generator=gen)
    return (mu + z @ torch.linalg.cholesky(cov).T).reshape(n, *SHAPE)


def posterior_mean(mu, cov, z, mask, sigma):
    """E[x0 | M(x0 + σ n) = z] for each example (masks differ per example)."""
    out = torch.empty(z.shape[0], D)
    zf, mf = z.reshape(-1, D), mask.reshape(-1, D).bool()
    for i in range(z.shape[0]):
        o = mf[i]
        K = cov[:, o] @ torch.linalg.inv(cov[o][:, o] + sigma**2 * torch.eye(int(o.sum())))
        out[i] = mu + K @ (zf[i, o] - mu[o])
    return out.reshape(z.shape)


def train(loss_batch, cond_channels, steps=1500, seed=0):
    torch.manual_seed(seed)
    model = EDMPrecond(MLP(1 + cond_channels, 1), sigma_data=1.0, img_channels=1, cond_channels=cond_channels)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = loss_batch(model, gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def rel_err(pred, ref, mu):
    return float(((pred - ref) ** 2).sum() / ((ref - mu.reshape(1, *SHAPE)) ** 2).sum())


N, P_MISS, DELTA = 16384, 0.4, 0.2


@pytest.fixture(scope="module")
def masked_data():
    mu, cov = gaussian(0)
    x0 = draw(mu, cov, N, torch.Generator().manual_seed(1))
    mask = torch.from_numpy(pixel_mask((N, *SHAPE), P_MISS, seed=2))   # A: fixed per example
    mask_t = further_mask(mask, delta=DELTA, seed=3)                       # Ã ⊂ A: fixed per example
    return mu, cov, mask * x0, mask, mask_t


def test_ambient_loss_learns_clean_posterior_from_masked_data(masked_data):
    mu, cov, y, mask, mask_t = masked_data

    def ambient(model, gen):
        idx = torch.randint(0, N, (256,), generator=gen)
        b = {"y": y[idx], "mask": mask[idx], "mask_tilde": mask_t[idx]}
        sigma = sample_sigma(256, -0.5, 1.0, gen)
        return measurement_loss(model, b, "pixel", sigma, torch.randn(256, *SHAPE, generator=gen), 1.0)

    def naive(model, gen):  # zero-filled measurements treated as clean images
        idx = torch.randint(0, N, (256,), generator=gen)
        b = {"y": y[idx], "mask": torch.ones(256, 1, *SHAPE[1:])}
        sigma = sample_sigma(256, -0.5, 1.0, gen)
        return measurement_loss(lambda x, s, m: model(x, s), b, "identity", sigma,
                                torch.randn(256, *SHAPE, generator=gen), 1.0)

    amb, nai = train(ambient, 1, steps=3000), train(naive, 0)
    gen = torch.Generator().manual_seed(9)
    x0 = draw(mu, cov, 2000, gen)
    m_t = torch.from_numpy(further_mask(pixel_mask((2000, *SHAPE), P_MISS, seed=10), delta=DELTA, seed=11))
    for sigma in (0.3, 0.6, 1.2):
        z = m_t * (x0 + sigma * torch.randn(x0.shape, generator=gen))
        ref = posterior_mean(mu, cov, z, m_t, sigma)
        with torch.no_grad():
            e_amb = rel_err(amb(z, sigma, m_t), ref, mu)
            e_nai = rel_err(nai(z, sigma), ref, mu)
        print(f"masked σ={sigma}: ambient {e_amb:.4f} naive {e_nai:.4f}")
        assert e_amb < 0.08, f"σ={sigma}: ambient relative error {e_amb:.3f}"
        assert e_nai > 4 * e_amb and e_nai > 0.1, f"σ={sigma}: naive {e_nai:.3f} vs ambient {e_amb:.3f}"


def test_tweedie_loss_learns_clean_posterior_from_noisy_data():
    mu, cov = gaussian(4)
    sigma_n = 0.5
    gen = torch.Generator().manual_seed(5)
    y = draw(mu, cov, N, gen) + sigma_n * torch.randn(N, *SHAPE, generator=gen)   # fixed noise per example
    ones = torch.ones(256, 1, *SHAPE[1:])

    def loss(tweedie):
        def f(model, g):
            idx = torch.randint(0, N, (256,), generator=g)
            sn = torch.full((256,), sigma_n if tweedie else 0.0)
            b = {"y": y[idx], "mask": ones, "sigma_n": sn}
            sigma = sample_sigma(256, -0.3, 0.8, g, sn)
            return measurement_loss(lambda x, s, m: model(x, s), b, "identity", sigma,
                                    torch.randn(256, *SHAPE, generator=g), 1.0)
        return f

    tw, nai = train(loss(True), 0), train(loss(False), 0)
    x0 = draw(mu, cov, 2000, gen)
    full = torch.ones(2000, 1, *SHAPE[1:])
    for sigma in (0.7, 1.0, 1.5):
        xt = x0 + sigma * torch.randn(x0.shape, generator=gen)
        ref = posterior_mean(mu, cov, xt, full, sigma)
        with torch.no_grad():
            e_tw, e_nai = rel_err(tw(xt, sigma), ref, mu), rel_err(nai(xt, sigma), ref, mu)
        print(f"noisy σ={sigma}: tweedie {e_tw:.4f} naive {e_nai:.4f}")
        assert e_tw < 0.05, f"σ={sigma}: Tweedie relative error {e_tw:.3f}"
        assert e_nai > 3 * e_tw, f"σ={sigma}: naive {e_nai:.3f} vs Tweedie {e_tw:.3f}"


def test_consistency_loss_is_unbiased_for_a_consistent_denoiser_and_not_otherwise():
    """Exact Gaussian denoisers satisfy the martingale property, so the consistency residual has zero mean; a
    denoiser that is Tweedie-correct at σ_n but treats the noisy data as clean below it does not."""
    from ambient_mri.training import consistency_loss

    mu, cov = gaussian(6)
    cov, mu = cov.double(), mu.double()
    sigma_n, sigma_c, n = 0.5, 0.2, 4000

    def exact(c):
        def den(x, s, m):
            s = float(torch.as_tensor(s).reshape(-1)[0])
            K = c @ torch.linalg.inv(c + s**2 * torch.eye(D, dtype=torch.float64))
            return (mu + (x.reshape(-1, D) - mu) @ K.T).reshape(x.shape)
        return den

    good, naive = exact(cov), exact(cov + sigma_n**2 * torch.eye(D, dtype=torch.float64))
    mixed = lambda x, s, m: (naive if float(torch.as_tensor(s).reshape(-1)[0]) < sigma_n else good)(x, s, m)  # noqa
    gen = torch.Generator().manual_seed(7)
    y = (draw(mu.float(), cov.float(), n, gen).double() + sigma_n * torch.randn(n, *SHAPE, generator=gen).double())
    noise = torch.randn(n, *SHAPE, generator=gen, dtype=torch.float64)
    sn, sc = torch.full((n,), sigma_n, dtype=torch.float64), torch.full((n,), sigma_c, dtype=torch.float64)

    def bias(den):  # d/db of the mean loss for D + b·y at σ_c, relative: zero iff E[D(x_c) - target] ⟂ y
        def shifted(b):
            return lambda x, s, m: den(x, s, m) + (b * y if float(torch.as_tensor(s).reshape(-1)[0]) == sigma_c
                                                    else 0)
        lp, lm = (consistency_loss(shifted(b), y, sn, sc, noise, 1.0).mean() for b in (0.05, -0.05))
        return abs(float((lp - lm) / consistency_loss(den, y, sn, sc, noise, 1.0).mean()))

    assert bias(good) < 0.03
    assert bias(mixed) > 0.06
