#!/usr/bin/env python
"""Train a skipnorm model with the transformers Trainer: from scratch, or continued from a saved model (causal LM;
masked LM when is_causal=False).

  python training/train.py --output_dir runs/main                         # README command 1, a few minutes on CPU
  python training/train.py --output_dir runs/post --norm_position post    # another placement: one flag
  python training/train.py --output_dir runs/bert --preset bert-style     # a named cell (training/presets)
  python training/train.py --output_dir runs/more --model_name_or_path runs/main   # continue from a saved model
  python training/train.py --output_dir runs/main --resume_from_checkpoint last    # finish an interrupted run
  accelerate launch --config_file training/accelerate/cpu_multi_process.yaml training/train.py --output_dir runs/ddp

With no data flags it trains on the Python Language Reference shipped with CPython (offline), with a byte-level
BPE tokenizer trained on it. Every SkipNormConfig field is an option (listed below with its valid values);
--preset, --config_file and --config_overrides give many at once. Every setting is checked before any data is
read. An --output_dir that holds another run is refused (--overwrite_output_dir replaces it). After training it
evaluates (loss, perplexity), saves safetensors weights, the tokenizer and a model card to --output_dir, and
reloads the folder in a fresh process to print a sample (training/sample.py).
"""

from __future__ import annotations

import itertools
import json
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

from hf_skipnorm import SkipNormConfig  # noqa: E402
from hf_skipnorm.ngpt_training import NGPTNormalizeCallback  # noqa: E402
from training import data  # noqa: E402
from training.arguments import (  # noqa: E402
    HELP_ALL,
    RUNTIME_FIELDS,
    DataArguments,
    ModelArguments,
    RunArguments,
    SkipNormArguments,
    assemble_config_values,
    build_parser,
    check_arguments,
    check_step_intervals,
    checkpoint_conflicts,
    run_record,
)
from training.model_card import write_model_card  # noqa: E402
from training.checkpoints import check_output_dir, check_resume_matches, claim_output_dir, resolve_resume  # noqa: E402
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


USAGE = "python training/train.py --output_dir DIR [options]       (" + HELP_ALL + ": every Trainer option in full)"


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = dict(TRAINING_DEFAULTS)
    if launched_world_size() > 1 and not torch.cuda.is_available():
        # Without use_cpu, accelerate only forms a process group on an accelerator; on a CPU-only machine
        # every launched process would silently train alone. use_cpu makes it a gloo (MULTI_CPU) group.
        defaults["use_cpu"] = True
    parser = build_parser(
        (ModelArguments, SkipNormArguments, DataArguments, RunArguments, TrainingArguments),
        __doc__, USAGE, defaults, full_help=HELP_ALL in argv,
    )
    if HELP_ALL in argv:
        parser.print_help()
        raise SystemExit(0)
    check_step_intervals(vars(parser.parse_known_args(argv)[0]))
    return parser.parse_args_into_dataclasses(args=argv)[:5]  # a 6th item holds --help_all's own flag


def resolve_pretrained(name: str, model_args, flag: str = "--model_name_or_path") -> str:
    """A local folder, or a Hub id already in the local Hugging Face cache. Never downloads."""
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise ValueError(f"{flag} {name!r} is a file; give the folder that holds config.json")
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, revision=model_args.model_revision, cache_dir=model_args.cache_dir,
                                 local_files_only=True)
    except Exception as error:  # LocalEntryNotFoundError, HFValidationError (not an id), OSError
        raise FileNotFoundError(
            f"{flag} {name!r} is neither a folder nor a Hub id in the local Hugging Face cache "
            f"({model_args.cache_dir or constants.HF_HUB_CACHE}, revision {model_args.model_revision!r}): train.py "
            f"never downloads; fetch it first (`hf download {name}`) or give a folder ({type(error).__name__})"
        ) from None


