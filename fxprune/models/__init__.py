"""Model zoo (CIFAR ResNets, CIFAR VGGs, UFLD lane detector and its TuSimple data, loss and metric)."""

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
from fxprune.models.lane import (
    ConvBNReLU,
    LaneResNetBackbone,
    ParsingNet,
    lane_resnet18,
    lane_resnet18_narrow,
)
from fxprune.models.lane_loss import shape_loss, similarity_loss, softmax_focal_loss, ufld_loss
from fxprune.models.lane_metric import LaneScores, decode_ufld, frame_scores, tusimple_scores
from fxprune.models.lane_render import LaneRenderer, frame_from_instance_mask, overlay_lanes
from fxprune.models.registry import create_model, default_input_shape, list_models, register_model
from fxprune.models.spec import load_model
from fxprune.models.tusimple import (
    TUSIMPLE_ROW_ANCHORS,
    LaneFrame,
    TusimpleLaneDataset,
    flip_frame,
    lane_slots,
    read_tusimple_labels,
    ufld_targets,
)
from fxprune.models.vgg import VGG, cifar_vgg16, cifar_vgg19

__all__ = [
    "TUSIMPLE_ROW_ANCHORS",
    "VGG",
    "BasicBlock",
    "CheckpointError",
    "CifarResNet",
    "ConvBNReLU",
    "LaneFrame",
    "LaneRenderer",
    "LaneResNetBackbone",
    "LaneScores",
    "ParsingNet",
    "ShortcutA",
    "TusimpleLaneDataset",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_vgg16",
    "cifar_vgg19",
    "create_model",
    "decode_ufld",
    "default_input_shape",
    "extract_state_dict",
    "flip_frame",
    "frame_from_instance_mask",
    "frame_scores",
    "lane_resnet18",
    "lane_resnet18_narrow",
    "lane_slots",
    "list_models",
    "load_cifar_checkpoint",
    "load_model",
    "load_state_dict_checked",
    "overlay_lanes",
    "read_checkpoint",
    "read_tusimple_labels",
    "register_model",
    "shape_loss",
    "similarity_loss",
    "softmax_focal_loss",
    "tusimple_scores",
    "ufld_loss",
    "ufld_targets",
]
