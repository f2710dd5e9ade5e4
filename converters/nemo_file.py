"""Read a ``.nemo`` file (NeMo's model tarball: ``model_config.yaml`` + a ``torch_dist`` ``model_weights/``) in place.

torch.distributed.checkpoint reads every item through its index (``.metadata``) as (file, offset, length), and
an uncompressed tar stores each member as one byte range. The index is rewritten into a small temporary folder
with every item pointing into the tar (through a link to the ``.nemo``) at its member's offset, beside copies
of the other small members (``metadata.json``, ``common.pt``); torch's and megatron-core's own readers then
read the tensors straight out of the tar. Nothing else is copied: no second copy of the weights on disk, and
the same memory as reading a folder. (megatron-core's ``dist_checkpointing.load`` takes a folder, not a
storage reader, so a re-pointed index serves both the exporter and ``lucie verify``.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from converters.megatron_reader import CheckpointInfo, step_in_name
from lucie_nemo.errors import UserError

SUFFIX = ".nemo"
CONFIG = "model_config.yaml"
WEIGHTS = "model_weights"
INDEX = ".metadata"
_LINK = "weights.nemo"  # in the temporary folder: the .nemo file, which every rewritten index item points into
_PER_RANK = re.compile(r"^(mp_rank_\d+|tp_rank_\d+_pp_rank_\d+)/")
_UNSUPPORTED = "NeMo 1's format before megatron-core torch_dist checkpoints, which is not supported"

# model_config.yaml fields a Lucie-shaped model must state, with Lucie's values (NeMo's defaults differ).
_REQUIRED = {
    "mcore_gpt": True,
    "normalization": "rmsnorm",
    "position_embedding_type": "rope",
    "share_embeddings_and_output_weights": False,
    "bias": False,
}
# Fields whose NeMo default is Lucie's: refused only when stated otherwise.
_DEFAULTS = {
    "rotary_percentage": 1.0,
    "transformer_block_type": "pre_ln",
    "headscale": False,
    "qk_layernorm": False,
    "num_moe_experts": None,
}
_SWIGLU = ("swiglu", "fast-swiglu")


@dataclass(frozen=True)
class Member:
    """One file of the tar: where its bytes start and how many there are."""

    offset: int
    size: int


def is_nemo_file(path: str | Path) -> bool:
    return Path(path).suffix == SUFFIX and Path(path).is_file()


def read_members(path: Path) -> dict[str, Member]:
    """The tar's regular files by name (without ``./``), checked to lie within the file."""
    with open(path, "rb") as file:
        if file.read(2) == b"\x1f\x8b":
            raise UserError(f"{path} is a gzip-compressed .nemo: its tensors cannot be read in place; "
                            f"unpack it and re-pack it uncompressed (tar xzf, then tar cf), as NeMo writes them")
    try:
        with tarfile.open(path, "r:") as tar:
            infos = tar.getmembers()
    except tarfile.TarError as error:
        if "unexpected end of data" in str(error):
            raise UserError(f"{path} ends inside one of its members: the file is truncated (copy it again)") from None
        raise UserError(f"{path} is not a readable .nemo tar ({error}): the file is damaged or not a .nemo") from None
    members = {info.name.removeprefix("./"): Member(info.offset_data, info.size) for info in infos if info.isfile()}
    size = path.stat().st_size
    for name, member in members.items():
        if member.offset + member.size > size:
            raise UserError(f"{path} holds {size} bytes, its member {name} ends at {member.offset + member.size}: "
                            "the file is truncated")
    return members


def _read(path: Path, member: Member) -> bytes:
    with open(path, "rb") as file:
        file.seek(member.offset)
        return file.read(member.size)


def check_format(path: Path, members: dict[str, Member]) -> None:
    """Refuse what is not a torch_dist .nemo, naming the format found."""
    if CONFIG not in members:
        raise UserError(f"{path} has no {CONFIG}: not a NeMo model file")
    if "model_weights.ckpt" in members:
        raise UserError(f"{path} holds model_weights.ckpt (pickled weights), {_UNSUPPORTED}: re-save it with "
                        "NeMo >= 1.23 (mcore_gpt: true, torch_dist), or convert it with NeMo's own converter")
    if per_rank := sorted({match.group(1) for name in members if (match := _PER_RANK.match(name))}):
        raise UserError(f"{path} holds per-rank {per_rank[0]}/ weights, {_UNSUPPORTED}: re-save it with "
                        "NeMo >= 1.23 (mcore_gpt: true, torch_dist), or convert it with NeMo's own converter")
    if f"{WEIGHTS}/{INDEX}" not in members:
        raise UserError(f"{path} has no {WEIGHTS}/{INDEX}: not a torch_dist .nemo (or the file is damaged)")


