"""The chain-batched gradient NUTS and SG-MCMC share: vmapped, chain by chain and traced
evaluations all give the closed-form gradient of a one-chain function, with split and shared
inputs and the gradients of point parameters."""

import pytest
import torch

from pyro_sparse_bnn.infer.potential import ChainGradient

CHAINS = 3


def quadratic(xs, scale, shift):
    """``-sum(scale * (x - shift)^2) / 2`` for one chain, and ``sum(x)`` as an extra output."""
    x = xs[0]
    return [-(scale * (x - shift) ** 2).sum() / 2, x.sum()]


def expected(x, scale, shift):
    return -scale.unsqueeze(-1) * (x - shift)


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(CHAINS, 4, generator=gen, dtype=torch.float64)
    scale = torch.rand(CHAINS, generator=gen, dtype=torch.float64) + 0.5  # one per chain
    shift = torch.randn(4, generator=gen, dtype=torch.float64)  # shared by the chains
    return x, scale, shift


@pytest.mark.parametrize("vectorised", [True, False])
def test_eager_and_traced_gradients_match_the_closed_form(problem, vectorised):
    x, scale, shift = problem
    chains = ChainGradient(quadratic, CHAINS, input_dims=(0, None))
    chains.vectorised = vectorised
    grads, outputs = chains([x], (scale, shift))
    torch.testing.assert_close(grads[0], expected(x, scale, shift))
    torch.testing.assert_close(outputs[1], x.sum(1))

    def agrees(replay):
        got, _ = replay([x + 1], (scale, shift))
        return torch.allclose(got[0], expected(x + 1, scale, shift))

    assert chains.trace([x], (scale, shift), agrees) is None
    grads, outputs = chains([2 * x], (scale, shift))  # replayed from the graph
    torch.testing.assert_close(grads[0], expected(2 * x, scale, shift))
    torch.testing.assert_close(outputs[0], -(scale * ((2 * x - shift) ** 2).sum(1)) / 2)


def test_a_function_vmap_cannot_run_goes_chain_by_chain(problem):
    x, scale, shift = problem

    def branching(xs, scale, shift):
        if float(xs[0].sum()) > 1e9:  # Python control flow on a value: vmap refuses it
            raise RuntimeError("unreachable")
        return quadratic(xs, scale, shift)

    chains = ChainGradient(branching, CHAINS, input_dims=(0, None))
    reason = chains.choose_vectorised([x], (scale, shift))
    assert reason is not None and not chains.vectorised
    grads, _ = chains([x], (scale, shift))
    torch.testing.assert_close(grads[0], expected(x, scale, shift))


def test_eager_gives_the_gradient_of_the_summed_value_for_point_parameters(problem):
    x, scale, _ = problem
    shift = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    chains = ChainGradient(quadratic, CHAINS, input_dims=(0, None))
    grads, _, (shift_grad,) = chains.eager([x], (scale, shift), params=[shift])
    torch.testing.assert_close(grads[0], expected(x, scale, shift.detach()))
    torch.testing.assert_close(shift_grad, (scale.unsqueeze(-1) * x).sum(0))
