"""The LLM: model and tokenizer sources, QLoRA build, memory model, training, scoring, decoding, explaining."""
