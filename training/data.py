"""Data for training/train.py and training/finetune.py: the embedded corpus, its tokenizer, packing, and
the offline fine-tuning tasks.

Embedded corpus: the Python Language Reference that every CPython ships as `pydoc_data.topics` (79 topics,
about 465 kB of English prose and code). It needs no network, so the main job and the tests run anywhere.

Every check on the inputs lives here and raises before training starts: a missing or unreadable file, an
empty dataset, text shorter than one block, a tokenizer larger than the model's vocabulary.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from itertools import chain

import datasets

CORPUS_SOURCE = "pydoc_data.topics (the Python Language Reference shipped with CPython)"

# Byte-level BPE needs no unknown token: every byte is in the base alphabet.
EOS_TOKEN = "<|endoftext|>"  # GPT-2's document separator; also serves as BOS
PAD_TOKEN = "<pad>"
MASK_TOKEN = "<mask>"  # only used by masked-LM training (is_causal=False), harmless otherwise
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, MASK_TOKEN)

# File extension -> `datasets` builder, as in transformers' run_clm.py.
FILE_BUILDERS = {"txt": "text", "text": "text", "json": "json", "jsonl": "json", "csv": "csv"}

# A passage of the embedded corpus is a run of whole paragraphs of one topic of at least this many characters:
# rows of similar size make a percentage split give a stable validation set (topics range from 200 B to 50 kB).
PASSAGE_CHARS = 2000


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def reference_topics() -> dict[str, str]:
    """The embedded corpus as {topic: text}, sorted by topic so every run sees the same order."""
    from pydoc_data.topics import topics

    return {name: topics[name] for name in sorted(topics)}


def reference_corpus(passage_chars: int = PASSAGE_CHARS) -> datasets.Dataset:
    """The Language Reference as a `datasets.Dataset` with columns `topic` and `text`, one row per passage
    (consecutive paragraphs of one topic joined until at least `passage_chars` characters).

    Some topics repeat others verbatim (`specialnames` contains `customization`, ...): a paragraph is kept only
    where it first occurs (topics in sorted order), so no text is both in train and validation. That keeps
    369 kB of the 460 kB."""
    rows = {"topic": [], "text": []}
    seen: set[str] = set()
    for name, text in reference_topics().items():
        passage: list[str] = []
        for paragraph in _paragraphs(text):
            if paragraph in seen:
                continue
            seen.add(paragraph)
            passage.append(paragraph)
            if sum(len(p) for p in passage) >= passage_chars:
                rows["topic"].append(name)
                rows["text"].append("\n\n".join(passage))
                passage = []
        if passage:
            rows["topic"].append(name)
            rows["text"].append("\n\n".join(passage))
    return datasets.Dataset.from_dict(rows)


# ---------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts, vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on `texts` and wrap it as a PreTrainedTokenizerFast.

    Deterministic for a given corpus, so a resumed run that retrains it gets the same ids (train.py still
    reloads the tokenizer saved with a checkpoint when resuming)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(
            f"tokenizer_vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
            f"{len(SPECIAL_TOKENS)} special tokens, so use at least {len(SPECIAL_TOKENS) + 257}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=1_000_000,  # packing cuts blocks itself; no truncation warnings on long documents
    )


# ------------------------------------------------------------------------------------------ raw datasets
def _check_file(flag: str, path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: file {path!r} does not exist (or is not a file)")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{flag}: file {path!r} is empty: the {flag.split('_')[0].lstrip('-')} split is empty")
    extension = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    if extension not in FILE_BUILDERS:
        raise ValueError(
            f"{flag}: {path!r} has extension {extension!r}; supported: {sorted(FILE_BUILDERS)} "
            "(text: one line per row; json/jsonl: one object per line; csv: a header row)"
        )
    return FILE_BUILDERS[extension]


def check_data_files(train_file: str | None, validation_file: str | None) -> None:
    """The cheap checks of load_raw_datasets, for train.py to run before anything else is done."""
    if validation_file and not train_file:
        raise ValueError("--validation_file needs --train_file")
    for flag, path in (("--train_file", train_file), ("--validation_file", validation_file)):
        if path:
            _check_file(flag, path)


def load_raw_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    validation_split_percentage: float = 5.0,
    streaming: bool = False,
    streaming_validation_rows: int = 200,
    seed: int = 42,
    cache_dir: str | None = None,
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Return {"train", "validation"} from a Hub dataset, local files, or (default) the embedded corpus.

    Without a validation split, `validation_split_percentage` percent of the rows are held out (seeded);
    when streaming, the first `streaming_validation_rows` rows are held out instead."""
    if dataset_name and (train_file or validation_file):
        raise ValueError("give either --dataset_name or --train_file/--validation_file, not both")
    if validation_file and not train_file:
        raise ValueError("--validation_file needs --train_file")
    if not 0 < validation_split_percentage < 100:
        raise ValueError(f"validation_split_percentage={validation_split_percentage} must be in (0, 100)")

    if dataset_name:
        raw = datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming, cache_dir=cache_dir)
    elif train_file:
        builder = _check_file("--train_file", train_file)
        data_files = {"train": train_file}
        if validation_file:
            if _check_file("--validation_file", validation_file) != builder:
                raise ValueError(
                    f"--train_file {train_file!r} and --validation_file {validation_file!r} must have the same format"
                )
            data_files["validation"] = validation_file
        try:
            raw = datasets.load_dataset(builder, data_files=data_files, streaming=streaming, cache_dir=cache_dir)
        except datasets.exceptions.DatasetGenerationError as error:
            cause = error.__cause__ or error
            raise ValueError(f"could not read {data_files} as {builder}: {type(cause).__name__}: {cause}") from error
    else:
        corpus = reference_corpus()
        raw = datasets.DatasetDict({"train": corpus})
        if streaming:
            raw = datasets.IterableDatasetDict({"train": corpus.to_iterable_dataset()})

    if "train" not in raw:
        raise ValueError(f"the dataset has no 'train' split (splits: {list(raw)})")
    if "validation" not in raw:
        if streaming:
            train = raw["train"]
            raw = datasets.IterableDatasetDict(
                {"train": train.skip(streaming_validation_rows), "validation": train.take(streaming_validation_rows)}
            )
        else:
            rows = len(raw["train"])
            held_out = math.ceil(rows * validation_split_percentage / 100)  # how train_test_split rounds
            if rows - held_out < 1:
                source = f"--train_file {train_file!r}" if train_file else "the train split"
                raise ValueError(
                    f"{source} has {rows} row(s): holding out {validation_split_percentage:g}% for validation leaves "
                    "no training rows. Give more rows (a .txt file is one row per line), or a --validation_file"
                )
            split = raw["train"].train_test_split(test_size=validation_split_percentage / 100, seed=seed)
            raw = datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
    for name in ("train", "validation"):
        _check_not_empty(raw[name], name)
    return raw


