"""Model cards for skipnorm checkpoints, built with huggingface_hub.ModelCard from `model_cards/template.md`.

    python model_cards/generate.py CHECKPOINT --out model_cards/NAME

CHECKPOINT is a folder written by training/study.py, training/train.py or training/finetune.py (the final folder or
any `checkpoint-N`). Everything the card states about the run is read from the folder's own files: the config cell
(placement, norm type, residual) with its formula and citation; the tokenizer (class, algorithm, vocabulary size,
from the tokenizer files); the training facts and evaluation results (`training_info.json` of the study, or
`all_results.json` / `trainer_state.json` of a Trainer run) as `model-index` metadata; a per-evaluation training
results table and loss curve (from `trainer_state.json`); the diagnostics plot (init vs trained profile, on text
tokenized with the run's own tokenizer). `validate_card` re-reads the card with huggingface_hub and checks its
metadata offline (the Hub's own validation endpoint needs the network).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template.md")
# The study's models (training_info.json) are all trained on this split of the embedded corpus.
DATASET_TYPE = "pydoc_data.topics"
DATASET_NAME = "Python Language Reference (pydoc_data.topics, CPython), held-out 10%"
# Head class (config.json's architectures) -> (pipeline tag, Auto class, what the eval task is called).
HEADS = {
    "SkipNormForCausalLM": ("text-generation", "AutoModelForCausalLM", "Causal language modeling"),
    "SkipNormForMaskedLM": ("fill-mask", "AutoModelForMaskedLM", "Masked language modeling"),
    "SkipNormForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification",
                                          "Sequence classification"),
    "SkipNormForTokenClassification": ("token-classification", "AutoModelForTokenClassification",
                                       "Token classification"),
    "SkipNormModel": ("feature-extraction", "AutoModel", "Feature extraction"),
    # issue 16: training/seq2seq.py's encoder-decoders
    "SkipNormForConditionalGeneration": ("text2text-generation", "AutoModelForSeq2SeqLM",
                                         "Sequence-to-sequence generation"),
}
# Metrics of an evaluation that describe the run, not the model.
EVAL_BOOKKEEPING = ("runtime", "samples_per_second", "steps_per_second", "epoch")

# value -> (formula, citation). The README variant table is the full reference; values missing here say so.
PLACEMENTS = {
    "pre": ("x + F(N(x))", "Xiong et al. 2020, arXiv 2002.04745"),
    "post": ("N(x + F(x))", "Vaswani et al. 2017, arXiv 1706.03762"),
    "sandwich": ("x + N_out(F(N_in(x)))", "CogView, arXiv 2105.13290; Peri-LN, arXiv 2502.02732"),
    "output": ("x + N(F(x))", "OLMo 2, arXiv 2501.00656"),
    "pre_post": ("N_post(x + F(N_pre(x)))", "Keel, arXiv 2601.19895"),
    "none": ("x + F(x)", "norm-free (with ReZero / SkipInit, arXiv 2003.04887 / 2002.10444)"),
    "subln": ("x + W_out N_sub(G(N(x)))", "Magneto, arXiv 2210.06423"),
    "normformer": ("x + N_a(HeadScale(MHA(N(x))))", "NormFormer, arXiv 2110.09456"),
    "mix": ("post for the first blocks, pre for the rest", "Mix-LN, arXiv 2412.13795"),
    "hybrid": ("QKV-norm attention, post-norm MLP", "HybridNorm, arXiv 2503.04598"),
    "resi_dual": ("x_L + N_f(d_L), post and dual streams", "ResiDual, arXiv 2304.14802"),
    "b2t": ("N(x' + FFN(x') + x)", "B2T connection, arXiv 2206.00330"),
}
NORM_TYPES = {
    "layernorm": ("g*(x-mean)/sqrt(var+eps) + b", "Ba et al. 2016, arXiv 1607.06450"),
    "rmsnorm": ("g*x/sqrt(mean(x^2)+eps)", "Zhang & Sennrich 2019, arXiv 1910.07467"),
    "scalenorm": ("g*sqrt(d)*x/||x||", "Nguyen & Salazar 2019, arXiv 1910.05895"),
    "simple_rmsnorm": ("sqrt(d)*x/||x||", "TransNormer, arXiv 2307.14995"),
    "dyt": ("g*tanh(a*x) + b", "Zhu et al. 2025, arXiv 2503.10622"),
    "derf": ("g*erf(a*x + s) + b", "arXiv 2512.10938"),
    "none": ("x", "no normalization"),
}
RESIDUALS = {
    "add": ("x + y", "He et al. 2016, arXiv 1512.03385"),
    "none": ("y", "no skip: Dong et al. 2021, arXiv 2103.03404"),
    "scaled": ("a*x + m*y", "Granite / MiniCPM constants"),
    "deepnorm": ("N(alpha*x + y), alpha=(2L)^(1/4)", "DeepNet, arXiv 2203.00555"),
    "admin": ("N(w_l*x + y)", "Admin, arXiv 2004.08249"),
    "rezero": ("x + alpha*y, alpha=0 at init", "ReZero, arXiv 2003.04887"),
    "layerscale": ("x + diag(lambda)*y", "CaiT, arXiv 2103.17239"),
    "gated": ("x + g*y, learned gate", "Highway / GTrXL, arXiv 1910.06764"),
    "hyper": ("n streams, learned width/depth connections", "Hyper-Connections, arXiv 2409.19606"),
    "mhc": ("hyper-connections, doubly stochastic mixing", "mHC, arXiv 2512.24880"),
    "dense": ("weighted sum of all earlier block outputs", "DenseFormer, arXiv 2402.02622"),
}


def _lookup(table: dict, value) -> tuple[str, str]:
    if isinstance(value, list):  # per-layer placements
        return " / ".join(f"{v}: {table.get(v, ('?', ''))[0]}" for v in dict.fromkeys(value)), "per-layer list"
    return table.get(value, ("see the README variant table", "see the README variant table"))


def cell_rows(config) -> list[dict]:
    rows = []
    for axis, value, table in (("norm_position", config.norm_position, PLACEMENTS),
                               ("norm_type", config.norm_type, NORM_TYPES),
                               ("residual", config.residual, RESIDUALS)):
        formula, citation = _lookup(table, value)
        rows.append({"axis": axis, "value": value, "formula": formula, "citation": citation})
    for field in ("attn_norm_position", "mlp_norm_position"):
        if getattr(config, field, None) is not None:
            formula, citation = _lookup(PLACEMENTS, getattr(config, field))
            rows.append({"axis": field, "value": getattr(config, field), "formula": formula, "citation": citation})
    for field in ("embedding_norm", "norm_depth_scaling"):
        if getattr(config, field, False):
            rows.append({"axis": field, "value": getattr(config, field),
                         "formula": "N(embeddings)" if field == "embedding_norm" else "pre-norm output * 1/sqrt(l)",
                         "citation": "Peri-LN, arXiv 2502.02732" if field == "embedding_norm" else "arXiv 2502.05795"})
    return rows


def architecture_of(checkpoint: str) -> str:
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
        architectures = json.load(handle).get("architectures") or ["SkipNormModel"]
    if architectures[0] not in HEADS:
        raise ValueError(f"{checkpoint}/config.json architectures={architectures}; expected one of {', '.join(HEADS)}")
    return architectures[0]


def _read_json(path: str):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def run_dataset(checkpoint: str) -> tuple[str, str] | None:
    """(type, name) of the evaluation dataset as the run's own card records it (the folder's README.md, or the run
    folder's for a checkpoint-N); None when no card of the run names one."""
    from huggingface_hub import ModelCard

    for folder in (checkpoint, os.path.dirname(os.path.normpath(checkpoint))):
        path = os.path.join(folder, "README.md")
        if not os.path.isfile(path):
            continue
        try:
            results = ModelCard.load(path).data.eval_results or []
        except Exception:  # a README that is not a model card says nothing about the dataset
            continue
        if results:
            return results[0].dataset_type, results[0].dataset_name
    return None


