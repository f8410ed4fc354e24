"""Data loading: CIFAR-10 from the shared data folder and accuracy evaluation."""

from fxprune.data.cifar import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar10_path,
    evaluate_accuracy,
    load_cifar10,
    normalize_images,
    shared_data_dir,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar10_path",
    "evaluate_accuracy",
    "load_cifar10",
    "normalize_images",
    "shared_data_dir",
]
