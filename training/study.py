#!/usr/bin/env python
"""The norm-placement study: your grid of cells, trained through the project's Trainer, in one report.

    python training/study.py                                    # the default grid (the six findings) -> runs/study-default/
    python training/study.py --quick                            # CI-sized smoke test of the whole report
    python training/study.py --grid seq2seq                     # encoder-decoders: finding 9 -> runs/study-seq2seq/
    python training/study.py --grid my_grid.json --output_dir runs/my-study
    torchrun --nproc_per_node 4 training/study.py --grid my_grid.json --output_dir runs/my-study
    accelerate launch --num_processes 4 training/study.py --grid my_grid.json --output_dir runs/my-study   # GPUs

How runs are spread: one run per process at a time. The runs are sorted by estimated cost and dealt round-robin
to the launched processes (torchrun / accelerate launch set RANK and WORLD_SIZE); each process trains its runs
one after the other, each on its own (a run is never data-parallel, so results do not depend on the process
count). On GPUs, process r uses GPU r % (visible GPUs): several processes may share one GPU, which suits small,
launch-bound models. Process 0 writes the report once every run has a result.

Each run goes through `SkipNormTrainer` (training/reliable_trainer.py): atomic checkpoints every `save_every`
steps, the non-finite guard (a diverging run is recorded as diverged, with the step and the first block whose
output is not finite, and the sweep goes on), the Trainer's `report_to` loggers. A run's result is written
atomically to OUTPUT/runs/<run>/result.json. Started again with the same command, a sweep skips finished runs,
resumes interrupted ones from their last checkpoint (same numbers as an uninterrupted run), and runs only the
new runs of a grid that grew. A run whose settings changed is refused (use a new --output_dir).

The report (OUTPUT/report.md, fig*.png, results.json) is built from results.json alone
(training/study_report.py); the findings' verdicts from training/study_findings.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import signal
import sys
import time

# Run as a script (python training/study.py, torchrun, accelerate launch), the repository root is not on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The processes a launcher started: read here, then hidden from the Trainer, so that each process trains its own
# runs alone instead of joining one data-parallel group.
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
              "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def read_launch_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun / accelerate launch, with this process pinned to one GPU (local
    rank modulo the visible GPUs) before CUDA starts."""
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            import torch

            count = torch.cuda.device_count()  # NVML-based: does not start CUDA in this process
        except Exception:  # noqa: BLE001 - no torch CUDA: CPU processes
            count = 0
        if count:
            ids = visible.split(",") if visible else [str(i) for i in range(count)]
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank % len(ids)]
    return rank, local_rank, world_size


RANK, LOCAL_RANK, WORLD_SIZE = read_launch_env() if __name__ == "__main__" else (0, 0, 1)

import torch  # noqa: E402
from transformers import TrainerCallback, TrainingArguments  # noqa: E402
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from hf_skipnorm import SkipNormConfig, SkipNormForCausalLM, SkipNormForConditionalGeneration  # noqa: E402
from hf_skipnorm.diagnostics import (  # noqa: E402
    decoder_layers,
    profile,
    profile_encoder_decoder,
    snapshot_weights,
    update_ratios,
)
from training import study_grid  # noqa: E402
from training.checkpoints import checkpoint_folders, last_complete_checkpoint  # noqa: E402
from training.reliable_trainer import NonFiniteTrainingError, SkipNormTrainer  # noqa: E402
from training.study_grid import BASE_MODEL, RunSpec  # noqa: E402

NOT_AVAILABLE = "not available in this build"
RESULT_NAME = "result.json"
KILL_HOOK = "HF_SKIPNORM_STUDY_KILL_AFTER_SAVE"  # tests: "RUN_ID:STEP" kills the process (SIGKILL) after that save
UPDATE_RATIO_STEPS = "first and middle"  # update-to-weight ratios are recorded at step 1 and at steps // 2


# ----------------------------------------------------------------------------------------------- cells
def make_config(grid: dict, cell: str, depth: int, width: int, **extra) -> SkipNormConfig:
    """The cell's config: the study's base model < the grid's `model` < the cell's fields < `extra`. An
    encoder-decoder cell (`is_encoder_decoder: true`) gets both stacks at `depth` (N = M) and the byte tokenizer's
    vocabulary and special ids (`byte_tokenizer`)."""
    init_std = width**-0.5 if grid["init_std"] == "1/sqrt(width)" else float(grid["init_std"])
    values = {**BASE_MODEL, **grid["model"], **grid["cells"][cell], **extra}
    values.update(hidden_size=width, num_hidden_layers=depth)
    if values.get("is_encoder_decoder"):
        tokenizer = byte_tokenizer()
        # decoder_start = EOS, as BART and training/seq2seq.py do
        values.update(decoder_layers=depth, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id)
    values.setdefault("initializer_range", init_std)
    return SkipNormConfig(**values)


def model_for(config: SkipNormConfig):
    """The head the study trains: a causal LM, or for an encoder-decoder cell SkipNormForConditionalGeneration."""
    return (SkipNormForConditionalGeneration if config.is_encoder_decoder else SkipNormForCausalLM)(config)