def training_facts(checkpoint: str) -> dict:
    """What the checkpoint folder records about its training; says so when nothing is recorded."""
    facts = {}
    info_path = os.path.join(checkpoint, "training_info.json")
    if os.path.exists(info_path):
        info = _read_json(info_path)
        facts = {
            "dataset": info.get("dataset"),
            "tokenizer": info.get("tokenizer"),
            "steps": info.get("steps"),
            "batch": f"{info.get('batch_size')} sequences x {info.get('seq_len')} tokens",
            "peak learning rate": info.get("lr"),
            "warm-up": f"{info.get('warmup_steps')} steps" if info.get("warmup") else "none",
            "schedule": info.get("schedule"),
            "optimizer": info.get("optimizer"),
            "seed": info.get("seed"),
            "produced by": "training/study.py (hf_skipnorm norm-placement study)",
        }
    state_path = os.path.join(checkpoint, "trainer_state.json")
    if os.path.exists(state_path):
        state = _read_json(state_path)
        for key in ("global_step", "max_steps", "num_train_epochs", "train_batch_size", "eval_steps", "save_steps",
                    "logging_steps"):
            if state.get(key) is not None:
                facts.setdefault(key.replace("_", " "), state[key])
        facts.setdefault("produced by", "the transformers Trainer (training/train.py or training/finetune.py)")
    results_path = os.path.join(checkpoint, "all_results.json")
    if os.path.exists(results_path):
        results = _read_json(results_path)
        for key in ("train_loss", "train_runtime"):
            if key in results:
                facts.setdefault(key.replace("_", " "), round(results[key], 4))
    return {k: v for k, v in facts.items() if v is not None} or {"training": "not recorded in the checkpoint folder"}


