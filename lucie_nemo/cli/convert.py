"""`lucie export / import / verify / publish`: training checkpoints <-> Hugging Face folders, checked, published."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lucie_nemo.cli.errors import user_errors


def register(app: typer.Typer) -> None:
    """Add the top-level ``export``, ``import``, ``verify`` and ``publish`` commands to ``app``."""
    app.command("export")(export)
    app.command("import")(import_)
    app.command("verify")(verify)
    app.command("publish")(publish)


def export(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint root, iter_NNNNNNN folder, NeMo 2 folder (context/ + weights/), "
                                               ".nemo file, or DeepSpeed universal checkpoint (zero/ + mp_rank_00_model_states.pt).")],
    out: Annotated[Path, typer.Argument(help="New output folder (Hugging Face LlamaForCausalLM).")],
    phase: Annotated[str | None, typer.Option(help="pretrain, extension or anneal (read from the checkpoint when it can tell).")] = None,
    step: Annotated[int | None, typer.Option(help="Step in the phase (read from the checkpoint when it says it).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or Hub id (default: the checkpoint's own).")] = None,
    shard_size: Annotated[str, typer.Option(help="Largest safetensors shard, e.g. 5GB or 500MB.")] = "5GB",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Write a checkpoint as bf16 safetensors shards with config, generation config, tokenizer and model card."""
    with user_errors():
        from converters.universal.checkpoint import is_universal

        if is_universal(ckpt):  # a DeepSpeed universal checkpoint (released optimizer states)
            from converters.universal.export import export_universal as export_checkpoint
        else:
            from converters.export import export_checkpoint

        result = export_checkpoint(ckpt, out, phase, step, tokenizer, shard_size, progress)
    print(f"wrote {result.out}: {result.num_tensors} tensors in {result.num_shards} shards, "
          f"phase {result.phase.name} step {result.step}, revision {result.revision}")


