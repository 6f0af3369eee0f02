#!/usr/bin/env python
"""Generate from a saved skipnorm model (a train.py / finetune.py output folder, a checkpoint-N, a converted model).

    python training/sample.py runs/main 'The "assert" statement' --max_new_tokens 40             # greedy
    python training/sample.py runs/main 'The "assert" statement' --do_sample --top_p 0.9 --seed 1  # sampling
    python training/sample.py runs/main 'The "assert" statement' --num_beams 4                   # beam search

Greedy by default; --do_sample samples with --temperature, --top_k and --top_p; --num_beams > 1 is beam search
(beam sampling with --do_sample). The options are those of `model.generate` (transformers GenerationConfig).
A causal model continues the prompt; a masked model (is_causal=False) fills a masked word in the middle of the
prompt and prints its top-5 fillers. train.py runs this in a fresh process after saving, so its sample proves the
folder on disk is complete (safetensors weights, config, tokenizer).
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, set_seed

import hf_skipnorm  # noqa: F401  registers the skipnorm classes with the Auto classes

DEFAULT_PROMPT = 'The "assert" statement'


def check_generation_options(max_new_tokens: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
                             num_beams: int) -> None:
    """Refuse values generate() would reject late or silently ignore, naming the option and the valid range."""
    problems = []
    if max_new_tokens < 1:
        problems.append(f"--max_new_tokens {max_new_tokens} must be at least 1")
    if not (math.isfinite(temperature) and temperature > 0):
        problems.append(f"--temperature {temperature} must be a finite number > 0")
    if top_k < 0:
        problems.append(f"--top_k {top_k} must be >= 0 (0: no top-k filter)")
    if not 0 < top_p <= 1:
        problems.append(f"--top_p {top_p} must be in (0, 1]")
    if num_beams < 1:
        problems.append(f"--num_beams {num_beams} must be at least 1")
    if not do_sample and (temperature != 1.0 or top_k != 0 or top_p != 1.0):
        problems.append("--temperature/--top_k/--top_p shape sampling: add --do_sample (greedy and beam search ignore them)")
    if problems:
        raise ValueError("; ".join(problems))


def generate_sample(model_dir: str, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 60, seed: int = 0,
                    do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    num_beams: int = 1) -> str:
    check_generation_options(max_new_tokens, do_sample, temperature, top_k, top_p, num_beams)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if config.is_causal:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        inputs = tokenizer(prompt, return_tensors="pt")
        options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=num_beams)
        if do_sample:
            options.update(temperature=temperature, top_k=top_k, top_p=top_p)
        else:  # a saved generation_config may carry sampling values; greedy/beam search must not warn about them
            options.update(temperature=None, top_k=None, top_p=None)
        with torch.no_grad():
            output = model.generate(**inputs, **options, pad_token_id=tokenizer.pad_token_id)
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
    parser.add_argument("model_dir", help="A saved model folder.")
    parser.add_argument("prompt", nargs="?", default=None, help=f"Text to continue (default {DEFAULT_PROMPT!r}).")
    parser.add_argument("--prompt", dest="prompt_option", default=None, help="The prompt, as an option (older form).")
    parser.add_argument("--max_new_tokens", type=int, default=60, help="Tokens to generate (default 60).")
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (default 1.0).")
    parser.add_argument("--top_k", type=int, default=0, help="Sample among the k likeliest tokens (default 0: all).")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (default 1.0: off).")
    parser.add_argument("--num_beams", type=int, default=1, help="Beam search width (default 1: no beam search).")
    parser.add_argument("--seed", type=int, default=0, help="Seed for sampling (default 0).")
    args = parser.parse_args(argv)
    if args.prompt is not None and args.prompt_option is not None and args.prompt != args.prompt_option:
        parser.error("give the prompt once: as the second argument or as --prompt")
    prompt = args.prompt if args.prompt is not None else (args.prompt_option or DEFAULT_PROMPT)
    try:
        check_generation_options(args.max_new_tokens, args.do_sample, args.temperature, args.top_k, args.top_p,
                                 args.num_beams)
    except ValueError as error:
        parser.error(str(error))
    text = generate_sample(args.model_dir, prompt, args.max_new_tokens, args.seed, args.do_sample,
                           args.temperature, args.top_k, args.top_p, args.num_beams)
    print(f"Reloaded {args.model_dir} with the Auto classes in a fresh process. Sample:")
    print(text)


if __name__ == "__main__":
    main()