def eval_results(checkpoint: str):
    """(EvalResults for the model-index, the study's training_info or {}) from the folder's own files."""
    from huggingface_hub import EvalResult

    from training.model_card import final_eval_metrics, read_run_files

    info_path = os.path.join(checkpoint, "training_info.json")
    if os.path.exists(info_path):
        info = _read_json(info_path)
        loss = info.get("val_loss")
        if loss is None or not math.isfinite(loss):
            return [], info
        common = dict(task_type="text-generation", task_name="Byte-level language modeling",
                      dataset_type=DATASET_TYPE, dataset_name=DATASET_NAME, dataset_split="validation")
        return [
            EvalResult(metric_type="loss", metric_name="Validation loss (nats/byte)", metric_value=round(loss, 4),
                       **common),
            EvalResult(metric_type="perplexity", metric_name="Validation perplexity (per byte)",
                       metric_value=round(math.exp(loss), 4), **common),
        ], info
    metrics = final_eval_metrics(*read_run_files(checkpoint))
    if not metrics:
        return [], {}
    task_type, _, task_name = HEADS[architecture_of(checkpoint)]
    dataset_type, dataset_name = run_dataset(checkpoint) or ("unrecorded", "evaluation split of the run (unrecorded)")
    results = []
    for key, value in sorted(metrics.items()):
        metric = key.removeprefix("eval_")
        if metric in EVAL_BOOKKEEPING or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        results.append(EvalResult(task_type=task_type, task_name=task_name, dataset_type=dataset_type,
                                  dataset_name=dataset_name, dataset_split="validation", metric_type=metric,
                                  metric_name=f"Validation {metric.replace('_', ' ')}",
                                  metric_value=round(float(value), 4)))
    return results, {}


