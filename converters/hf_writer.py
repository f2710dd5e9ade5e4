"""Sharded bf16 safetensors with ``model.safetensors.index.json``, streamed tensor by tensor, and their checks."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open
from tqdm import tqdm

from converters.layout import HFTensor, hf_tensors
from lucie_nemo.errors import UserError
from lucie_nemo.hf_config import shape_from_hf_config

if TYPE_CHECKING:  # checking a folder needs no torch (lucie publish); writing one imports it
    import torch

INDEX = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_SHARD_SIZE = "5GB"  # Hugging Face's default max_shard_size
BF16_BYTES = 2
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``5GB``, ``500MB``, ``2GiB`` or ``1000000``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text.upper())
    if not match:
        raise UserError(f"shard size {text!r} is not a size: write it like 5GB, 500MB or 2GiB")
    size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if size <= 0:
        raise UserError(f"shard size {text!r} must be positive")
    return size


def nbytes(item: HFTensor) -> int:
    return math.prod(item.shape) * BF16_BYTES


def plan_shards(tensors: list[HFTensor], max_bytes: int) -> list[list[HFTensor]]:
    """Tensors grouped into shards in file order, each at most ``max_bytes`` unless one tensor is larger."""
    shards: list[list[HFTensor]] = [[]]
    size = 0
    for item in tensors:
        if shards[-1] and size + nbytes(item) > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes(item)
    return shards


def shard_name(number: int, total: int) -> str:
    return f"model-{number:05d}-of-{total:05d}.safetensors"


def _header(shard: list[HFTensor]) -> bytes:
    """The safetensors header of ``shard`` (tensors in order, bf16), padded with spaces to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for item in shard:
        header[item.name] = {"dtype": "BF16", "shape": list(item.shape), "data_offsets": [offset, offset + nbytes(item)]}
        offset += nbytes(item)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % 8)


def write_safetensors(path: Path, shard: list[HFTensor], produce: Callable[[HFTensor], torch.Tensor], bar: tqdm) -> None:
    """Write one safetensors file tensor by tensor: the header is known from the shapes, so only the
    tensor being written is in memory (safetensors' own save_file holds the whole shard, twice)."""
    import torch

    header = _header(shard)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header)))
        file.write(header)
        for item in shard:
            tensor = produce(item).to(torch.bfloat16).contiguous()
            if tuple(tensor.shape) != item.shape:
                raise UserError(f"{item.name} came out as {tuple(tensor.shape)}, expected {item.shape}")
            file.write(tensor.view(torch.uint8).numpy().data)
            bar.update(nbytes(item))


def write_shards(
    folder: Path, shards: list[list[HFTensor]], produce: Callable[[HFTensor], torch.Tensor], progress: bool = True
) -> dict:
    """Write every shard and ``model.safetensors.index.json``; return the index."""
    if sys.byteorder != "little":
        raise UserError("safetensors files are little-endian: export on a little-endian machine")
    mapping: dict[str, str] = {}
    total = sum(nbytes(item) for shard in shards for item in shard)
    with tqdm(total=total, unit="B", unit_scale=True, desc="export", disable=not progress) as bar:
        for number, shard in enumerate(shards, start=1):
            name = shard_name(number, len(shards))
            write_safetensors(folder / name, shard, produce, bar)
            mapping |= {item.name: name for item in shard}
    index = {"metadata": {"total_size": total}, "weight_map": mapping}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} is missing: not a Hugging Face model folder")
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error})") from None


def expected_tensors(folder: Path) -> list[HFTensor]:
    """The tensors that ``folder``'s config.json implies (refusing a config that is not Lucie-shaped but for a
    Llama 3.1 RoPE scaling, which an export of a checkpoint trained with it keeps)."""
    return hf_tensors(shape_from_hf_config(read_json(folder / "config.json"), str(folder / "config.json"),
                                           llama3_scaling=True))


def weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> shard file, from the index (or the one ``model.safetensors`` of an unsharded folder)."""
    if not (folder / INDEX).is_file() and (folder / SINGLE_FILE).is_file():
        with safe_open(folder / SINGLE_FILE, framework="numpy") as single:  # names only: numpy keeps torch out
            return {name: SINGLE_FILE for name in single.keys()}
    return read_json(folder / INDEX).get("weight_map", {})


def check_folder(folder: Path) -> None:
    """Check a Hugging Face Lucie folder: every tensor config.json implies is in exactly one shard named by
    the index, with its shape and dtype bf16; every shard file exists; nothing else is in the shards."""
    expected = {item.name: item.shape for item in expected_tensors(folder)}
    mapping = weight_map(folder)
    if set(mapping) != set(expected):
        missing, extra = sorted(set(expected) - set(mapping)), sorted(set(mapping) - set(expected))
        raise UserError(f"{folder / INDEX} does not match config.json: missing {missing[:3]}, unexpected {extra[:3]}")
    seen: dict[str, str] = {}
    for file in sorted(set(mapping.values())):
        if not (folder / file).is_file():
            raise UserError(f"{folder / file} is named by {INDEX} but missing")
        with safe_open(folder / file, framework="numpy") as shard:  # metadata only: numpy keeps torch out
            for name in shard.keys():
                if name in seen:
                    raise UserError(f"{name} is in both {seen[name]} and {file}")
                seen[name] = file
                if mapping.get(name) != file:
                    raise UserError(f"{name} is in {file} but {INDEX} says {mapping.get(name)}")
                sliced = shard.get_slice(name)
                if tuple(sliced.get_shape()) != expected[name] or sliced.get_dtype() != "BF16":
                    raise UserError(
                        f"{name} in {file} is {sliced.get_dtype()} {tuple(sliced.get_shape())}, config.json implies BF16 {expected[name]}"
                    )
    if set(seen) != set(expected):
        raise UserError(f"shards of {folder} lack {sorted(set(expected) - set(seen))[:3]} named by {INDEX}")
