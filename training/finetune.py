#!/usr/bin/env python
"""Fine-tune a saved skipnorm model for sequence or token classification with the transformers Trainer.

    python training/finetune.py --model_name_or_path runs/main --output_dir runs/topics
    python training/finetune.py --model_name_or_path runs/main --output_dir runs/spans --task token

Default tasks are built from the embedded Language Reference, so they run with no network:
- `--task sequence` (AutoModelForSequenceClassification): which topic of the reference a paragraph comes from
  (the `--num_topics` topics with the most paragraphs);
- `--task token` (AutoModelForTokenClassification): tag each token as plain text, an inline "literal" or an
  *emphasis* span of the reference's plain-text markup.
Any other data: `--dataset_name` (Hub) or `--train_file/--validation_file` (csv/json/jsonl) with `--text_column`
and `--label_column` (sequence task; labels may be strings or integers).

Accuracy and macro F1 come from the `evaluate` modules in training/metrics, loaded by path (no Hub access).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)

import hf_skipnorm  # noqa: E402,F401  registers the skipnorm classes with the Auto classes
from training import data  # noqa: E402
from training.checkpoints import check_output_dir, check_resume_matches, claim_output_dir, resolve_resume  # noqa: E402
from training.arguments import file_identity, run_record  # noqa: E402
from training.model_card import write_model_card  # noqa: E402
from training.reliable_trainer import SkipNormTrainer  # noqa: E402

METRICS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics")
TASKS = ("sequence", "token")

FINETUNE_DEFAULTS = dict(
    num_train_epochs=3,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    learning_rate=5e-4,
    lr_scheduler_type="linear",
    warmup_steps=0.1,
    weight_decay=0.01,
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=1,
    logging_steps=10,
    report_to="none",
    dataloader_pin_memory=torch.cuda.is_available(),  # pinning is for host-to-GPU copies; on CPU it only warns
)


@dataclass
class FinetuneArguments:
    model_name_or_path: str = field(metadata={"help": "A folder saved by training/train.py (or any skipnorm model)."})
    task: str = field(default="sequence", metadata={"help": "sequence (one label per text) or token (one per token)."})
    num_topics: int = field(default=5, metadata={"help": "Default sequence task: how many topics to tell apart."})
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name (Hub; needs the network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Local training data (.csv, .json, .jsonl)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation data, same format."})
    text_column: str = field(default="text", metadata={"help": "Column with the text."})
    label_column: str = field(default="label", metadata={"help": "Column with the label (sequence task)."})
    max_length: int = field(default=128, metadata={"help": "Longer texts are truncated to this many tokens."})
    on_nonfinite: str = field(default="stop", metadata={"help": "stop or skip on a non-finite loss/gradient."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow an --output_dir that already holds files (its checkpoints are deleted)."}
    )


def load_metrics():
    """Accuracy and F1 from the local modules: works with HF_HUB_OFFLINE=1 and no network."""
    return evaluate.load(os.path.join(METRICS_DIR, "accuracy")), evaluate.load(os.path.join(METRICS_DIR, "f1"))


def make_compute_metrics():
    accuracy, f1 = load_metrics()

    def compute_metrics(prediction):
        logits, labels = prediction
        predictions = np.argmax(logits, axis=-1)
        keep = labels != -100  # token task: padding and special tokens carry no label
        predictions, labels = predictions[keep], labels[keep]
        return {
            **accuracy.compute(predictions=predictions, references=labels),
            "f1_macro": f1.compute(predictions=predictions, references=labels, average="macro")["f1"],
        }

    return compute_metrics


def load_sequence_data(args, seed: int):
    """DatasetDict(train, validation) with columns text and label (ints) plus the label names."""
    if not (args.dataset_name or args.train_file):
        dataset = data.topic_classification_dataset(num_topics=args.num_topics, seed=seed)
        return dataset, dataset["train"].features["label"].names
    raw = data.load_raw_datasets(
        dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
        train_file=args.train_file, validation_file=args.validation_file, seed=seed,
    )
    for column in (args.text_column, args.label_column):
        if column not in raw["train"].column_names:
            raise ValueError(f"column {column!r} not found; columns: {raw['train'].column_names}")
    feature = raw["train"].features[args.label_column]
    if hasattr(feature, "names"):
        names = list(feature.names)
    else:  # plain ints or strings: the sorted distinct values of train are the classes
        names = sorted({str(v) for v in raw["train"][args.label_column]})
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in raw["validation"][args.label_column]} - set(names))
        if unknown:
            raise ValueError(f"validation labels {unknown} never occur in train (train labels: {names})")
        raw = raw.map(lambda row: {"label": index[str(row[args.label_column])]})
    raw = raw.rename_column(args.text_column, "text") if args.text_column != "text" else raw
    if len(names) < 2:
        raise ValueError(f"sequence classification needs at least 2 classes; found {names}")
    return raw, names


def token_labels(char_labels: list[int], offsets: list[tuple[int, int]], text: str) -> list[int]:
    """One label per token: the label of the token's first non-space character; -100 for special tokens."""
    labels = []
    for start, end in offsets:
        if start == end:
            labels.append(-100)
            continue
        first = next((i for i in range(start, end) if not text[i].isspace()), start)
        labels.append(char_labels[first])
    return labels


