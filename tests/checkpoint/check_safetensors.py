#!/usr/bin/env python3
"""Reads zeroblocks' safetensors exports back with Python's safetensors and numpy and
compares them with the engine's own state (expected.json, from safetensors_writer):
fp32 parameters and AdamW m, v bit for bit; fp16 equal to numpy's round-to-nearest-even
of the fp32 master; bf16 (numpy has no bf16: safetensors parses the header, the values
are decoded here) equal to the fp32 master's bits rounded to nearest even.

    check_safetensors.py DIR
Prints "check_safetensors: PASS", or "check_safetensors: not checked: ..." when
safetensors or numpy are missing (CTest then reports the test Skipped, with the
reason), or the first difference."""
import json
import struct
import sys

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file
except ImportError as e:  # pragma: no cover
    print(f"check_safetensors: not checked: {e} (pip install safetensors numpy)")
    sys.exit(2)

d = sys.argv[1]
expected = json.load(open(f"{d}/expected.json"))


def fail(msg):
    print(f"check_safetensors: FAIL: {msg}")
    sys.exit(1)


def want(name, k):
    e = expected[name]
    return np.array(e[str(k)], dtype=np.float32).reshape(e["shape"])


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


for path, optimizer in ((f"{d}/model-fp32.safetensors", True), (f"{d}/model-fp32-tool.safetensors", True)):
    got = load_file(path)
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    if meta.get("format") != "zeroblocks" or meta.get("optimizer") != "adamw":
        fail(f"{path}: metadata {meta}")
    for name in expected:
        if not same_bits(got[name], want(name, 0)):
            fail(f"{path}: {name} differs from the engine's fp32 master")
        if optimizer:
            for k in (0, 1):
                if not same_bits(got[f"optimizer.{name}.{k}"], want(name, k + 1)):
                    fail(f"{path}: optimizer.{name}.{k} differs from the engine's state array {k}")
    print(f"{path}: {len(got)} tensors equal the engine's state bit for bit")

got = load_file(f"{d}/model-fp16.safetensors")
for name in expected:
    if not same_bits(got[name], want(name, 0).astype(np.float16)):
        fail(f"fp16: {name} is not the fp32 master rounded to nearest even")
print(f"model-fp16.safetensors: {len(got)} tensors equal numpy's rounding of the master")

path = f"{d}/model-bf16.safetensors"
with safe_open(path, framework="numpy") as f:
    keys = set(f.keys())
if keys != set(expected):
    fail(f"bf16: tensors {sorted(keys)} instead of {sorted(expected)}")
raw = open(path, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + n])
data = raw[8 + n :]
for name in expected:
    h = header[name]
    if h["dtype"] != "BF16" or h["shape"] != expected[name]["shape"]:
        fail(f"bf16: {name} header {h}")
    a, b = h["data_offsets"]
    bits = np.frombuffer(data[a:b], dtype="<u2").reshape(h["shape"])
    x = want(name, 0).view(np.uint32).astype(np.uint64)
    rne = ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)
    if not np.array_equal(bits, rne):
        fail(f"bf16: {name} is not the fp32 master rounded to nearest even")
print(f"model-bf16.safetensors: {len(keys)} tensors equal the master rounded to bf16")
print("check_safetensors: PASS")
