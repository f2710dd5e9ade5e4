"""Compare a training checkpoint and a Hugging Face folder by their logits and greedy continuations.

Each side is computed by its own library, one decoder layer at a time, so that memory stays bounded:
the embedding, the output layer and one decoder layer in fp32, plus the prompts' hidden states.

- Megatron: the modules of a one-layer Lucie GPTModel (lucie_nemo.model, megatron-core local layers,
  fp32), called in the order GPTModel.forward calls them. Layer i is loaded into its one decoder layer with
  megatron-core's dist_checkpointing, from layer i of the checkpoint's stacked tensors; weights are rounded
  to bf16, the precision of the published safetensors, so that the comparison measures the conversion, not
  the rounding. Only the checkpoint's sizes come from the exporter's reader (read_shape, from metadata): no
  tensor is read through it or mapped with converters.layout.
- Hugging Face: the modules of a one-layer transformers LlamaForCausalLM with the folder's config (eager
  attention, fp32); layer i is read from the safetensors shards named by the folder's index.

The Hugging Face side generates greedily (one pass over the layers per new token); the Megatron side then
reads each prompt and that continuation once (teacher forcing): its own greedy continuation is the same iff
its argmax at every continuation position is the next token. Prompts are tokenized with load_tokenizer.
Both sides run on the GPU when there is one (fp32, TF32 off), else on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from tqdm import tqdm

from lucie_nemo import runtime

runtime.prepare()  # before Megatron is imported (import hook, quiet logs, CPU redirects)

from megatron.core import dist_checkpointing  # noqa: E402
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensorFactory  # noqa: E402
from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding  # noqa: E402

from converters.hf_writer import check_folder, read_json, weight_map  # noqa: E402
from converters.megatron_model import local_provider  # noqa: E402
from converters.checkpoint_source import opened  # noqa: E402
from converters.megatron_reader import CheckpointInfo, CheckpointTensors, LayerTensors, read_shape, rope_scaling_of  # noqa: E402
from lucie_nemo.architecture import LucieShape  # noqa: E402
from lucie_nemo.distributed import single_process_world  # noqa: E402
from lucie_nemo.errors import UserError  # noqa: E402
from lucie_nemo.hf_config import shape_from_hf_config  # noqa: E402
from lucie_nemo.phases import PRETRAIN  # noqa: E402
from lucie_nemo.tokenizer import load_tokenizer  # noqa: E402

PROMPTS: dict[str, str] = {
    "fr": "La capitale de la France est Paris. Elle est connue pour",
    "en": "The quick brown fox jumps over the lazy dog, and then",
    "de": "Die Hauptstadt von Deutschland ist Berlin. Sie ist bekannt für",
    "es": "La capital de España es Madrid. Es famosa por",
    "it": "La capitale d'Italia è Roma. È famosa per",
    "code": "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return",
}
DEFAULT_TOLERANCE = 1e-3
DEFAULT_NEW_TOKENS = 8
_LAYERS = "decoder.layers."  # megatron-core's name of the stacked decoder layers
_HF_LAYERS = "model.layers."  # transformers' prefix of the decoder layers
CPU = torch.device("cpu")


@dataclass(frozen=True)
class PromptResult:
    language: str
    max_abs_diff: float  # over the prompt's positions
    megatron_tokens: list[int]  # Megatron's greedy continuation, known up to its first difference
    hf_tokens: list[int]  # the Hugging Face greedy continuation

    @property
    def same_continuation(self) -> bool:
        return self.megatron_tokens == self.hf_tokens

    @property
    def first_difference(self) -> int | None:
        """Position of the first continuation token that differs (None: same continuation)."""
        if self.same_continuation:
            return None
        return next(i for i, (a, b) in enumerate(zip(self.megatron_tokens, self.hf_tokens)) if a != b)


@dataclass(frozen=True)
class VerifyResult:
    prompts: list[PromptResult]
    tolerance: float

    @property
    def max_abs_diff(self) -> float:
        return max(p.max_abs_diff for p in self.prompts)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and all(p.same_continuation for p in self.prompts)


class LayerStream(Protocol):
    """A model run one decoder layer at a time: start, then each layer (loaded in turn), then finish."""

    name: str
    num_layers: int

    def start(self, ids: torch.Tensor) -> Any: ...  # token ids [T] -> a state (hidden states and positions)
    def load_layer(self, index: int) -> None: ...
    def layer(self, state: Any) -> Any: ...
    def finish(self, state: Any) -> torch.Tensor: ...  # -> fp32 logits [T, vocabulary]


def streamed_logits(model: LayerStream, sequences: list[torch.Tensor], progress: bool = False,
                    label: str = "") -> list[torch.Tensor]:
    """Logits [T, vocabulary] of each sequence of token ids [T], loading each decoder layer once for all."""
    states = [model.start(ids) for ids in sequences]
    for index in tqdm(range(model.num_layers), desc=f"{model.name} {label}".strip(), unit="layer",
                      leave=False, disable=not progress):
        model.load_layer(index)
        states = [model.layer(state) for state in states]
    return [model.finish(state) for state in states]


def greedy(model: LayerStream, prompts: list[torch.Tensor], new_tokens: int,
           progress: bool = False) -> tuple[list[torch.Tensor], list[list[int]]]:
    """The prompts' logits and their greedy continuations of ``new_tokens`` tokens (one pass per token, no cache)."""
    sequences = list(prompts)
    passes = max(new_tokens, 1)  # the first pass gives the prompts' logits
    for step in range(passes):
        logits = streamed_logits(model, sequences, progress, f"pass {step + 1}/{passes}")
        if step == 0:
            prompt_logits = logits
        if step < new_tokens:
            sequences = [torch.cat([ids, row[-1].argmax().view(1)]) for ids, row in zip(sequences, logits)]
    return prompt_logits, [ids[len(prompt):].tolist() for ids, prompt in zip(sequences, prompts)]


