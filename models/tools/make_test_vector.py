#!/usr/bin/env python3
"""Independent float64 NumPy implementation of YOLO11-pose, used to make the reference test vector.

It unpickles the Ultralytics checkpoint WITHOUT torch (a custom Unpickler maps the storages and
torch._utils._rebuild_tensor_v2 to NumPy arrays and stubs every ultralytics / torch.nn class),
walks the modules like state_dict(), and runs the network with un-folded BatchNorm, -inf padded
max-pooling and explicit im2col convolutions. It writes, under models/tests/data/:

  pose_vector_input.bin     uint8, CHW, 3 x H x W (the network input is value / 255)
  pose_vector_expected.bin  float32 little-endian, (56, A): cx, cy, w, h, score, 17 x (x, y, conf)
  pose_vector.json          shapes, the checkpoint sha256 and how the input was made

Usage: python3 models/tools/make_test_vector.py /path/to/yolo11n-pose.pt [--size 160x96]
Needs only numpy (`pip install numpy`).
"""
import argparse
import collections
import hashlib
import json
import os
import pickle
import sys
import zipfile

import numpy as np

EPS = 1e-3
DTYPES = {
    "HalfStorage": np.float16,
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "BFloat16Storage": None,
}


class Stub:
    """Stands in for any ultralytics / torch.nn class: keeps the pickled __dict__."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


class StorageType:
    def __init__(self, name):
        self.name = name


def rebuild_tensor(storage, offset, size, stride, *rest):
    arr = storage
    item = arr.itemsize
    return np.lib.stride_tricks.as_strided(
        arr[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
    ).copy()


def rebuild_parameter(tensor, requires_grad, hooks, *rest):
    return tensor


def load_checkpoint(path):
    z = zipfile.ZipFile(path)
    pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
    prefix = pkl[: -len("data.pkl")]
    cache = {}

    class U(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module in ("__builtin__", "builtins"):
                import builtins

                if name == "getattr":  # e.g. getattr(Detect, "forward") for stubbed classes
                    return lambda obj, attr, *default: getattr(obj, attr, None)

                return getattr(builtins, name)
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild_tensor
            if module == "torch._utils" and name == "_rebuild_parameter":
                return rebuild_parameter
            if module == "torch" and name.endswith("Storage"):
                return StorageType(name)
            if module == "torch" and name == "Size":
                return tuple
            return type(name, (Stub,), {})

        def persistent_load(self, pid):
            kind, stype, key, _loc, numel = pid
            assert kind == "storage"
            if key not in cache:
                dt = DTYPES[stype.name]
                cache[key] = np.frombuffer(z.read(f"{prefix}data/{key}"), dtype=dt)[:numel]
            return cache[key]

    ckpt = U(z.open(pkl)).load()
    model = ckpt.get("model") or ckpt.get("ema")
    sd = collections.OrderedDict()

    def walk(m, p):
        d = m.__dict__
        for k, v in list(d.get("_parameters", {}).items()) + list(d.get("_buffers", {}).items()):
            if v is not None and not k.endswith("num_batches_tracked"):
                sd[p + k] = v
        for k, v in d.get("_modules", {}).items():
            if v is not None:
                walk(v, p + k + ".")

    walk(model, "")
    return sd


class Net:
    def __init__(self, sd):
        self.sd = {k: v.astype(np.float64) for k, v in sd.items()}

    # --- primitives -----------------------------------------------------------------------
    @staticmethod
    def conv2d(x, w, stride=1, groups=1):
        c, h, wd = x.shape
        o, cg, k, _ = w.shape
        p = k // 2
        xp = np.pad(x, ((0, 0), (p, p), (p, p)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
        if groups == 1:
            return np.einsum("chwij,ocij->ohw", win, w, optimize=True)
        assert groups == c == o and cg == 1, "only depthwise grouped convs occur"
        return np.einsum("chwij,cij->chw", win, w[:, 0], optimize=True)

    @staticmethod
    def silu(x):
        return x / (1.0 + np.exp(-x))

    def conv(self, p, stride=1, act=True):
        """Ultralytics Conv: conv (no bias) + BatchNorm (eps 1e-3) + SiLU."""
        sd = self.sd
        w = sd[p + ".conv.weight"]
        groups = w.shape[0] if w.shape[1] == 1 and w.shape[0] > 1 else 1

        def f(x):
            y = self.conv2d(x, w, stride, groups)
            g, b = sd[p + ".bn.weight"], sd[p + ".bn.bias"]
            m, v = sd[p + ".bn.running_mean"], sd[p + ".bn.running_var"]
            y = (y - m[:, None, None]) / np.sqrt(v[:, None, None] + EPS) * g[:, None, None] + b[:, None, None]
            return self.silu(y) if act else y

        return f

    def plain(self, p):
        w, b = self.sd[p + ".weight"], self.sd[p + ".bias"]
        return lambda x: self.conv2d(x, w) + b[:, None, None]

    def count(self, prefix, suffix):
        n = 0
        while f"{prefix}{n}{suffix}" in self.sd:
            n += 1
        return n

    # --- blocks ---------------------------------------------------------------------------
    def bottleneck(self, p, x):
        y = self.conv(p + ".cv2")(self.conv(p + ".cv1")(x))
        return x + y if x.shape == y.shape else y

    def c3k(self, p, x):
        a = self.conv(p + ".cv1")(x)
        for j in range(self.count(p + ".m.", ".cv1.conv.weight")):
            a = self.bottleneck(f"{p}.m.{j}", a)
        b = self.conv(p + ".cv2")(x)
        return self.conv(p + ".cv3")(np.concatenate([a, b], 0))

    def c3k2(self, p, x):
        y = self.conv(p + ".cv1")(x)
        c = y.shape[0] // 2
        ys = [y[:c], y[c:]]
        for j in range(self.count(p + ".m.", ".cv1.conv.weight")):
            q = f"{p}.m.{j}"
            ys.append(self.c3k(q, ys[-1]) if q + ".cv3.conv.weight" in self.sd else self.bottleneck(q, ys[-1]))
        return self.conv(p + ".cv2")(np.concatenate(ys, 0))

    @staticmethod
    def maxpool5(x):
        xp = np.pad(x, ((0, 0), (2, 2), (2, 2)), constant_values=-np.inf)
        return np.lib.stride_tricks.sliding_window_view(xp, (5, 5), axis=(1, 2)).max(axis=(3, 4))

    def sppf(self, p, x):
        x = self.conv(p + ".cv1")(x)
        y1 = self.maxpool5(x)
        y2 = self.maxpool5(y1)
        y3 = self.maxpool5(y2)
        return self.conv(p + ".cv2")(np.concatenate([x, y1, y2, y3], 0))

    def attention(self, p, x):
        c, h, w = x.shape
        n = h * w
        heads = max(c // 64, 1)
        head_dim = c // heads
        key_dim = head_dim // 2
        qkv = self.conv(p + ".qkv", act=False)(x).reshape(heads, 2 * key_dim + head_dim, n)
        q, k, v = qkv[:, :key_dim], qkv[:, key_dim : 2 * key_dim], qkv[:, 2 * key_dim :]
        att = np.einsum("hdn,hdm->hnm", q, k) * key_dim**-0.5
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        out = np.einsum("hdm,hnm->hdn", v, att).reshape(c, h, w)
        out = out + self.conv(p + ".pe", act=False)(v.reshape(c, h, w))
        return self.conv(p + ".proj", act=False)(out)

    def c2psa(self, p, x):
        y = self.conv(p + ".cv1")(x)
        c = y.shape[0] // 2
        a, b = y[:c], y[c:]
        for j in range(self.count(p + ".m.", ".attn.qkv.conv.weight")):
            q = f"{p}.m.{j}"
            b = b + self.attention(q + ".attn", b)
            b = b + self.conv(q + ".ffn.1", act=False)(self.conv(q + ".ffn.0")(b))
        return self.conv(p + ".cv2")(np.concatenate([a, b], 0))

    @staticmethod
    def up(x):
        return x.repeat(2, axis=1).repeat(2, axis=2)

    # --- whole network --------------------------------------------------------------------
    def forward(self, x):
        L = {}
        x = self.conv("model.0", 2)(x)
        x = self.conv("model.1", 2)(x)
        x = self.c3k2("model.2", x)
        x = self.conv("model.3", 2)(x)
        L[4] = x = self.c3k2("model.4", x)
        x = self.conv("model.5", 2)(x)
        L[6] = x = self.c3k2("model.6", x)
        x = self.conv("model.7", 2)(x)
        x = self.c3k2("model.8", x)
        x = self.sppf("model.9", x)
        L[10] = x = self.c2psa("model.10", x)
        L[13] = x = self.c3k2("model.13", np.concatenate([self.up(x), L[6]], 0))
        L[16] = x = self.c3k2("model.16", np.concatenate([self.up(x), L[4]], 0))
        L[19] = x = self.c3k2("model.19", np.concatenate([self.conv("model.17", 2)(x), L[13]], 0))
        L[22] = x = self.c3k2("model.22", np.concatenate([self.conv("model.20", 2)(x), L[10]], 0))
        return self.head([L[16], L[19], L[22]])

    def head(self, feats):
        cols = []
        for i, f in enumerate(feats):
            p = "model.23"
            s = 8 * 2**i
            box = self.plain(f"{p}.cv2.{i}.2")(self.conv(f"{p}.cv2.{i}.1")(self.conv(f"{p}.cv2.{i}.0")(f)))
            c = self.conv(f"{p}.cv3.{i}.0.1")(self.conv(f"{p}.cv3.{i}.0.0")(f))
            c = self.conv(f"{p}.cv3.{i}.1.1")(self.conv(f"{p}.cv3.{i}.1.0")(c))
            cls = self.plain(f"{p}.cv3.{i}.2")(c)
            kpt = self.plain(f"{p}.cv4.{i}.2")(self.conv(f"{p}.cv4.{i}.1")(self.conv(f"{p}.cv4.{i}.0")(f)))
            _, h, w = f.shape
            ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
            ax, ay = xs.reshape(-1), ys.reshape(-1)
            bins = box.reshape(4, 16, h * w)
            e = np.exp(bins - bins.max(1, keepdims=True))
            prob = e / e.sum(1, keepdims=True)
            d = (prob * np.arange(16)[None, :, None]).sum(1)  # (4, hw): l, t, r, b
            x1, y1, x2, y2 = ax - d[0], ay - d[1], ax + d[2], ay + d[3]
            out = np.zeros((56, h * w))
            out[0] = (x1 + x2) / 2 * s
            out[1] = (y1 + y2) / 2 * s
            out[2] = (x2 - x1) * s
            out[3] = (y2 - y1) * s
            out[4] = 1 / (1 + np.exp(-cls.reshape(-1, h * w).max(0)))
            k = kpt.reshape(17, 3, h * w)
            out[5::3] = (k[:, 0] * 2 + (ax - 0.5)) * s
            out[6::3] = (k[:, 1] * 2 + (ay - 0.5)) * s
            out[7::3] = 1 / (1 + np.exp(-k[:, 2]))
            cols.append(out)
        return np.concatenate(cols, 1)


def make_input(h, w):
    """Deterministic image-like pattern: smooth gradients, a bright 'figure' and fine texture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((3, h, w))
    img[0] = 128 + 90 * np.sin(x / 9.0) * np.cos(y / 13.0)
    img[1] = 255 * x / (w - 1) * 0.6 + 40 * np.cos((x + y) / 5.0)
    img[2] = 255 * y / (h - 1) * 0.7 + 30 * np.sin(x * y / 200.0)
    fig = ((x - w * 0.4) / (w * 0.08)) ** 2 + ((y - h * 0.5) / (h * 0.35)) ** 2 < 1
    img[:, fig] = [[230], [190], [160]]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--size", default="160x96", help="WxH, multiples of 32")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    sd = load_checkpoint(a.checkpoint)
    print(f"{len(sd)} tensors", file=sys.stderr)
    inp = make_input(h, w)
    raw = Net(sd).forward(inp.astype(np.float64) / 255.0)
    os.makedirs(a.out, exist_ok=True)
    inp.tofile(os.path.join(a.out, "pose_vector_input.bin"))
    raw.astype("<f4").tofile(os.path.join(a.out, "pose_vector_expected.bin"))
    sha = hashlib.sha256(open(a.checkpoint, "rb").read()).hexdigest()
    meta = {
        "checkpoint_sha256": sha,
        "tensors": len(sd),
        "input": {"file": "pose_vector_input.bin", "dtype": "u8", "layout": "CHW", "shape": [3, h, w], "scale": "1/255"},
        "expected": {"file": "pose_vector_expected.bin", "dtype": "f32le", "shape": [56, raw.shape[1]]},
        "rows": "cx, cy, w, h, score, 17 x (x, y, conf); model-input pixels",
        "generator": "models/tools/make_test_vector.py (float64 NumPy, un-folded BatchNorm)",
        "max_score": float(raw[4].max()),
    }
    with open(os.path.join(a.out, "pose_vector.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