@functools.lru_cache(maxsize=1)
def byte_tokenizer():
    """The encoder-decoder cells' tokenizer: ByT5's byte-level one (Xue et al. 2022, arXiv 2105.13626; no files, so
    offline): pad 0, EOS 1, unk 2, byte b -> b + 3, plus one mask token (259) for text infilling; vocabulary 260.
    DataCollatorForSeq2Seq pads with it, as in training/seq2seq.py."""
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0, mask_token="<mask>")


def availability(grid: dict, cell: str) -> str | None:
    """None when this build has the cell's fields and values and builds it, else why not.

    Checked against the config's own vocabulary (its dataclass fields and the value tuples next to the registries):
    PreTrainedConfig would silently keep an unknown keyword as a plain attribute, so a misspelt field or a value of
    a feature still to land is caught here, before any training."""
    from hf_skipnorm import configuration_skipnorm as vocabulary

    fields = SkipNormConfig.__dataclass_fields__
    choices = {"norm_position": vocabulary.NORM_POSITIONS, "norm_type": vocabulary.NORM_TYPES,
               "residual": vocabulary.RESIDUALS}
    for key, value in {**grid["model"], **grid["cells"][cell]}.items():
        if key not in fields:
            return f"SkipNormConfig has no field {key!r}"
        if key in choices and value not in choices[key]:
            return f"{key}={value!r} is not in this build's choices ({', '.join(choices[key])})"
    try:
        model_for(make_config(grid, cell, 2, grid["blocks"][0]["widths"][0]))  # 2 blocks: cheap to build
    except ValueError as error:
        return f"refused: {error}"
    return None


def check_cells(grid: dict) -> dict[str, str]:
    """{cell: "available" or the reason}; refuses the grid when a cell cannot be built, unless the grid asks to
    report such cells (`skip_unavailable_cells`)."""
    status = {cell: availability(grid, cell) or "available" for cell in grid["cells"]}
    bad = {c: s for c, s in status.items() if s != "available"}
    if bad and not grid["skip_unavailable_cells"]:
        raise ValueError("grid cells this build cannot train: " + "; ".join(f"{c}: {s}" for c, s in bad.items())
                         + " (fix the fields, or set \"skip_unavailable_cells\": true to report them as unavailable)")
    return status