def main(argv=None, callbacks=()):
    parser = HfArgumentParser((FinetuneArguments, TrainingArguments))
    parser.set_defaults(**FINETUNE_DEFAULTS)
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if args.task not in TASKS:
        raise ValueError(f"--task {args.task!r} is not valid; valid choices: {', '.join(TASKS)}")
    if not os.path.isfile(os.path.join(args.model_name_or_path, "config.json")):
        raise FileNotFoundError(f"--model_name_or_path {args.model_name_or_path!r} has no config.json")
    if args.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"--on_nonfinite {args.on_nonfinite!r} is not valid; valid choices: stop, skip")
    # The same folder rules as train.py: one run per folder, complete checkpoints only, a resume continues its run.
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    record = run_record(training_args, extra={
        name: getattr(args, name) for name in ("model_name_or_path", "task", "num_topics", "dataset_name",
                                               "dataset_config_name", "text_column", "label_column", "max_length")
    } | {"train_file": file_identity(args.train_file), "validation_file": file_identity(args.validation_file)})
    if resume:
        check_resume_matches(resume, record)
    check_output_dir(training_args.output_dir, args.overwrite_output_dir, resume, record)
    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if tokenizer.pad_token is None:
        raise ValueError("the tokenizer has no pad token: classification batches are padded")

    if args.task == "sequence":
        dataset, names = load_sequence_data(args, training_args.seed)

        def encode(batch):
            return tokenizer(batch["text"], truncation=True, max_length=args.max_length)

        encoded = dataset.map(encode, batched=True, remove_columns=["text"])
        encoded = encoded.remove_columns([c for c in encoded["train"].column_names if c not in ("input_ids", "attention_mask", "label")])
        auto_class, collator = AutoModelForSequenceClassification, DataCollatorWithPadding(tokenizer)
        card_task = "sequence-classification"
    else:
        if args.dataset_name or args.train_file:
            raise ValueError("--task token trains on the embedded span-tagging task only; pass no data flags")
        dataset, names = data.span_tagging_dataset(seed=training_args.seed), list(data.SPAN_LABELS)

        def encode(batch):
            out = tokenizer(batch["text"], truncation=True, max_length=args.max_length, return_offsets_mapping=True)
            out["labels"] = [
                token_labels(chars, offsets, text)
                for chars, offsets, text in zip(batch["char_labels"], out.pop("offset_mapping"), batch["text"])
            ]
            return out

        encoded = dataset.map(encode, batched=True, remove_columns=["text", "char_labels"])
        auto_class, collator = AutoModelForTokenClassification, DataCollatorForTokenClassification(tokenizer)
        card_task = "token-classification"

    config = AutoConfig.from_pretrained(
        args.model_name_or_path, num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )
    model = auto_class.from_pretrained(args.model_name_or_path, config=config)
    trainer = SkipNormTrainer(
        model=model, args=training_args, train_dataset=encoded["train"], eval_dataset=encoded["validation"],
        processing_class=tokenizer, data_collator=collator, compute_metrics=make_compute_metrics(),
        callbacks=list(callbacks), on_nonfinite=args.on_nonfinite, run_record=record,
    )
    if trainer.is_world_process_zero():
        trainer.check_free_space()
        claim_output_dir(training_args.output_dir, args.overwrite_output_dir, resume, record)
    if training_args.should_log:
        print(
            f"fine-tuning {args.model_name_or_path} for {args.task} classification over {len(names)} labels "
            f"{names}: {len(encoded['train'])} train / {len(encoded['validation'])} validation examples"
        )
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = {**train_result.metrics, **trainer.evaluate()}
    trainer.save_model()
    trainer.save_state()  # trainer_state.json: the log the card's results table and loss_curve.png are drawn from
    trainer.log_metrics("eval", {k: v for k, v in metrics.items() if k.startswith("eval_")})
    trainer.save_metrics("all", metrics)
    if trainer.is_world_process_zero():
        default_task = not (args.dataset_name or args.train_file)
        if default_task:
            what = "which topic a paragraph comes from" if args.task == "sequence" else 'tag tokens as text / "literal" / *emphasis*'
            description = f"Offline task built from {data.CORPUS_SOURCE}: {what}; labels {names}."
        else:
            description = f"`{args.dataset_name or args.train_file}`; labels {names}."
        write_model_card(
            training_args.output_dir, model.config, training_args, description,
            "pydoc_data.topics" if default_task else (args.dataset_name or "local-files"), metrics,
            sum(p.numel() for p in model.parameters()), script="finetune.py", task=card_task,
            note=f"Fine-tuned from `{args.model_name_or_path}`.",
        )
    return metrics


if __name__ == "__main__":
    main()