def diagnostics_figure(checkpoint: str, out_dir: str, tokenizer=None) -> tuple[str, str, int]:
    """Init-vs-trained profile plot (PNG in `out_dir`), a markdown table of the trained profile, the parameter count.

    The batch is text from the embedded corpus tokenized with the run's own `tokenizer` (random ids when there is
    no tokenizer and the vocabulary is not byte-sized). Block numbers are 0-based in the table and the plot."""
    import torch

    import hf_skipnorm
    from hf_skipnorm.diagnostics import TABLE_COLUMNS, plot_profiles, profile, sample_batch

    model_class = getattr(hf_skipnorm, architecture_of(checkpoint))
    trained = model_class.from_pretrained(checkpoint)
    torch.manual_seed(0)
    init = model_class(trained.config)
    batch = sample_batch(trained.config.vocab_size, tokenizer, batch_size=8,
                         seq_len=min(64, trained.config.max_position_embeddings))
    if trained.config.is_encoder_decoder:
        # Per stack (profile_encoder_decoder: the batch reconstructed through both stacks, BART-style): table rows
        # and plot lines named "encoder ..." / "decoder ...".
        from hf_skipnorm.diagnostics import profile_encoder_decoder

        per_stack = {"init": profile_encoder_decoder(init, batch), "trained": profile_encoder_decoder(trained, batch)}
        profiles = {f"{stack} {when}": per_stack[when][stack] for stack in ("encoder", "decoder")
                    for when in ("init", "trained")}
        trained_rows = [(stack, per_stack["trained"][stack]) for stack in ("encoder", "decoder")]
    else:
        profiles = {"init": profile(init, batch), "trained": profile(trained, batch)}
        trained_rows = [("", profiles["trained"])]
    path = plot_profiles(profiles, os.path.join(out_dir, "diagnostics.png"), os.path.basename(os.path.normpath(out_dir)))
    header = "| block | " + " | ".join(title.replace("|", "\\|") for _, title in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 1)]
    for stack, result in trained_rows:
        prefix = f"{stack} " if stack else ""
        embedding = result.get("embedding", {})
        for label, row in [("emb", embedding)] + [(str(r["layer"]), r) for r in result["layers"]]:
            cells = [f"{row[key]:.3g}" if key in row else "" for key, _ in TABLE_COLUMNS]
            lines.append(f"| {prefix}{label} | " + " | ".join(cells) + " |")
    return os.path.basename(path), "\n".join(lines), sum(p.numel() for p in trained.parameters())


