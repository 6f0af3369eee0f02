#!/usr/bin/env python
"""Load a saved skipnorm model with the Auto classes and print a sample.

train.py runs this in a fresh process after saving, so the sample proves the folder on disk is complete
(safetensors weights, config, tokenizer) rather than reusing anything still in the training process's memory.

    python training/sample.py runs/main --prompt 'The "assert" statement' --max_new_tokens 60

A causal model continues the prompt; a masked model (is_causal=False) fills a masked word in the prompt.
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, set_seed

import hf_skipnorm  # noqa: F401  registers the skipnorm classes with the Auto classes


def generate_sample(model_dir: str, prompt: str, max_new_tokens: int = 60, seed: int = 0) -> str:
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if config.is_causal:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=True, top_k=40, temperature=0.8,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(output[0], skip_special_tokens=True)
    model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    words = prompt.split(" ")
    masked_index = len(words) // 2  # mask a word in the middle: the model sees context on both sides
    masked = " ".join(words[:masked_index] + [tokenizer.mask_token] + words[masked_index + 1 :])
    inputs = tokenizer(masked, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    position = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]
    top = logits[0, position].topk(5).indices.tolist()
    return f"{masked}\n  top-5 fillers: {[tokenizer.decode([t]) for t in top]}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--prompt", default='The "assert" statement')
    parser.add_argument("--max_new_tokens", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"Reloaded {args.model_dir} with the Auto classes in a fresh process. Sample:")
    print(generate_sample(args.model_dir, args.prompt, args.max_new_tokens, args.seed))


if __name__ == "__main__":
    main()
