"""The tokenizer as faultllm trains and scores with it, and the model's embeddings grown to its pad token."""

from __future__ import annotations

from faultllm.prompts.templates import end_of_turn, use_chat_template
from faultllm.runtime.errors import FaultLLMError


def pretrained_tokenizer(source: str):
    """transformers' tokenizer from a directory or hub id, or a one-line error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise FaultLLMError(f"cannot load a tokenizer from {source!r}: {str(err).splitlines()[0]}") from err


PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|endoftext|>")


def load_tokenizer(path: str, chat: bool = False, chat_template_file: str | None = None):
    """The tokenizer as faultllm trains with it: with `chat`, EOS is the chat template's end-of-turn token
    (what ends an answer); the pad token is never EOS (else EOS is masked as padding and never learned).

    It pads on the left, for generation, and is saved so with an adapter; nothing changes that later. TRL's
    collator pads training batches on the right and `score` pads its own batches, whatever it says."""
    tokenizer = pretrained_tokenizer(path)
    if chat:
        use_chat_template(tokenizer, path, chat_template_file)
        tokenizer.eos_token = end_of_turn(tokenizer)
    choose_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer


def choose_pad_token(tokenizer) -> None:
    """Its own pad token if that is not EOS; else unk (Llama-2's usual choice); else a reserved special
    token the vocabulary has; else a new `<|pad|>` (the model's embeddings then grow: `fit_embeddings`)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
        return
    added = [token for token in tokenizer.get_added_vocab() if token != tokenizer.eos_token]
    named = [token for token in PAD_NAMES if token in added]
    reserved = sorted((token for token in added if "reserved" in token), key=tokenizer.convert_tokens_to_ids)
    if named or reserved:
        tokenizer.pad_token = (named or reserved)[0]
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def fit_embeddings(model, tokenizer):
    """Grow the embeddings to the tokenizer when faultllm added a pad token. The new rows are the mean of
    the existing ones, in training and on reload alike, so a reloaded adapter sees the very same model
    (the pad row's input is masked; its output row only joins the softmax's normaliser)."""
    import torch

    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old_rows:
        return model
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
            layer.weight[old_rows:] = layer.weight[:old_rows].float().mean(dim=0).to(layer.weight.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model