def write_card(checkpoint: str, out_dir: str, name: str | None = None, summary: str | None = None):
    """Write `out_dir/README.md`, `diagnostics.png` and (Trainer runs) `loss_curve.png` for `checkpoint`."""
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import AutoTokenizer

    from hf_skipnorm import SkipNormConfig
    from training.model_card import describe_tokenizer, read_run_files, tokenizer_sentence
    from training.plots import LOSS_CURVE_PNG, markdown_table, plot_loss_curve, training_results

    os.makedirs(out_dir, exist_ok=True)
    config = SkipNormConfig.from_pretrained(checkpoint)
    architecture = architecture_of(checkpoint)
    pipeline_tag, auto_class, task_name = HEADS[architecture]
    name = name or os.path.basename(os.path.normpath(out_dir))
    results, info = eval_results(checkpoint)
    card_data = ModelCardData(
        model_name=name, license="apache-2.0", library_name="transformers", pipeline_tag=pipeline_tag,
        language=["en"], tags=["skipnorm", "norm-placement", f"norm_position-{config.norm_position}",
                               f"residual-{config.residual}", f"norm_type-{config.norm_type}"],
        eval_results=results or None,
    )
    tokenizer_facts = describe_tokenizer(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint) if tokenizer_facts else None
    if tokenizer_facts:
        tokenizer_text = tokenizer_sentence(tokenizer_facts, config)
    elif info.get("tokenizer"):
        tokenizer_text = (f"No tokenizer files: the study feeds {info['tokenizer']} as input ids "
                          f"(`list(text.encode('utf-8'))`).")
    else:
        tokenizer_text = tokenizer_sentence(None, config)
    _, history = read_run_files(checkpoint)
    loss_curve = plot_loss_curve(history, os.path.join(out_dir, LOSS_CURVE_PNG), name) if history else None
    png, table, parameters = diagnostics_figure(checkpoint, out_dir, tokenizer)
    unigram = info.get("unigram_entropy")
    kind = {"SkipNormForCausalLM": "causal LM", "SkipNormForMaskedLM": "masked LM",
            "SkipNormForSequenceClassification": "sequence classifier",
            "SkipNormForTokenClassification": "token classifier", "SkipNormModel": "backbone",
            "SkipNormForConditionalGeneration": "encoder-decoder"}[architecture]
    produced_by = "a norm-placement study" if info else "the transformers Trainer"
    if tokenizer_facts:
        inputs = f"{tokenizer_facts.get('type', 'its')} tokenizer, {tokenizer_facts.get('vocab_size', '?')} tokens"
    elif info.get("tokenizer"):
        inputs = info["tokenizer"]
    else:
        inputs = "token ids (no tokenizer files)"
    card = ModelCard.from_template(
        card_data, template_path=TEMPLATE, model_name=name,
        summary=summary or f"A {config.num_hidden_layers}-block skipnorm {kind} trained with {produced_by}.",
        cell_rows=cell_rows(config), num_hidden_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads, parameters=f"{parameters:,}",
        training=training_facts(checkpoint), tokenizer=tokenizer_text,
        results=[{"name": r.metric_name, "dataset": r.dataset_name, "value": r.metric_value} for r in results]
        or [{"name": "evaluation", "dataset": "-", "value": "not recorded"}],
        evaluation_note=(f"Reference points: a model that only knows byte frequencies scores {unigram:.3f} nats/byte; a "
                         f"uniform guess {math.log(256):.3f}." if unigram else ""),
        training_results=markdown_table(training_results(history)), loss_curve=LOSS_CURVE_PNG if loss_curve else None,
        diagnostics_png=png, diagnostics_table=table, checkpoint_hint=f"path/to/{name}", auto_class=auto_class,
        has_tokenizer=tokenizer_facts is not None,
        limitations=[
            f"A small research model ({config.num_hidden_layers} blocks, d={config.hidden_size}, {parameters:,} "
            f"parameters): it exists to compare architectures, not to generate useful text.",
            f"Inputs: {inputs}.",
            "One seed; differences between cells smaller than the seed-to-seed spread are not meaningful.",
            "Not evaluated for bias or safety; do not deploy.",
        ],
    )
    card.save(os.path.join(out_dir, "README.md"))
    return card


def validate_card(path: str) -> None:
    """Re-read a card with huggingface_hub and check its metadata; raises ValueError naming what is wrong."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    card = ModelCard.load(path)  # parses the YAML and the model-index into EvalResult objects (raises if malformed)
    data = card.data
    for field in ("license", "library_name", "pipeline_tag", "tags"):
        if not getattr(data, field, None):
            raise ValueError(f"model card {path}: metadata field {field!r} is missing")
    if data.eval_results:
        index = data.to_dict()["model-index"]
        name, results = model_index_to_eval_results(index)
        if name != data.model_name or results != data.eval_results:
            raise ValueError(f"model card {path}: model-index does not round-trip through huggingface_hub")
        if eval_results_to_model_index(name, results) != index:
            raise ValueError(f"model card {path}: model-index is not in huggingface_hub's canonical form")
    referenced = [line for line in card.text.splitlines() if line.startswith("![")]
    for line in referenced:
        image = line.split("(", 1)[1].rstrip(")")
        if not os.path.exists(os.path.join(os.path.dirname(path), image)):
            raise ValueError(f"model card {path}: image {image!r} is missing")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a model card for a skipnorm checkpoint.")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="folder for README.md and diagnostics.png")
    parser.add_argument("--name", help="model name (default: the --out folder's name)")
    args = parser.parse_args(argv)
    write_card(args.checkpoint, args.out, args.name)
    validate_card(os.path.join(args.out, "README.md"))
    print(f"wrote and validated {os.path.join(args.out, 'README.md')}")


if __name__ == "__main__":
    main()
