"""A policy's tensor digest: what checkpoints/README.md promises a retrain reproduces."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from agents.checkpoint import read_policy_file, tensor_digest
from cosim.resources import checkpoints

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_files_have_the_digests_their_readme_states():
    text = (ROOT / "checkpoints" / "README.md").read_text()
    stated = {n: d for n, d in re.findall(r"--out runs/(\S+)\s+# ([0-9a-f]{8})…", text)}
    shipped = {r.name: r.path for r in checkpoints().values()}
    assert set(stated) == set(shipped), "every shipped policy has its command and digest, and no other"
    for name, prefix in stated.items():
        assert tensor_digest(shipped[name]).startswith(prefix), name


def test_the_digest_ignores_the_header_and_sees_every_tensor_byte(tmp_path):
    src = checkpoints()["ly-dtmppo_default"].path
    meta, _ = read_policy_file(src)
    tensors = load_file(str(src))
    from safetensors import safe_open
    with safe_open(str(src), framework="pt") as f:
        header = dict(f.metadata())
    longer = dict(header, note="a config key added later")
    save_file(tensors, str(tmp_path / "same.safetensors"), metadata=longer)
    assert tensor_digest(tmp_path / "same.safetensors") == tensor_digest(src)
    name = sorted(tensors)[0]
    changed = dict(tensors)
    changed[name] = tensors[name].clone()
    changed[name].view(-1)[0] = torch.nextafter(changed[name].view(-1)[0], torch.tensor(float("inf")))
    save_file(changed, str(tmp_path / "changed.safetensors"), metadata=header)
    assert tensor_digest(tmp_path / "changed.safetensors") != tensor_digest(src)
    assert meta["algo"]  # the file read is a policy file, not only tensors
