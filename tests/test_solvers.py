"""Conjugate gradient: per-example stopping keeps each solution independent of the batch it is solved in."""

import torch

from ambient_mri.solvers import conjugate_gradient


def _diag_system(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # example 0 is well conditioned (converges in few steps), example 1 badly (needs many)
    d = torch.stack([1 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64),
                     torch.logspace(-3, 0, n, dtype=torch.float64)])
    b = torch.randn(2, n, generator=g, dtype=torch.float64)
    return d, b


def test_cg_solution_does_not_depend_on_the_batch():
    d, b = _diag_system()
    kw = dict(iters=200, tol=1e-4)
    both = conjugate_gradient(lambda v: d * v, b, **kw)
    for i in range(2):
        alone = conjugate_gradient(lambda v, i=i: d[i:i + 1] * v, b[i:i + 1], **kw)
        torch.testing.assert_close(both[i:i + 1], alone, rtol=1e-12, atol=1e-14)


def test_cg_each_example_meets_its_tolerance():
    d, b = _diag_system()
    x = conjugate_gradient(lambda v: d * v, b, iters=500, tol=1e-6)
    rel = ((d * x - b).norm(dim=1) / b.norm(dim=1))
    assert bool((rel < 1e-5).all()), rel
    exact = b / d
    assert float(((x - exact).norm(dim=1) / exact.norm(dim=1)).max()) < 1e-2
