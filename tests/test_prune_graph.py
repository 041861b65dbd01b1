"""Structured pruning of networks that are not Sequentials (torch-pruning's dependency graph): the
pruned network has exactly the expected widths and reproduces the masked network's outputs
(max abs diff < 1e-5) on a ResNet-style net, a DenseNet-style concatenation, a
depthwise-separable net and a transformer encoder; removals that would change the function are
refused."""

import pytest
import torch
from torch import nn

import pyro_sparse_bnn as psb
from pyro_sparse_bnn.prune import prune
from pyro_sparse_bnn.prune_graph import prune_graph, silence_dead_norms


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    def __init__(self, c: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())  # fmt: skip
        self.blocks = nn.Sequential(ResBlock(c), ResBlock(c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class DenseNet(nn.Module):
    """Two convolutions whose outputs are concatenated (channels 0-5: ``a``, 6-10: ``b``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(11, 3))

    def forward(self, x):
        a = torch.relu(self.a(x))
        return self.head(torch.cat([a, torch.relu(self.b(a))], 1))


def separable() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3),
    )  # fmt: skip


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(7, 16)
        self.layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                                batch_first=True)  # fmt: skip
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)).mean(1))


def randomise_norms(net: nn.Module) -> nn.Module:
    """BatchNorm layers with statistics and affine parameters far from their initial values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.running_mean, m.weight, m.bias):
                    t.copy_(torch.randn(t.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def zero_rows(layer: nn.Module, rows: list[int]) -> None:
    with torch.no_grad():
        layer.weight[rows] = 0.0
        if layer.bias is not None:
            layer.bias[rows] = 0.0


def zero_columns(layer: nn.Module, columns: list[int]) -> None:
    with torch.no_grad():
        layer.weight[:, columns] = 0.0


def check_equal(net: nn.Module, small: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert (small(x) - net(x)).abs().max().item() < 1e-5
    x2 = torch.randn_like(x)  # exact for any input, not only the example
    with torch.no_grad():
        assert (small(x2) - net(x2)).abs().max().item() < 1e-5


def test_resnet_channels_tied_by_residual_additions_go_together():
    torch.manual_seed(0)
    net = randomise_norms(ResNet())
    for layer in (net.stem[0], net.blocks[0].conv2, net.blocks[1].conv2):
        zero_rows(layer, [0, 1])  # stage channels 0 and 1: zero in every addend
    zero_rows(net.blocks[1].conv2, [4])  # channel 4: zero in one addend only (stays)
    zero_rows(net.blocks[0].conv1, [2, 3, 4])  # inner channels of block 0 with no input
    zero_columns(net.blocks[1].conv2, [5])  # inner channel 5 of block 1: read by nothing
    x = torch.randn(4, 1, 8, 8)
    silence_dead_norms(net, x)
    small = prune(net, x)
    assert small.stem[0].out_channels == 6
    assert small.blocks[0].conv1.out_channels == 5 and small.blocks[1].conv1.out_channels == 7
    assert small.blocks[1].conv2.in_channels == 7 and small.head[2].in_features == 6
    check_equal(net, small, x)


def test_silenced_norms_make_input_dead_channels_zero_not_constant():
    """Without silencing, a BatchNorm maps a zero channel to a constant, which a padded
    convolution reads: it stays unless the ReLU makes it zero."""
    net = randomise_norms(ResNet())
    zero_rows(net.blocks[0].conv1, [2, 3])
    x = torch.randn(4, 1, 8, 8)
    norm = net.blocks[0].bn1
    with torch.no_grad():  # zero in, so out come the shifts: relu(0.7) stays, relu(-0.7) goes
        norm.running_mean[2:4] = 0.0
        norm.bias[2:4] = torch.tensor([0.7, -0.7])
    assert prune(net, x).blocks[0].conv1.out_channels == 7
    silence_dead_norms(net, x)
    assert norm.weight[2:4].abs().sum() == 0 and norm.bias[2:4].abs().sum() == 0
    assert norm.weight[4] != 0
    small = prune(net, x)
    assert small.blocks[0].conv1.out_channels == 6
    check_equal(net, small, x)


def test_concatenated_channels_map_back_to_their_producers():
    torch.manual_seed(0)
    net = DenseNet()
    zero_rows(net.a, [1, 2])  # channels 1, 2 of the concatenation: zero
    zero_columns(net.head[2], [8])  # channel 8 = b's channel 2: read by nothing
    x = torch.randn(4, 1, 8, 8)
    small = prune(net, x)
    assert (small.a.out_channels, small.b.in_channels, small.b.out_channels) == (4, 4, 4)
    assert small.head[2].in_features == 8
    check_equal(net, small, x)


def test_depthwise_separable_channels():
    """A depthwise channel goes when it is zero before and after the depthwise convolution, or
    when nothing after it reads it."""
    torch.manual_seed(0)
    net = randomise_norms(separable())
    zero_rows(net[0], [0, 3])
    zero_rows(net[3], [0, 3])
    zero_columns(net[6], [6])
    x = torch.randn(4, 1, 8, 8)
    silence_dead_norms(net, x)
    small = prune(net, x)
    assert (small[0].out_channels, small[3].groups, small[6].in_channels) == (5, 5, 5)
    check_equal(net, small, x)


def test_transformer_encoder_feed_forward_neurons():
    torch.manual_seed(0)
    net = Encoder().eval()
    zero_rows(net.layer.linear1, list(range(10)))
    zero_columns(net.layer.linear2, [20, 21])
    x = torch.randn(4, 6, 7)
    small = prune(net, x)
    assert small.layer.linear1.out_features == 20 and small.layer.linear2.in_features == 20
    assert small.layer.self_attn.embed_dim == 16  # LayerNorm mixes the residual stream: kept
    check_equal(net, small, x)


def test_constant_channels_fold_into_a_linear_reader_not_into_a_padded_convolution():
    """Channels with zero weights and a bias: after ReLU and pooling a Linear layer reads a
    constant, folded into its bias; a padded convolution would see it differently at the
    borders, so there the channel stays."""
    torch.manual_seed(0)
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(4, 2))  # fmt: skip
    padded = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    unpadded = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    x = torch.randn(3, 1, 8, 8)
    widths = []
    for net in (pooled, padded, unpadded):
        with torch.no_grad():
            net[0].weight[1:3] = 0.0
            net[0].bias[1:3] = torch.tensor([0.5, -0.5])  # relu: 0.5 and 0 (zero: removable)
        small = prune_graph(net, x)
        check_equal(net, small, x)
        widths.append(small[0].out_channels)
    assert widths == [2, 3, 2]


def test_a_removal_that_changes_the_function_is_undone():
    """sigmoid(0) = 1/2: a zero channel before a sigmoid is read as a constant, so it stays."""
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sigmoid(), nn.Linear(4, 2)).eval()
    zero_rows(net[0], [1])
    with torch.no_grad():
        net[1].weight[1] = net[1].bias[1] = 0.0
    x = torch.randn(5, 3)
    small = prune_graph(net, x)
    assert small[0].out_features == 4
    check_equal(net, small, x)


def test_the_pruned_sequential_loads_with_torch_alone(tmp_path):
    net = randomise_norms(separable())
    zero_rows(net[0], [0, 3])
    zero_rows(net[3], [0, 3])
    x = torch.randn(2, 1, 8, 8)
    small = prune(silence_dead_norms(net, x), x)
    torch.save(small, tmp_path / "small.pt")
    names = torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "small.pt")
    assert all(n.startswith("torch.") for n in names), names
    loaded = torch.load(tmp_path / "small.pt", weights_only=False)
    check_equal(net, loaded, x)


def test_prune_names_what_it_needs():
    with pytest.raises(ValueError, match="example_input is required"):
        prune(ResNet())
    with pytest.raises(TypeError, match="example_input"):
        prune_graph(ResNet(), [[1.0]])
    with pytest.raises(TypeError, match="net"):
        silence_dead_norms("resnet", torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="inputs='select'"):
        prune(ResNet(), torch.randn(2, 1, 8, 8), inputs="select")


def n_weights(net: nn.Module) -> int:
    return sum(t.numel() for k, t in net.state_dict().items() if k.endswith("weight"))


@pytest.mark.parametrize(("method", "threshold"), [("svi", 10.0), ("ivon", 1.0)])
def test_a_fitted_resnet_prunes_to_its_masked_network(method, threshold):
    """End to end: fit, masks by a threshold that removes whole channels, prune; the smaller net
    computes what the full-size masked network computes."""
    torch.manual_seed(0)
    x = torch.randn(48, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long()
    prior = psb.priors.Horseshoe(groups="out")
    bnn = psb.SparseBNN(ResNet(), prior, psb.likelihoods.Categorical())
    result = psb.fit(bnn, x, y, method=method, epochs=20, seed=0, progress=False)
    full = result.masked_network(threshold=threshold)
    small = result.prune(threshold=threshold)
    check_equal(full, small, x)
    assert n_weights(small) < n_weights(full)
    layers = [m for m in small.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    kept = sum(int((m.weight != 0).sum()) for m in layers)
    assert result.compression(threshold)["n_kept"] == kept  # counts what prune keeps