def own_continuation(logits: torch.Tensor, prompt_length: int, continuation: list[int]) -> list[int]:
    """A model's greedy continuation, from its logits over prompt + ``continuation`` (teacher forcing): its
    argmax at each position while it agrees with ``continuation``, up to and including the first difference."""
    tokens = []
    for predicted, given in zip(logits[prompt_length - 1:].argmax(-1).tolist(), continuation):
        tokens.append(predicted)
        if predicted != given:
            break
    return tokens


@contextlib.contextmanager
def _fp32_matmuls() -> Iterator[None]:
    """Full fp32 products on the GPU: TF32 off, as on the CPU, whatever the process set before."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _round_to_bf16(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(parameter.to(torch.bfloat16))


@dataclass(frozen=True)
class CheckpointModel:
    """What building the checkpoint's model needs, read from its metadata and run config."""

    weights_dir: Path
    prefix: str  # of the model's tensors: '' (Megatron-Bridge) or 'module.' (NeMo 2)
    shape: LucieShape
    rotary_base: int
    rope_scaling: dict | None = None  # Llama 3.1's, as config.json writes it


def checkpoint_model(info: CheckpointInfo, hf_config: dict) -> CheckpointModel:
    """The checkpoint's model facts; refuse a checkpoint whose shape is not the folder's, or without its RoPE theta."""
    ckpt = info.path
    tensors = CheckpointTensors(info)
    layers = LayerTensors(tensors)
    shape = read_shape(tensors, layers)
    folder_shape = shape_from_hf_config(hf_config, llama3_scaling=True)
    if shape != folder_shape:
        raise UserError(f"checkpoint {ckpt} is {shape}, the Hugging Face folder is {folder_shape}: "
                        "pass the folder that `lucie export` wrote from this checkpoint")
    # Checked here: on short prompts, Llama 3.1's scaling (of the slowest frequencies) barely moves the logits.
    if rope_scaling_of(info) != hf_config.get("rope_scaling"):
        raise UserError(f"checkpoint {ckpt} has RoPE scaling {rope_scaling_of(info)}, the Hugging Face folder "
                        f"{hf_config.get('rope_scaling')}: pass the folder that `lucie export` wrote from this checkpoint")
    if "rotary_base" not in info.model_config:
        raise UserError(f"checkpoint {ckpt} does not say its RoPE theta (rotary_base): cannot rebuild its model")
    if not layers.stacked:
        raise UserError(f"checkpoint {ckpt} stores one tensor per layer (decoder.layers.N.X): verify reads the "
                        "stacked layers (decoder.layers.X) that megatron-core saves by default")
    return CheckpointModel(info.weights_dir, tensors.prefix, shape, info.model_config["rotary_base"],
                           rope_scaling_of(info))


def _weights(sharded: dict) -> dict:
    """A sharded state dict without its _extra_state objects (local layers ignore them; some checkpoints lack them)."""
    return {key: value for key, value in sharded.items() if not isinstance(value, ShardedObject)}


def _one_layer_of_stack(sharded: Any) -> Any:
    """A decoder-layer ShardedTensor (or factory of them) of TransformerBlock's stacked layout, as one process
    can load it alone.

    TransformerBlock describes layer i as fragment i of a regular grid along a prepended layer axis. In a world
    of one process, megatron-core's torch_dist load takes every fragment of such a grid as this process's own
    and refuses to read one alone; a ShardedTensor without a grid (axis_fragmentations=None) whose local
    tensor has the layer axis (length 1, at offset i) reads exactly that region.
    """
    if isinstance(sharded, ShardedTensorFactory):
        build, merge = sharded.build_fn, sharded.merge_fn
        return dataclasses.replace(
            sharded,
            build_fn=lambda *args: [_one_layer_of_stack(piece) for piece in build(*args)],
            merge_fn=lambda pieces: merge([piece[0] for piece in pieces])[None],
        )
    return dataclasses.replace(sharded, data=sharded.data[None], local_shape=(1, *sharded.local_shape),
                               prepend_axis_num=0, axis_fragmentations=None)


