"""Read Megatron-Bridge / megatron-core ``torch_dist`` checkpoints and NeMo 2 folders without a model, and without
importing Megatron (``.nemo`` files: ``converters.nemo_file``).

A torch_dist checkpoint stores every tensor by its global shape with per-chunk metadata, so it reads
the same whatever TP/PP/DP layout wrote it. Tensors are read one region at a time (one layer of a
stacked ``[layers, ...]`` tensor) straight from the ``.distcp`` files with torch.distributed.checkpoint.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from converters.layout import EMBEDDING, FINAL_NORM, LAYER_TENSORS, OUTPUT_LAYER, megatron_shape
from lucie_nemo import runtime
from lucie_nemo.architecture import LUCIE_RULES, LucieShape
from lucie_nemo.errors import UserError
from lucie_nemo.hf_config import llama3_rope_scaling

runtime.quiet_imports()  # an index may pickle megatron-core classes (NeMo's): unpickling it imports megatron.core

TRACKER = "latest_checkpointed_iteration.txt"
TRAIN_STATE_TRACKER = "latest_train_state.pt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")
_NEMO_STEP = re.compile(r"(?:^|[-_])step=(\d+)")


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint's tensors are, and what it says about itself."""

    path: Path  # what the user passed
    weights_dir: Path  # the folder holding .metadata and the .distcp files
    kind: str  # "megatron" (Megatron-Bridge / megatron-core), "nemo2" or "nemo" (a .nemo file)
    iteration: int | None
    model_config: dict[str, Any]  # provider / transformer config fields
    tokenizer_dir: Path | None  # a tokenizer folder shipped in the checkpoint (holding tokenizer.json)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not readable YAML ({error}): the checkpoint is damaged") from None


def _tokenizer_in(folder: Path) -> Path | None:
    return folder if (folder / "tokenizer.json").is_file() else None


def step_in_name(name: str) -> int | None:
    """The step NeMo writes into a checkpoint's name (``...-step=2-...``), if any."""
    match = _NEMO_STEP.search(name)
    return int(match.group(1)) if match else None


def nemo2_step(path: Path) -> int | None:
    """The step a NeMo 2 folder says: the trainer's ``global_step`` that NeMo saves with the weights (Lightning's
    checkpoint entries go to megatron-core's common state: ``weights/common.pt``, or the ``common_state`` object of
    newer megatron-core), else a ``step=N`` in the folder's name, else None."""
    weights = path / "weights"
    if (weights / "common.pt").is_file() or _has_common_state_object(weights):
        runtime.prepare()  # before megatron-core is imported (quiet logs, CPU redirects)
        from megatron.core.dist_checkpointing.serialization import load_common_state_dict

        try:
            common = load_common_state_dict(str(weights))
        except pickle.UnpicklingError as error:
            raise UserError(f"{weights}'s common state holds objects torch's weights-only loader refuses "
                            f"({str(error).splitlines()[0]}): pass --step N") from None
        if isinstance(common, dict) and isinstance(common.get("global_step"), int):
            return common["global_step"]
    return step_in_name(path.name)


def _has_common_state_object(weights: Path) -> bool:
    if not (weights / ".metadata").is_file():
        return False
    metadata = FileSystemReader(str(weights)).read_metadata()
    return any(key.split("/")[0] == "common_state" for key in metadata.state_dict_metadata)


def _iteration_from_tracker(root: Path) -> tuple[Path, int | None]:
    text = (root / TRACKER).read_text().strip()
    if text == "release":
        return root / "release", None
    if not text.isdigit():
        raise UserError(f"{root / TRACKER} holds {text!r}, not an iteration: the checkpoint is damaged")
    return root / f"iter_{int(text):07d}", int(text)


def _iteration_of_dir(folder: Path) -> int | None:
    if match := _ITER_DIR.match(folder.name):
        return int(match.group(1))
    state = folder / "train_state.pt"
    if state.is_file():
        return int(torch.load(state, map_location="cpu", weights_only=True)["step"])
    return None