# ----------------------------------------------------------------------------------------------- data
class ByteData:
    """The grid's text as UTF-8 byte ids (vocabulary 256): training windows at random offsets (seeded), fixed
    held-out evaluation windows, and one fixed held-out batch for the diagnostics.

    The embedded corpus (`data: {}`) is `training.data.reference_corpus` (repeated paragraphs kept once) joined and
    cut 90/10, as the study has always used it; other sources load through `training.data.load_raw_datasets`, the
    loader train.py uses (a `datasets` name, or local files, with their validation split or a held-out share)."""

    def __init__(self, grid: dict):
        from training import data as data_module

        source = grid["data"]
        if source.get("dataset_name") or source.get("train_file"):
            raw = data_module.load_raw_datasets(
                dataset_name=source.get("dataset_name"), dataset_config_name=source.get("dataset_config_name"),
                train_file=source.get("train_file"), validation_file=source.get("validation_file"),
                validation_split_percentage=source.get("validation_split_percentage", 5.0), seed=0)
            column = data_module.text_column_of(raw["train"], source.get("text_column"))
            self.train = self._bytes("\n\n".join(t for t in raw["train"][column] if t))
            self.val = self._bytes("\n\n".join(t for t in raw["validation"][column] if t))
        else:
            ids = self._bytes("\n\n".join(data_module.reference_corpus()["text"]))
            cut = int(0.9 * len(ids))
            self.train, self.val = ids[:cut], ids[cut:]
        self.grid = grid
        self.batch_size, self.seq_len = grid["batch_size"], grid["sequence_length"]
        for name, ids in (("train", self.train), ("validation", self.val)):
            if len(ids) <= self.seq_len + 1:
                raise ValueError(f"grid data: the {name} text has {len(ids)} bytes, fewer than one row of "
                                 f"sequence_length={self.seq_len}")
        self.eval_rows = self.windows(self.val, grid["eval_batches"] * self.batch_size, torch.Generator().manual_seed(1234))
        self.diagnostic = {"input_ids": self.windows(self.val, self.batch_size, torch.Generator().manual_seed(99))}
        counts = torch.bincount(self.val, minlength=256).double()
        p = counts[counts > 0] / counts.sum()
        self.unigram_entropy = float(-(p * p.log()).sum())  # nats/byte of a model that learned only byte counts

    @staticmethod
    def _bytes(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def windows(self, ids: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
        """(count, seq_len) rows at random offsets, drawn one batch at a time (the order the study always used)."""
        rows = []
        while len(rows) < count:
            starts = torch.randint(0, len(ids) - self.seq_len - 1, (self.batch_size,), generator=generator)
            rows += [ids[i : i + self.seq_len] for i in starts.tolist()]
        return torch.stack(rows[:count])

    def diagnostic_on(self, device) -> dict:
        return {key: value.to(device) for key, value in self.diagnostic.items()}

    def train_rows(self, seed: int, steps: int) -> torch.Tensor:
        return self.windows(self.train, steps * self.batch_size, torch.Generator().manual_seed(seed))

    @functools.cached_property
    def denoising(self) -> "DenoisingData":
        """The encoder-decoder cells' data, built on first use (a grid without such cells never builds it)."""
        return DenoisingData(self)


class DenoisingData:
    """The encoder-decoder cells' data: BART's text infilling (Lewis et al. 2020, arXiv 1910.13461; mask ratio 0.3,
    Poisson(3) spans, each run of spans one mask) of the same train / validation text as ByteData, made by
    training/seq2seq.py's own `denoising_dataset` (the offline task of seq2seq.py) with the byte tokenizer: chunks of
    sequence_length - 1 bytes + EOS are the targets, their noised copies the sources. The noise is drawn once per
    chunk (seed 0): every cell and seed sees the same pairs; a run's seed picks which chunks it trains on, in which
    order. Evaluation: the first eval_batches x batch_size validation pairs; diagnostics: the next batch_size."""

    def __init__(self, byte_data: ByteData):
        import datasets

        from training.seq2seq import Seq2SeqDataArguments, denoising_dataset

        self.tokenizer, self.batch_size = byte_tokenizer(), byte_data.batch_size
        grid = byte_data.grid
        length = grid["sequence_length"]
        texts = {"train": byte_data.train, "validation": byte_data.val}
        # ByteData cut the bytes 90/10; a character split by the cut is dropped (errors="ignore"), nothing else
        raw = datasets.DatasetDict({split: datasets.Dataset.from_dict(
            {"text": [bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="ignore")]}) for split, ids in texts.items()})
        options = Seq2SeqDataArguments(denoising_chunk_tokens=length, max_source_length=length, max_target_length=length)
        pairs = denoising_dataset(raw, self.tokenizer, options, seed=0)
        self.train, val = pairs["train"], pairs["validation"]
        count = grid["eval_batches"] * self.batch_size
        if len(val) < count + self.batch_size:
            raise ValueError(f"grid data: the validation text gives {len(val)} denoising pairs of sequence_length="
                             f"{length}, fewer than eval_batches x batch_size + batch_size = {count + self.batch_size}")
        self.eval_rows = val.select(range(count))
        self.diagnostic = val.select(range(count, count + self.batch_size))

    def collator(self, model):
        """training/seq2seq.py's collator: pads sources and labels (-100) and makes decoder_input_ids from the labels."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer, model=model, label_pad_token_id=-100)

    def train_rows(self, seed: int, steps: int):
        """steps x batch_size training pairs drawn with replacement (seeded), in the order the run sees them."""
        picks = torch.randint(0, len(self.train), (steps * self.batch_size,), generator=torch.Generator().manual_seed(seed))
        return self.train.select(picks.tolist())

    def diagnostic_on(self, device, model) -> dict:
        batch = self.collator(model)([dict(row) for row in self.diagnostic])
        return {key: value.to(device) for key, value in batch.items()}


class Rows(torch.utils.data.Dataset):
    """Rows of token ids as causal-LM examples (the model shifts the labels)."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


# ----------------------------------------------------------------------------------------------- the Trainer
class StudyTrainer(SkipNormTrainer):
    """SkipNormTrainer with the study's two conventions: weight decay on matrices only (gains, biases and learned
    scalars such as ReZero's alpha or DyT's alpha are not decayed, whatever their module is called), and batches in
    the order they were drawn (they are already random windows; a sequential order makes a resumed run skip exactly
    the batches it had seen)."""

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, p in model.named_parameters() if p.ndim >= 2]

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.last_inputs = inputs  # the batch a non-finite step came from, to locate where it went non-finite
        return super().training_step(model, inputs, num_items_in_batch)


def stacks(model) -> dict:
    """{name: module with `layers`}: the model itself, or an encoder-decoder's encoder and decoder."""
    if model.config.is_encoder_decoder:
        return {"encoder": model.model.encoder, "decoder": model.model.decoder}
    return {"model": model}


class UpdateRatios(TrainerCallback):
    """Update-to-weight ratios (hf_skipnorm.diagnostics.update_ratios) at the given optimizer steps, each written to
    `path` at once (a resumed run keeps those of its first attempt). An encoder-decoder's are per stack:
    {step: {"encoder": rows, "decoder": rows}}."""

    def __init__(self, steps: set[int], path: str):
        self.steps, self.path, self.before = steps, path, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 in self.steps:
            self.before = {name: snapshot_weights(stack) for name, stack in stacks(model).items()}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.before is not None:
            record = read_json(self.path, {})
            rows = {name: update_ratios(stack, self.before[name]) for name, stack in stacks(model).items()}
            record[str(state.global_step + 1)] = rows.get("model", rows)
            write_json(self.path, record)
            self.before = None