def import_(
    hf_dir: Annotated[Path, typer.Argument(help="Hugging Face Lucie-shaped folder (a published revision or an export), "
                                                 "or DeepSpeed universal checkpoint (a branch of Lucie-7B-optimizer-states).")],
    ckpt: Annotated[Path, typer.Argument(help="New checkpoint folder: a recipe's pretrained_checkpoint, or (full import of a universal checkpoint) <output-root>/<phase>/checkpoints to resume.")],
    phase: Annotated[str | None, typer.Option(help="Phase whose context/RoPE the saved config names (default: from config.json).")] = None,
    weights_only: Annotated[bool, typer.Option("--weights-only", help="Universal checkpoint: the weights alone.")] = False,
    tiny: Annotated[bool, typer.Option("--tiny", help="Universal checkpoint of the scaled-down phase (lucie train --tiny).")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    revision: Annotated[str | None, typer.Option(help="With a Hub id as source: the branch to download, e.g. step0500000.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co).")] = None,
) -> None:
    """Write a Hugging Face folder as a weights-only torch_dist checkpoint (iter_0000000/) the recipes start from.

    A DeepSpeed universal checkpoint becomes the checkpoint of the phase's run at its iteration N (weights, Adam
    state, step, consumed samples, LR scheduler): import it into <output-root>/<phase>/checkpoints and
    `lucie train PHASE` continues at step N+1. The source may be a Hub id (owner/name) with --revision: it is
    downloaded into huggingface_hub's cache first. Killed or failed, the same command resumes where it stopped
    (in .CKPT.partial/ and .CKPT.resume/ beside CKPT).
    """
    with user_errors():
        from converters.hub_source import download_revision, is_hub_id
        from converters.universal.checkpoint import is_universal

        if is_hub_id(hf_dir):
            hf_dir = download_revision(str(hf_dir), revision, endpoint)

        if is_universal(hf_dir):
            _import_universal(hf_dir, ckpt, phase, weights_only, tiny, progress)
            return
        from converters.import_hf import import_hf

        result = import_hf(hf_dir, ckpt, phase, progress)
    print(f"wrote {result.out}: {result.num_parameters:,} parameters, use it as checkpoint.pretrained_checkpoint")


def _import_universal(folder: Path, ckpt: Path, phase: str | None, weights_only: bool, tiny: bool,
                      progress: bool) -> None:
    if weights_only:
        from converters.universal.import_weights import import_universal_weights

        result = import_universal_weights(folder, ckpt, phase, tiny, progress)
        print(f"wrote {result.out}: {result.num_parameters:,} parameters (iteration {result.iteration}'s weights), "
              "use it as checkpoint.pretrained_checkpoint")
        return
    from converters.universal.import_state import import_universal_state

    state = import_universal_state(folder, ckpt, phase, tiny, progress)
    print(f"wrote {state.out}: phase {state.phase.name} iteration {state.iteration} ({state.num_parameters:,} parameters, "
          f"Adam step {state.adam_step}, {state.consumed_samples:,} samples consumed, next LR {state.learning_rate:.6g}); "
          f"`lucie train {state.phase.name}` resumes from it at step {state.iteration + 1} when it is "
          f"<output-root>/{state.phase.name}/checkpoints (or pass checkpoint.load={state.out})")


def verify(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint root, iter_NNNNNNN folder, NeMo 2 folder, or .nemo file.")],
    hf_dir: Annotated[Path, typer.Argument(help="Hugging Face folder exported from it.")],
    tolerance: Annotated[float, typer.Option(help="Largest accepted absolute logit difference.")] = 1e-3,
    new_tokens: Annotated[int, typer.Option(help="Greedy tokens compared per prompt.")] = 8,
) -> None:
    """Compare logits and greedy continuations of both models on fr/en/de/es/it/code prompts; exit 1 on mismatch."""
    with user_errors():
        from converters.verify import verify as run_verify

        result = run_verify(ckpt, hf_dir, tolerance, new_tokens)
    for prompt in result.prompts:
        same = "same" if prompt.same_continuation else f"DIFFERENT from token {prompt.first_difference + 1}"
        print(f"{prompt.language:5s} max |Δlogit| {prompt.max_abs_diff:.3e}  greedy {new_tokens} tokens: {same}")
    print(f"max abs difference {result.max_abs_diff:.3e} (tolerance {tolerance:g}): {'match' if result.ok else 'MISMATCH'}")
    if not result.ok:
        raise typer.Exit(1)


def publish(
    hf_dir: Annotated[Path, typer.Argument(help="Exported Hugging Face folder.")],
    repo: Annotated[str, typer.Option("--repo", help="Hub model repository, e.g. OpenLLM-France/Lucie-7B.")],
    revision: Annotated[str | None, typer.Option(
        "--revision", help="Branch: the folder's own revision (default: the one its model card records, else "
        "config.json's), or main.")] = None,
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co).")] = None,
    private: Annotated[bool, typer.Option(
        "--private", help="Create the repository private (if it is created).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, contact nothing.")] = False,
) -> None:
    """Create REPO and its branch REVISION if missing and upload the checked folder; unchanged files are skipped.

    The token is huggingface_hub's: HF_TOKEN, or the one saved by `hf auth login`.
    """
    with user_errors():
        from converters.publish import plan, publish as run_publish

        upload = plan(hf_dir, repo, revision, endpoint, private)
        print(f"repository {upload.repo_id}{' (private if new)' if private else ''} on {upload.endpoint}, "
              f"branch {upload.revision}")
        for file in upload.files:
            print(f"{file.size:>14,}  {file.path}")
        print(f"{len(upload.files)} files, {upload.total_bytes:,} bytes")
        if dry_run:
            print("dry run: nothing uploaded")
            return
        result = run_publish(upload)
    if result.changed:
        print(f"committed: {result.commit_url}")
    else:
        print(f"nothing changed: {upload.revision} already holds these files ({result.commit_url})")
