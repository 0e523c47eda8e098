"""A small linear-operator algebra: forward, adjoint, normal, ``.H`` and composition (``A @ B``)."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from ..arrays import as_tensor
from ..errors import AmbientMRIError


def _numpy_io(fn):
    """numpy in -> numpy out (on the operator's device in between); tensors pass straight through."""
    @functools.wraps(fn)
    def call(self, x, *args, **kwargs):
        if isinstance(x, torch.Tensor):
            return fn(self, x, *args, **kwargs)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{type(self).__name__}.{fn.__name__} takes a torch tensor or a numpy array, got "
                            f"{type(x).__name__}")
        buf = next(self.buffers(), None)
        where = buf.device if buf is not None else "cpu"
        t = as_tensor(x, f"{type(self).__name__}.{fn.__name__}", copy=False).to(where)
        return fn(self, t, *args, **kwargs).detach().cpu().numpy()
    return call


class LinearOperator(nn.Module, ABC):
    """Base class. Subclasses implement ``forward`` and ``adjoint``; ``normal`` defaults to A^H A.

    Operators are ``nn.Module``s so that ``.to(device)`` moves masks and maps (stored as buffers). forward,
    adjoint and normal take torch tensors, or numpy arrays and then return numpy arrays.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("forward", "adjoint", "normal"):
            if name in cls.__dict__ and not getattr(cls.__dict__[name], "__isabstractmethod__", False):
                setattr(cls, name, _numpy_io(cls.__dict__[name]))

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^H y."""

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.adjoint(self.forward(x))

    @property
    def H(self) -> LinearOperator:
        """The adjoint operator A^H (its ``.H`` is A again)."""
        return AdjointOperator(self)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return ComposedOperator(self, other)


class AdjointOperator(LinearOperator):
    def __init__(self, op: LinearOperator):
        super().__init__()
        self.op = op

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(y)

    def adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward(x)

    @property
    def H(self) -> LinearOperator:
        return self.op


class ComposedOperator(LinearOperator):
    """(A @ B) x = A(B(x)); adjoint B^H A^H."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        super().__init__()
        self.outer, self.inner = outer, inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


class Identity(LinearOperator):
    """x -> x for any shape and dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return x


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> = sum(a * conj(b)) (complex or real), a 0-d tensor."""
    return torch.sum(a * b.conj()) if a.is_complex() or b.is_complex() else torch.sum(a * b)


def adjointness_error(A: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> float:
    """|<Ax, y> - <x, A^H y>| / (|Ax| |y|); ~machine precision for a correct adjoint. x, y: tensors or numpy."""
    buf = next(A.buffers(), None)  # numpy inputs go where the operator's masks and maps are
    x, y = (as_tensor(v, name).to(buf.device if buf is not None else "cpu") if isinstance(v, np.ndarray) else v
            for v, name in ((x, "x"), (y, "y")))
    with torch.no_grad():
        Ax = A(x)
        if Ax.shape != y.shape:
            raise AmbientMRIError(f"y of shape {tuple(y.shape)} is not the shape of A x, {tuple(Ax.shape)}")
        lhs = inner(Ax, y)
        rhs = inner(x, A.adjoint(y))
        scale = torch.linalg.vector_norm(Ax) * torch.linalg.vector_norm(y)
        if scale == 0:  # Ax = 0 or y = 0: both inner products are exactly 0 for any linear A
            return float(torch.abs(lhs - rhs))
        return float(torch.abs(lhs - rhs) / scale)
