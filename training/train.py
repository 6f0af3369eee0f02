#!/usr/bin/env python
"""Pretrain a skipnorm model from scratch with the transformers Trainer (causal LM; masked LM when is_causal=False).

    python training/train.py --output_dir runs/main                        # README command 1, a few minutes on CPU
    python training/train.py --output_dir runs/post --norm_position post   # another placement: one flag
    python training/train.py --output_dir runs/bert --preset bert-style    # a named cell (training/presets)
    accelerate launch --config_file training/accelerate/cpu_multi_process.yaml training/train.py --output_dir runs/ddp

With no data flags it trains on the Python Language Reference shipped with CPython (offline), with a byte-level
BPE tokenizer trained on it. Every SkipNormConfig field is an option (`--help` lists them); `--config_file` and
`--preset` give many at once. After training it evaluates (loss and perplexity), saves safetensors weights, the
tokenizer and a model card to --output_dir, and reloads the folder in a fresh process to print a sample.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

# Run as a script (python training/train.py, accelerate launch), the repository root is not on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from hf_skipnorm import SkipNormConfig  # noqa: E402
from hf_skipnorm.ngpt_training import NGPTNormalizeCallback  # noqa: E402
from training import data  # noqa: E402
from training.arguments import (  # noqa: E402
    DataArguments,
    ModelArguments,
    RunArguments,
    SkipNormArguments,
    assemble_config_values,
    cli_config_overrides,
)
from training.model_card import write_model_card  # noqa: E402
from training.reliable_trainer import SkipNormTrainer  # noqa: E402

# TrainingArguments defaults for the main job (all overridable on the command line). 500 steps of 16 x 128
# tokens is ~12 passes over the embedded corpus (~86k tokens), ~0.7-0.9 CPU-seconds per step for the default
# model: about 4-5 minutes on an idle 2-core CPU (10.7 minutes measured on a shared one with load ~5, one thread).
TRAINING_DEFAULTS = dict(
    max_steps=500,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=32,
    learning_rate=1e-3,  # small models tolerate (and need) a larger step than the 3e-4 of GPT-scale runs
    lr_scheduler_type="cosine",
    warmup_steps=0.05,  # a fraction of max_steps (post-LN cells need warm-up: Xiong et al. 2020, arXiv 2002.04745)
    weight_decay=0.1,
    eval_strategy="steps",
    eval_steps=100,
    logging_steps=25,
    save_steps=250,
    save_total_limit=2,
    report_to="none",
    dataloader_pin_memory=torch.cuda.is_available(),  # pinning is for host-to-GPU copies; on CPU it only warns
    ddp_find_unused_parameters=False,  # every parameter gets a gradient; the search costs a graph walk per step
)


# When streaming, the tokenizer is trained on this many rows from the start of the train split.
STREAMING_TOKENIZER_ROWS = 20_000


def launched_world_size() -> int:
    """Processes started by torchrun / accelerate launch (1 for a plain `python training/train.py`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, SkipNormArguments, DataArguments, RunArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    if launched_world_size() > 1 and not torch.cuda.is_available():
        # Without use_cpu, accelerate only forms a process group on an accelerator; on a CPU-only machine
        # every launched process would silently train alone. use_cpu makes it a gloo (MULTI_CPU) group.
        parser.set_defaults(use_cpu=True)
    parser.description = __doc__
    return parser.parse_args_into_dataclasses(args=argv)


def resolve_resume(training_args) -> str | None:
    """--resume_from_checkpoint PATH, or 'true'/'last' for the newest complete checkpoint in --output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    if value.lower() in ("true", "last"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-N folder in {training_args.output_dir!r}")
        return last
    if not os.path.isfile(os.path.join(value, "trainer_state.json")):
        raise FileNotFoundError(f"--resume_from_checkpoint {value!r} is not a checkpoint folder (no trainer_state.json)")
    return value


def build_config(model_args, skipnorm_args, tokenizer, block_size: int, resume: str | None) -> SkipNormConfig:
    if resume:
        # The checkpoint fixes the architecture; a command line asking for a different one is a mistake.
        # (use_cache is a runtime switch, and checkpoints store the Trainer's False: not compared.)
        config = SkipNormConfig.from_pretrained(resume)
        config.use_cache = cli_config_overrides(skipnorm_args).get("use_cache", True)
        for name, value in cli_config_overrides(skipnorm_args).items():
            if name != "use_cache" and getattr(config, name) != value:
                raise ValueError(
                    f"--{name} {value!r} differs from the checkpoint being resumed ({resume}: {name}={getattr(config, name)!r})"
                )
        return config
    values = assemble_config_values(model_args, skipnorm_args)
    # Ids the tokenizer defines, unless given explicitly. The vocabulary is sized to the tokenizer.
    values.setdefault("vocab_size", len(tokenizer))
    values.setdefault("pad_token_id", tokenizer.pad_token_id)
    values.setdefault("bos_token_id", tokenizer.bos_token_id)
    values.setdefault("eos_token_id", tokenizer.eos_token_id)
    config = SkipNormConfig(**values)
    if block_size > config.max_position_embeddings:
        raise ValueError(
            f"block_size={block_size} is larger than max_position_embeddings={config.max_position_embeddings}: "
            "lower --block_size or raise --max_position_embeddings"
        )
    return config


def describe_data(data_args) -> tuple[str, str]:
    """(dataset name for the card's metadata, a sentence for its Data section)."""
    if data_args.dataset_name:
        name = data_args.dataset_name + (f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else "")
        return data_args.dataset_name, f"`datasets` source {name}, packed into blocks of {data_args.block_size} tokens."
    if data_args.train_file:
        return "local-files", (
            f"Local files: train `{data_args.train_file}`, validation `{data_args.validation_file or 'held out from train'}`; "
            f"packed into blocks of {data_args.block_size} tokens."
        )
    return "pydoc_data.topics", (
        f"The embedded corpus: {data.CORPUS_SOURCE}, {len(data.reference_topics())} topics cut into passages; "
        f"{data_args.validation_split_percentage:g}% of the passages held out for validation; byte-level BPE "
        f"tokenizer trained on the train split; documents packed into blocks of {data_args.block_size} tokens."
    )


def main(argv=None, callbacks=()):
    """Run training. `callbacks` are extra TrainerCallback objects (for programmatic use and tests)."""
    model_args, skipnorm_args, data_args, run_args, training_args = parse_args(argv)
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps > 0: a streamed dataset has no length to count epochs from")
    if training_args.world_size != launched_world_size():
        raise RuntimeError(
            f"{launched_world_size()} processes were launched but the Trainer sees world_size="
            f"{training_args.world_size}: each process would train alone and overwrite the others' output"
        )
    resume = resolve_resume(training_args)
    set_seed(training_args.seed)

    # ---- data and tokenizer: every check raises here, before a model exists
    raw = data.load_raw_datasets(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        validation_split_percentage=data_args.validation_split_percentage,
        streaming=data_args.streaming,
        streaming_validation_rows=data_args.streaming_validation_rows,
        seed=training_args.seed,
    )
    if resume:
        tokenizer = AutoTokenizer.from_pretrained(resume)  # the ids the checkpoint was trained with
    elif model_args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    else:
        column = data.text_column_of(raw["train"], data_args.text_column)
        texts = (row[column] for row in raw["train"] if row[column])
        if data_args.streaming:  # a stream may be endless: learn the merges from its beginning
            texts = itertools.islice(texts, STREAMING_TOKENIZER_ROWS)
        tokenizer = data.train_tokenizer(texts, vocab_size=model_args.tokenizer_vocab_size)
    config = build_config(model_args, skipnorm_args, tokenizer, data_args.block_size, resume)
    data.check_tokenizer_fits(tokenizer, config.vocab_size, masked_lm=not config.is_causal)
    with training_args.main_process_first(desc="tokenize and pack"):
        packed = data.pack_for_language_modeling(
            raw, tokenizer, data_args.block_size, data_args.text_column, data_args.preprocessing_num_workers
        )

    # ---- model and Trainer
    use_cache = config.use_cache  # the Trainer overwrites model.config.use_cache with TrainingArguments.use_cache
    auto_class = AutoModelForCausalLM if config.is_causal else AutoModelForMaskedLM
    model = auto_class.from_config(config)
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=not config.is_causal, mlm_probability=data_args.mlm_probability
    )
    trainer = SkipNormTrainer(
        model=model,
        args=training_args,
        train_dataset=packed["train"],
        eval_dataset=packed["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        # nGPT renormalizes its weights after every optimizer step (arXiv 2410.01131): its callback comes with it.
        callbacks=list(callbacks) + ([NGPTNormalizeCallback()] if config.architecture == "ngpt" else []),
        on_nonfinite=run_args.on_nonfinite,
        report_perplexity=True,
    )
    num_parameters = sum(p.numel() for p in model.parameters())
    if training_args.should_log:
        blocks = "streamed" if data_args.streaming else f"{len(packed['train'])} train / {len(packed['validation'])} validation"
        print(
            f"skipnorm {'causal' if config.is_causal else 'masked'} LM: norm_position={config.norm_position} "
            f"norm_type={config.norm_type} residual={config.residual}, {config.num_hidden_layers} layers x "
            f"{config.hidden_size}, {num_parameters:,} parameters; blocks of {data_args.block_size} tokens: {blocks}"
            + (f"; resuming from {resume}" if resume else "")
        )

    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    eval_metrics = trainer.evaluate()
    metrics.update(eval_metrics)
    if trainer.nonfinite_skipped_steps:
        metrics["nonfinite_skipped_steps"] = trainer.nonfinite_skipped_steps

    # The Trainer set model.config.use_cache to TrainingArguments.use_cache (False) for training; the saved
    # model should generate with the cache unless the config said otherwise.
    model.config.use_cache = use_cache
    if trainer.is_fsdp_enabled:
        # Sharded checkpoints are fast to write but are not a from_pretrained folder: gather the full state
        # dict once for the final save (training/accelerate/fsdp_full_shard.yaml). Needs GPUs; untested here.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model()  # safetensors + config + tokenizer (processing_class) into --output_dir
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("all", metrics)
    if trainer.is_world_process_zero():
        dataset_name, data_description = describe_data(data_args)
        write_model_card(
            training_args.output_dir, config, training_args, data_description, dataset_name, metrics, num_parameters,
            task="causal-lm" if config.is_causal else "masked-lm",
        )
        perplexity = eval_metrics.get("eval_perplexity", math.nan)
        print(f"Saved to {training_args.output_dir}: eval loss {eval_metrics['eval_loss']:.4f}, perplexity {perplexity:.2f}")
        if run_args.sample_max_new_tokens > 0:
            sample_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.py")
            subprocess.run(
                [sys.executable, sample_script, training_args.output_dir, "--prompt", run_args.sample_prompt,
                 "--max_new_tokens", str(run_args.sample_max_new_tokens), "--seed", str(training_args.seed)],
                check=True,
            )
    return metrics


if __name__ == "__main__":
    main()
