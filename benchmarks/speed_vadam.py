"""Step time of VADAM (K = 1) and VOGN against Adam on the same network, loss and minibatches.

    python benchmarks/speed_vadam.py [--quick]

Steps are timed side by side: every iteration runs one Adam step and one VADAM step (alternating
which goes first) on the same minibatch, and the ratio of the median step times is reported.
Two loss paths:

* ``torch``: the optimisers alone. Both minimise the same plain-torch mean NLL of an
  ``nn.Module`` (VADAM draws the weight noise and keeps its extra state; that is the overhead).
* ``pyro_model``: the loop inside ``fit(method="vadam")``. Both differentiate the NLL read from a
  trace of the SparseBNN's Pyro model conditioned on the weights; Adam is the MAP-free
  point-estimate baseline on the same path. VOGN (per-example squares in closed form, as ``fit``
  computes them) is timed on this path too.

Networks: the breast-cancer MLP 30-64(ReLU)-1 with minibatch 32 (the Vadam paper's setup) and
an MNIST-sized MLP 784-400-400-10 with minibatch 128 on random inputs. One torch thread.
Writes benchmarks/results/speed_vadam.json (rows: net, loss, method, batch_size, adam_ms,
vadam_ms, ratio_vadam_over_adam, steps).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import print_table, write_results
from torch import Tensor, nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.perturbation.model import _NLL, _inspect
from pyro_sparse_bnn.infer.vadam import Vadam


def breast_cancer() -> tuple[Tensor, Tensor, list[int], psb.likelihoods.Likelihood]:
    x, y = psb.datasets.load("breast_cancer", split="train")
    return x, y, [30, 64, 1], psb.likelihoods.Bernoulli()


def mnist_sized() -> tuple[Tensor, Tensor, list[int], psb.likelihoods.Likelihood]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 784, generator=gen)
    y = torch.randint(0, 10, (2000,), generator=gen)
    return x, y, [784, 400, 400, 10], psb.likelihoods.Categorical()


def side_by_side(adam: Callable[[Tensor], None], vadam: Callable[[Tensor], None], n: int,
                 batch: int, steps: int) -> tuple[float, float]:  # fmt: skip
    """Median seconds per step of each, timed alternately on the same minibatches."""
    gen = torch.Generator().manual_seed(1)
    times: dict[str, list[float]] = {"adam": [], "vadam": []}
    for i in range(steps + 20):
        idx = torch.randint(0, n, (batch,), generator=gen)
        order = [("adam", adam), ("vadam", vadam)]
        for name, step in order if i % 2 else order[::-1]:
            start = time.perf_counter()
            step(idx)
            if i >= 20:  # warm-up
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["adam"]), statistics.median(times["vadam"])


def torch_path(x: Tensor, y: Tensor, sizes: list[int], batch: int, steps: int) -> list[dict]:
    torch.manual_seed(0)
    net_adam = psb.mlp(sizes)
    net_vadam = copy.deepcopy(net_adam)
    binary = sizes[-1] == 1

    def nll(net: nn.Module, idx: Tensor) -> Tensor:
        out = net(x[idx])
        if binary:
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), y[idx].float())
        return F.cross_entropy(out, y[idx])

    adam = torch.optim.Adam(net_adam.parameters(), lr=1e-3)
    vadam = Vadam(net_vadam.parameters(), num_data=len(x), lr=1e-3)

    def adam_step(idx: Tensor) -> None:
        adam.zero_grad()
        nll(net_adam, idx).backward()
        adam.step()

    def vadam_step(idx: Tensor) -> None:
        def closure() -> Tensor:
            loss = nll(net_vadam, idx)
            loss.backward()
            return loss

        vadam.step(closure)

    a, v = side_by_side(adam_step, vadam_step, len(x), batch, steps)
    return [_row("torch", "vadam_k1", batch, a, v, steps)]


def pyro_path(x: Tensor, y: Tensor, sizes: list[int], likelihood, batch: int,
              steps: int) -> list[dict]:  # fmt: skip
    torch.manual_seed(0)
    bnn = psb.SparseBNN(psb.mlp(sizes), psb.priors.Normal(), likelihood)
    sites = _inspect(bnn, x, y)
    rows = []
    for method in ("vadam_k1", "vogn_k1"):
        model_a, model_v = copy.deepcopy(bnn), copy.deepcopy(bnn)
        nll_a, nll_v = _NLL(model_a, sites), _NLL(model_v, sites)
        w_a = {k: nn.Parameter(v.clone()) for k, v in sites.weights.items()}
        w_v = {k: nn.Parameter(v.clone()) for k, v in sites.weights.items()}
        adam = torch.optim.Adam([*w_a.values(), *model_a.parameters()], lr=1e-3)
        per_example = method == "vogn_k1"
        vadam = Vadam(list(w_v.values()), num_data=len(x), lr=1e-3, per_example_grads=per_example)
        points = torch.optim.Adam(model_v.parameters(), lr=1e-3)

        def adam_step(idx: Tensor, nll_a=nll_a, w_a=w_a, adam=adam) -> None:
            adam.zero_grad()
            nll_a(w_a, x[idx], y[idx]).mean().backward()
            adam.step()

        def vadam_step(idx: Tensor, nll_v=nll_v, w_v=w_v, vadam=vadam, points=points,
                       per_example=per_example, model_v=model_v) -> None:  # fmt: skip
            points.zero_grad()
            if per_example:  # per-row NLLs: closed-form squares, the biases' gradient with them
                vadam.step(lambda: nll_v(w_v, x[idx], y[idx]))
            else:

                def closure() -> Tensor:
                    loss = nll_v(w_v, x[idx], y[idx]).mean()
                    loss.backward()
                    return loss

                vadam.step(closure)
            points.step()

        a, v = side_by_side(adam_step, vadam_step, len(x), batch, steps)
        rows.append(_row("pyro_model", method, batch, a, v, steps))
    return rows


def _row(loss: str, method: str, batch: int, adam: float, vadam: float, steps: int) -> dict:
    return {
        "loss": loss,
        "method": method,
        "batch_size": batch,
        "adam_ms": adam * 1e3,
        "vadam_ms": vadam * 1e3,
        "ratio_vadam_over_adam": vadam / adam,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 timed steps instead of 1000")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 200 if args.quick else 1000
    rows = []
    for name, make, batch in (("mlp_30_64_1", breast_cancer, 32), ("mlp_784_400_400_10",
                              mnist_sized, 128)):  # fmt: skip
        x, y, sizes, likelihood = make()
        for row in torch_path(x, y, sizes, batch, steps) + pyro_path(
            x, y, sizes, likelihood, batch, steps
        ):
            rows.append({"net": name, **row})
            print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, ["net", "loss", "method", "batch_size", "adam_ms", "vadam_ms",
                       "ratio_vadam_over_adam"])  # fmt: skip
    path = write_results(
        "speed_vadam",
        rows,
        seed=0,
        data_split="breast_cancer train split (seed 0); random 2000 x 784 for the MNIST-sized net",
        timing="median per-step wall time over interleaved steps, 20 warm-up steps, 1 thread",
        goal="ratio_vadam_over_adam <= 1.5 for VADAM with K = 1",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
