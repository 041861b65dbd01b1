"""Multi-instance learning: bags as padded tensors, MeanMax pooling, bag networks, bag data.

A bag network is a :class:`MILNet`; wrapped in a :class:`~pyro_sparse_bnn.SparseBNN` it is fitted,
pruned and converted like every other network.

>>> import pyro_sparse_bnn as psb
>>> X, y = psb.mil.mnist_bags("train", n_bags=30)
>>> bnn = psb.SparseBNN(psb.mil.musk_net(in_features=64), psb.priors.ARD(),
...                     psb.likelihoods.Categorical())
>>> bnn.weight_sites
['instance.0.weight', 'bag.0.weight', 'bag.2.weight']
"""

from .bags import POOLINGS, BagPooling, MILNet, pad_bags
from .data import MNIST_BAG_SOURCES, load_musk, mnist_bags, musk_net

__all__ = [
    "MNIST_BAG_SOURCES",
    "POOLINGS",
    "BagPooling",
    "MILNet",
    "load_musk",
    "mnist_bags",
    "musk_net",
    "pad_bags",
]