def _load_state(module: torch.nn.Module, state: dict, loaded_later: str = "") -> None:
    """``module.load_state_dict(state)``, checking that every weight (but those under ``loaded_later``) is in it."""
    result = module.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys
               if not key.endswith("_extra_state") and not (loaded_later and key.startswith(loaded_later))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weights do not fit the model: missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")


class MegatronLayers:
    """The checkpoint's model, as a one-layer Lucie GPTModel whose decoder layer is loaded with each layer in turn."""

    name = "megatron-core"

    def __init__(self, checkpoint: CheckpointModel, device: torch.device = CPU):
        one_layer = dataclasses.replace(checkpoint.shape, num_layers=1)
        # The phase only sets context length and RoPE theta; theta is the one the checkpoint trained with.
        scaling = checkpoint.rope_scaling
        provider = local_provider(one_layer, PRETRAIN, torch.float32, rotary_base=checkpoint.rotary_base,
                                  rope_scaling=scaling is not None, rope_scaling_factor=(scaling or {}).get("factor", 8.0),
                                  perform_initialization=False)
        self.device = device
        self.model = provider.provide().eval().to(device)
        self.checkpoint = checkpoint
        self.num_layers = checkpoint.shape.num_layers
        self._load_outside_layers()

    def _load(self, sharded: dict) -> dict:
        """dist_checkpointing.load of ``sharded``, without the checkpoint's common state."""
        # Access integrity is a check that the ranks of a world load every region together: not the case here.
        loaded = dist_checkpointing.load(sharded, str(self.checkpoint.weights_dir), validate_access_integrity=False)
        return {key: loaded[key] for key in sharded}

    def _load_outside_layers(self) -> None:
        """Embedding, final norm and output layer, from the one-layer model's own sharded state dict."""
        prefix = self.checkpoint.prefix
        sharded = _weights(self.model.sharded_state_dict(prefix=prefix))
        loaded = self._load({key: value for key, value in sharded.items() if not key.startswith(prefix + _LAYERS)})
        state = {key.removeprefix(prefix): value for key, value in loaded.items()}
        _load_state(self.model, state, loaded_later=_LAYERS)
        _round_to_bf16(self.model)

    def load_layer(self, index: int) -> None:
        """Layer ``index`` of the checkpoint into the decoder layer, as TransformerBlock.sharded_state_dict maps it."""
        layer = self.model.decoder.layers[0]
        sharded = _weights(layer.sharded_state_dict("", [(0, index, self.num_layers)]))
        replace_prefix_for_sharding(sharded, "", self.checkpoint.prefix + _LAYERS)
        loaded = self._load({key: _one_layer_of_stack(value) for key, value in sharded.items()})
        _load_state(layer, {key: value[0] for key, value in loaded.items()})  # without the layer axis
        _round_to_bf16(layer)

    def start(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GPTModel._preprocess: the embedding [T, 1, H] and the rotary embedding of the sequence."""
        model, ids = self.model, ids.to(self.device)
        hidden = model.embedding(input_ids=ids[None], position_ids=torch.arange(len(ids), device=self.device)[None])
        rotary_seq_len = model.rotary_pos_emb.get_rotary_seq_len(None, model.decoder, hidden, model.config, None)
        return hidden, model.rotary_pos_emb(rotary_seq_len)

    def layer(self, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """TransformerBlock's call of a layer; no mask tensor: the layer's causal mask type applies."""
        hidden, rotary_pos_emb = state
        # Nothing a Lucie layer computes depends on its layer number (no query-key layer scaling, no window).
        hidden, _ = self.model.decoder.layers[0](hidden_states=hidden, attention_mask=None,
                                                 rotary_pos_emb=rotary_pos_emb)
        return hidden, rotary_pos_emb

    def finish(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The decoder's final norm, then GPTModel._postprocess's output layer."""
        logits, _ = self.model.output_layer(self.model.decoder.final_layernorm(state[0]))
        return logits[:, 0].float().cpu()


@dataclass(frozen=True)
class _HuggingFaceState:
    hidden: torch.Tensor  # [1, T, H]
    position_ids: torch.Tensor
    causal_mask: torch.Tensor | None
    position_embeddings: tuple[torch.Tensor, torch.Tensor]


class HuggingFaceLayers:
    """The folder's model, as a one-layer transformers LlamaForCausalLM whose decoder layer is loaded with each
    layer in turn from the safetensors shards."""

    name = "transformers"

    def __init__(self, folder: Path, device: torch.device = CPU):
        from transformers import LlamaConfig, LlamaForCausalLM
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.folder, self.device = folder, device
        self.files = weight_map(folder)
        self.config = LlamaConfig.from_pretrained(folder, attn_implementation="eager")
        self.num_layers, self.config.num_hidden_layers = self.config.num_hidden_layers, 1
        with torch.device("meta"):  # weights are assigned when read
            self.model = LlamaForCausalLM(self.config).eval()
        self.model.model.rotary_emb = LlamaRotaryEmbedding(self.config, device=device)  # buffers from the config
        outside = {name for name, _ in self.model.named_parameters() if not name.startswith(_HF_LAYERS)}
        self._assign(self.model, {name: name for name in outside})

    def _read(self, name: str) -> torch.Tensor:
        with safe_open(self.folder / self.files[name], framework="pt") as shard:
            return shard.get_tensor(name).float().to(self.device)

    def _assign(self, module: torch.nn.Module, names: dict[str, str]) -> None:
        """Read each of ``module``'s parameters (name in module -> name in the folder) and assign it."""
        module.load_state_dict({name: self._read(stored) for name, stored in names.items()}, strict=False, assign=True)

    def load_layer(self, index: int) -> None:
        layer = self.model.model.layers[0].to("meta")  # the previous layer's weights freed before reading the next
        self._assign(layer, {name: f"{_HF_LAYERS}{index}.{name}" for name, _ in layer.named_parameters()})

    def start(self, ids: torch.Tensor) -> _HuggingFaceState:
        """What LlamaModel.forward computes before its layers: embeddings, positions, causal mask, RoPE."""
        from transformers.masking_utils import create_causal_mask

        model = self.model.model
        hidden = model.embed_tokens(ids.to(self.device)[None])
        position_ids = torch.arange(len(ids), device=self.device)[None]
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=None,
                                  past_key_values=None, position_ids=position_ids)
        return _HuggingFaceState(hidden, position_ids, mask, model.rotary_emb(hidden, position_ids=position_ids))

    def layer(self, state: _HuggingFaceState) -> _HuggingFaceState:
        hidden = self.model.model.layers[0](state.hidden, attention_mask=state.causal_mask,
                                            position_embeddings=state.position_embeddings,
                                            position_ids=state.position_ids, past_key_values=None, use_cache=False)
        return dataclasses.replace(state, hidden=hidden)

    def finish(self, state: _HuggingFaceState) -> torch.Tensor:
        return self.model.lm_head(self.model.model.norm(state.hidden))[0].float().cpu()


