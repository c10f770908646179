"""Model templates. A template is an ordinary nn.Module; the stack holds its parameters.

Inputs arrive flattened ([batch, features]); image models reshape to `image_shape` themselves.
"""
from __future__ import annotations

from torch import nn


class LogisticRegression(nn.Module):
    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, x):
        return self.linear(x)


class MLP(nn.Module):
    def __init__(self, n_features: int, n_classes: int, hidden: tuple[int, ...] = (32,)):
        super().__init__()
        widths = [n_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers with 2x2 pooling, then a linear classifier (for 8x8 digits and up)."""

    def __init__(self, image_shape: tuple[int, ...], n_classes: int, channels: tuple[int, int] = (8, 16)):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(channels[1] * (h // 4) * (w // 4), n_classes)

    def forward(self, x):
        x = self.features(x.view(-1, *self.image_shape))
        return self.head(x.flatten(1))


class LeNet(nn.Module):
    """LeNet as in Caffe's MNIST example: conv 20@5x5, pool, conv 50@5x5, pool, FC 500, FC 10."""

    def __init__(self, image_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(c, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2))
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        self.head = nn.Sequential(nn.Linear(50 * fh * fw, 500), nn.ReLU(), nn.Linear(500, n_classes))

    def forward(self, x):
        return self.head(self.features(x.view(-1, *self.image_shape)).flatten(1))
