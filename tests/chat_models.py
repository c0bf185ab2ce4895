"""Tiny random chat models in three template styles, built locally (no hub): what `prompt.template=chat`
meets in Llama-3, Qwen2.5 (ChatML) and Mistral, down to their BOS, end-of-turn and missing pad tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faultllm.llm.tiny import bpe_tokenizer
from faultllm.prompts.serialize import PromptFormat, question

# The families' templates, reduced to what faultllm uses (system, user, assistant turns; generation prompt).
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Mistral-7B-Instruct-v0.3's way: the system text goes into the last user turn only
MISTRAL_V3 = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content']"
    " + '[/INST]' }}{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)

# style -> (template, special tokens, token roles, transformers config class): no style has a pad token
STYLES = {
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>"],
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, "LlamaConfig"),
    # a Llama body: for model_type qwen2, transformers would swap in its Qwen2Tokenizer and its pre-tokenizer
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], {"eos_token": "<|im_end|>"}, "LlamaConfig"),
    "mistral": (MISTRAL, ["<unk>", "<s>", "</s>"],  # sentencepiece-like: `▁` after <s> too
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "prepend_scheme": "always"},
                "MistralConfig"),
}  # fmt: skip
TEMPLATE_ONLY = {"mistral_v3": ("mistral", MISTRAL_V3)}  # the mistral model and tokenizer with another template


def _corpus(rng: np.random.Generator, n: int = 400) -> list[str]:
    fmt = PromptFormat(system="You are an expert in fault diagnosis.", name_features=False, decimals=1)
    words = "system user assistant INST Y = can you tell me why do you have this decision? reasoning"
    return [f"{words} {fmt.system} {question(rng.uniform(size=3), ['a', 'b', 'c'], [0, 1], fmt)}" for _ in range(n)]


def build_chat_model(style: str, target: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    base, template = TEMPLATE_ONLY.get(style, (style, None))
    default_template, specials, roles, config_class = STYLES[base]
    template = template or default_template
    tokenizer = bpe_tokenizer(_corpus(np.random.default_rng(seed)), 300, specials, **roles)
    tokenizer.chat_template = template
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target
