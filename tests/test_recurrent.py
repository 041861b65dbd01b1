"""Sparse recurrent nets: fused LSTM/GRU layers equal torch's, the structured log-uniform prior's
moments against Monte Carlo, pruning to smaller plain nn.LSTM/nn.GRU with the same outputs, and
SparseVD, VADAM-ARD, IVON-ARD and NUTS fitted end to end on a small sequence task."""

import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.guides import sparse_vd, weight_moments
from pyro_sparse_bnn.prune import prune
from pyro_sparse_bnn.recurrent import FusedGRU, FusedLSTM, RecurrentOutput, fuse_recurrent

RNNS = [nn.LSTM, nn.GRU]


@pytest.mark.parametrize("rnn", RNNS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_fused_layers_compute_what_torch_computes(rnn, batch_first):
    torch.manual_seed(0)
    module = rnn(3, 5, batch_first=batch_first)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    fused = fuse_recurrent(module)
    x = torch.randn(4, 6, 3)
    h0 = torch.randn(1, 6 if not batch_first else 4, 5)
    hx = (h0, torch.randn_like(h0)) if rnn is nn.LSTM else h0
    for args in [(x,), (x, hx)]:
        want, got = module(*args), fused(*args)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    back = fused.to_torch()
    assert type(back) is rnn
    torch.testing.assert_close(back(x)[0], module(x)[0], atol=1e-6, rtol=0)


def test_fused_layers_run_under_vmap_over_weight_draws():
    fused = FusedLSTM.from_torch(nn.LSTM(3, 4, batch_first=True))
    x, draws = torch.randn(2, 5, 3), torch.randn(3, 16, 7)
    batched = torch.func.vmap(lambda w: torch.func.functional_call(fused, {"weight": w}, (x,))[0])(
        draws
    )
    for i in range(3):
        one = torch.func.functional_call(fused, {"weight": draws[i]}, (x,))[0]
        torch.testing.assert_close(batched[i], one)


def test_unsupported_recurrent_layers_are_named_at_construction():
    for module, word in [(nn.LSTM(3, 4, num_layers=2), "num_layers"),
                         (nn.GRU(3, 4, bidirectional=True), "bidirectional"),
                         (nn.LSTM(3, 4, proj_size=2), "proj_size")]:  # fmt: skip
        net = nn.Sequential(module, RecurrentOutput(last_step=True), nn.Linear(4, 2))
        with pytest.raises(ValueError, match=word):
            psb.SparseBNN(net, psb.priors.Normal(), psb.likelihoods.Categorical())


def sequence_net(rnn=nn.LSTM, hidden=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(rnn(4, hidden, batch_first=True), RecurrentOutput(last_step=True),
                         nn.Linear(hidden, 2))  # fmt: skip


def test_a_recurrent_sparse_bnn_has_one_weight_site_per_layer_with_gate_rows():
    bnn = psb.SparseBNN(sequence_net(nn.GRU), psb.priors.Horseshoe(), psb.likelihoods.Categorical(),
                        bias_prior=psb.priors.Normal())  # fmt: skip
    assert bnn.weight_sites == ["0.weight", "2.weight"]
    assert bnn.net[0].weight.shape == (3 * 8, 4 + 8)
    assert sorted(bnn.initial_weights()) == ["0.bias", "0.bias_hn", "0.weight_decentered",
                                             "2.bias", "2.weight_decentered"]  # fmt: skip
    bnn.check_data(torch.randn(5, 7, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"X must have shape \(n, steps, 4\)"):
        bnn.check_data(torch.randn(5, 4))


def test_structured_log_uniform_weight_moments_match_monte_carlo():
    bnn = psb.SparseBNN(sequence_net(hidden=3), psb.priors.StructuredLogUniform(),
                        psb.likelihoods.Categorical())  # fmt: skip
    guide = sparse_vd(bnn)
    x, y = torch.randn(6, 5, 4), torch.randint(0, 2, (6,))
    guide(x, y)
    with torch.no_grad():  # spread the group factors so the products are far from Normal
        for name, p in guide.named_parameters():
            if "log_sigma2" in name:
                p.fill_(-1.0)
            elif "scale" in name:
                p.uniform_(0.5, 1.5)
    mean, var = weight_moments(bnn, guide, num_samples=4000)["0.weight"]
    samples = []
    with torch.no_grad():
        for _ in range(4000):
            values = guide(x, y)
            theta = values["0.weight_decentered"]
            samples.append(theta * values["0.weight_in_scale"] * values["0.weight_out_scale"])
    samples = torch.stack(samples).double()
    # weight_moments estimates E[z_in z_out] and E[(z_in z_out)^2] by Monte Carlo too: compare
    # within 5 standard errors of the two estimates together (the fourth moment gives the
    # variance's), elementwise
    n = samples.shape[0]
    centred = samples - samples.mean(0)
    se_mean = samples.std(0) / n**0.5
    se_var = ((centred**4).mean(0) - samples.var(0) ** 2).clamp(min=0).sqrt() / n**0.5
    assert ((samples.mean(0) - mean.double()).abs() <= 5 * 2**0.5 * se_mean).all()
    assert ((samples.var(0) - var.double()).abs() <= 5 * 2**0.5 * se_var).all()


@pytest.mark.parametrize("rnn", RNNS)
def test_prune_removes_unread_units_and_keeps_the_outputs(rnn):
    torch.manual_seed(0)
    net = fuse_recurrent(nn.Sequential(
        rnn(5, 6, batch_first=True), RecurrentOutput(),
        rnn(6, 7, batch_first=True), RecurrentOutput(last_step=True),
        nn.Linear(7, 4), nn.Tanh(), nn.Linear(4, 3),
    ))  # fmt: skip
    second, head = net[2], net[4]
    with torch.no_grad():
        head.weight[:, [1, 2]] = 0.0  # units 1 and 2 of the second layer: not read by the head
        second.weight[:, 6 + 1] = 0.0  # nor by the recurrence, except unit 2 read by unit 3
        second.weight[:, 6 + 2] = 0.0
        second.weight[3::7, 6 + 2] = 1.0
        second.weight[:, 0] = 0.0  # unit 0 of the first layer: read by no gate above
        net[0].weight[:, 5 + 0] = 0.0
        second.weight[7 + 4] = 0.0  # a constant forget gate: kept as its bias
    x = torch.randn(8, 9, 5)
    small = prune(net, x)
    assert [type(m) for m in small][:3] == [rnn, RecurrentOutput, rnn]
    assert small[0].hidden_size == 5 and small[2].hidden_size == 6
    assert small[4].in_features == 6
    assert (small(x) - net(x)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="inputs='select' is not supported"):
        prune(net, x, inputs="select")
    with pytest.raises(TypeError, match="last_step must be a bool"):
        RecurrentOutput(last_step="yes")
    with pytest.raises(ValueError, match="RecurrentOutput after each recurrent layer"):
        prune(nn.Sequential(FusedGRU(2, 3)))


@pytest.fixture(scope="module")
def sequences():
    """Class = sign of the sum of feature 0 over the first 3 of 8 steps (features 1-3: noise)."""
    g = torch.Generator().manual_seed(0)
    x, x_test = torch.randn(400, 8, 4, generator=g), torch.randn(400, 8, 4, generator=g)
    return (x, (x[:, :3, 0].sum(1) > 0).long()), (x_test, (x_test[:, :3, 0].sum(1) > 0).long())


@pytest.mark.slow
def test_structured_sparse_vd_learns_and_prunes_an_lstm(sequences, tmp_path):
    (x, y), (x_test, y_test) = sequences
    bnn = psb.SparseBNN(sequence_net(), psb.priors.StructuredLogUniform(),
                        psb.likelihoods.Categorical())  # fmt: skip
    result = psb.fit(bnn, x, y, method="svi", guide="sparse_vd", epochs=300, lr=0.01,
                     batch_size=100, seed=0, progress=False)  # fmt: skip
    assert result.evaluate(x_test, y_test)["accuracy"] >= 0.85  # chance: 0.5; measured 0.885
    small = result.prune()
    assert isinstance(small[0], nn.LSTM) and small[0].hidden_size < 4
    stats = result.compression()
    kept = sum(int((p != 0).sum()) for k, p in small.named_parameters() if "weight" in k)
    assert kept == stats["n_kept"] < stats["n_weights"] / 10
    masked = result.masked_network()
    with torch.no_grad():
        assert (small(x_test) - masked(x_test)).abs().max() < 1e-5
    assert result.to_arviz().posterior["0.weight"].shape[-2:] == (32, 12)
    result.save(tmp_path / "lstm.psb")
    loaded = psb.load(tmp_path / "lstm.psb")
    torch.testing.assert_close(loaded.predict(x_test[:20])["probs"],
                               result.predict(x_test[:20])["probs"])  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vadam", "ivon", "l1"])
def test_ard_and_l1_fit_a_small_gru(sequences, method):
    (x, y), (x_test, y_test) = sequences
    options = {
        "vadam": dict(ard=True, lr=0.01, kl_weight=0.1),
        "ivon": dict(ard=True, lr=0.1),
        "l1": dict(lr=0.01, l1=1e-3, threshold=1e-2),
    }[method]
    bnn = psb.SparseBNN(sequence_net(nn.GRU, hidden=4), psb.priors.ARD(),
                        psb.likelihoods.Categorical())  # fmt: skip
    result = psb.fit(bnn, x[:200, :4], y[:200], method=method, epochs=300, batch_size=50,
                     seed=0, progress=False, **options)  # fmt: skip
    assert result.evaluate(x_test[:, :4], y_test)["accuracy"] >= 0.75
    assert isinstance(result.prune()[0], nn.GRU)


@pytest.mark.slow
def test_nuts_samples_a_tiny_horseshoe_gru(sequences):
    (x, y), (x_test, y_test) = sequences
    bnn = psb.SparseBNN(sequence_net(nn.GRU, hidden=2), psb.priors.Horseshoe(),
                        psb.likelihoods.Categorical(), bias_prior=psb.priors.Normal())  # fmt: skip
    result = psb.fit(bnn, x[:60, :4], y[:60], method="nuts", num_samples=50, warmup=50,
                     max_tree_depth=5, seed=0, progress=False)  # fmt: skip
    assert result.samples["0.weight"].shape[-3:] == (50, 6, 6)
    assert result.masks()["0.bias_hn"].all()  # biases are kept, not searched
    assert result.evaluate(x_test[:, :4], y_test)["accuracy"] >= 0.75  # measured 0.85


@pytest.mark.slow
def test_local_reparameterisation_keeps_a_recurrent_elbo_unbiased():
    """The fused layer slices its weight, so the LRT estimator draws it (only the head's
    pre-activations are sampled locally): both estimators have the same expectation."""
    from pyro_sparse_bnn.elbo import MeanFieldELBO
    from pyro_sparse_bnn.lrt import LocalReparameterizationELBO

    bnn = psb.SparseBNN(sequence_net(hidden=5), psb.priors.LogUniform(),
                        psb.likelihoods.Categorical())  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, 4, generator=g), torch.randint(0, 2, (64,), generator=g)
    guide = sparse_vd(bnn)
    guide(x, y)
    with torch.no_grad():
        for name, p in guide.named_parameters():
            if "log_sigma2" in name:
                p.fill_(-3.0)
    estimates = []
    for elbo in (LocalReparameterizationELBO(), MeanFieldELBO()):
        values = torch.stack([elbo.differentiable_loss(bnn, guide, x, y).detach()
                              for _ in range(2000)])  # fmt: skip
        estimates.append((values.mean(), values.var() / len(values)))
    (lrt, var_lrt), (mean_field, var_mf) = estimates
    assert abs(lrt - mean_field) < 4 * (var_lrt + var_mf).sqrt()  # measured: 0.8 sd apart
