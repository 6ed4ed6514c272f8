"""Weights from other frameworks: torchvision (and, later, timm) state dicts into resflax
variables and back. Reading `.pth` needs torch (imported only then); `.safetensors` does not."""

from resflax.convert.io import read_state_dict
from resflax.convert.torchvision import export_torchvision, import_torchvision, torchvision_key

__all__ = ["export_torchvision", "import_torchvision", "read_state_dict", "torchvision_key"]
