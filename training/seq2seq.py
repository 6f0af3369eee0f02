#!/usr/bin/env python
"""Train a skipnorm encoder-decoder (SkipNormForConditionalGeneration) with transformers' Seq2SeqTrainer, with
run_translation.py / run_summarization.py-style arguments, and report sacreBLEU and chrF.

  python training/seq2seq.py --output_dir runs/s2s                    # offline: denoising on the embedded corpus
  python training/seq2seq.py --output_dir runs/s2s-post --norm_position post --decoder_overrides '{"norm_position": "pre"}'
  python training/seq2seq.py --output_dir runs/ro --dataset_name wmt16 --dataset_config_name ro-en \\
      --source_lang en --target_lang ro                                # translation from the Hub (network)
  python training/seq2seq.py --output_dir runs/mt --train_file train.jsonl --source_lang en --target_lang de
  python training/seq2seq.py --output_dir runs/sum --train_file sum.jsonl --text_column text --summary_column summary
  python training/seq2seq.py --output_dir runs/s2s --resume_from_checkpoint last      # finish an interrupted run

Data. Translation: rows {"translation": {"en": ..., "de": ...}} (--source_lang/--target_lang pick the pair; both
are required for such data). Otherwise two string columns, --text_column (source, default "text") and
--summary_column (target, default "summary"). --source_prefix is prepended to every source text (T5's
"translate English to German: "). Sources are cut to --max_source_length tokens and targets to --max_target_length,
EOS included.

Offline default (no data flags): BART's text infilling (Lewis et al. 2020, arXiv 1910.13461, section 2.2) on the
embedded Python Language Reference (training/data.py). Each passage is tokenized and cut into chunks of
--denoising_chunk_tokens tokens; a chunk is the target, and its noised copy the source, by this rule
(`text_infilling`):
  1. m = round(--mask_ratio * n) of the chunk's n tokens are masked (0.3 by default, BART's);
  2. span lengths are drawn from Poisson(--poisson_lambda) (3, BART's) until they sum to at least m; the last is cut
     so that they sum to exactly m; a length-0 span masks nothing but still inserts a mask token (BART's rule);
  3. the spans are placed without overlap at uniformly random positions among the n - m kept tokens (a uniformly
     random interleaving of the k spans and the kept tokens, which keep their order);
  4. every maximal run of adjacent spans becomes ONE mask token: the source never holds two masks in a row, and the
     model must infer how many tokens each mask stands for.
The noise is drawn once per chunk from --seed (the same data on every run and on resume). The validation passages
(--validation_split_percentage) are held out; the metrics compare generate()'s reconstruction with the original.

Every setting is checked before any data is read (the model config is built and validated first; a config with
is_encoder_decoder=False is refused). Safety as in train.py (training/reliable_trainer.py, training/checkpoints.py):
atomic checkpoints, the output-folder guard, bitwise resume with the run's arguments checked, the non-finite
guard. After training it evaluates (loss; with --predict_with_generate, the default, eval_bleu and eval_chrf
from training/metrics/sacrebleu) and saves safetensors weights, config, tokenizer and a model card (README.md,
training/model_card.py as train.py writes it: the cell, data, hyperparameters, BLEU/chrF and eval loss, the loss
curve, per-stack diagnostics, the command) to --output_dir.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
import evaluate  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

from training import data  # noqa: E402
from training.arguments import (  # noqa: E402
    HELP_ALL,
    DataArguments,
    ModelArguments,
    RunArguments,
    SkipNormArguments,
    assemble_config_values,
    build_parser,
    check_arguments,
    check_step_intervals,
    run_record,
)
from training.checkpoints import check_output_dir, check_resume_matches, claim_output_dir, resolve_resume  # noqa: E402
from training.model_card import write_model_card  # noqa: E402
from training.reliable_trainer import SkipNormTrainer  # noqa: E402
from training.train import (  # noqa: E402
    launched_world_size,
    load_checkpoint_config,
    load_tokenizer,
    new_config,
    resolve_pretrained,
)

METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "sacrebleu")

# A small encoder-decoder that trains in a few minutes on a 2-core CPU; every value can be overridden.
SEQ2SEQ_MODEL_DEFAULTS = {
    "is_encoder_decoder": True, "hidden_size": 128, "num_hidden_layers": 2, "decoder_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": 256,
}

# 600 steps of 16 chunks of 32 tokens (~3 passes over the corpus): 203 s of training plus the tokenizer and a 3 s
# evaluation on a shared 2-core CPU (load ~10, one thread); eval_bleu 4.2, eval_chrf 12.1 (the model starts to copy
# the unmasked tokens; 400 steps at lr 1e-3 with 4096 tokens gave 0.5 / 5.8). More steps score higher.
SEQ2SEQ_TRAINING_DEFAULTS = dict(
    max_steps=600,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    learning_rate=2e-3,
    tokenizer_vocab_size=2048,  # a ModelArguments option; a smaller softmax learns faster at this size
    lr_scheduler_type="cosine",
    warmup_steps=0.05,  # Post-LN cells need warm-up (Xiong et al. 2020, arXiv 2002.04745)
    weight_decay=0.1,
    eval_strategy="no",  # generation-based evaluation is slow on CPU: once, after training (--eval_strategy steps: more)
    logging_steps=25,
    save_steps=300,
    save_total_limit=2,
    report_to="none",
    predict_with_generate=True,  # generation_max_length: --max_target_length (offline: the chunk's length + 8)
    dataloader_pin_memory=torch.cuda.is_available(),
    ddp_find_unused_parameters=False,
)


def shared(source, name: str, help: str | None = None):
    """train.py's definition of the argument `name` (its default and help, from the dataclass `source` in
    training/arguments.py), declared again here only by reference, so the two scripts cannot drift apart; `help`
    replaces the text where the option means something more specific for seq2seq."""
    original = source.__dataclass_fields__[name]
    return field(default=original.default, metadata={**original.metadata, **({"help": help} if help else {})})


@dataclass
class Seq2SeqDataArguments:
    """run_translation.py / run_summarization.py's data options, plus the offline denoising task's. The options
    train.py also has are its own definitions (`shared`)."""

    _argument_group_name = "data (run_translation.py / run_summarization.py-style)"

    dataset_name: str | None = shared(DataArguments, "dataset_name")
    dataset_config_name: str | None = shared(DataArguments, "dataset_config_name", "The dataset's configuration (ro-en).")
    train_file: str | None = shared(DataArguments, "train_file", "Local training data: .json/.jsonl (or .csv).")
    validation_file: str | None = shared(DataArguments, "validation_file")
    source_lang: str | None = field(default=None, metadata={"help": "Translation: the source language key (en)."})
    target_lang: str | None = field(default=None, metadata={"help": "Translation: the target language key (ro)."})
    source_prefix: str = field(default="", metadata={"help": "Prepended to every source text (T5: 'translate ...: ')."})
    text_column: str | None = shared(DataArguments, "text_column", "Non-translation data: the source column (default 'text').")
    summary_column: str | None = field(default=None, metadata={"help": "Non-translation data: the target column (default 'summary')."})
    max_source_length: int = field(default=128, metadata={"help": "Sources are cut to this many tokens (EOS included)."})
    max_target_length: int = field(default=128, metadata={"help": "Targets are cut to this many tokens (EOS included)."})
    num_beams: int | None = field(default=None, metadata={"help": "Beams for evaluation's generate (sets --generation_num_beams)."})
    max_train_samples: int | None = shared(DataArguments, "max_train_samples", "Use only the first N training examples.")
    max_eval_samples: int | None = shared(DataArguments, "max_eval_samples", "Use only the first N validation examples.")
    validation_split_percentage: float = shared(
        DataArguments, "validation_split_percentage",
        "Percent of train rows (offline: passages) held out when there is no validation split.")
    preprocessing_num_workers: int | None = shared(DataArguments, "preprocessing_num_workers")
    denoising_chunk_tokens: int = field(default=32, metadata={"help": "Offline task: tokens per chunk (the target)."})
    mask_ratio: float = field(default=0.3, metadata={"help": "Offline task: fraction of a chunk's tokens masked (BART: 0.3)."})
    poisson_lambda: float = field(default=3.0, metadata={"help": "Offline task: mean masked span length (BART: 3)."})


@dataclass
class Seq2SeqRunArguments:
    """train.py's run options that apply here (its sample options do not: seq2seq.py evaluates with BLEU/chrF)."""

    _argument_group_name = "run"

    overwrite_output_dir: bool = shared(RunArguments, "overwrite_output_dir")
    on_nonfinite: str = shared(RunArguments, "on_nonfinite")


