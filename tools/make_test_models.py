"""Regenerate the PyTorch-exported source models of the golden-graph tests (tests/data/).

    python tools/make_test_models.py

Tiny, seeded networks (12x12 single-channel input) exported by PyTorch's legacy
TorchScript exporter and by its dynamo exporter. The files are committed so that the
golden tests do not depend on the installed exporter; rerun this only on purpose.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as Fn

OUT = Path(__file__).resolve().parent.parent / "tests" / "data"


class Clamp(nn.Module):
    """Clipped ReLU with a trainable threshold, written in one of two idioms."""

    def __init__(self, mu=2.0, idiom="clip"):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(float(mu)))
        self.idiom = idiom

    def forward(self, x):
        if self.idiom == "clip":
            return torch.clamp(x, min=torch.zeros_like(self.mu), max=self.mu)
        if self.idiom == "relu_min":
            return torch.minimum(Fn.relu(x), self.mu)
        return Fn.relu(x)


class TinyVGG(nn.Module):
    def __init__(self, idiom="clip"):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.a1 = Clamp(idiom=idiom)
        self.c2 = nn.Conv2d(4, 8, 3, padding=1)
        self.a2 = Clamp(idiom=idiom)
        self.drop = nn.Dropout(0.2)
        self.fc1 = nn.Linear(8 * 6 * 6, 16)
        self.a3 = Clamp(idiom=idiom)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.a1(self.bn(self.c1(x)))
        x = Fn.max_pool2d(self.a2(self.c2(x)), 2)
        x = self.drop(x)
        x = x.view(x.size(0), -1)
        x = self.drop(self.a3(self.fc1(x)))
        return self.fc2(x)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, idiom):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.a1 = Clamp(idiom=idiom)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.short = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None
        self.a2 = Clamp(idiom=idiom)

    def forward(self, x):
        y = self.c2(self.a1(self.c1(x)))
        return self.a2(y + (self.short(x) if self.short is not None else x))


class TinyResNet(nn.Module):
    def __init__(self, idiom="clip"):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a0 = Clamp(idiom=idiom)
        self.b1 = Block(4, 4, 1, idiom)
        self.b2 = Block(4, 8, 2, idiom)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.b2(self.b1(self.a0(self.stem(x))))
        return self.fc(torch.flatten(Fn.adaptive_avg_pool2d(x, 1), 1))


CASES = {
    # name: (model class, idiom, exporter, opset)
    "torch_legacy_vgg_clip_op11": (TinyVGG, "clip", "legacy", 11),
    "torch_legacy_vgg_relu_op13": (TinyVGG, "relu", "legacy", 13),
    "torch_legacy_resnet_clip_op13": (TinyResNet, "clip", "legacy", 13),
    "torch_legacy_resnet_relumin_op17": (TinyResNet, "relu_min", "legacy", 17),
    "torch_dynamo_vgg_clip_op18": (TinyVGG, "clip", "dynamo", 18),
    "torch_dynamo_resnet_clip_op18": (TinyResNet, "clip", "dynamo", 18),
}


def build(cls, idiom, seed=0):
    torch.manual_seed(seed)
    m = cls(idiom)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.8, 1.2)
                mod.weight.uniform_(0.8, 1.2)
    return m.eval()


def export(model, path: Path, exporter: str, opset: int) -> None:
    import onnx

    x = torch.rand(2, 1, 12, 12)
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "m.onnx")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), f, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                              opset_version=opset, dynamo=False)
        else:
            torch.onnx.export(model, (x,), f, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("N", min=1, max=4096)},),
                              opset_version=opset, dynamo=True, external_data=False)
        m = onnx.load(f)
    onnx.checker.check_model(m)
    path.write_bytes(m.SerializeToString())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (cls, idiom, exporter, opset) in CASES.items():
        export(build(cls, idiom), out / f"{name}.onnx", exporter, opset)
        print(f"wrote {out / name}.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
