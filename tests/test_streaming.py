"""SVI from a DataLoader: the same optimisation as ``fit_svi``, the true ``N / M`` scaling, data
sets without a length, exact resume and clear errors."""

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler, TensorDataset

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.infer.streaming import fit_svi_loader, svi_loss
from pyro_sparse_bnn.infer.svi import ELBOS


class FitSviOrder(Sampler):
    """The row order of ``fit_svi``: epoch ``e`` uses the ``e``-th ``randperm`` of a generator
    seeded with ``seed``."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):
            perm = torch.randperm(self.n, generator=generator)
        return iter(perm.tolist())

    def __len__(self):
        return self.n


def classifier():
    return psb.SparseBNN(
        psb.mlp([4, 6, 3]), psb.priors.Horseshoe(0.1), psb.likelihoods.Categorical()
    )


def guide_params(result):
    return {k: v.detach().clone() for k, v in result.guide.named_parameters()}


def test_loader_fit_equals_fit_svi_with_the_same_batches():
    """With the same batches in the same order, the loader fit is ``fit_svi`` step for step:
    parameters and loss history agree to float32 round-off (1e-6). (The loader gets its own
    generator: without one, each pass draws its worker seed from the global RNG.)"""
    X, y = psb.datasets.load("iris")
    options = {"epochs": 2, "lr": 0.02, "kl_warmup": 2, "seed": 3, "progress": False}
    bnn = classifier()  # one network: the fits copy it, so both start from its weights
    reference = psb.fit(bnn, X, y, batch_size=16, **options)
    order = FitSviOrder(len(X), 3)
    loader = DataLoader(TensorDataset(X, y), 16, sampler=order, generator=torch.Generator())
    streamed = fit_svi_loader(bnn, loader, **options)
    expected, got = guide_params(reference), guide_params(streamed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        torch.tensor(streamed.info["history"]), torch.tensor(reference.info["history"])
    )
    assert streamed.info["num_data"] == streamed.info["rows_per_epoch"] == len(X)


def test_minibatch_losses_average_to_the_full_data_loss():
    """With a point-mass guide the loss is deterministic: each batch's likelihood counts N / M
    times, so the row-weighted mean of the batch losses over one pass is the full-data loss
    (float64, 1e-12)."""
    X, y, _ = psb.datasets.sparse_regression(n=90, p=5, seed=1, dtype=torch.float64)
    bnn = psb.SparseBNN(psb.mlp([5, 1]), psb.priors.Laplace(0.5), psb.likelihoods.Gaussian(1.0))
    bnn = bnn.double()
    guide = psb.guides.map_estimate(bnn)
    guide(X, y)
    loss_fn = ELBOS["trace"]().differentiable_loss
    with torch.no_grad():
        full = svi_loss(loss_fn, bnn, guide, X, y, num_data=90)
        parts = [
            svi_loss(loss_fn, bnn, guide, X[i : i + 20], y[i : i + 20], num_data=90)
            * len(X[i : i + 20])
            for i in range(0, 90, 20)
        ]
    torch.testing.assert_close(sum(parts) / 90, full, rtol=1e-12, atol=0)


class Stream(IterableDataset):
    """Rows read shard by shard (here sliced from tensors): the data set has no length."""

    def __init__(self, X, y, shard):
        self.X, self.y, self.shard = X, y, shard

    def __iter__(self):
        for i in range(0, len(self.X), self.shard):
            yield from zip(self.X[i : i + self.shard], self.y[i : i + self.shard], strict=True)


def test_iterable_dataset_streams_with_num_data():
    """An IterableDataset (no len) trains with ``num_data`` given and gives exactly the fit of the
    same rows held in memory."""
    X, y = psb.datasets.load("iris")
    options = {"epochs": 2, "seed": 0, "progress": False}
    bnn = classifier()
    in_memory = fit_svi_loader(bnn, DataLoader(TensorDataset(X, y), batch_size=25), **options)
    streamed = fit_svi_loader(
        bnn, DataLoader(Stream(X, y, shard=40), batch_size=25), num_data=len(X), **options
    )
    for name, value in guide_params(in_memory).items():
        torch.testing.assert_close(guide_params(streamed)[name], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_data is required"):
        fit_svi_loader(bnn, DataLoader(Stream(X, y, 40), batch_size=25), **options)


def test_resume_continues_exactly(tmp_path):
    """A fit stopped after 2 of 4 epochs and resumed from its checkpoint ends with exactly the
    parameters of an uninterrupted fit (the loader's shuffling generator is checkpointed)."""
    X, y = psb.datasets.load("iris")

    def loader():
        generator = torch.Generator().manual_seed(7)
        return DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True, generator=generator)

    options = {"epochs": 4, "seed": 1, "progress": False}
    bnn = classifier()
    whole = fit_svi_loader(bnn, loader(), **options)
    path = tmp_path / "fit.ckpt"
    fit_svi_loader(
        bnn,
        loader(),
        checkpoint=path,
        checkpoint_every=2,
        callback=lambda e, _: e == 1,
        **options,
    )
    epochs_run = []
    resumed = fit_svi_loader(
        bnn, loader(), resume=path, callback=lambda e, _: epochs_run.append(e), **options
    )
    assert epochs_run == [2, 3]  # only the epochs after the checkpoint ran
    for name, value in guide_params(whole).items():
        torch.testing.assert_close(guide_params(resumed)[name], value, rtol=0, atol=0)
    assert resumed.info["history"] == whole.info["history"]


@pytest.mark.parametrize(
    ("loader", "options", "error", "match"),
    [
        (iter([(torch.zeros(2, 4), torch.zeros(2).long())]), {}, TypeError, "re-iterable"),
        (5, {}, TypeError, "loader must be a DataLoader"),
        ([torch.zeros(2, 4)], {"num_data": 2}, TypeError, r"pair \(x, y\)"),
        ([], {"num_data": 2}, ValueError, "empty"),
        ([(torch.zeros(2, 5), torch.zeros(2).long())], {"num_data": 2}, ValueError, "shape"),
        ([(torch.zeros(2, 4), torch.zeros(2).long())], {"num_data": 0}, ValueError, "num_data"),
        (
            [(torch.zeros(2, 4), torch.zeros(2).long())],
            {"num_data": 2, "epochs": 0},
            ValueError,
            "epochs",
        ),
        (
            [(torch.zeros(2, 4), torch.zeros(2).long())],
            {"num_data": 2, "elbo": "x"},
            ValueError,
            "elbo",
        ),
    ],
)
def test_bad_input_fails_before_training(loader, options, error, match):
    with pytest.raises(error, match=match):
        fit_svi_loader(classifier(), loader, progress=False, **options)
