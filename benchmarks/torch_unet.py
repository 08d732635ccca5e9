"""PyTorch peer of ``unet_jax.model.UNet``: the same architecture, for benchmarks only.

Unpadded (VALID) 3x3 convolutions each followed by ReLU, 2x2 max-pooling, 2x2
stride-2 transposed convolutions that halve the channels, centre-crop + concat
of the encoder map, and a final 1x1 convolution (Ronneberger et al. 2015,
Fig. 1). 31,030,658 parameters for 1 input channel, K=2 and 64 features.
Dropout sits where the JAX model has it (deepest encoder level and bottleneck).

Tensors are NCHW, as PyTorch's CPU kernels prefer. Not imported by the library.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
  """Centre-crops ``x`` ``[N, C, H, W]`` to ``[N, C, height, width]``."""
  top = (x.shape[2] - height) // 2
  left = (x.shape[3] - width) // 2
  return x[:, :, top:top + height, left:left + width]


class DoubleConv(nn.Sequential):
  """Two 3x3 conv + ReLU layers: ``[N, C_in, H, W] -> [N, C_out, H-4, W-4]`` (VALID)
  or ``[N, C_out, H, W]`` (``padding=1``, SAME)."""

  def __init__(self, c_in: int, c_out: int, padding: int = 0):
    super().__init__(nn.Conv2d(c_in, c_out, 3, padding=padding), nn.ReLU(inplace=True),
                     nn.Conv2d(c_out, c_out, 3, padding=padding), nn.ReLU(inplace=True))


class TorchUNet(nn.Module):
  """The paper's U-Net in PyTorch (NCHW).

  Args:
    in_channels: C, input channels.
    num_classes: K, output channels.
    features: channels of the first level, doubled per level.
    depth: number of poolings.
    dropout_rate: dropout at the end of the contracting path.
    padding: "valid" (the paper) or "same" (zero-padded 3x3 convs, as
      ``UNet(padding="same")``).
  """

  def __init__(self, in_channels: int = 1, num_classes: int = 2, features: int = 64,
               depth: int = 4, dropout_rate: float = 0.5, padding: str = "valid"):
    super().__init__()
    self.depth = depth
    chans = [features * 2**i for i in range(depth + 1)]
    pad = {"valid": 0, "same": 1}[padding]
    self.down = nn.ModuleList(
        DoubleConv(in_channels if i == 0 else chans[i - 1], chans[i], pad) for i in range(depth))
    self.bottleneck = DoubleConv(chans[depth - 1], chans[depth], pad)
    self.upconv = nn.ModuleList(
        nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth))
    self.up = nn.ModuleList(DoubleConv(2 * chans[i], chans[i], pad) for i in range(depth))
    self.classifier = nn.Conv2d(chans[0], num_classes, 1)
    self.dropout = nn.Dropout(dropout_rate)
    for m in self.modules():  # He normal, as the JAX model (paper Sec. 3).
      if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` -> logits ``[N, K, H', W']``."""
    skips = []
    for level in range(self.depth):
      x = self.down[level](x)
      if level == self.depth - 1:
        x = self.dropout(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    x = self.dropout(self.bottleneck(x))
    for level in reversed(range(self.depth)):
      x = self.upconv[level](x)
      x = torch.cat([_crop(skips[level], x.shape[2], x.shape[3]), x], dim=1)
      x = self.up[level](x)
    return self.classifier(x)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
  """Mean over pixels of ``w * -log softmax(logits)[label]`` (as ``unet_jax.losses``).

  Args:
    logits: ``[N, K, H, W]``.
    labels: ``[N, H, W]`` int64 in ``[0, K)``.
    weights: ``[N, H, W]`` float.
  Returns:
    scalar loss.
  """
  nll = F.cross_entropy(logits.float(), labels, reduction="none")
  return (weights * nll).sum() / labels.numel()


def num_params(model: nn.Module) -> int:
  """Number of trainable parameters."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)
