"""Over-parameterized fine-tuning of pruned models: expand, distil (SP-KD), merge back."""

from .expand import ExpandedConv2d, ExpandedLinear, expand, merge
from .finetune import OverparamFinetune
from .similarity import SimilarityLoss, default_layers, similarity_gram, similarity_loss

__all__ = [
    "ExpandedConv2d",
    "ExpandedLinear",
    "OverparamFinetune",
    "SimilarityLoss",
    "default_layers",
    "expand",
    "merge",
    "similarity_gram",
    "similarity_loss",
]
