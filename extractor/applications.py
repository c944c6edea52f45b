"""The Keras applications `embed --backbone NAME` is to offer beside InceptionV3 (issue 19;
not wired to the CLI yet): for each, the keras.applications module and constructor, how
its pixels are preprocessed (preprocess.PREPROCESSING) and the image size it was trained
at. Names are the snake_case Keras uses for its modules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Application:
    name: str  # what --backbone takes
    module: str  # keras.applications.<module>, which holds its preprocess_input
    constructor: str  # keras.applications.<constructor>
    preprocessing: str  # inception | caffe | torch | inside
    size: int  # the image size it was trained at: --image-size's default


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