def _compare(languages: Iterable[str], prompts: list[torch.Tensor], hf_logits: list[torch.Tensor],
             continuations: list[list[int]], megatron_logits: list[torch.Tensor]) -> list[PromptResult]:
    results = []
    for language, prompt, hf, tokens, megatron in zip(languages, prompts, hf_logits, continuations, megatron_logits):
        diff = (megatron[: len(prompt)] - hf).abs().max().item()
        results.append(PromptResult(language, diff, own_continuation(megatron, len(prompt), tokens), tokens))
    return results


def verify(ckpt: str | Path, hf_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE,
           new_tokens: int = DEFAULT_NEW_TOKENS, progress: bool = True) -> VerifyResult:
    """Logits of both models on PROMPTS (max abs difference over the prompts) and their greedy continuations."""
    hf_dir = Path(hf_dir)
    check_folder(hf_dir)
    with opened(ckpt) as info:  # a .nemo file is read in place while the block runs
        checkpoint = checkpoint_model(info, read_json(hf_dir / "config.json"))
        tokenizer = load_tokenizer(hf_dir)
        prompts = [torch.tensor(tokenizer.encode(text).ids) for text in PROMPTS.values()]
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else CPU
        with torch.no_grad(), _fp32_matmuls():
            hf_logits, continuations = greedy(HuggingFaceLayers(hf_dir, device), prompts, new_tokens, progress)
            # Prompt + continuation but its last token: the logits at the prompt's last position and after predict it.
            forced = [torch.cat([ids, torch.tensor(tokens[:-1], dtype=ids.dtype)])
                      for ids, tokens in zip(prompts, continuations)]
            with single_process_world():
                megatron_logits = streamed_logits(MegatronLayers(checkpoint, device), forced, progress,
                                                  "teacher-forced")
    return VerifyResult(_compare(PROMPTS, prompts, hf_logits, continuations, megatron_logits), tolerance)
