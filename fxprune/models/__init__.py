"""Model zoo (CIFAR ResNets, CIFAR VGGs, UFLD lane detector) and model-spec loading."""

from fxprune.models.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_state_dict_checked,
    read_checkpoint,
)
from fxprune.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    ShortcutA,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet44,
    cifar_resnet56,
    cifar_resnet110,
    load_cifar_checkpoint,
)
from fxprune.models.lane import ConvBNReLU, LaneResNetBackbone, ParsingNet, lane_resnet18
from fxprune.models.registry import create_model, default_input_shape, list_models, register_model
from fxprune.models.spec import load_model
from fxprune.models.vgg import VGG, cifar_vgg16, cifar_vgg19

__all__ = [
    "VGG",
    "BasicBlock",
    "CheckpointError",
    "CifarResNet",
    "ConvBNReLU",
    "LaneResNetBackbone",
    "ParsingNet",
    "ShortcutA",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_vgg16",
    "cifar_vgg19",
    "create_model",
    "default_input_shape",
    "extract_state_dict",
    "lane_resnet18",
    "list_models",
    "load_cifar_checkpoint",
    "load_model",
    "load_state_dict_checked",
    "read_checkpoint",
    "register_model",
]