def model_config(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The Megatron provider fields of a Lucie-shaped NeMo model config; anything else refused, naming the field."""
    if config.get("mcore_gpt") is False:
        raise UserError(f"{path}: {CONFIG} has mcore_gpt: false, a GPT model with language_model.encoder... "
                        f"weights ({_UNSUPPORTED})")
    where = f"{path}: {CONFIG}"
    for field, required in _REQUIRED.items():
        if field not in config:
            raise UserError(f"{where} does not say {field} (NeMo's default is not Lucie's {required!r}): "
                            "not a Lucie-shaped checkpoint")
        if config[field] != required:
            raise UserError(f"{where} has {field}: {config[field]!r}, a Lucie model has {required!r}: "
                            "not a Lucie-shaped checkpoint")
    for field, lucie in _DEFAULTS.items():
        if config.get(field, lucie) not in (lucie, *((0, 1) if field == "num_moe_experts" else ())):
            raise UserError(f"{where} has {field}: {config[field]!r}, a Lucie model has {lucie!r}: "
                            "not a Lucie-shaped checkpoint")
    if config.get("activation") not in _SWIGLU:
        raise UserError(f"{where} has activation: {config.get('activation')!r}, a Lucie model has SwiGLU "
                        f"({' or '.join(_SWIGLU)}): not a Lucie-shaped checkpoint")
    for field in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads"):
        if not isinstance(config.get(field), int):
            raise UserError(f"{where} does not give {field}: the file is damaged or not a GPT model")
    return {
        **{field: config[field] for field in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads")},
        "num_query_groups": config.get("num_query_groups") or config["num_attention_heads"],
        "kv_channels": config.get("kv_channels"),
        "seq_length": config.get("encoder_seq_length"),
        "rotary_base": config.get("rotary_base", 10_000),  # NeMo's default
        "layernorm_epsilon": config.get("layernorm_epsilon", 1e-5),
        "init_method_std": config.get("init_method_std", 0.02),
        # NeMo applies Llama 3.1's RoPE scaling with megatron-core's constants (factor 8) when this is set
        "rope_scaling": bool(config.get("scale_positional_embedding", False)),
        "rope_scaling_factor": 8.0,
    }


def _index_in_place(path: Path, members: dict[str, Member], folder: Path) -> None:
    """A torch_dist folder whose index points into ``path`` at the members' offsets; the other small members copied."""
    folder.mkdir()
    (folder / _LINK).symlink_to(path.resolve())
    prefix = f"{WEIGHTS}/"
    for name, member in members.items():
        if name.startswith(prefix) and "/" not in name[len(prefix):] and not name.endswith(".distcp") \
                and name != prefix + INDEX:
            (folder / name[len(prefix):]).write_bytes(_read(path, member))
    metadata = pickle.loads(_read(path, members[prefix + INDEX]))  # as torch's FileSystemReader.read_metadata does
    for key, item in metadata.storage_data.items():
        member = members.get(prefix + item.relative_path)
        if member is None or item.offset + item.length > member.size:
            raise UserError(f"{path}: {prefix}{item.relative_path} is missing or shorter than its index says: "
                            "the file is truncated")
        metadata.storage_data[key] = dataclasses.replace(item, relative_path=_LINK, offset=member.offset + item.offset)
    with open(folder / INDEX, "wb") as file:
        pickle.dump(metadata, file)
    keys = [key for key in metadata.state_dict_metadata if ".language_model." in key]
    if keys:
        raise UserError(f"{path} holds {keys[0]}, a GPT model before megatron-core ({_UNSUPPORTED})")


def _tokenizer(path: Path, members: dict[str, Member], config: dict[str, Any], folder: Path) -> Path | None:
    """The Hugging Face tokenizer inside the file (a ``nemo:NAME`` of the config's tokenizer section), copied to
    ``folder``; None when there is none."""
    section = config.get("tokenizer") or {}
    names = [value[len("nemo:"):] for value in section.values() if isinstance(value, str) and value.startswith("nemo:")]
    for name in names:
        if name.endswith("tokenizer.json") and name in members:  # a tokenizer.json registered as a file
            folder.mkdir()
            (folder / "tokenizer.json").write_bytes(_read(path, members[name]))
            return folder
        inside = {member[len(name) + 1:]: info for member, info in members.items()
                  if member.startswith(f"{name}/") and "/" not in member[len(name) + 1:]}
        if "tokenizer.json" in inside:  # a tokenizer folder
            folder.mkdir()
            for file, info in inside.items():
                (folder / file).write_bytes(_read(path, info))
            return folder
    return None  # none, or one without tokenizer.json (SentencePiece, vocab + merges): --tokenizer is needed


@contextlib.contextmanager
def opened(path: str | Path) -> Iterator[CheckpointInfo]:
    """The checkpoint of a ``.nemo`` file, readable in place while the block runs."""
    path = Path(path)
    members = read_members(path)
    check_format(path, members)
    try:
        config = yaml.safe_load(_read(path, members[CONFIG]).decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: {CONFIG} is not readable YAML ({error}): the file is damaged") from None
    translated = model_config(path, config)
    staging = Path(tempfile.mkdtemp(prefix="lucie-nemo-"))
    try:
        _index_in_place(path, members, staging / WEIGHTS)
        tokenizer = _tokenizer(path, members, config, staging / "tokenizer")
        yield CheckpointInfo(path, staging / WEIGHTS, "nemo", step_in_name(path.stem), translated, tokenizer)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
