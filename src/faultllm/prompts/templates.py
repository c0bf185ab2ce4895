"""How a table row becomes the study's question, a question a model's prompt, and a label its completion.

The question: "Tell me if the value of Y is 0 or 1. If the features are: 0.25, ... What should be Y?",
its answer `Y = k`. `prompt.format=compact` asks "Features (0-99): 25 ... Y is 0 or 1?" instead: each
scaled value v in [0, 1] as the integer round(99 v), named features as x1, x2, ... (`short_names`),
no boilerplate; the answer stays `Y = k` (docs/compact_prompts.md).

`prompt.template=llama2` (the study's layout, default for the Llama-2 configs):
    [INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{question} [/INST]    <- prompt (the tokenizer adds BOS)
     Y = {label}</s>                                               <- completion
`prompt.template=chat`: the tokenizer's own chat template (`apply_chat_template`): system and
user turns, the generation prompt, and `Y = {label}` as the assistant turn up to and including
its end-of-turn token (`<|eot_id|>`, `<|im_end|>`, `</s>`). A template without a system role
(Mistral) gets the system text folded into the user turn. Prompts never hold a literal BOS: the
tokenizer adds it where the model expects one.

In-context examples (`prompt.shots`) are solved questions before the question: earlier user/assistant
turns (`Y = k` answers) in a chat template, and inside the one user message in the Llama-2 layout
(each example's question and ` Y = k`, a blank line between them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from faultllm.runtime.errors import FaultLLMError

_PROBE_ANSWER = "Y = 0"
# Templates that print today's date (Llama-3.1 and later) get a fixed one: the prompts of a run must not
# change between training and a later reload.
_FIXED_DATE = {"date_string": "26 Jul 2024"}


# ---------------------------------------------------------------- the study's question and answer


@dataclass(frozen=True)
class PromptFormat:
    system: str  # already filled in with the data set's name
    name_features: bool
    decimals: int | None  # None: shortest exact form (1, 0.05); an int: fixed decimals (0.0500)
    missing: str = "unknown"  # a missing value: written as "unknown", or left out ("omit")
    style: str = "study"  # the question's wording: the study's, or compact (`compact_question`)


COMPACT_TOP = 99  # compact values: a scaled value v in [0, 1] written as round(99 v), two digits at most


def format_value(value: float, decimals: int | None) -> str:
    if np.isnan(value):
        return "unknown"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return np.format_float_positional(float(value), trim="-")


def label_choices(labels: Sequence) -> str:
    """'0 or 1'; '0, 1, 4 or 5'."""
    names = [str(label) for label in labels]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def compact_value(value: float) -> str:
    """A scaled value on the 0-99 grid ("?" when missing); a test row outside the training range gives
    e.g. -3 or 104, never clipped."""
    return "?" if np.isnan(value) else str(int(np.rint(value * COMPACT_TOP)))


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@cache
def short_names(features: tuple[str, ...]) -> dict[str, str]:
    """Compact names that depend on the set of features only, never on the order a prompt writes them in:
    integer column names n (HST's 0..45) become xn, any others x1, x2, ... in natural order (TEP's
    xmeas_1..41, xmv_1..11 become x1..x52, the usual numbering of the 52 TEP variables)."""
    names = [str(name) for name in features]
    if all(name.isdigit() for name in names):
        return {name: f"x{int(name)}" for name in names}
    return {name: f"x{i}" for i, name in enumerate(sorted(names, key=_natural_key), start=1)}


def compact_question(pairs: list[tuple[str, float]], features: Sequence[str], labels: Sequence, named: bool) -> str:
    """'Features (0-99): 25 3 ?. Y is 0 or 1?'; named: 'Features (0-99): x1=25 x2=3 x3=?. Y is 0 or 1?'."""
    names = short_names(tuple(str(name) for name in features))
    shown = [(names[str(name)] + "=" if named else "") + compact_value(value) for name, value in pairs]
    return f"Features (0-{COMPACT_TOP}): {' '.join(shown)}. Y is {label_choices(labels)}?"


def question(values: Sequence[float], features: Sequence[str], labels: Sequence, fmt: PromptFormat) -> str:
    pairs = [(name, value) for name, value in zip(features, values, strict=True)]
    if fmt.missing == "omit":
        pairs = [(name, value) for name, value in pairs if not np.isnan(value)]
    if fmt.style == "compact":
        return compact_question(pairs, features, labels, fmt.name_features)
    shown = [(name, format_value(value, fmt.decimals)) for name, value in pairs]
    if fmt.name_features:
        body = "If " + ", ".join(f"feature {name} = {v}" for name, v in shown) + "."
    else:
        body = "If the features are: " + ", ".join(v for _, v in shown) + "."
    return f"Tell me if the value of Y is {label_choices(labels)}. {body} What should be Y?"


# The study's follow-up question asking the model to explain itself (its section 4.3).
WHY_QUESTION = " can you tell me why do you have this decision? What is the reasoning behind your decision?"


# ---------------------------------------------------------------- chat layouts


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    """The chat template's text for `messages` (never tokenized here: callers tokenize as faultllm does)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, **_FIXED_DATE
    )


def chat_prompt(user_message: str, system: str) -> str:
    """Llama-2 chat layout without BOS: the tokenizer adds it, a literal `<s>` would double it."""
    return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user_message} [/INST]"


def answer(label) -> str:
    """The answer in the study's layout (after `[/INST]`, hence the leading space)."""
    return f" Y = {label}"


Examples = Sequence[tuple[str, object]]  # solved in-context examples: (question, label)