# The options of both dataclasses above that train.py's DataArguments also has: what check_arguments/run_record read.
SHARED_DATA_FIELDS = tuple(name for name in Seq2SeqDataArguments.__dataclass_fields__
                           if name in DataArguments.__dataclass_fields__)


USAGE = "python training/seq2seq.py --output_dir DIR [options]       (" + HELP_ALL + ": every Trainer option in full)"


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = dict(SEQ2SEQ_TRAINING_DEFAULTS)
    if launched_world_size() > 1 and not torch.cuda.is_available():
        defaults["use_cpu"] = True  # a gloo group on CPU (see train.py)
    parser = build_parser(
        (ModelArguments, SkipNormArguments, Seq2SeqDataArguments, Seq2SeqRunArguments, Seq2SeqTrainingArguments),
        __doc__, USAGE, defaults, full_help=HELP_ALL in argv,
    )
    if HELP_ALL in argv:
        parser.print_help()
        raise SystemExit(0)
    check_step_intervals(vars(parser.parse_known_args(argv)[0]))
    return parser.parse_args_into_dataclasses(args=argv)[:5]


# ------------------------------------------------------------------------------------------------- checks
def check_seq2seq_arguments(data_args, training_args) -> None:
    """The seq2seq options' own refusals (train.py's check_arguments covers the Trainer's): one ValueError."""
    problems = []
    for name in ("max_source_length", "max_target_length", "denoising_chunk_tokens"):
        if getattr(data_args, name) < 2:
            problems.append(f"--{name} {getattr(data_args, name)} must be at least 2 (one token and EOS)")
    for name in ("num_beams", "max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        if value is not None and value < 1:
            problems.append(f"--{name} {value} must be at least 1")
    if training_args.generation_num_beams is not None and training_args.generation_num_beams < 1:
        problems.append(f"--generation_num_beams {training_args.generation_num_beams} must be at least 1")
    if training_args.generation_max_length is not None and training_args.generation_max_length < 1:
        problems.append(f"--generation_max_length {training_args.generation_max_length} must be at least 1")
    if not 0 < data_args.mask_ratio < 1:
        problems.append(f"--mask_ratio {data_args.mask_ratio} must be in (0, 1)")
    if not (math.isfinite(data_args.poisson_lambda) and data_args.poisson_lambda > 0):
        problems.append(f"--poisson_lambda {data_args.poisson_lambda} must be a finite number > 0")
    if bool(data_args.source_lang) != bool(data_args.target_lang):
        problems.append(
            f"--source_lang {data_args.source_lang!r} / --target_lang {data_args.target_lang!r}: translation needs both"
        )
    offline = not (data_args.dataset_name or data_args.train_file)
    if offline:
        given = [f"--{n}" for n in ("source_lang", "target_lang", "text_column", "summary_column") if getattr(data_args, n)]
        if given:
            problems.append(f"{', '.join(given)} need data (--dataset_name or --train_file); the offline default "
                            "is the denoising task on the embedded corpus")
    if data_args.source_lang and (data_args.text_column or data_args.summary_column):
        problems.append("--source_lang/--target_lang read a 'translation' column; --text_column/--summary_column "
                        "name the columns of non-translation data: give one pair, not both")
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("impossible seq2seq settings:\n  " + "\n  ".join(problems))


DECODER_ONLY_REFUSAL = (
    "SkipNormConfig.is_encoder_decoder=False: training/seq2seq.py trains encoder-decoders "
    "(SkipNormForConditionalGeneration); drop is_encoder_decoder from --config_file/--preset (seq2seq.py sets it true), "
    "or train a decoder-only model with training/train.py"
)


def check_encoder_decoder_values(values: dict) -> None:
    """Before the config is built: a decoder-only cell (--config_file/--preset with is_encoder_decoder false) is
    refused here, not by the config's own complaint about the decoder fields seq2seq.py's defaults add."""
    if values.get("is_encoder_decoder") is not True:
        raise ValueError(DECODER_ONLY_REFUSAL + f" (got is_encoder_decoder={values.get('is_encoder_decoder')!r})")


def check_encoder_decoder(config, data_args) -> None:
    """seq2seq.py trains encoder-decoders only; the sequences must fit the position table."""
    if not config.is_encoder_decoder:
        raise ValueError(DECODER_ONLY_REFUSAL)
    longest = max(data_args.max_source_length, data_args.max_target_length)
    if config.position_embedding in ("learned",) and longest + config.position_offset > config.max_position_embeddings:
        raise ValueError(
            f"--max_source_length/--max_target_length {longest} (+ position_offset {config.position_offset}) exceed "
            f"max_position_embeddings={config.max_position_embeddings}: lower them or raise --max_position_embeddings"
        )
    if longest > config.max_position_embeddings:
        raise ValueError(
            f"--max_source_length/--max_target_length {longest} exceed max_position_embeddings="
            f"{config.max_position_embeddings}: lower them or raise --max_position_embeddings"
        )


def lm_view(data_args) -> DataArguments:
    """The DataArguments train.py's check_arguments and run_record read: the shared options as given, block_size =
    --max_source_length."""
    return DataArguments(**{name: getattr(data_args, name) for name in SHARED_DATA_FIELDS},
                         block_size=data_args.max_source_length)


# ------------------------------------------------------------------------------------- BART text infilling
def text_infilling(ids, mask_id: int, rng: np.random.Generator, mask_ratio: float = 0.3, poisson_lambda: float = 3.0):
    """BART's text infilling (arXiv 1910.13461, 2.2) of one token list, by the rule of the module docstring:
    round(mask_ratio * n) tokens are masked in non-overlapping spans of Poisson(poisson_lambda) lengths (the last
    cut to fit; a length-0 span only inserts a mask), placed by a uniformly random interleaving with the kept tokens;
    each maximal run of adjacent spans becomes one `mask_id`. Returns the noised list."""
    ids = list(ids)
    n = len(ids)
    masked = min(n, int(round(mask_ratio * n)))
    lengths = []
    while sum(lengths) < masked:
        lengths.append(int(rng.poisson(poisson_lambda)))
    if lengths:
        lengths[-1] -= sum(lengths) - masked  # exactly `masked` tokens
    kept = n - masked
    slots = kept + len(lengths)
    span_slots = set(rng.choice(slots, size=len(lengths), replace=False).tolist()) if lengths else set()
    noised, position, span_index, previous_was_span = [], 0, 0, False
    for slot in range(slots):
        if slot in span_slots:
            position += lengths[span_index]
            span_index += 1
            if not previous_was_span:  # adjacent spans merge into one mask
                noised.append(mask_id)
            previous_was_span = True
        else:
            noised.append(ids[position])
            position += 1
            previous_was_span = False
    return noised


def denoising_chunk(data_args) -> int:
    """Tokens per offline example, EOS included."""
    return min(data_args.denoising_chunk_tokens, data_args.max_source_length, data_args.max_target_length)


def denoising_dataset(raw, tokenizer, data_args, seed: int):
    """Offline task: every passage cut into chunks of `denoising_chunk_tokens` tokens; source = the chunk noised by
    `text_infilling` + EOS, labels = the chunk + EOS. The noise of split s, chunk i comes from seed (seed, s, i)."""
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
    if mask is None:
        raise ValueError(f"the tokenizer has no mask token, which text infilling needs (special tokens: "
                         f"{tokenizer.all_special_tokens})")
    chunk = denoising_chunk(data_args) - 1  # + EOS
    out = {}
    for split_index, (split, dataset) in enumerate(sorted(raw.items())):
        ids = tokenizer([t for t in dataset["text"] if t], add_special_tokens=False)["input_ids"]
        chunks = [row[i : i + chunk] for row in ids for i in range(0, len(row), chunk) if len(row[i : i + chunk]) >= 2]
        sources, labels = [], []
        for index, piece in enumerate(chunks):
            rng = np.random.default_rng([seed, split_index, index])
            sources.append(text_infilling(piece, mask, rng, data_args.mask_ratio, data_args.poisson_lambda) + [eos])
            labels.append(piece + [eos])
        out[split] = datasets.Dataset.from_dict(
            {"input_ids": sources, "attention_mask": [[1] * len(s) for s in sources], "labels": labels}
        )
    return datasets.DatasetDict(out)


# ---------------------------------------------------------------------------------- translation / summary
def source_target_columns(raw, data_args) -> tuple:
    """('translation', src, tgt) for translation data, else (text_column, summary_column); refusals name the fix."""
    train = raw["train"]
    columns = train.column_names
    if "translation" in columns and not data_args.text_column:
        first = train[0]["translation"]
        languages = sorted(first) if isinstance(first, dict) else []
        if not data_args.source_lang:
            raise ValueError(
                f"the data is translation pairs (a 'translation' column; languages in the first row: {languages}): "
                "give --source_lang and --target_lang"
            )
        missing = [lang for lang in (data_args.source_lang, data_args.target_lang) if lang not in languages]
        if missing:
            raise ValueError(f"--source_lang/--target_lang {missing} not in the data's translation pairs; "
                             f"languages in the first row: {languages}")
        return "translation", data_args.source_lang, data_args.target_lang
    if data_args.source_lang:
        raise ValueError(f"--source_lang/--target_lang need a 'translation' column of {{language: text}} rows; the "
                         f"data's columns are {columns} (use --text_column and --summary_column)")
    text, summary = data_args.text_column or "text", data_args.summary_column or "summary"
    for flag, name in (("--text_column", text), ("--summary_column", summary)):
        if name not in columns:
            raise ValueError(f"{flag} {name!r} is not a column of the data; columns: {columns}")
    return None, text, summary


def _cut(ids, eos: int, max_length: int):
    """At most max_length ids ending in EOS: the tokenizer's own EOS (Hub tokenizers add one) is not doubled."""
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return ids[: max_length - 1] + [eos]


def pair_texts(batch, columns, prefix: str):
    kind, source, target = columns
    if kind == "translation":
        pairs = batch["translation"]
        return [prefix + p[source] for p in pairs], [p[target] for p in pairs]
    return [prefix + t for t in batch[source]], list(batch[target])


def tokenize_pairs(raw, tokenizer, columns, data_args):
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: sources and targets end with it")

    def tokenize(batch):
        sources, targets = pair_texts(batch, columns, data_args.source_prefix)
        keep = [i for i, (s, t) in enumerate(zip(sources, targets)) if s and t]
        source_ids = tokenizer([sources[i] for i in keep])["input_ids"]
        target_ids = tokenizer(text_target=[targets[i] for i in keep])["input_ids"]
        source_ids = [_cut(ids, eos, data_args.max_source_length) for ids in source_ids]
        return {"input_ids": source_ids, "attention_mask": [[1] * len(ids) for ids in source_ids],
                "labels": [_cut(ids, eos, data_args.max_target_length) for ids in target_ids]}

    out = {}
    for split in ("train", "validation"):
        out[split] = raw[split].map(tokenize, batched=True, remove_columns=raw[split].column_names,
                                    num_proc=data_args.preprocessing_num_workers)
        if len(out[split]) == 0:
            raise ValueError(f"the {split} split has no rows with both a source and a target text")
    return datasets.DatasetDict(out)


# ------------------------------------------------------------------------------------------------ metrics
def make_compute_metrics(tokenizer):
    """eval_bleu and eval_chrf (sacrebleu, offline module) of the decoded generations against the labels."""
    metric = evaluate.load(METRIC_PATH)
    pad = tokenizer.pad_token_id

    def compute_metrics(prediction):
        predictions, labels = prediction.predictions, prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        if predictions.ndim == 3:
            raise ValueError("compute_metrics got logits, not generated ids: pass --predict_with_generate true")
        predictions = np.where(predictions != -100, predictions, pad)
        labels = np.where(labels != -100, labels, pad)
        hypotheses = [t.strip() for t in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        references = [[t.strip()] for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        scores = metric.compute(predictions=hypotheses, references=references)
        lengths = [int(np.count_nonzero(row != pad)) for row in predictions]
        return {"bleu": scores["bleu"], "chrf": scores["chrf"], "gen_len": float(np.mean(lengths))}

    return compute_metrics


class SkipNormSeq2SeqTrainer(SkipNormTrainer, Seq2SeqTrainer):
    """Seq2SeqTrainer (generation in evaluate/predict) with SkipNormTrainer's guarantees: atomic checkpoints,
    the non-finite guard, no step past max_steps on resume, the run record in every checkpoint."""


def describe(data_args) -> str:
    if data_args.dataset_name:
        return f"{data_args.dataset_name} ({data_args.dataset_config_name})"
    if data_args.train_file:
        return f"{data_args.train_file} / {data_args.validation_file or 'held out from train'}"
    return f"text infilling on {data.CORPUS_SOURCE}"


def describe_for_card(data_args, training_args) -> tuple[str, str]:
    """(dataset name for the card's metadata, the card's Data section)."""
    lengths = (f"sources cut to {data_args.max_source_length} tokens and targets to {data_args.max_target_length} "
               "(EOS included)" + (f", sources prefixed with {data_args.source_prefix!r}" if data_args.source_prefix else ""))
    pair = (f", translation {data_args.source_lang} -> {data_args.target_lang}" if data_args.source_lang else
            f", columns {data_args.text_column or 'text'} -> {data_args.summary_column or 'summary'}")
    if data_args.dataset_name:
        name = data_args.dataset_name + (f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else "")
        return data_args.dataset_name, f"`datasets` source {name}{pair}; {lengths}."
    if data_args.train_file:
        return "local-files", (f"Local files: train `{data_args.train_file}`, validation "
                               f"`{data_args.validation_file or 'held out from train'}`{pair}; {lengths}.")
    return "pydoc_data.topics", (
        f"BART text infilling (Lewis et al. 2020, arXiv 1910.13461) on the embedded corpus, {data.CORPUS_SOURCE}: "
        f"chunks of {denoising_chunk(data_args)} tokens (EOS included) are the targets, their noised copies the sources "
        f"({data_args.mask_ratio:g} of the tokens masked in Poisson({data_args.poisson_lambda:g}) spans, each run of "
        f"spans one mask token; noise seeded by --seed {training_args.seed}); "
        f"{data_args.validation_split_percentage:g}% of the passages held out for validation.")


def main(argv=None, callbacks=()):
    command = "python training/seq2seq.py " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    model_args, skipnorm_args, data_args, run_args, training_args = parse_args(argv)

    # ---- every setting is checked here, before any data is read or a tokenizer trained
    lm_args = lm_view(data_args)
    check_arguments(model_args, lm_args, RunArguments(on_nonfinite=run_args.on_nonfinite, sample_max_new_tokens=0),
                    training_args)
    check_seq2seq_arguments(data_args, training_args)
    if data_args.num_beams is not None:
        training_args.generation_num_beams = data_args.num_beams
    if training_args.world_size != launched_world_size():
        raise RuntimeError(f"{launched_world_size()} processes were launched but the Trainer sees world_size="
                           f"{training_args.world_size}")
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    requested = assemble_config_values(model_args, skipnorm_args, defaults={})
    source = None
    if resume:
        config = load_checkpoint_config(resume, resume, requested, "--resume_from_checkpoint")
    elif model_args.model_name_or_path:
        source = resolve_pretrained(model_args.model_name_or_path, model_args)
        config = load_checkpoint_config(source, model_args.model_name_or_path, requested, "--model_name_or_path")
    tokenizer = load_tokenizer(model_args, source, resume)
    if not (resume or source):
        config_values = assemble_config_values(model_args, skipnorm_args, defaults=SEQ2SEQ_MODEL_DEFAULTS)
        check_encoder_decoder_values(config_values)
        if tokenizer is None:
            config_values.setdefault("decoder_start_token_id", data.SPECIAL_TOKENS.index(data.EOS_TOKEN))
        else:
            config_values.setdefault("decoder_start_token_id", tokenizer.eos_token_id)
        config = new_config(config_values, tokenizer, vocab_size=model_args.tokenizer_vocab_size)
    check_encoder_decoder(config, data_args)
    if tokenizer is not None:
        data.check_tokenizer_fits(tokenizer, config.vocab_size)
    record = run_record(training_args, lm_args, model_args, extra={
        name: getattr(data_args, name) for name in (
            "source_lang", "target_lang", "source_prefix", "summary_column", "max_source_length", "max_target_length",
            "max_train_samples", "max_eval_samples", "denoising_chunk_tokens", "mask_ratio", "poisson_lambda")
    })
    if resume:
        check_resume_matches(resume, record)
    data.check_data_files(data_args.train_file, data_args.validation_file)
    check_output_dir(training_args.output_dir, run_args.overwrite_output_dir, resume)
    set_seed(training_args.seed)

    # ---- data (and the tokenizer, when one is trained)
    raw = data.load_raw_datasets(
        dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file, validation_file=data_args.validation_file,
        validation_split_percentage=data_args.validation_split_percentage, seed=training_args.seed,
        cache_dir=model_args.cache_dir,
    )
    offline = not (data_args.dataset_name or data_args.train_file)
    columns = None if offline else source_target_columns(raw, data_args)
    if tokenizer is None:
        if offline:
            texts = (t for t in raw["train"]["text"] if t)
        else:
            texts = itertools.chain.from_iterable(
                pair_texts(raw["train"][i : i + 1000], columns, data_args.source_prefix)[k]
                for i in range(0, len(raw["train"]), 1000) for k in (0, 1)
            )
        tokenizer = data.train_tokenizer(texts, vocab_size=model_args.tokenizer_vocab_size)
        config = new_config(config_values, tokenizer)
        data.check_tokenizer_fits(tokenizer, config.vocab_size)
    with training_args.main_process_first(desc="tokenize"):
        if offline:
            tokenized = denoising_dataset(raw, tokenizer, data_args, training_args.seed)
        else:
            tokenized = tokenize_pairs(raw, tokenizer, columns, data_args)
    train_set, eval_set = tokenized["train"], tokenized["validation"]
    if data_args.max_train_samples:
        train_set = train_set.select(range(min(data_args.max_train_samples, len(train_set))))
    if data_args.max_eval_samples:
        eval_set = eval_set.select(range(min(data_args.max_eval_samples, len(eval_set))))

    # ---- model and Trainer
    use_cache = config.use_cache
    dtype = model_args.resolved_dtype()
    if source:
        model = AutoModelForSeq2SeqLM.from_pretrained(
            source, config=config, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            trust_remote_code=model_args.trust_remote_code,
        )
    else:
        model = AutoModelForSeq2SeqLM.from_config(config, dtype=getattr(torch, "float32" if dtype == "auto" else dtype))
    if training_args.generation_max_length is None:  # counts the decoder-start token too
        training_args.generation_max_length = (denoising_chunk(data_args) + 8) if offline else data_args.max_target_length
    model.generation_config.max_length = training_args.generation_max_length  # also what a reloaded model generates
    if training_args.generation_num_beams:
        model.generation_config.num_beams = training_args.generation_num_beams
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    trainer = SkipNormSeq2SeqTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        data_collator=collator, callbacks=list(callbacks), on_nonfinite=run_args.on_nonfinite,
        compute_metrics=make_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        run_record=record,
    )
    num_parameters = sum(p.numel() for p in model.parameters())
    trainer.check_free_space()
    if trainer.is_world_process_zero():
        claim_output_dir(training_args.output_dir, run_args.overwrite_output_dir, resume, record)
    if training_args.should_log:
        decoder = config.stack_config("decoder")
        print(
            f"skipnorm encoder-decoder: encoder norm_position={config.norm_position} norm_type={config.norm_type} "
            f"residual={config.residual} x {config.num_hidden_layers}; decoder norm_position={decoder.norm_position} "
            f"norm_type={decoder.norm_type} residual={decoder.residual} x {config.decoder_depth}; width "
            f"{config.hidden_size}, {num_parameters:,} parameters; data: {describe(data_args)}: {len(train_set)} train / "
            f"{len(eval_set)} validation examples" + (f"; resuming from {resume}" if resume else "")
        )

    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    eval_metrics = trainer.evaluate(metric_key_prefix="eval")
    metrics.update(eval_metrics)
    if trainer.nonfinite_skipped_steps:
        metrics["nonfinite_skipped_steps"] = trainer.nonfinite_skipped_steps
    model.config.use_cache = use_cache
    trainer.save_model()
    trainer.save_state()
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("all", metrics)
    if trainer.is_world_process_zero():
        dataset_name, data_description = describe_for_card(data_args, training_args)
        generation = (f"Evaluation: sacreBLEU and chrF (`training/metrics/sacrebleu`, the sacrebleu package) of "
                      f"`generate()` (beams {training_args.generation_num_beams or 1}, at most "
                      f"{training_args.generation_max_length} tokens) against the references; eval_loss is the "
                      "teacher-forced cross-entropy per target token." if training_args.predict_with_generate else
                      "Evaluation: eval_loss, the teacher-forced cross-entropy per target token (no generation: "
                      "--predict_with_generate false).")
        write_model_card(
            training_args.output_dir, config, training_args, data_description, dataset_name, metrics, num_parameters,
            script="seq2seq.py", task="seq2seq-lm", command=command,
            note=(f"Continued from `{model_args.model_name_or_path}`. " if source else "") + generation,
        )
        shown = ", ".join(f"{k} {eval_metrics[k]:.2f}" for k in ("eval_loss", "eval_bleu", "eval_chrf") if k in eval_metrics)
        print(f"Saved to {training_args.output_dir}: {shown}")
    return metrics


if __name__ == "__main__":
    main()