class KillAfterSave(TrainerCallback):
    """Test hook (env HF_SKIPNORM_STUDY_KILL_AFTER_SAVE="RUN_ID:STEP"): SIGKILL this process right after the
    checkpoint of STEP is saved, as a crash or a pre-empted job would."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


@torch.no_grad()
def first_nonfinite_block(model, batch: dict) -> str | None:
    """Where a forward pass on `batch` first stops being finite: 'embeddings', 'block i' (0-based, as in the
    diagnostics tables; an encoder-decoder's 'encoder block i' / 'decoder block i'), 'output (final norm / logits)',
    or None when the forward pass is finite (then the non-finite values came from the backward pass)."""
    if model.config.is_encoder_decoder:
        blocks = [(f"{name} block {i}", layer) for name, stack in stacks(model).items()
                  for i, layer in enumerate(stack.layers)]
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids") if k in batch}
    else:
        blocks = [(f"block {i}", layer) for i, layer in enumerate(decoder_layers(model))]
        inputs = {"input_ids": batch["input_ids"]}
    found: list[str] = []

    def watch(name):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if not found and torch.is_tensor(tensor) and not torch.isfinite(tensor).all():
                found.append(name)
        return hook

    handles = [model.get_input_embeddings().register_forward_hook(watch("embeddings"))]
    handles += [layer.register_forward_hook(watch(name)) for name, layer in blocks]
    was_training = model.training
    model.eval()
    try:
        output = model(**inputs)
        if not found and not torch.isfinite(output.logits).all():
            found.append("output (final norm / logits)")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return found[0] if found else None


def run_profile(model, batch: dict) -> dict:
    """hf_skipnorm.diagnostics.profile; for an encoder-decoder `profile_encoder_decoder`, with the decoder's rows (the
    stack that makes the output) as `layers` / `embedding`, so every table reads one shape, and the encoder's rows
    under `encoder`."""
    if not model.config.is_encoder_decoder:
        return profile(model, batch)
    both = profile_encoder_decoder(model, batch)
    return {"loss": both["loss"], **both["decoder"], "encoder": both["encoder"]}


def study_device() -> torch.device:
    """Where the diagnostics run: this process's GPU when there is one (the Trainer trains there too)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------- files
def write_json(path: str, value) -> None:
    """Write JSON atomically: a complete file or the previous one, never half of one."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as handle:
        json.dump(value, handle, indent=0, default=float)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_json(path: str, default=None):
    if not os.path.isfile(path):
        return default
    with open(path) as handle:
        return json.load(handle)


# ----------------------------------------------------------------------------------------------- one run
def training_arguments(grid: dict, spec: RunSpec, trainer_dir: str) -> TrainingArguments:
    optimizer = grid["optimizer"]
    warmup_steps = int(grid["warmup_fraction"] * grid["steps"]) if spec.warmup else 0
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=trainer_dir, max_steps=grid["steps"], per_device_train_batch_size=grid["batch_size"],
        per_device_eval_batch_size=grid["batch_size"], learning_rate=spec.lr,
        # linear warm-up to the peak ((step + 1) / warmup_steps), then cosine to min_lr_fraction of the peak
        lr_scheduler_type="cosine_warmup_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": grid["min_lr_fraction"]},
        warmup_steps=warmup_steps, weight_decay=optimizer["weight_decay"], adam_beta1=optimizer["beta1"],
        adam_beta2=optimizer["beta2"], adam_epsilon=optimizer["eps"], max_grad_norm=float(grid["max_grad_norm"]),
        logging_steps=1, eval_strategy="steps", eval_steps=grid["eval_every"], save_strategy="steps",
        save_steps=grid["save_every"], save_total_limit=1, report_to=grid["report_to"],
        seed=spec.seed, data_seed=spec.seed, use_cpu=not cuda,
        bf16=grid["precision"] == "bf16", fp16=grid["precision"] == "fp16", torch_compile=grid["torch_compile"],
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=cuda, prediction_loss_only=True,
    )


def curves(log_history: list[dict]) -> dict:
    """Per-step training loss and gradient norm, and the evaluation curve, from the Trainer's log history."""
    train = {}
    evals = {}
    for entry in log_history:
        if "loss" in entry and "grad_norm" in entry:
            train[entry["step"]] = (entry["loss"], entry["grad_norm"])
        if "eval_loss" in entry:
            evals[entry["step"]] = entry["eval_loss"]
    steps = sorted(train)
    return {"train_loss": [train[s][0] for s in steps], "grad_norm": [train[s][1] for s in steps],
            "eval_curve": [[s, evals[s]] for s in sorted(evals)]}


