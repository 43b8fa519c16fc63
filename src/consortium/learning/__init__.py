"""Learning layer: datasets, partitioners, models, the PyTorch adapter, local training, strategies.

Everything here is deterministic for a seed and never touches the network. Higher layers (node,
protocol) move weights around as named float32 NumPy tensors (`Weights`) or one flat vector.
"""

from consortium.learning.adapter import Weights, flatten, get_weights, set_weights, unflatten
from consortium.learning.central import train_centralized
from consortium.learning.datasets import DATASETS, Dataset, load_dataset
from consortium.learning.models import MODELS, build_model
from consortium.learning.partition import label_skew, partition_dirichlet, partition_iid
from consortium.learning.simulate import simulate_fedavg
from consortium.learning.strategy import (
    FedAvg,
    FedProx,
    Strategy,
    apply_delta_sum,
    get_strategy,
    register_strategy,
    weighted_delta,
)
from consortium.learning.train import TrainConfig, TrainResult, evaluate, train_local

__all__ = [
    "DATASETS",
    "MODELS",
    "Dataset",
    "FedAvg",
    "FedProx",
    "Strategy",
    "TrainConfig",
    "TrainResult",
    "Weights",
    "apply_delta_sum",
    "build_model",
    "evaluate",
    "flatten",
    "get_strategy",
    "get_weights",
    "label_skew",
    "load_dataset",
    "partition_dirichlet",
    "partition_iid",
    "register_strategy",
    "set_weights",
    "simulate_fedavg",
    "train_centralized",
    "train_local",
    "unflatten",
    "weighted_delta",
]
