import math

import pytest
import torch

from spikecompress.snn import ATan, Rectangular, Sigmoid, Triangle

X = torch.linspace(-3, 3, 601, dtype=torch.float64)

# The pseudo-derivatives written out independently of the implementation.
FORMULAS = [
    (ATan(alpha=2.0), lambda x: 1.0 / (1 + (math.pi * x) ** 2)),
    (ATan(alpha=3.0), lambda x: 1.5 / (1 + (1.5 * math.pi * x) ** 2)),
    (Sigmoid(alpha=4.0), lambda x: 4 * torch.sigmoid(4 * x) * (1 - torch.sigmoid(4 * x))),
    (Triangle(alpha=1.0), lambda x: torch.clamp(1 - x.abs(), min=0)),
    (Triangle(alpha=2.0), lambda x: 2 * torch.clamp(1 - 2 * x.abs(), min=0)),
    (Rectangular(width=1.0), lambda x: (x.abs() < 0.5).double()),
    (Rectangular(width=0.5), lambda x: (x.abs() < 0.25).double() * 2),
]


@pytest.mark.parametrize("surrogate,formula", FORMULAS)
def test_backward_equals_formula(surrogate, formula):
    x = X.clone().requires_grad_(True)
    spikes = surrogate(x)
    upstream = torch.rand_like(x)
    (grad,) = torch.autograd.grad(spikes, x, upstream)
    torch.testing.assert_close(grad, upstream * formula(X))


@pytest.mark.parametrize("surrogate,formula", FORMULAS)
def test_forward_is_heaviside_with_ties_firing(surrogate, formula):
    s = surrogate(torch.tensor([-1e-9, 0.0, 1e-9]))
    assert s.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("surrogate", [ATan(), Sigmoid(), Triangle(), Rectangular()])
def test_pseudo_derivative_integrates_to_one(surrogate):
    x = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(surrogate.derivative(x), x).item()
    assert area == pytest.approx(1.0, abs=5e-3)