def train_run(grid: dict, spec: RunSpec, run_dir: str, data: ByteData, availability_status: str,
              save_model_to: str | None = None, callbacks=()) -> dict:
    """Train one run through StudyTrainer (resuming from its last checkpoint when there is one) and return its
    result: curves, final validation loss, diagnostics at init and at the end, update ratios, divergence."""
    fingerprint = study_grid.run_fingerprint(grid, spec)
    result = {"run_id": spec.run_id, **spec.as_dict(), "fields": grid["cells"][spec.cell],
              "fingerprint": study_grid.fingerprint_digest(fingerprint)}
    if availability_status != "available":
        return {**result, "status": NOT_AVAILABLE, "reason": availability_status}
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "fingerprint.json"), fingerprint)
    transformers_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint drowns the progress lines
    start, start_cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(spec.seed)
    model = model_for(make_config(grid, spec.cell, spec.depth, spec.width))
    model.train()
    if model.config.is_encoder_decoder:  # BART text infilling pairs (DenoisingData), padded by the seq2seq collator
        pairs = data.denoising
        train_set, eval_set, collator = pairs.train_rows(spec.seed, grid["steps"]), pairs.eval_rows, pairs.collator(model)
        diagnostic_on = lambda device: pairs.diagnostic_on(device, model)  # noqa: E731
        held_out = diagnostic_on  # the batch to locate a non-finite validation loss in
    else:
        train_set, eval_set, collator = Rows(data.train_rows(spec.seed, grid["steps"])), Rows(data.eval_rows), None
        diagnostic_on = data.diagnostic_on
        held_out = lambda device: {"input_ids": data.eval_rows[: data.batch_size].to(device)}  # noqa: E731
    init_path = os.path.join(run_dir, "init_profile.json")
    if not os.path.isfile(init_path):  # computed once, on the freshly initialized model (a resumed run keeps it)
        write_json(init_path, run_profile(model.to(study_device()), diagnostic_on(study_device())))
    trainer_dir = os.path.join(run_dir, "trainer")
    resume = last_complete_checkpoint(trainer_dir)  # only a checkpoint with its completion marker
    attempts = read_json(os.path.join(run_dir, "attempts.json"), [])
    ratios_path = os.path.join(run_dir, "update_ratios.json")
    extra = [UpdateRatios({1, max(1, grid["steps"] // 2)}, ratios_path), *callbacks]
    kill = os.environ.get(KILL_HOOK, "")
    if kill.rsplit(":", 1)[0] == spec.run_id:
        extra.append(KillAfterSave(int(kill.rsplit(":", 1)[1])))
    trainer = StudyTrainer(model=model, args=training_arguments(grid, spec, trainer_dir), train_dataset=train_set,
                           eval_dataset=eval_set, data_collator=collator, callbacks=extra, on_nonfinite="stop",
                           run_record=fingerprint)  # every checkpoint says which run it belongs to
    trainer.remove_callback(PrinterCallback)  # the study prints one line per run; the numbers go to result.json
    trainer.remove_callback(ProgressCallback)
    status, divergence = "trained", None
    try:
        metrics = trainer.train(resume_from_checkpoint=resume).metrics
    except NonFiniteTrainingError as error:
        status, metrics = "diverged", {}
        divergence = {"step": trainer.state.global_step + 1, "message": str(error),
                      "first_nonfinite": first_nonfinite_block(model, trainer.last_inputs)
                      or "backward pass (the forward pass was finite)"}
    history = curves(trainer.state.log_history)
    val_loss = None
    if status == "trained":
        last_eval = history["eval_curve"][-1] if history["eval_curve"] else None
        val_loss = last_eval[1] if last_eval and last_eval[0] == grid["steps"] else trainer.evaluate()["eval_loss"]
        history = curves(trainer.state.log_history)
        if not math.isfinite(val_loss):
            status = "diverged"
            divergence = {"step": grid["steps"], "message": f"validation loss {val_loss} after training",
                          "first_nonfinite": first_nonfinite_block(model, held_out(trainer.args.device))}
    # cpu_seconds: this process's CPU time (all its threads); on a shared machine it is what the run would take idle
    attempts.append({"resumed_from": resume and os.path.basename(resume), "seconds": time.perf_counter() - start,
                     "cpu_seconds": time.process_time() - start_cpu,
                     "train_runtime": metrics.get("train_runtime"), "host": platform.node()})
    result.update(status=status, val_loss=val_loss if status == "trained" else None, divergence=divergence,
                  **history, init_profile=read_json(init_path), update_ratio=read_json(ratios_path, {}),
                  warmup_steps=int(grid["warmup_fraction"] * grid["steps"]) if spec.warmup else 0,
                  parameters=sum(p.numel() for p in model.parameters()), attempts=attempts,
                  seconds=sum(a["seconds"] for a in attempts),
                  device=str(trainer.args.device), resumed=any(a["resumed_from"] for a in attempts))
    if status == "trained":
        result["trained_profile"] = run_profile(model, diagnostic_on(trainer.args.device))
        if save_model_to:
            trainer.save_model(save_model_to)
            write_json(os.path.join(save_model_to, "training_info.json"), {
                **spec.as_dict(), "fields": grid["cells"][spec.cell], "val_loss": val_loss, "steps": grid["steps"],
                "batch_size": grid["batch_size"], "seq_len": grid["sequence_length"],
                "warmup_steps": result["warmup_steps"], "optimizer": f"AdamW {grid['optimizer']} (decay on matrices)",
                "schedule": f"linear warm-up then cosine to {grid['min_lr_fraction']:.0%}",
                "tokenizer": ("ByT5's byte tokenizer (bytes + pad, EOS, mask: vocab 260), BART text infilling pairs"
                              if model.config.is_encoder_decoder else "bytes (vocab 256)"),
                "dataset": describe_data(grid), "unigram_entropy": data.unigram_entropy})
    write_json(os.path.join(run_dir, "attempts.json"), attempts)
    return result


def describe_data(grid: dict) -> str:
    source = grid["data"]
    if source.get("dataset_name"):
        config = source.get("dataset_config_name")
        return f"`datasets` {source['dataset_name']}" + (f" ({config})" if config else "")
    if source.get("train_file"):
        validation = source.get("validation_file")
        return f"local files {source['train_file']}" + (f", validation {validation}" if validation else "")
    return "pydoc_data.topics (Python Language Reference, repeated paragraphs once), 90/10 split"


# ----------------------------------------------------------------------------------------------- init-only and overhead
def init_gradients(grid: dict, data: ByteData) -> dict:
    """Per-layer MLP-weight gradient norms at init (finding 1) for the probe cells and depths, averaged over seeds;
    for a Pre-LN probe also with the embeddings multiplied by sqrt(d) (`pre_sqrt_d`, Vaswani et al.'s convention):
    a control for how much Pre-LN's profile depends on the scale the stream starts at."""
    probes, width = grid["init_probes"], grid["blocks"][0]["widths"][0]
    out = {}
    variants = {cell: (cell, {}) for cell in probes["cells"]}
    if "pre" in probes["cells"] and "embedding_multiplier" in SkipNormConfig.__dataclass_fields__:
        variants["pre_sqrt_d"] = ("pre", {"embedding_multiplier": width**0.5})
    for name, (cell, extra) in variants.items():
        for depth in probes["depths"]:
            per_seed = []
            for seed in probes["seeds"]:
                torch.manual_seed(seed)
                model = SkipNormForCausalLM(make_config(grid, cell, depth, width, **extra))
                batch = data.diagnostic_on(study_device())
                per_seed.append([row["grad_norm/mlp"] for row in profile(model.to(study_device()), batch)["layers"]])
            out[f"{name}/{depth}"] = [sum(v) / len(v) for v in zip(*per_seed)]
    return out


def callback_overhead(grid: dict, data: ByteData, workdir: str) -> dict:
    """Wall time of the same short Trainer run with and without `DiagnosticsCallback`, plus the callback's timer."""
    from transformers import Trainer

    from hf_skipnorm.diagnostics import attach_diagnostics

    steps, every = grid["overhead_steps"], max(1, grid["overhead_steps"] // 4)
    # normalize_grid refused a grid without a causal cell here
    causal = [c for c in grid["cells"] if not study_grid.is_seq2seq_cell(grid, c)]
    cell = "pre" if "pre" in causal else causal[0]
    depth = grid["blocks"][0]["depths"][0]
    timings = {}
    for label in ("without", "with", "with_2"):  # with_2: a second timed run, to show the wall-clock noise
        torch.manual_seed(0)
        model = SkipNormForCausalLM(make_config(grid, cell, depth, grid["blocks"][0]["widths"][0]))
        args = TrainingArguments(output_dir=os.path.join(workdir, f"overhead_{label}"), max_steps=steps,
                                 per_device_train_batch_size=grid["batch_size"], learning_rate=1e-3,
                                 logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                                 disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=Rows(data.train_rows(7, steps)))
        trainer.remove_callback(PrinterCallback)
        callback = None
        if label != "without":
            callback = attach_diagnostics(trainer, every_n_steps=every,
                                          jsonl_path=os.path.join(workdir, f"overhead_{label}", "diagnostics.jsonl"))
        start = time.perf_counter()
        trainer.train()
        timings[label] = {"seconds": time.perf_counter() - start,
                          "callback_seconds": callback.overhead_seconds if callback else 0.0}
    return {"steps": steps, "every_n_steps": every, "cell": cell, "depth": depth, "runs": timings,
            "callback_fraction": timings["with"]["callback_seconds"] / timings["with"]["seconds"],
            "wall_overhead": timings["with"]["seconds"] / timings["without"]["seconds"] - 1}


# ----------------------------------------------------------------------------------------------- the sweep
def environment() -> dict:
    import accelerate
    import transformers

    import hf_skipnorm

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "hf_skipnorm": getattr(hf_skipnorm, "__version__", "n/a"),
            "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        import subprocess

        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout
        info["git_commit"] = None
    return info


def reference_model_names(grid: dict) -> dict[str, str]:
    """{run_id: model name} of the runs whose trained model is saved with a card."""
    names = {}
    for entry in grid["reference_models"]:
        run = entry["run"]
        spec = RunSpec(run["cell"], run["depth"], run.get("width", grid["blocks"][0]["widths"][0]), float(run["lr"]),
                       run.get("warmup", True), run.get("seed", 0))
        names[spec.run_id] = entry["name"]
    return names


class Sweep:
    """The runs of one grid in one output folder: which are done, which this process trains, and the ETA."""

    def __init__(self, grid: dict, output_dir: str, rank: int = 0, world_size: int = 1, log=print):
        self.grid, self.output_dir, self.rank, self.world_size = grid, output_dir, rank, world_size
        self.runs = study_grid.expand(grid)
        self.mine = study_grid.assign(self.runs, grid, rank, world_size)
        self.runs_dir = os.path.join(output_dir, "runs")
        self.log = log
        self.started = time.perf_counter()
        self.cost_done = 0.0

    def run_dir(self, spec: RunSpec) -> str:
        return os.path.join(self.runs_dir, spec.run_id)

    def finished(self, spec: RunSpec) -> dict | None:
        """The run's stored result when it was made with the same settings; a different one is refused."""
        run_dir = self.run_dir(spec)
        stored = read_json(os.path.join(run_dir, "fingerprint.json"))
        expected = study_grid.run_fingerprint(self.grid, spec)
        if stored is not None and stored != expected:
            changed = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            raise ValueError(f"run {spec.run_id} in {run_dir} was made with other settings (changed: {changed}); "
                             "use a new --output_dir, or --overwrite_output_dir to start the whole study again")
        return read_json(os.path.join(run_dir, RESULT_NAME))

    def pending(self, spec: RunSpec, status: dict[str, str]) -> bool:
        """Not finished yet, or recorded as unavailable and available now (a feature that landed since)."""
        result = self.finished(spec)
        return result is None or (result.get("status") == NOT_AVAILABLE and status[spec.cell] == "available")

    def done_count(self, status: dict[str, str]) -> int:
        """Runs with a result that stands (not an 'unavailable' one of a cell that is available now)."""
        done = 0
        for spec in self.runs:
            result = read_json(os.path.join(self.run_dir(spec), RESULT_NAME))
            done += result is not None and not (result.get("status") == NOT_AVAILABLE and status[spec.cell] == "available")
        return done

    def eta(self, remaining_mine: list[RunSpec]) -> str:
        if not self.cost_done:
            return "estimate after the first run"
        rate = (time.perf_counter() - self.started) / self.cost_done  # seconds per unit of estimated cost
        seconds = rate * sum(study_grid.estimated_cost(self.grid, s) for s in remaining_mine)
        return f"about {format_seconds(seconds)} left for this process"

    def train_mine(self, data: ByteData, status: dict[str, str], callbacks=()) -> None:
        references = reference_model_names(self.grid)
        todo = [s for s in self.mine if self.pending(s, status)]
        skipped = len(self.mine) - len(todo)
        self.log(f"[study] process {self.rank}/{self.world_size}: {len(self.mine)} of {len(self.runs)} runs "
                 f"({skipped} already finished, {len(todo)} to train)")
        for index, spec in enumerate(todo):
            run_dir = self.run_dir(spec)
            save_to = os.path.join(run_dir, "model") if spec.run_id in references else None
            resuming = last_complete_checkpoint(os.path.join(run_dir, "trainer")) is not None
            result = train_run(self.grid, spec, run_dir, data, status[spec.cell], save_to, callbacks)
            result["process"], result["finished_at"] = self.rank, time.time()
            os.makedirs(run_dir, exist_ok=True)  # an unavailable cell's run has no folder yet
            write_json(os.path.join(run_dir, RESULT_NAME), result)
            if not self.grid["keep_checkpoints"]:  # the result is written: its checkpoints are only disk space now
                for checkpoint in checkpoint_folders(os.path.join(run_dir, "trainer")):
                    shutil.rmtree(checkpoint, ignore_errors=True)
            if result["status"] != NOT_AVAILABLE:  # a run that did not train says nothing about the time per run
                self.cost_done += study_grid.estimated_cost(self.grid, spec)
            val = result.get("val_loss")
            self.log(f"[study] {spec.run_id}: {result['status']}"
                     + (f" val {val:.3f}" if val is not None else "")
                     + (f" at step {result['divergence']['step']} ({result['divergence']['first_nonfinite']})"
                        if result.get("divergence") else "")
                     + (" (resumed)" if resuming else "") + f", {result.get('seconds', 0):.0f}s | sweep "
                     f"{self.done_count(status)}/{len(self.runs)} runs done, {self.eta(todo[index + 1:])}")

    def wait_for_all(self, status: dict[str, str], poll_seconds: float = 2.0) -> list[dict]:
        """Every run's result, in grid order (process 0 waits for the other processes' runs, including an
        'unavailable' result of a cell that is available now and being trained elsewhere)."""
        announced = -1
        while True:
            missing = [s for s in self.runs if self.pending(s, status)]
            if not missing:
                return [read_json(os.path.join(self.run_dir(s), RESULT_NAME)) for s in self.runs]
            if len(missing) != announced:
                self.log(f"[study] waiting for {len(missing)} run(s) of the other processes")
                announced = len(missing)
            time.sleep(poll_seconds)


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


def prepare_output_dir(output_dir: str, overwrite: bool, rank: int) -> None:
    """A new or empty folder, or a study folder of this tool (resumed); anything else is refused."""
    marker = os.path.join(output_dir, "study_grid.json")
    if rank == 0 and os.path.isdir(output_dir) and os.listdir(output_dir):
        if overwrite:
            for name in os.listdir(output_dir):
                path = os.path.join(output_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        elif not os.path.isfile(marker):
            raise ValueError(f"--output_dir {output_dir!r} is not empty and holds no study (no study_grid.json): "
                             "choose a new folder, or pass --overwrite_output_dir to replace its contents")
    os.makedirs(output_dir, exist_ok=True)


def default_output_dir(grid_source: str, grid_path: str) -> str:
    """runs/study-<grid name> under the repository: a folder of its own, never the committed report."""
    name = grid_source if grid_source in study_grid.BUILTIN_GRIDS else os.path.splitext(os.path.basename(grid_path))[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", f"study-{name}")


def run_study(grid_source: str, output_dir: str, overwrite: bool = False, rank: int = 0, world_size: int = 1,
              cards: str | None = None, command: str | None = None, log=print, callbacks=()) -> dict | None:
    """Train this process's share of the grid; on process 0, then write the report. Returns the results (process 0)."""
    from training import study_report

    raw, grid_path = study_grid.load_grid(grid_source)
    grid = study_grid.normalize_grid(raw)
    started, started_at = time.perf_counter(), time.time()
    if world_size > 1:
        # One barrier, so no process writes into the folder before process 0 has checked (or emptied) it; then the
        # group is closed and the launch variables hidden, so each process's Trainer trains alone.
        import torch.distributed as dist

        dist.init_process_group("gloo")
        try:
            if rank == 0:
                prepare_output_dir(output_dir, overwrite, rank)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        for name in LAUNCH_ENV:
            os.environ.pop(name, None)
    prepare_output_dir(output_dir, overwrite and world_size == 1, rank)
    if rank == 0:
        previous = read_json(os.path.join(output_dir, "study_grid.json"))
        if previous is not None and previous != raw:
            log(f"[study] the grid differs from the one in {output_dir}: finished runs with unchanged settings are "
                "kept, new runs are trained")
        write_json(os.path.join(output_dir, "study_grid.json"), raw)
    torch.set_num_threads(grid["threads"])
    status = check_cells(grid)
    data = ByteData(grid)
    sweep = Sweep(grid, output_dir, rank, world_size, log)
    extras_path = os.path.join(output_dir, "extras.json")
    if rank == 0 and not os.path.isfile(extras_path):
        extras = {}
        if grid["init_probes"]:
            t0 = time.perf_counter()
            extras["init_gradients"] = init_gradients(grid, data)
            log(f"[study] init-gradient probes: {time.perf_counter() - t0:.0f}s")
        if grid["measure_callback_overhead"]:
            extras["callback_overhead"] = callback_overhead(grid, data, os.path.join(output_dir, "overhead_work"))
            shutil.rmtree(os.path.join(output_dir, "overhead_work"), ignore_errors=True)
        write_json(extras_path, extras)
    sweep.train_mine(data, status, callbacks)
    if rank != 0:
        return None
    runs = sweep.wait_for_all(status)
    results = {
        "grid": grid, "grid_file": raw, "grid_source": grid_path, "command": command or "python training/study.py",
        "processes": world_size, "environment": environment(), "availability": status,
        "unigram_entropy": data.unigram_entropy, "data": describe_data(grid), "runs": runs,
        **read_json(extras_path, {}),
        "wall_seconds": time.perf_counter() - started, "started_at": started_at,
    }
    study_report.write_report_folder(results, output_dir)
    write_cards(sweep, cards or os.path.join(output_dir, "model_cards"), log)
    log(f"[study] done: {len(runs)} runs, this invocation {format_seconds(results['wall_seconds'])} "
        f"-> {os.path.join(output_dir, 'report.md')}")
    return results


def write_cards(sweep: Sweep, cards: str, log=print) -> None:
    from model_cards.generate import validate_card, write_card

    for run_id, name in reference_model_names(sweep.grid).items():
        checkpoint = os.path.join(sweep.runs_dir, run_id, "model")
        if os.path.isdir(checkpoint):
            cell = run_id.split("-L")[0]
            fields = json.dumps(sweep.grid["cells"][cell])
            write_card(checkpoint, os.path.join(cards, name), name,
                       f"`{cell}` reference model of the hf_skipnorm norm-placement study ({fields}).")
            validate_card(os.path.join(cards, name, "README.md"))
            log(f"[study] model card: {os.path.join(cards, name, 'README.md')}")


def main(argv: list[str] | None = None, callbacks=()) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="default",
                        help="a grid JSON file, or a built-in grid: default (the causal findings; see README for the "
                             "measured time), quick (CI-sized smoke test), gpu (the GPU preset), seq2seq (the "
                             "encoder-decoder finding 9: Post-LN / Pre-LN / DeepNorm as both stacks deepen)")
    parser.add_argument("--quick", action="store_true", help="the same as --grid quick")
    parser.add_argument("--output_dir", "--out", dest="output_dir",
                        help="report and run folders (default: runs/study-<grid name>; started again with the same "
                             "command, a sweep resumes there)")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="replace the contents of a non-empty --output_dir (refused otherwise, unless it holds a "
                             "study to resume)")
    parser.add_argument("--cards", help="folder for the reference models' cards (default: OUTPUT/model_cards)")
    parser.add_argument("--report_only", "--report-only", action="store_true",
                        help="rebuild report.md and the figures from OUTPUT/results.json without training")
    args = parser.parse_args(argv)
    from training import study_report

    grid_source = "quick" if args.quick else args.grid
    if args.report_only:
        if not args.output_dir:
            parser.error("--report_only needs --output_dir")
        return study_report.rewrite(args.output_dir)
    _, grid_path = study_grid.load_grid(grid_source)
    output_dir = args.output_dir or default_output_dir(grid_source, grid_path)
    command = " ".join(["python training/study.py"] + (argv if argv is not None else sys.argv[1:]))
    if WORLD_SIZE > 1:
        command = f"torchrun --nproc_per_node {WORLD_SIZE} " + command.removeprefix("python ")
    return run_study(grid_source, output_dir, args.overwrite_output_dir, RANK, WORLD_SIZE, args.cards, command,
                     callbacks=callbacks)


if __name__ == "__main__":
    main()
