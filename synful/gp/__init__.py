"""gunpowder nodes for synaptic partners: partner graphs, training targets, Keras training.

Every node is one class in gunpowder's style (composition with ``+``, contract in its docstring).
"""

from .keras_train import IterationSnapshot, KerasTrain, Trainer, from_network, to_network
from .partners import PartnerSource
from .precache import SeededPreCache, SeededReject, batch_seed, seeded_request
from .targets import AddPartnerVectorMap, AddSynapseIndicator

__all__ = ["PartnerSource", "AddSynapseIndicator", "AddPartnerVectorMap", "KerasTrain", "IterationSnapshot",
           "Trainer", "to_network", "from_network", "SeededPreCache", "SeededReject", "batch_seed", "seeded_request"]
