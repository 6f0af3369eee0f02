"""SkipNorm checkpoints in the Hugging Face ecosystem: pipelines, PEFT LoRA with the Trainer, torch.compile without
graph breaks, static-cache generation, device_map / bf16 loading and sharded safetensors. All offline, tiny models.
"""

import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    pipeline,
)

from hf_skipnorm import (
    SkipNormConfig,
    SkipNormForCausalLM,
    SkipNormForMaskedLM,
    SkipNormForSequenceClassification,
    SkipNormForTokenClassification,
)

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song", "my cat likes the warm sun"]
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained offline on four sentences, with pad/unk/bos/eos/mask tokens."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", mask_token="<mask>")


def tiny(model_class, tokenizer=None, **overrides):
    torch.manual_seed(0)
    ids = {}
    if tokenizer is not None:
        ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    return model_class(SkipNormConfig(**{**TINY, **ids, **overrides})).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# ----------------------------------------------------------------------------------------------------- pipelines
def test_text_generation_pipeline_matches_generate(tokenizer, tmp_path):
    model = tiny(SkipNormForCausalLM, tokenizer)
    generator = pipeline("text-generation", model=save(model, tokenizer, tmp_path))
    result = generator("the cat sat", max_new_tokens=6, do_sample=False, return_tensors=True)
    prompt = tokenizer("the cat sat", return_tensors="pt")
    expected = model.generate(**prompt, max_new_tokens=6, do_sample=False)[0]
    assert result[0]["generated_token_ids"] == expected.tolist()
    assert len(expected) > prompt["input_ids"].shape[1]


def test_fill_mask_pipeline_picks_the_argmax_at_the_mask(tokenizer, tmp_path):
    model = tiny(SkipNormForMaskedLM, tokenizer, is_causal=False, norm_position="post", norm_type="layernorm",
                 embedding_norm=True)
    fill = pipeline("fill-mask", model=save(model, tokenizer, tmp_path))
    text = "the cat <mask> on the mat"
    result = fill(text, top_k=3)
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, inputs["input_ids"][0].tolist().index(tokenizer.mask_token_id)]
    probs = logits.softmax(-1)
    assert [r["token"] for r in result] == probs.topk(3).indices.tolist()
    assert result[0]["score"] == pytest.approx(probs.max().item(), abs=1e-5)


