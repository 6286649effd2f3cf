"""The ImageNet weights a backbone starts from: where they must be, and are they intact.

torchvision publishes each backbone's weights under a name that ends in the first hex digits
of the file's sha256 (``alexnet-owt-7be5be79.pth``). Nothing is downloaded here: the file is
read from the local torch cache (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), checked against the hash in its name, and the ``weights``
stage records its name, address and full sha256 so an experiment says exactly which weights it
started from.

torch is imported only when pretrained weights are asked for, so the stage costs nothing with
``model.pretrained: false``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from mrnet.core.errors import UserError, WeightsNotFoundError

# torch.hub's own rule for the hash in a published file name.
HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")

# Each backbone's torchvision constructor and the enum of its published ImageNet weights.
TORCHVISION_NAMES = {
    "alexnet": ("alexnet", "AlexNet_Weights"),
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights"),
    "densenet121": ("densenet121", "DenseNet121_Weights"),
    "densenet169": ("densenet169", "DenseNet169_Weights"),
}
BACKBONES: tuple[str, ...] = tuple(TORCHVISION_NAMES)
# How a random backbone starts: torchvision's default init, or He init.
INITS: tuple[str, ...] = ("default", "kaiming")


class WeightsHashError(UserError):
    """A weights file whose sha256 does not begin with the hash in its name."""


def published(backbone: str) -> tuple[Path, str]:
    """Where the ImageNet weights of ``backbone`` must be in the local torch cache, and
    torchvision's address of them."""
    # torch is imported here, only when weights are wanted.
    import torch
    import torchvision

    _, enum_name = TORCHVISION_NAMES[backbone]
    url = getattr(torchvision.models, enum_name).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def missing_message(path: Path, url: str) -> str:
    """The one line that says which file to place where."""
    return (f"model.pretrained is true but {path} does not exist: download {url} on a machine "
            f"with internet and copy it there (or set model.pretrained: false)")


def expected_prefix(path: str | Path) -> str:
    """The sha256 prefix in a torchvision weights file name.

    Raises:
        WeightsHashError: the name carries no hash.
    """
    found = HASH_IN_NAME.findall(Path(path).name)
    if not found:
        raise WeightsHashError(f"{path}: the file name carries no sha256 prefix "
                               "(torchvision names its weights NAME-HASH.pth)")
    return found[-1]


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path, url: str | None = None) -> str:
    """Check a weights file against the hash in its name; return its full sha256.

    Raises:
        WeightsHashError: the sha256 does not begin with the name's hash (a corrupt,
            truncated or substituted file).
    """
    path = Path(path)
    prefix = expected_prefix(path)
    digest = sha256(path)
    if not digest.startswith(prefix):
        again = f"download {url} again" if url else "download it again"
        raise WeightsHashError(f"{path}: sha256 begins {digest[:len(prefix)]} but its name says "
                               f"{prefix}: the file is corrupt, truncated or not the published "
                               f"one; delete it and {again}")
    return digest


def weights_record(backbone: str, pretrained: bool) -> dict[str, Any]:
    """What the CNNs start from, as the ``weights`` stage records it (no machine paths).

    Raises:
        WeightsNotFoundError: pretrained weights are asked for but the file is not there.
        WeightsHashError: the file fails its hash check.
    """
    if not pretrained:
        return {"backbone": backbone, "pretrained": False,
                "note": "model.pretrained is false: the CNNs start from random weights"}
    path, url = published(backbone)
    if not path.is_file():
        raise WeightsNotFoundError(missing_message(path, url))
    return {"backbone": backbone, "pretrained": True, "file": path.name, "url": url,
            "sha256": verify_file(path, url), "bytes": path.stat().st_size}


def load_pretrained(net: Any, backbone: str) -> None:
    """Load ImageNet weights into the torchvision network ``net`` from the local torch cache;
    never download.

    Raises:
        WeightsNotFoundError: the file is not in the cache; the message says where to put it.
        WeightsHashError: the file's sha256 does not match the hash in its name.
    """
    import torch

    path, url = published(backbone)
    if not path.is_file():
        raise WeightsNotFoundError(missing_message(path, url))
    verify_file(path, url)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