def locate(path: str | Path) -> CheckpointInfo:
    """Recognise a checkpoint root, an ``iter_NNNNNNN`` folder or a NeMo 2 folder (``context/`` + ``weights/``)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a folder or a .nemo file: pass a checkpoint root, an iter_NNNNNNN "
                        "folder, a NeMo 2 folder or a .nemo file")
    if (path / "weights").is_dir() and (path / "context").is_dir():
        model_yaml = path / "context" / "model.yaml"
        config = read_yaml(model_yaml).get("config", {}) if model_yaml.is_file() else {}
        return CheckpointInfo(path, path / "weights", "nemo2", nemo2_step(path),
                              config, _tokenizer_in(path / "context" / "nemo_tokenizer"))
    if not (path / TRACKER).is_file() and (path / TRAIN_STATE_TRACKER).is_file():
        iteration = int(torch.load(path / TRAIN_STATE_TRACKER, map_location="cpu", weights_only=True)["step"])
        folder = path / f"iter_{iteration:07d}"
        if not folder.is_dir():
            raise UserError(f"{path / TRAIN_STATE_TRACKER} names {folder.name}, which is missing: the checkpoint is truncated")
    elif (path / TRACKER).is_file():
        folder, iteration = _iteration_from_tracker(path)
        if not folder.is_dir():
            raise UserError(f"{path / TRACKER} names {folder.name}, which is missing: the checkpoint is truncated")
    elif any((path / marker).exists() for marker in (".metadata", "metadata.json", "run_config.yaml")):
        folder, iteration = path, _iteration_of_dir(path)
    else:
        raise UserError(
            f"{path} is not a Megatron-Bridge, megatron-core or NeMo 2 checkpoint (no {TRACKER}, "
            "no .metadata, no context/ + weights/)"
        )
    run_config = folder / "run_config.yaml"
    config = read_yaml(run_config).get("model", {}) if run_config.is_file() else {}
    return CheckpointInfo(path, folder, "megatron", iteration, config, _tokenizer_in(folder / "tokenizer"))


def read_metadata(weights_dir: Path) -> Metadata:
    """The torch.distributed.checkpoint index, after checking the format and that no shard file is missing or short."""
    backend_file = weights_dir / "metadata.json"
    if backend_file.is_file():
        backend = json.loads(backend_file.read_text()).get("sharded_backend")
        if backend != "torch_dist":
            raise UserError(f"{weights_dir} is a {backend!r} checkpoint: only torch_dist checkpoints are supported")
    if not (weights_dir / ".metadata").is_file():
        raise UserError(f"{weights_dir} has no .metadata file: the checkpoint is truncated or not torch_dist")
    metadata = FileSystemReader(str(weights_dir)).read_metadata()
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = weights_dir / name
        if not file.is_file():
            raise UserError(f"{file} is missing: the checkpoint is truncated")
        if file.stat().st_size < size:
            raise UserError(f"{file} holds {file.stat().st_size} bytes, its index needs {size}: the checkpoint is truncated")
    return metadata


class _RegionPlanner(DefaultLoadPlanner):
    """Sends every chunk read into one destination tensor (a region of one global tensor)."""

    def __init__(self, destination: torch.Tensor):
        super().__init__()
        self.destination = destination

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        view = self.destination
        for dim, (offset, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            view = view.narrow(dim, offset, length)
        return view


class CheckpointTensors:
    """The model tensors of one checkpoint, by Megatron name, read one region at a time."""

    def __init__(self, info: CheckpointInfo):
        self.info = info
        self.metadata = read_metadata(info.weights_dir)
        self._reader = FileSystemReader(str(info.weights_dir))
        self._reader.set_up_storage_reader(self.metadata, is_coordinator=True)
        self.tensors = {k: v for k, v in self.metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        self.prefix = self._model_prefix()

    def _model_prefix(self) -> str:
        """The prefix of the model tensors: '' (Megatron-Bridge) or 'module.' (NeMo 2)."""
        found = [k[: -len(EMBEDDING)] for k in self.tensors if k.endswith(EMBEDDING) and not k.startswith("optimizer")]
        if len(found) != 1:
            raise UserError(
                f"{self.info.weights_dir} holds no GPT model weights (no {EMBEDDING}): not a Lucie checkpoint"
            )
        return found[0]

    def model_keys(self) -> list[str]:
        """Names of the model tensors (optimizer states left out), without the prefix."""
        return [k[len(self.prefix):] for k in self.tensors if k.startswith(self.prefix) and not k.startswith("optimizer")]

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[self.prefix + name].size)

    def dtype(self, name: str) -> torch.dtype:
        return self.tensors[self.prefix + name].properties.dtype

    def read(self, name: str, index: int | None = None) -> torch.Tensor:
        """Tensor ``name`` (all of it, or its slice ``index`` along the first axis), in its stored dtype."""
        fqn = self.prefix + name
        md = self.tensors[fqn]
        size = list(md.size)
        offsets = [0] * len(size)
        if index is not None:
            offsets[0], size[0] = index, 1
        destination = torch.empty(size, dtype=md.properties.dtype)
        items = create_read_items_for_chunk_list(
            fqn, md, [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(size))]
        )
        plan = self._reader.prepare_global_plan([self._reader.prepare_local_plan(LoadPlan(items))])[0]
        self._reader.read_data(plan, _RegionPlanner(destination)).wait()
        return destination[0] if index is not None else destination


class LayerTensors:
    """Per-layer access to a checkpoint's decoder: stacked ``decoder.layers.X`` or ``decoder.layers.N.X``, either naming."""

    def __init__(self, tensors: CheckpointTensors):
        self.tensors = tensors
        self.stacked = any(tensors.has(f"decoder.layers.{n}") for names in LAYER_TENSORS.values() for n in names)
        self.names = {logical: self._resolve(logical, names) for logical, names in LAYER_TENSORS.items()}

    def _resolve(self, logical: str, candidates: tuple[str, ...]) -> str:
        probe = "decoder.layers.{}" if self.stacked else "decoder.layers.0.{}"
        for name in candidates:
            if self.tensors.has(probe.format(name)):
                return name
        raise UserError(
            f"{self.tensors.info.weights_dir} has no {' or '.join(probe.format(n) for n in candidates)}: "
            "not a Lucie-shaped GPT checkpoint"
        )

    @property
    def num_layers(self) -> int:
        if self.stacked:
            return self.tensors.shape(f"decoder.layers.{self.names['qkv']}")[0]
        pattern = re.compile(r"^decoder\.layers\.(\d+)\.")
        return 1 + max(int(m.group(1)) for k in self.tensors.model_keys() if (m := pattern.match(k)))

    def shape(self, logical: str) -> tuple[int, ...]:
        """Shape of one layer's tensor."""
        if self.stacked:
            return self.tensors.shape(f"decoder.layers.{self.names[logical]}")[1:]
        return self.tensors.shape(f"decoder.layers.0.{self.names[logical]}")

    def stored_name(self, logical: str, layer: int) -> str:
        """The checkpoint tensor holding ``logical`` of ``layer``."""
        if self.stacked:
            return f"decoder.layers.{self.names[logical]}"
        return f"decoder.layers.{layer}.{self.names[logical]}"

    def read(self, logical: str, layer: int) -> torch.Tensor:
        if self.stacked:
            return self.tensors.read(f"decoder.layers.{self.names[logical]}", layer)
        return self.tensors.read(f"decoder.layers.{layer}.{self.names[logical]}")

    def expected_keys(self) -> set[str]:
        """The model tensor names a Lucie-shaped checkpoint of this layout holds."""
        keys = {EMBEDDING, FINAL_NORM, OUTPUT_LAYER}
        if self.stacked:
            return keys | {f"decoder.layers.{name}" for name in self.names.values()}
        return keys | {f"decoder.layers.{i}.{n}" for i in range(self.num_layers) for n in self.names.values()}