def test_text_classification_pipeline_matches_the_logits(tokenizer, tmp_path):
    model = tiny(SkipNormForSequenceClassification, tokenizer, num_labels=3,
                 id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    classify = pipeline("text-classification", model=save(model, tokenizer, tmp_path))
    texts = ["the dog sat in the sun", "a bird"]
    results = classify(texts)
    for text, result in zip(texts, results):
        with torch.no_grad():
            probs = model(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
        assert result["label"] == model.config.id2label[probs.argmax().item()]
        assert result["score"] == pytest.approx(probs.max().item(), abs=1e-5)


def test_token_classification_pipeline_labels_every_token(tokenizer, tmp_path):
    labels = {0: "A", 1: "B", 2: "C"}  # no "O": the pipeline drops "O" tokens by default
    model = tiny(SkipNormForTokenClassification, tokenizer, is_causal=False, num_labels=3, id2label=labels,
                 label2id={v: k for k, v in labels.items()})
    tag = pipeline("token-classification", model=save(model, tokenizer, tmp_path))
    text = "my cat likes the warm sun"
    entities = tag(text)
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**inputs).logits[0].argmax(-1)
    assert [e["index"] for e in entities] == list(range(len(inputs["input_ids"][0])))
    assert [e["entity"] for e in entities] == [labels[i] for i in predicted.tolist()]
    assert [e["word"] for e in entities] == text.split()


# ----------------------------------------------------------------------------------------------------- PEFT
def test_lora_trains_with_the_trainer_and_merges_to_the_same_logits(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny(SkipNormForCausalLM, tokenizer, norm_position="sandwich")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    targets = {name.split(".")[-2] for name, _ in peft_model.named_modules() if name.endswith(".lora_A")}
    assert targets == set(LORA_TARGETS)

    rows = [tokenizer(s)["input_ids"][:6] for s in SENTENCES]
    data = [{"input_ids": torch.tensor(r), "labels": torch.tensor(r)} for r in rows if len(r) == 6]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=5e-2,
                             report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=peft_model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 2 * len(LORA_TARGETS) and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero
    for name, p in peft_model.base_model.model.named_parameters():
        if "lora_" not in name:  # the frozen base weights did not move
            torch.testing.assert_close(p, before[name.replace(".base_layer", "")], atol=0, rtol=0)

    peft_model.eval()
    ids = torch.tensor([rows[0]])
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()
        merged_logits = merged(input_ids=ids).logits
        base_logits = tiny(SkipNormForCausalLM, tokenizer, norm_position="sandwich")(input_ids=ids).logits
    assert isinstance(merged, SkipNormForCausalLM)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the merge changed the model


# ----------------------------------------------------------------------------------------------------- compile
COMPILE_CELLS = [("pre", "rmsnorm"), ("post", "layernorm"), ("sandwich", "rmsnorm")]
SLOW_COMPILE_CELLS = [("pre", "layernorm"), ("post", "rmsnorm"), ("sandwich", "layernorm"), ("output", "rmsnorm"),
                      ("pre_post", "layernorm")]


def check_fullgraph_forward(position, norm_type, backend):
    model = tiny(SkipNormForCausalLM, norm_position=position, norm_type=norm_type)
    ids = torch.randint(0, TINY["vocab_size"], (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fullgraph: any graph break raises
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = compiled(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position, norm_type", COMPILE_CELLS, ids=[f"{p}-{n}" for p, n in COMPILE_CELLS])
def test_compile_fullgraph_forward_has_no_graph_breaks(position, norm_type):
    # backend="eager": dynamo traces the whole forward (graph breaks are a tracing property) without paying for
    # inductor's code generation on a shared 2-core machine; the slow test below runs inductor.
    check_fullgraph_forward(position, norm_type, backend="eager")


@pytest.mark.slow
@pytest.mark.parametrize("position, norm_type", SLOW_COMPILE_CELLS + COMPILE_CELLS,
                         ids=[f"{p}-{n}" for p, n in SLOW_COMPILE_CELLS + COMPILE_CELLS])
def test_compile_fullgraph_forward_with_inductor(position, norm_type):
    check_fullgraph_forward(position, norm_type, backend="inductor")


def test_generate_with_a_static_cache_matches_the_dynamic_cache(tokenizer):
    model = tiny(SkipNormForCausalLM, tokenizer)
    tokenizer.padding_side = "left"  # decoder batches pad on the left so every row continues from its last token
    prompt = tokenizer(["the cat sat on", "a dog"], return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    dynamic = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    static = model.generate(**prompt, max_new_tokens=6, do_sample=False, cache_implementation="static",
                            return_dict_in_generate=True)
    assert type(static.cache).__name__ == "StaticCache"
    assert static.sequences.tolist() == dynamic.tolist()
    assert static.sequences.shape[1] > prompt["input_ids"].shape[1]


# ----------------------------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def causal_folder(tmp_path_factory):
    model = tiny(SkipNormForCausalLM, norm_position="sandwich", norm_type="layernorm")
    folder = tmp_path_factory.mktemp("causal")
    model.save_pretrained(folder)
    return model, folder


def logits_of(model):
    ids = torch.arange(10).reshape(2, 5) % TINY["vocab_size"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_device_map_auto_and_low_cpu_mem_usage_loading(causal_folder):
    model, folder = causal_folder
    loaded = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    torch.testing.assert_close(logits_of(loaded), logits_of(model), atol=0, rtol=0)


def test_bfloat16_loading(causal_folder, tmp_path):
    model, folder = causal_folder
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(logits_of(loaded), logits_of(model), atol=0.1, rtol=0.05)
    loaded.save_pretrained(tmp_path)  # a bf16 checkpoint reloads as bf16, bit for bit
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.dtype == torch.bfloat16
    for (name, p), q in zip(loaded.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name


def test_sharded_safetensors_round_trip(causal_folder, tmp_path):
    model, _ = causal_folder
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = [name for name in os.listdir(tmp_path) if name.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in os.listdir(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
