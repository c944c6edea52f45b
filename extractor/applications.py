"""The Keras applications `embed --backbone NAME` offers: for each, the keras.applications
module and constructor, how its pixels are preprocessed (preprocess.PREPROCESSING), the
image size it was trained at, and what `headstart backbones` shows. Names are the
snake_case Keras uses for its modules. Imports nothing heavy: the CLI checks names with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SettingError


@dataclass(frozen=True)
class Application:
    name: str  # what --backbone takes
    module: str  # keras.applications.<module>, which holds its preprocess_input
    constructor: str  # keras.applications.<constructor>
    preprocessing: str  # inception | caffe | torch | inside
    size: int  # the image size it was trained at: --image-size's default

    @property
    def dim(self) -> int:
        return MEASURED[self.name][0]

    @property
    def min_size(self) -> int:
        """The smallest --image-size it takes (its own size where that is fixed)."""
        return self.size if self.fixed_size else MEASURED[self.name][1]

    @property
    def params(self) -> int:
        """Parameters without the top (the classifier)."""
        return MEASURED[self.name][2]

    @property
    def export_peak_gb(self) -> float | None:
        """Memory its export took (EXPORT_MEASURED); None: more than EXPORT_MACHINE_GB."""
        measured = EXPORT_MEASURED[self.name]
        return measured[0] if measured else None

    @property
    def export_seconds(self) -> int | None:
        """Seconds its export took on 2 cores (EXPORT_MEASURED); None: it did not fit."""
        measured = EXPORT_MEASURED[self.name]
        return measured[1] if measured else None

    @property
    def top1(self) -> float | None:
        """ImageNet top-1 accuracy, %, as its documentation gives it."""
        return TOP1.get(self.name)

    @property
    def fixed_size(self) -> bool:
        """Whether its weights need a static input: exported at `size`, and only that."""
        return self.module == "nasnet"


def _family(module: str, preprocessing: str, size: int, *models: tuple[str, str]):
    return [Application(name, module, made_by, preprocessing, size) for name, made_by in models]


CONVNEXT = [(f"convnext_{size.lower()}", f"ConvNeXt{size}")
            for size in ("Tiny", "Small", "Base", "Large", "XLarge")]  # fmt: skip
EFFICIENTNET = [(f"efficientnet_b{i}", f"EfficientNetB{i}", size)
                for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))]  # fmt: skip
EFFICIENTNET_V2 = [(f"efficientnet_v2_{v.lower()}", f"EfficientNetV2{v}", size)
                   for v, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384),
                                   ("M", 480), ("L", 480))]  # fmt: skip

APPLICATIONS = {
    application.name: application
    for application in [
        *_family("inception_v3", "inception", 299, ("inception_v3", "InceptionV3")),
        *_family("inception_resnet_v2", "inception", 299,
                 ("inception_resnet_v2", "InceptionResNetV2")),
        *_family("xception", "inception", 299, ("xception", "Xception")),
        *_family("resnet", "caffe", 224, ("resnet50", "ResNet50"), ("resnet101", "ResNet101"),
                 ("resnet152", "ResNet152")),
        *_family("resnet_v2", "inception", 224, ("resnet50_v2", "ResNet50V2"),
                 ("resnet101_v2", "ResNet101V2"), ("resnet152_v2", "ResNet152V2")),
        *_family("vgg16", "caffe", 224, ("vgg16", "VGG16")),
        *_family("vgg19", "caffe", 224, ("vgg19", "VGG19")),
        *_family("densenet", "torch", 224, ("densenet121", "DenseNet121"),
                 ("densenet169", "DenseNet169"), ("densenet201", "DenseNet201")),
        *_family("mobilenet", "inception", 224, ("mobilenet", "MobileNet")),
        *_family("mobilenet_v2", "inception", 224, ("mobilenet_v2", "MobileNetV2")),
        *_family("mobilenet_v3", "inside", 224, ("mobilenet_v3_small", "MobileNetV3Small"),
                 ("mobilenet_v3_large", "MobileNetV3Large")),
        *_family("nasnet", "inception", 224, ("nasnet_mobile", "NASNetMobile")),
        *_family("nasnet", "inception", 331, ("nasnet_large", "NASNetLarge")),
        *[Application(name, "efficientnet", made_by, "inside", size)
          for name, made_by, size in EFFICIENTNET],
        *[Application(name, "efficientnet_v2", made_by, "inside", size)
          for name, made_by, size in EFFICIENTNET_V2],
        *_family("convnext", "inside", 224, *CONVNEXT),
    ]
}  # fmt: skip


def application(name: str) -> Application:
    """The application `--backbone name` names; a SettingError listing them otherwise, or
    saying why it is not supported."""
    if name in UNSUPPORTED:
        raise SettingError(f"--backbone {name} is not supported: {UNSUPPORTED[name]}")
    if name in APPLICATIONS:
        return APPLICATIONS[name]
    raise SettingError(
        f"unknown backbone {name!r}; choose one of {', '.join(APPLICATIONS)} (`headstart "
        "backbones` shows them), an .onnx file, or a train-cnn model folder"
    )


# Listed, and refused with the reason: what bench/backbones.py found wrong with their export.
# None at present: every listed network's export matches Keras to 3e-6 or better. (With
# random weights, EfficientNetV2-M and -L are chaotic: Keras' own features move by 0.79 and
# 1.09 on a 1e-6 nudge of the pixels. On the same networks with their residual branches
# tamed, their exports match Keras to 7.5e-7 and 5.0e-7: bench/backbones.py.)
UNSUPPORTED: dict[str, str] = {}

# ImageNet top-1, %: the Keras applications table (keras.io/api/applications); MobileNetV3
# from its Keras docstring; ConvNeXt from its paper (Liu et al. 2022, Table 1, at 224 px;
# Base, Large and XLarge pre-trained on ImageNet-21k, as Keras' weights are).
TOP1 = {
    "xception": 79.0, "vgg16": 71.3, "vgg19": 71.3,
    "resnet50": 74.9, "resnet101": 76.4, "resnet152": 76.6,
    "resnet50_v2": 76.0, "resnet101_v2": 77.2, "resnet152_v2": 78.0,
    "inception_v3": 77.9, "inception_resnet_v2": 80.3,
    "mobilenet": 70.4, "mobilenet_v2": 71.3, "mobilenet_v3_small": 68.1, "mobilenet_v3_large": 75.6,
    "densenet121": 75.0, "densenet169": 76.2, "densenet201": 77.3,
    "nasnet_mobile": 74.4, "nasnet_large": 82.5,
    "efficientnet_b0": 77.1, "efficientnet_b1": 79.1, "efficientnet_b2": 80.1,
    "efficientnet_b3": 81.6, "efficientnet_b4": 82.9, "efficientnet_b5": 83.6,
    "efficientnet_b6": 84.0, "efficientnet_b7": 84.3,
    "efficientnet_v2_b0": 78.7, "efficientnet_v2_b1": 79.8, "efficientnet_v2_b2": 80.5,
    "efficientnet_v2_b3": 82.0, "efficientnet_v2_s": 83.9, "efficientnet_v2_m": 85.3,
    "efficientnet_v2_l": 85.7,
    "convnext_tiny": 82.1, "convnext_small": 83.1, "convnext_base": 85.8, "convnext_large": 86.6,
    "convnext_xlarge": 87.0,
}  # fmt: skip


# name: (feature dim, smallest image size, parameters without the top). Dims and parameters
# are measured (each built without weights); the smallest size is the one Keras documents,
# which bench/backbones.py checks the export runs at (and the features against Keras').
MEASURED = {
    "inception_v3": (2048, 75, 21_802_784),
    "inception_resnet_v2": (1536, 75, 54_336_736),
    "xception": (2048, 71, 20_861_480),
    "resnet50": (2048, 32, 23_587_712),
    "resnet101": (2048, 32, 42_658_176),
    "resnet152": (2048, 32, 58_370_944),
    "resnet50_v2": (2048, 32, 23_564_800),
    "resnet101_v2": (2048, 32, 42_626_560),
    "resnet152_v2": (2048, 32, 58_331_648),
    "vgg16": (512, 32, 14_714_688),
    "vgg19": (512, 32, 20_024_384),
    "densenet121": (1024, 32, 7_037_504),
    "densenet169": (1664, 32, 12_642_880),
    "densenet201": (1920, 32, 18_321_984),
    "mobilenet": (1024, 32, 3_228_864),
    "mobilenet_v2": (1280, 32, 2_257_984),
    "mobilenet_v3_small": (576, 32, 939_120),
    "mobilenet_v3_large": (960, 32, 2_996_352),
    "nasnet_mobile": (1056, 32, 4_269_716),
    "nasnet_large": (4032, 32, 84_916_818),
    "efficientnet_b0": (1280, 32, 4_049_571),
    "efficientnet_b1": (1280, 32, 6_575_239),
    "efficientnet_b2": (1408, 32, 7_768_569),
    "efficientnet_b3": (1536, 32, 10_783_535),
    "efficientnet_b4": (1792, 32, 17_673_823),
    "efficientnet_b5": (2048, 32, 28_513_527),
    "efficientnet_b6": (2304, 32, 40_960_143),
    "efficientnet_b7": (2560, 32, 64_097_687),
    "efficientnet_v2_b0": (1280, 32, 5_919_312),
    "efficientnet_v2_b1": (1280, 32, 6_931_124),
    "efficientnet_v2_b2": (1408, 32, 8_769_374),
    "efficientnet_v2_b3": (1536, 32, 12_930_622),
    "efficientnet_v2_s": (1280, 32, 20_331_360),
    "efficientnet_v2_m": (1280, 32, 53_150_388),
    "efficientnet_v2_l": (1280, 32, 117_746_848),
    "convnext_tiny": (768, 32, 27_820_128),
    "convnext_small": (768, 32, 49_454_688),
    "convnext_base": (1024, 32, 87_566_464),
    "convnext_large": (1536, 32, 196_230_336),
    "convnext_xlarge": (2048, 32, 348_147_968),
}  # fmt: skip

# Each network's one-time export to ONNX through TensorFlow and tf2onnx: (peak memory in GiB,
# summed over the process tree; seconds), in a fresh process with random weights
# (TensorFlow's import included), by `python bench/footprint.py --only export --all
# --no-baseline` on this project's 2-core, 24 GB machine; None: killed there for want of
# memory (ConvNeXt XLarge, at 23 GB).
EXPORT_MEASURED: dict[str, tuple[float, int] | None] = {
    "inception_v3": (2.6, 22), "inception_resnet_v2": (5.3, 53), "xception": (2.5, 17),
    "resnet50": (2.7, 26), "resnet101": (4.3, 46), "resnet152": (5.0, 59),
    "resnet50_v2": (2.7, 24), "resnet101_v2": (4.3, 36), "resnet152_v2": (5.0, 50),
    "vgg16": (1.9, 16), "vgg19": (2.4, 20), "densenet121": (1.4, 24), "densenet169": (1.8, 32),
    "densenet201": (2.4, 38), "mobilenet": (1.0, 12), "mobilenet_v2": (1.0, 14),
    "mobilenet_v3_small": (1.0, 19), "mobilenet_v3_large": (1.2, 21),
    "nasnet_mobile": (1.3, 41), "nasnet_large": (7.8, 128), "efficientnet_b0": (1.1, 24),
    "efficientnet_b1": (1.4, 24), "efficientnet_b2": (1.5, 25), "efficientnet_b3": (1.8, 32),
    "efficientnet_b4": (2.3, 37), "efficientnet_b5": (2.9, 46), "efficientnet_b6": (4.3, 58),
    "efficientnet_b7": (6.2, 82), "efficientnet_v2_b0": (1.3, 22),
    "efficientnet_v2_b1": (1.4, 24), "efficientnet_v2_b2": (1.6, 24),
    "efficientnet_v2_b3": (1.9, 31), "efficientnet_v2_s": (2.3, 38),
    "efficientnet_v2_m": (5.3, 66), "efficientnet_v2_l": (10.6, 142),
    "convnext_tiny": (2.9, 34), "convnext_small": (5.1, 64), "convnext_base": (8.4, 104),
    "convnext_large": (17.5, 218), "convnext_xlarge": None,
}  # fmt: skip
EXPORT_MACHINE_GB = 23  # what that machine had for it