def load_checkpoint_config(folder: str, name: str, requested: dict, flag: str) -> SkipNormConfig:
    """The config of a saved skipnorm model; a cell value requested on the command line must equal it."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{flag} {name!r} has no config.json ({folder})")
    with open(config_path, encoding="utf-8") as handle:
        model_type = json.load(handle).get("model_type")
    if model_type != SkipNormConfig.model_type:
        raise ValueError(
            f"{flag} {name!r} holds a {model_type!r} model, not {SkipNormConfig.model_type!r}: convert it first "
            f"(`python -m hf_skipnorm.convert {name} OUT`), then pass {flag} OUT"
        )
    # Runtime values join the checkpoint's config before construction, so they are validated like any other field.
    runtime = {name: requested[name] for name in RUNTIME_FIELDS if name in requested and name != "use_cache"}
    config = SkipNormConfig.from_pretrained(folder, **runtime)
    conflicts = checkpoint_conflicts(config, requested)
    if conflicts:
        raise ValueError(
            f"{flag} {name}: the command line contradicts the checkpoint's cell: {'; '.join(conflicts)}. The checkpoint "
            f"fixes the architecture: drop these options (only {', '.join(RUNTIME_FIELDS)} may change)"
        )
    config.use_cache = requested.get("use_cache", True)  # checkpoints store the Trainer's use_cache=False
    return config


def new_config(values: dict, tokenizer=None, vocab_size: int | None = None) -> SkipNormConfig:
    """A config for a model trained from scratch. Without a tokenizer (it is trained after the data load) the
    ids are those data.train_tokenizer assigns, so every field is validated before any data is read."""
    values = dict(values)
    if tokenizer is not None:  # ids the tokenizer defines, unless given explicitly; the vocabulary fits it
        values.setdefault("vocab_size", len(tokenizer))
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            values.setdefault(name, getattr(tokenizer, name))
    else:
        values.setdefault("vocab_size", vocab_size)
        for name, token in (("pad_token_id", data.PAD_TOKEN), ("bos_token_id", data.EOS_TOKEN), ("eos_token_id", data.EOS_TOKEN)):
            values.setdefault(name, data.SPECIAL_TOKENS.index(token))
    return SkipNormConfig(**values)


def check_block_size(block_size: int, config) -> None:
    if block_size > config.max_position_embeddings:
        raise ValueError(
            f"--block_size {block_size} is larger than max_position_embeddings={config.max_position_embeddings}: "
            "lower --block_size or raise --max_position_embeddings"
        )


def load_tokenizer(model_args, source_folder: str | None, resume: str | None):
    """The checkpoint's tokenizer when resuming; --tokenizer_name; the continued model's own; else None (train one)."""
    if resume:
        return AutoTokenizer.from_pretrained(resume)  # the ids the checkpoint was trained with
    kwargs = dict(trust_remote_code=model_args.trust_remote_code)
    if model_args.tokenizer_name:
        return AutoTokenizer.from_pretrained(resolve_pretrained(model_args.tokenizer_name, model_args, "--tokenizer_name"), **kwargs)
    if source_folder:
        try:
            return AutoTokenizer.from_pretrained(source_folder, **kwargs)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(
                f"--model_name_or_path {model_args.model_name_or_path!r} has no usable tokenizer ({type(error).__name__}: "
                f"{str(error)[:200]}); pass --tokenizer_name"
            ) from None
    return None


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
        f"{data_args.validation_split_percentage:g}% of the passages held out for validation; documents packed "
        f"into blocks of {data_args.block_size} tokens (the tokenizer is described below, from its files)."
    )


def main(argv=None, callbacks=()):
    """Run training. `callbacks` are extra TrainerCallback objects (for programmatic use and tests)."""
    model_args, skipnorm_args, data_args, run_args, training_args = parse_args(argv)

    # ---- every setting is checked here, before any data is read or a tokenizer trained
    check_arguments(model_args, data_args, run_args, training_args)
    if training_args.world_size != launched_world_size():
        raise RuntimeError(
            f"{launched_world_size()} processes were launched but the Trainer sees world_size="
            f"{training_args.world_size}: each process would train alone and overwrite the others' output"
        )
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    requested = assemble_config_values(model_args, skipnorm_args, defaults={})  # what the command line asks for
    source = None  # the folder of --model_name_or_path (continued training)
    if resume:
        config = load_checkpoint_config(resume, resume, requested, "--resume_from_checkpoint")
    elif model_args.model_name_or_path:
        source = resolve_pretrained(model_args.model_name_or_path, model_args)
        config = load_checkpoint_config(source, model_args.model_name_or_path, requested, "--model_name_or_path")
    tokenizer = load_tokenizer(model_args, source, resume)
    if not (resume or source):
        config_values = assemble_config_values(model_args, skipnorm_args)
        config = new_config(config_values, tokenizer, vocab_size=model_args.tokenizer_vocab_size)
    check_block_size(data_args.block_size, config)
    if config.architecture == "ngpt":  # its training rule (no weight decay) is checked before any data work
        NGPTNormalizeCallback.check_arguments(training_args, config)
    if tokenizer is not None:
        data.check_tokenizer_fits(tokenizer, config.vocab_size, masked_lm=not config.is_causal)
    record = run_record(training_args, data_args, model_args)
    if resume:
        check_resume_matches(resume, record)
    data.check_data_files(data_args.train_file, data_args.validation_file)
    check_output_dir(training_args.output_dir, run_args.overwrite_output_dir, resume, record)
    set_seed(training_args.seed)

    # ---- data (and the tokenizer, when one is trained)
    raw = data.load_raw_datasets(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        validation_split_percentage=data_args.validation_split_percentage,
        streaming=data_args.streaming,
        streaming_validation_rows=data_args.streaming_validation_rows,
        seed=training_args.seed,
        cache_dir=model_args.cache_dir,
    )
    if tokenizer is None:
        column = data.text_column_of(raw["train"], data_args.text_column)
        texts = (row[column] for row in raw["train"] if row[column])
        if data_args.streaming:  # a stream may be endless: learn the merges from its beginning
            texts = itertools.islice(texts, STREAMING_TOKENIZER_ROWS)
        tokenizer = data.train_tokenizer(texts, vocab_size=model_args.tokenizer_vocab_size)
        config = new_config(config_values, tokenizer)
        data.check_tokenizer_fits(tokenizer, config.vocab_size, masked_lm=not config.is_causal)
    with training_args.main_process_first(desc="tokenize and pack"):
        packed = data.pack_for_language_modeling(
            raw, tokenizer, data_args.block_size, data_args.text_column, data_args.preprocessing_num_workers
        )
    packed = data.limit_blocks(packed, {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples})

    # ---- model and Trainer
    use_cache = config.use_cache  # the Trainer overwrites model.config.use_cache with TrainingArguments.use_cache
    auto_class = AutoModelForCausalLM if config.is_causal else AutoModelForMaskedLM
    dtype = model_args.resolved_dtype()
    if source:
        model = auto_class.from_pretrained(
            source, config=config, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            trust_remote_code=model_args.trust_remote_code,
        )
    else:  # new weights (or resumed ones, loaded by the Trainer); "auto" has no checkpoint to follow: float32
        model = auto_class.from_config(config, dtype=getattr(torch, "float32" if dtype == "auto" else dtype))
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
        run_record=record,
    )
    num_parameters = sum(p.numel() for p in model.parameters())
    trainer.check_free_space()
    if trainer.is_world_process_zero():
        claim_output_dir(training_args.output_dir, run_args.overwrite_output_dir, resume, record)
    if training_args.should_log:
        blocks = "streamed" if data_args.streaming else f"{len(packed['train'])} train / {len(packed['validation'])} validation"
        print(
            f"skipnorm {'causal' if config.is_causal else 'masked'} LM: norm_position={config.norm_position} "
            f"norm_type={config.norm_type} residual={config.residual}, {config.num_hidden_layers} layers x "
            f"{config.hidden_size}, {num_parameters:,} parameters; blocks of {data_args.block_size} tokens: {blocks}"
            + (f"; resuming from {resume}" if resume else "")
            + (f"; continuing from {model_args.model_name_or_path}" if source else "")
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
    trainer.save_state()  # trainer_state.json: the log the card's results table and loss_curve.png are drawn from
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("all", metrics)
    if trainer.is_world_process_zero():
        dataset_name, data_description = describe_data(data_args)
        write_model_card(
            training_args.output_dir, config, training_args, data_description, dataset_name, metrics, num_parameters,
            task="causal-lm" if config.is_causal else "masked-lm",
            note=f"Continued from `{model_args.model_name_or_path}`." if source else "",
        )
        perplexity = eval_metrics.get("eval_perplexity", math.nan)
        print(f"Saved to {training_args.output_dir}: eval loss {eval_metrics['eval_loss']:.4f}, perplexity {perplexity:.2f}")
        if run_args.sample_max_new_tokens > 0:
            sample_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.py")
            subprocess.run(
                [sys.executable, sample_script, training_args.output_dir, run_args.sample_prompt,
                 "--max_new_tokens", str(run_args.sample_max_new_tokens), "--seed", str(training_args.seed),
                 "--do_sample", "--top_k", "40", "--temperature", "0.8"],
                check=True,
            )
    return metrics


if __name__ == "__main__":
    main()