def with_examples(user: str, examples: Examples) -> str:
    """The Llama-2 layout's user message with solved examples in front of the question."""
    return "\n\n".join([*(question + answer(label) for question, label in examples), user])


@dataclass(frozen=True)
class Llama2Layout:
    end: str  # the tokenizer's EOS (`</s>`)

    def prompt(self, system: str, user: str, examples: Examples = ()) -> str:
        return chat_prompt(with_examples(user, examples), system)

    def completion(self, label) -> str:
        return answer(label) + self.end


@dataclass(frozen=True)
class ChatTemplate:
    tokenizer: object
    system_role: bool  # False: the system text goes in front of the user turn
    end: str  # the end-of-turn token that closes the assistant's answer
    bos: str  # the template's literal BOS, dropped because the tokenizer adds it ("" when it does not)

    def messages(self, system: str, user: str, examples: Examples = ()) -> list[dict[str, str]]:
        """System, the examples as earlier user/assistant turns, the question. Without a system role the
        system text opens the first user turn."""
        turns = [
            {"role": role, "content": content}
            for question, label in examples
            for role, content in (("user", question), ("assistant", f"Y = {label}"))
        ] + [{"role": "user", "content": user}]
        if self.system_role:
            return [{"role": "system", "content": system}, *turns]
        return [{"role": "user", "content": f"{system}\n\n{turns[0]['content']}"}, *turns[1:]]

    def prompt(self, system: str, user: str, examples: Examples = ()) -> str:
        text = render(self.tokenizer, self.messages(system, user, examples), True)
        return text.removeprefix(self.bos) if self.bos else text

    def completion(self, label) -> str:
        return assistant_turn(self.tokenizer, self.messages("s", "u"), f"Y = {label}", self.end)


def bos_to_strip(tokenizer) -> str:
    """The BOS text a template writes that must go because the tokenizer adds BOS itself (else it would
    appear twice); "" for a tokenizer that adds none."""
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    return bos if adds_bos else ""


def answered(tokenizer, messages: list[dict], content: str) -> tuple[str, str]:
    """(the text up to the generation prompt, the text once `content` is the assistant's answer)."""
    return render(tokenizer, messages, True), render(
        tokenizer, [*messages, {"role": "assistant", "content": content}], False
    )


def assistant_turn(tokenizer, messages: list[dict], content: str, end: str) -> str:
    """What the template writes after the generation prompt for an assistant answer, through `end`."""
    prompt, full = answered(tokenizer, messages, content)
    if not full.startswith(prompt) or end not in full[len(prompt) :]:
        raise FaultLLMError("the chat template does not render an answer as generation prompt + answer + end of turn")
    turn = full[len(prompt) :]
    return turn[: turn.index(end) + len(end)]


def check_rendering(template: ChatTemplate) -> None:
    """Our prompt text, tokenized as everywhere in faultllm (BOS added by the tokenizer), must give the
    very tokens the template's own tokenization gives: else training would drift from the model's format."""
    tokenizer = template.tokenizer
    messages = template.messages("s", "u")
    own = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **_FIXED_DATE)
    own = list(own["input_ids"] if hasattr(own, "keys") else own)
    if tokenizer(template.prompt("s", "u"))["input_ids"] != own:
        raise FaultLLMError(
            f"{tokenizer.name_or_path}: its chat template's text does not tokenize as the template does without the "
            "literal BOS; use prompt.template=llama2 or a template file (prompt.chat_template=FILE.jinja)"
        )


def has_system_role(tokenizer) -> bool:
    """A system turn the template renders, and keeps once the answer follows (Mistral v0.3 puts the system
    text into the last user turn only, so it would move when the answer is appended)."""
    messages = [{"role": "system", "content": "system-probe"}, {"role": "user", "content": "u"}]
    try:
        prompt, full = answered(tokenizer, messages, _PROBE_ANSWER)
    except Exception:  # jinja2's TemplateError from raise_exception('... roles ...'), or the template's own
        return False
    return full.startswith(prompt) and "system-probe" in prompt  # kept in place, not silently dropped


def end_of_turn(tokenizer) -> str:
    """The special token that closes an assistant turn in the tokenizer's chat template (EOS if none does)."""
    _, full = answered(tokenizer, [{"role": "user", "content": "u"}], _PROBE_ANSWER)
    after = full[full.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER) :]
    specials = sorted({*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}, key=len, reverse=True)
    return next((token for token in specials if after.startswith(token)), tokenizer.eos_token)


def use_chat_template(tokenizer, path: str, template_file: str | None) -> None:
    """Check the tokenizer has a chat template (or install the one from `template_file`)."""
    if template_file:
        file = Path(template_file).expanduser()
        if not file.is_file():
            raise FaultLLMError(f"prompt.chat_template={template_file}: no such file")
        tokenizer.chat_template = file.read_text()
    if not tokenizer.chat_template:
        raise FaultLLMError(
            f"{path}: the tokenizer has no chat template; use prompt.template=llama2 or give one with "
            "prompt.chat_template=FILE.jinja"
        )


def template_for(kind: str, tokenizer) -> Llama2Layout | ChatTemplate:
    """The prompt template of `prompt.template` over this (faultllm-prepared) tokenizer."""
    if kind == "llama2":
        return Llama2Layout(end=tokenizer.eos_token)
    if kind == "chat":
        template = ChatTemplate(tokenizer, has_system_role(tokenizer), tokenizer.eos_token, bos_to_strip(tokenizer))
        check_rendering(template)
        return template
    raise FaultLLMError(f"prompt.template={kind!r}; expected llama2 or chat")
