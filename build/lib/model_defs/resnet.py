"""ResNet-18/34 (He et al., 2015) with torchvision's module names, so a torchvision `resnet18`
checkpoint loads into it key for key. Written here because torchvision's own package cannot be
imported beside this project's CPU build of torch."""

from torch import Tensor, nn

from model_defs.registry import register_model

_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


@register_model("resnet")
class ResNet(nn.Module):
    """Input (N, 3, H, W) normalised images; output (N, num_classes) logits."""

    def __init__(self, depth: int = 18, num_classes: int = 1000, width: int = 64):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"depth {depth} is not one of {', '.join(map(str, _DEPTHS))}")
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes, layers = width, []
        for index, blocks in enumerate(_DEPTHS[depth]):
            out = width * 2 ** index
            stride = 1 if index == 0 else 2
            layers.append(nn.Sequential(BasicBlock(planes, out, stride),
                                        *[BasicBlock(out, out) for _ in range(blocks - 1)]))
            planes = out
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
