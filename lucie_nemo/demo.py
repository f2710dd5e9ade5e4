"""The main job on one machine: a tiny Lucie through the three phases, exported, verified, sampled.

The same recipes, Megatron-Bridge training loop and converters as the full run, on the phases
scaled down by lucie_nemo.demo_scale. Every stage is cached under the work folder, so a second
run reuses the corpus, tokenizer, datasets, finished phases and exports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lucie_nemo.errors import UserError

PHASE_ORDER = ("pretrain", "extension", "anneal")
PROMPTS = ("La capitale de la France est", "The history of the city of", "def fibonacci(n):")
# Greedy, with the repetition controls a model this small needs to say more than "la la la".
GENERATION = {"max_new_tokens": 24, "do_sample": False, "repetition_penalty": 1.3, "no_repeat_ngram_size": 3}
# Phase 2 trains on documents split at the (scaled) phase-1 context, the long part up-weighted 10x.
LONG_DOCUMENT_WEIGHT = 10
_ITERATION = re.compile(r"iteration\s+(\d+)/\s*(\d+)")


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("demo")
    corpus_mb: float = 4.0
    vocab_size: int = 8_192
    tokenizer: Path | None = None  # a tokenizer folder to use instead of training one
    train_iters: dict[str, int] = field(default_factory=dict)  # shorter phases (the CI variant)


@dataclass
class PhaseReport:
    phase: str
    steps: int
    tokens: int
    first_loss: float
    last_loss: float
    wall_seconds: float | None  # None: reused from an earlier run


@dataclass
class DemoReport:
    phases: list[PhaseReport]
    revisions: list[str]
    parity: str
    parity_ok: bool
    generations: dict[str, str]
    run_report: Path  # report.png of `lucie report` on the demo's runs
    deviations: int  # logged LRs and batches off the plan (lucie_nemo.report)


def _train_process(*args: str, log: Path, total: int, label: str) -> None:
    """Run `lucie ARGS` in a fresh process (Megatron keeps global state per process), its output to ``log``
    and its iterations to a progress bar."""
    from tqdm import tqdm

    command = [sys.executable, "-m", "lucie_nemo.cli", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink, tqdm(total=total, desc=label, unit="step") as bar:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            sink.write(line)
            match = _ITERATION.search(line)
            if match:
                bar.update(int(match.group(1)) - bar.n)
        if process.wait() != 0:
            raise UserError(f"`lucie {' '.join(args)}` failed; see {log}")


class Demo:
    """The demo's stages, each cached in the work folder."""

    def __init__(self, options: DemoOptions):
        from lucie_nemo.demo_scale import demo_phases

        self.options = options
        self.root = options.workdir
        self.phases = demo_phases()
        self.corpus_dir = self.root / "corpus"
        self.data_root = self.root / "data"
        self.runs = self.root / "runs"
        self.hub = self.root / "hub"

    # -- data -------------------------------------------------------------------------

    def corpus(self) -> list[Path]:
        from lucie_nemo.data.demo_corpus import build_demo_corpus

        return build_demo_corpus(self.corpus_dir, self.options.corpus_mb)

    def tokenizer(self, corpus: list[Path]) -> Path:
        if self.options.tokenizer is not None:
            return self.options.tokenizer
        folder = self.root / "tokenizer"
        if not (folder / "tokenizer.json").is_file():
            from lucie_nemo.tokenizer_train import train_tokenizer

            train_tokenizer(corpus, self.options.vocab_size, folder)
        return folder

    def datasets(self, corpus: list[Path], tokenizer: Path) -> dict[str, dict[str, int]]:
        """Tokenise each language, split at the demo's phase-1 context: tokens per output."""
        from lucie_nemo.data.prepare import PrepareConfig, output_prefixes, prepare_data, stats_path

        split_at = self.phases["pretrain"].seq_length
        tokens: dict[str, dict[str, int]] = {}
        for path in corpus:
            prefix = self.data_root / f"{path.stem}_text_document"
            outputs = output_prefixes(prefix, split_at)
            if not all(stats_path(p).is_file() for p in outputs.values()):
                prepare_data(PrepareConfig(inputs=(path,), tokenizer=str(tokenizer), output_prefix=prefix,
                                           split_at=split_at, workers=2))
            tokens[path.stem] = {
                str(p.relative_to(self.data_root)): json.loads(stats_path(p).read_text())["tokens"]
                for p in outputs.values()
            }
        return tokens

    def blends(self, tokens: dict[str, dict[str, int]]) -> dict[str, Path]:
        """Blend files in Megatron's WEIGHT PREFIX form: phase 1 by token share, phase 2 with long
        documents up-weighted 10x, phase 3 an even mix of the languages."""
        weights: dict[str, dict[str, float]] = {"pretrain": {}, "extension": {}, "anneal": {}}
        for outputs in tokens.values():
            language_total = sum(outputs.values())
            for prefix, count in outputs.items():
                if not count:
                    continue
                weights["pretrain"][prefix] = count
                weights["extension"][prefix] = count * (LONG_DOCUMENT_WEIGHT if "-inf/" in prefix else 1)
                weights["anneal"][prefix] = count / language_total
        files = {}
        for phase, entries in weights.items():
            total = sum(entries.values())
            path = self.root / "blends" / f"{phase}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{w / total:.12f} {prefix}\n" for prefix, w in entries.items()))
            files[phase] = path
        return files

    # -- training --------------------------------------------------------------------

    def train_iters(self, phase: str) -> int:
        from lucie_nemo.schedule import PhaseSchedule

        return self.options.train_iters.get(phase) or PhaseSchedule(self.phases[phase], self.phases).train_iters

    def latest_iteration(self, phase: str) -> int | None:
        tracker = self.runs / phase / "checkpoints" / "latest_checkpointed_iteration.txt"
        return int(tracker.read_text()) if tracker.is_file() else None

    def train(self, phase: str, vocab_size: int, blend: Path) -> float | None:
        """Train ``phase`` unless it has finished already; returns the wall time or None if reused."""
        iterations = self.train_iters(phase)
        if self.latest_iteration(phase) == iterations:
            return None
        start = time.monotonic()
        _train_process("train", phase, "--tiny", "--vocab-size", str(vocab_size), "--data-root", str(self.data_root),
                       "--blend-file", str(blend), "--output-root", str(self.runs), f"train.train_iters={iterations}",
                       log=self.root / "logs" / f"{phase}.log", total=iterations, label=phase)
        if self.latest_iteration(phase) != iterations:
            raise UserError(f"phase {phase} stopped before step {iterations}; see {self.root / 'logs' / phase}.log")
        return time.monotonic() - start

    def phase_report(self, phase: str, wall: float | None) -> PhaseReport:
        from lucie_nemo.schedule import PhaseSchedule

        losses = scalars(self.runs / phase / "tensorboard", "lm loss")
        steps = self.train_iters(phase)
        plan = PhaseSchedule(self.phases[phase], self.phases)
        return PhaseReport(phase, steps, plan.tokens(steps), losses[min(losses)], losses[max(losses)], wall)

    # -- conversion --------------------------------------------------------------------

    def saved_steps(self, phase: str) -> list[int]:
        from lucie_nemo.schedule import PhaseSchedule

        last = self.train_iters(phase)
        cadence = PhaseSchedule(self.phases[phase], self.phases).save_steps()
        return sorted({step for step in cadence if step < last} | {last})

    def export(self, phase: str, step: int, tokenizer: Path) -> str:
        revision = self.phases[phase].revision(step)
        target = self.hub / revision
        if not (target / "config.json").is_file():
            from converters.export import export_checkpoint  # in this process: it needs no Megatron state

            checkpoint = self.runs / phase / "checkpoints" / f"iter_{step:07d}"
            export_checkpoint(checkpoint, target, phase=phase, step=step, tokenizer=str(tokenizer), progress=False)
        return revision

    def verify(self, revision: str) -> tuple[bool, str]:
        command = [sys.executable, "-m", "lucie_nemo.cli", "verify", str(self.runs / "anneal" / "checkpoints"),
                   str(self.hub / revision)]
        result = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        return result.returncode == 0, lines[-1] if lines else result.stderr[-500:]

    def generate(self, revision: str) -> dict[str, str]:
        import torch
        from transformers import AutoModelForCausalLM

        from lucie_nemo.tokenizer import load_hf_tokenizer

        folder = self.hub / revision
        tokenizer = load_hf_tokenizer(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
        outputs = {}
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            generated = model.generate(ids, pad_token_id=tokenizer.pad_token_id, **GENERATION)
            outputs[prompt] = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
        return outputs


def scalars(folder: Path, tag: str) -> dict[int, float]:
    """A TensorBoard scalar over every event file of a run (one file per start)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for event_file in sorted(folder.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(event_file))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values.update({event.step: event.value for event in events.Scalars(tag)})
    return values


def run_demo(options: DemoOptions) -> DemoReport:
    """Corpus -> tokenizer -> datasets and blends -> phases 1, 2, 3 -> exports -> verify -> samples."""
    from tqdm import tqdm

    from lucie_nemo.tokenizer import load_tokenizer

    demo = Demo(options)
    corpus = demo.corpus()
    tokenizer = demo.tokenizer(corpus)
    vocab_size = load_tokenizer(tokenizer).get_vocab_size(with_added_tokens=True)
    blends = demo.blends(demo.datasets(corpus, tokenizer))
    reports = []
    for phase in PHASE_ORDER:
        wall = demo.train(phase, vocab_size, blends[phase])
        reports.append(demo.phase_report(phase, wall))
    saved = [(phase, step) for phase in PHASE_ORDER for step in demo.saved_steps(phase)]
    revisions = [demo.export(phase, step, tokenizer) for phase, step in tqdm(saved, desc="export", unit="revision")]
    parity_ok, parity = demo.verify(revisions[-1])
    generations = demo.generate(revisions[-1])
    from lucie_nemo.report import FIGURE, write_report

    run_report = write_report(demo.runs)
    return DemoReport(reports, revisions, parity, parity_ok, generations, run_report.output / FIGURE,
                      len(run_report.deviations))


def format_report(report: DemoReport) -> str:
    lines = ["", "Lucie demo summary", f"{'phase':<10}{'steps':>7}{'tokens':>12}{'first loss':>12}{'last loss':>11}{'wall':>9}"]
    for phase in report.phases:
        wall = f"{phase.wall_seconds:.0f} s" if phase.wall_seconds is not None else "reused"
        lines.append(f"{phase.phase:<10}{phase.steps:>7}{phase.tokens:>12,}{phase.first_loss:>12.3f}"
                     f"{phase.last_loss:>11.3f}{wall:>9}")
    lines.append(f"revisions ({len(report.revisions)}): {', '.join(report.revisions)}")
    lines.append(f"parity ({report.revisions[-1]}): {'OK' if report.parity_ok else 'MISMATCH'} - {report.parity}")
    for prompt, continuation in report.generations.items():
        lines.append(f"  {prompt!r} -> {continuation!r}")
    lines.append(f"run report ({report.deviations} deviations from the plan): {report.run_report}")
    return "\n".join(lines)