def _check_not_empty(dataset, split: str) -> None:
    if isinstance(dataset, datasets.IterableDataset):
        if next(iter(dataset), None) is None:
            raise ValueError(f"the {split} split is empty (no rows)")
    elif len(dataset) == 0:
        raise ValueError(f"the {split} split is empty (no rows)")


def text_column_of(dataset, text_column: str | None = None) -> str:
    """The column holding the text: `text_column` if given, else "text", else the only string column."""
    features = dataset.features
    if features is None:  # streamed without known features: read the first row
        first = next(iter(dataset), {})
        features = {name: datasets.Value("string" if isinstance(v, str) else "null") for name, v in first.items()}
    if text_column:
        if text_column not in features:
            raise ValueError(f"--text_column {text_column!r} is not a column; columns: {list(features)}")
        return text_column
    if "text" in features:
        return "text"
    string_columns = [name for name, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if len(string_columns) != 1:
        raise ValueError(f"cannot tell which column holds the text among {list(features)}: pass --text_column")
    return string_columns[0]


# ------------------------------------------------------------------------------------------------ packing
def pack_for_language_modeling(
    raw: datasets.DatasetDict | datasets.IterableDatasetDict,
    tokenizer,
    block_size: int,
    text_column: str | None = None,
    num_proc: int | None = None,
):
    """Tokenize every row, append EOS, concatenate, and cut into blocks of `block_size` token ids (the tail
    shorter than a block is dropped, as in run_clm.py). Returns the same splits with one column, input_ids.

    Raises ValueError when a (non-streaming) split is empty after tokenization or shorter than one block."""
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be at least 2 (a language model predicts token t+1 from t)")
    column = text_column_of(raw["train"], text_column)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: packing separates documents with it")

    def tokenize(batch):
        texts = [t for t in batch[column] if t]  # None or "" rows carry no tokens
        return {"input_ids": [ids + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        usable = len(ids) // block_size * block_size
        return {"input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]}

    packed = {}
    for split, dataset in raw.items():
        if split not in ("train", "validation"):
            continue
        # A streamed dataset may not know its features; its first row names the columns to drop.
        remove = list(dataset.features or next(iter(dataset), {}))
        map_kwargs = {} if isinstance(dataset, datasets.IterableDataset) else {"num_proc": num_proc}
        tokens = dataset.map(tokenize, batched=True, remove_columns=remove, **map_kwargs)
        if isinstance(dataset, datasets.IterableDataset):
            packed[split] = tokens.map(group, batched=True, batch_size=1000)
            continue
        total = sum(len(ids) for ids in tokens["input_ids"])
        if total < block_size:
            raise ValueError(
                f"the {split} split has {total} tokens, fewer than one block (block_size={block_size}): "
                "give more text or a smaller --block_size"
            )
        # One batch over the whole split: packing across map batches would drop a tail per batch.
        packed[split] = tokens.map(group, batched=True, batch_size=len(tokens))
    return type(raw)(packed)


def limit_blocks(packed, limits: dict):
    """The first `limits[split]` blocks of each split (None: all), as run_clm.py's --max_train_samples and
    --max_eval_samples do after grouping."""
    out = {}
    for split, dataset in packed.items():
        limit = limits.get(split)
        if limit is None:
            out[split] = dataset
        elif isinstance(dataset, datasets.IterableDataset):
            out[split] = dataset.take(limit)
        else:
            out[split] = dataset.select(range(min(limit, len(dataset))))
    return type(packed)(out)


def check_tokenizer_fits(tokenizer, vocab_size: int, masked_lm: bool = False) -> None:
    """The model must have an embedding row for every token id the tokenizer can emit."""
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}: token ids "
            f"up to {len(tokenizer) - 1} would index past the embedding; set --vocab_size {len(tokenizer)} or larger"
        )
    if masked_lm and tokenizer.mask_token is None:
        raise ValueError(
            "is_causal=False trains a masked LM, which needs a tokenizer with a mask token; "
            f"this tokenizer has none (special tokens: {tokenizer.all_special_tokens})"
        )


# --------------------------------------------------------------------------------- fine-tuning task data
def topic_classification_dataset(num_topics: int = 5, min_chars: int = 80, test_fraction: float = 0.2, seed: int = 0):
    """Offline sequence-classification task: which topic of the Language Reference a paragraph comes from.

    Classes are the `num_topics` topics with the most paragraphs of at least `min_chars` characters.
    Paragraphs that appear verbatim under several topics (the reference repeats some) are dropped, since
    their label would be ambiguous. Returns a DatasetDict(train, validation) with columns text, label
    (a ClassLabel whose names are the topics), split stratified by label."""
    topics = reference_topics()
    paragraphs = {name: [p for p in _paragraphs(text) if len(p) >= min_chars] for name, text in topics.items()}
    seen = Counter(p for ps in paragraphs.values() for p in set(ps))
    paragraphs = {name: [p for p in ps if seen[p] == 1] for name, ps in paragraphs.items()}
    ranked = sorted(paragraphs, key=lambda name: (-len(paragraphs[name]), name))
    if not 2 <= num_topics <= len(ranked):
        raise ValueError(f"num_topics={num_topics} must be between 2 and {len(ranked)}")
    names = sorted(ranked[:num_topics])
    rows = {"text": [], "label": []}
    for index, name in enumerate(names):
        rows["text"].extend(paragraphs[name])
        rows["label"].extend([index] * len(paragraphs[name]))
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    dataset = datasets.Dataset.from_dict(rows, features=features)
    split = dataset.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict({"train": split["train"], "validation": split["test"]})


# Inline markup of the Language Reference's plain-text rendering: literals are in double quotes
# ("__init__()"), emphasis in single asterisks (*cls*). Both stay on one line.
SPAN_LABELS = ("text", "literal", "emphasis")
_SPAN_PATTERNS = {"literal": re.compile(r'"[^"\n]+"'), "emphasis": re.compile(r"(?<!\*)\*[^*\n]+\*(?!\*)")}


def character_span_labels(text: str) -> list[int]:
    """Per character: index into SPAN_LABELS (0 text, 1 inside a "literal", 2 inside an *emphasis*)."""
    labels = [0] * len(text)
    for name, pattern in _SPAN_PATTERNS.items():
        for match in pattern.finditer(text):
            labels[match.start() : match.end()] = [SPAN_LABELS.index(name)] * (match.end() - match.start())
    return labels


def span_tagging_dataset(min_chars: int = 80, test_fraction: float = 0.2, seed: int = 0):
    """Offline token-classification task: tag each token of a paragraph as plain text, an inline "literal"
    or an *emphasis* span. Returns DatasetDict(train, validation) with columns text and char_labels
    (per-character label ids; finetune.py aligns them to tokens through the tokenizer's offsets)."""
    texts = sorted({p for text in reference_topics().values() for p in _paragraphs(text) if len(p) >= min_chars})
    dataset = datasets.Dataset.from_dict({"text": texts, "char_labels": [character_span_labels(t) for t in texts]})
    split = dataset.train_test_split(test_size=test_fraction, seed=seed)
    return datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