def check_lucie_config(info: CheckpointInfo) -> None:
    """Refuse a checkpoint whose model config says it is not Lucie-shaped."""
    config = info.model_config
    for field, required in LUCIE_RULES.items():  # rope_scaling (Llama 3.1's) is not refused: an export keeps it
        if field in config and config[field] != required:
            raise UserError(
                f"checkpoint {info.path} has {field}={config[field]!r}, a Lucie model has {required!r}: "
                "not a Lucie-shaped checkpoint"
            )
    activation = config.get("activation_func")
    target = activation.get("_target_", "") if isinstance(activation, dict) else str(activation or "silu")
    if not target.endswith("silu"):
        raise UserError(f"checkpoint {info.path} uses activation {target!r}, Lucie uses silu: not a Lucie-shaped checkpoint")


def rope_scaling_of(info: CheckpointInfo) -> dict | None:
    """config.json's ``rope_scaling`` of a checkpoint trained with megatron-core's Llama 3.1 RoPE scaling, else None."""
    if not info.model_config.get("rope_scaling"):
        return None
    return llama3_rope_scaling(info.model_config.get("rope_scaling_factor", 8.0))


def read_shape(tensors: CheckpointTensors, layers: LayerTensors) -> LucieShape:
    """The model sizes, from the tensor shapes and the saved config; refuse anything not Lucie-shaped."""
    info = tensors.info
    check_lucie_config(info)
    extra = sorted(set(tensors.model_keys()) - layers.expected_keys())
    if not tensors.has(OUTPUT_LAYER):
        raise UserError(f"checkpoint {info.path} has no {OUTPUT_LAYER} (tied embeddings?): Lucie has an untied output layer")
    if extra:
        raise UserError(f"checkpoint {info.path} holds tensors a Lucie model has not ({', '.join(extra[:4])}): not a Lucie-shaped checkpoint")
    heads = info.model_config.get("num_attention_heads")
    if heads is None:
        raise UserError(f"checkpoint {info.path} does not say its number of attention heads (no run_config.yaml or context/model.yaml)")
    vocab, hidden = tensors.shape(EMBEDDING)
    head_dim = hidden // heads
    groups = (layers.shape("qkv")[0] // head_dim - heads) // 2
    if hidden % heads or groups <= 0 or heads % groups:
        raise UserError(f"checkpoint {info.path}: hidden {hidden}, {heads} heads and QKV rows {layers.shape('qkv')[0]} are not a GQA layout")
    shape = LucieShape(
        num_layers=layers.num_layers,
        hidden_size=hidden,
        ffn_hidden_size=layers.shape("fc2")[1],
        num_attention_heads=heads,
        num_query_groups=groups,
        vocab_size=vocab,
    )
    _check_config_agrees(info, shape)
    _check_tensor_shapes(tensors, layers, shape)
    return shape


def _check_config_agrees(info: CheckpointInfo, shape: LucieShape) -> None:
    config = info.model_config
    for field in ("num_layers", "hidden_size", "ffn_hidden_size", "num_query_groups"):
        if config.get(field) is not None and config[field] != getattr(shape, field):
            raise UserError(f"checkpoint {info.path}: config says {field}={config[field]}, tensors say {getattr(shape, field)}")
    if config.get("kv_channels") not in (None, shape.head_dim):
        raise UserError(f"checkpoint {info.path} has kv_channels={config['kv_channels']}, Lucie has hidden/heads={shape.head_dim}")


def _check_tensor_shapes(tensors: CheckpointTensors, layers: LayerTensors, shape: LucieShape) -> None:
    for logical in LAYER_TENSORS:
        want = megatron_shape(shape, logical)
        if layers.shape(logical) != want:
            raise UserError(f"checkpoint {tensors.info.path}: {layers.names[logical]} has shape {layers.shape(logical)}, a Lucie layer needs {want}")
    for name in (FINAL_NORM, OUTPUT_LAYER):
        want = megatron_shape(shape, name)
        if tensors.shape(name) != want:
            raise UserError(f"checkpoint {tensors.info.path}: {name} has shape {tensors.shape(name)}, expected {want}")
