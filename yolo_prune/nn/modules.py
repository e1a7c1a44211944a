"""Extra layers our YOLOv7 configs use that Ultralytics does not ship (today: SPPCSPC)."""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv


class SPPCSPC(nn.Module):
    """YOLOv7's spatial pyramid pooling in a CSP block (same sub-module names as the official one, for weight import).

    Main branch: 1x1 -> 3x3 -> 1x1, max-pools at three scales concatenated with their input, 1x1 -> 3x3. Beside it a
    1x1 shortcut; both are concatenated and mixed by a final 1x1.

    Args:
        c1: input channels.
        c2: output channels.
        e: hidden channels as a fraction of 2 * c2 (official default 0.5: hidden width equals c2).
        k: max-pool kernel sizes (stride 1, same padding).
    """

    def __init__(self, c1: int, c2: int, e: float = 0.5, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))
