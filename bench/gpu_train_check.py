"""A real `lucie train pretrain` of a depth-reduced Lucie-7B on this machine, then `lucie export` of its
checkpoint and `lucie verify` of the export: the recipe code end to end, as a cluster job runs it.

Full width (hidden 4,096, FFN 12,288, 32/8 heads, vocabulary 65,024), ``--layers`` layers, sequence 4,096,
Lucie's LR (3e-4) reached after 2 steps, the recipe's layout machinery on one GPU (TP1 PP1 CP1), mock data.
Checks: the run trained on the GPU (its plan records the device), every loss finite, the last five steps'
mean loss below the first five's, a checkpoint at the last step, the export verified (logits within
`lucie verify`'s tolerance, same greedy continuations). Prints the run's own step time and model TFLOP/s.
The export's tokenizer is trained here on the repository's docs (the node has no network).

    python bench/gpu_train_check.py --workdir /tmp/lucie-gpu-train [--layers 4] [--steps 20]

``--tiny-width`` runs the same path with a 64-wide model and 256-token sequences, recompute off (the CPU
redirects do not cover recomputation): how tests/test_gpu_check.py runs it on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 8
TOKENIZER_VOCAB = 2_048
TINY_WIDTH = ("model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=4",
              "model.num_query_groups=2", "model.kv_channels=16", "model.seq_length=256", "dataset.seq_length=256",
              "model.recompute_granularity=null", "model.recompute_method=null", "model.recompute_num_layers=null")
_STEP_TIME = re.compile(r"iteration\s+(\d+)/\s*\d+ .*?elapsed time per iteration \(ms\): ([\d.]+)")


def lucie(*arguments: str, log: Path) -> float:
    """Run ``lucie ARGUMENTS`` with this interpreter, its output appended to ``log``; seconds taken."""
    start = time.perf_counter()
    with log.open("a") as output:
        output.write(f"$ lucie {' '.join(arguments)}\n")
        output.flush()
        result = subprocess.run([sys.executable, "-m", "lucie_nemo.cli", *arguments], stdout=output,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"error: `lucie {arguments[0]}` exited {result.returncode}; its output is in {log}")
    return time.perf_counter() - start


def train_overrides(layers: int, steps: int, tiny_width: bool) -> list[str]:
    samples = steps * GLOBAL_BATCH
    return [f"model.num_layers={layers}", f"train.train_iters={steps}", f"train.global_batch_size={GLOBAL_BATCH}",
            "train.rampup_batch_size=null", f"sample_schedule.warmup_samples={2 * GLOBAL_BATCH}",
            f"sample_schedule.decay_samples={samples}", f"sample_schedule.train_samples={samples}",
            f"checkpoint.save_interval={steps}", *(TINY_WIDTH if tiny_width else ())]


def check_losses(losses: dict[int, float], steps: int) -> str:
    values = [losses[step] for step in sorted(losses)]
    if sorted(losses) != list(range(1, steps + 1)):
        raise SystemExit(f"error: losses logged at steps {sorted(losses)}, expected 1..{steps}")
    if not all(math.isfinite(value) for value in values):
        raise SystemExit(f"error: a loss is not finite: {values}")
    first, last = statistics.mean(values[:5]), statistics.mean(values[-5:])
    if not last < first:
        raise SystemExit(f"error: the loss does not fall: first five steps {first:.3f}, last five {last:.3f}")
    return f"loss {values[0]:.3f} -> {values[-1]:.3f} (mean of the first five steps {first:.3f}, last five {last:.3f})"


def step_rate(log: Path, tokens_per_step: int, flops_per_token: float | None) -> str:
    """The run's own step times (Megatron's log), past the first three steps."""
    times = [float(ms) / 1e3 for step, ms in _STEP_TIME.findall(log.read_text()) if int(step) > 3]
    if not times:
        return "step time: not logged"
    seconds = statistics.median(times)
    tokens = tokens_per_step / seconds
    rate = f", {tokens * flops_per_token / 1e12:.1f} model TFLOP/s" if flops_per_token else ""
    return f"step time {seconds:.3f} s (median of steps 4+), {tokens:,.0f} tokens/s{rate}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lucie-gpu-train"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny-width", action="store_true", help="a 64-wide model, for a CPU")
    args = parser.parse_args()
    if args.steps < 10:
        raise SystemExit("error: --steps must be at least 10 (the loss check compares the first and last five)")
    from lucie_nemo.architecture import LUCIE_7B
    from lucie_nemo.demo import scalars
    from lucie_nemo.throughput_estimate import flops_per_token

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = work / "lucie.log"
    log.write_text("")
    runs, tokenizer, exported = work / "runs", work / "tokenizer", work / "exported"
    corpus = [str(path) for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]]
    lucie("tokenizer", "train", *corpus, "--vocab-size", str(TOKENIZER_VOCAB), "--output", str(tokenizer), log=log)
    seconds = lucie("train", "pretrain", "--nodes", "1", "--gpus-per-node", "1", "--layout", "TP1xPP1xCP1",
                    "--output-root", str(runs), *train_overrides(args.layers, args.steps, args.tiny_width), log=log)
    run = runs / "pretrain"
    device = json.loads((run / "plan.json").read_text())["device"]
    print(f"train: {args.steps} steps of {args.layers} layers on {device or 'the CPU'} in {seconds:.0f} s")
    print(f"train: {check_losses(scalars(run / 'tensorboard', 'lm loss'), args.steps)}")
    latest = (run / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip()
    if latest != str(args.steps):
        raise SystemExit(f"error: the last checkpoint is iteration {latest}, expected {args.steps}")
    seq_length = 256 if args.tiny_width else 4_096
    flops = None if args.tiny_width else flops_per_token(replace(LUCIE_7B, num_layers=args.layers), seq_length)
    print(f"train: {step_rate(log, GLOBAL_BATCH * seq_length, flops)}")
    checkpoint = str(run / "checkpoints")
    seconds = lucie("export", checkpoint, str(exported), "--phase", "pretrain", "--tokenizer", str(tokenizer),
                    "--no-progress", log=log)
    print(f"export: iteration {latest} -> {exported} in {seconds:.0f} s")
    seconds = lucie("verify", checkpoint, str(exported), log=log)
    verdict = [line for line in log.read_text().splitlines() if line.startswith("max abs difference")]
    print(f"verify: {verdict[-1] if verdict else 'passed'} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
