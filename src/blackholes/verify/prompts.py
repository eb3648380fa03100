"""The three verification prompts of "Fishing for Magikarp" and the placeholder token they are built around.

Land & Bartolo (2024), "Fishing for Magikarp: Automatically Detecting Under-trained Tokens in Large Language
Models" (arXiv:2405.05417), verify a candidate token by asking the model to produce it. Each prompt is written
once as text around a *placeholder*: an ordinary token that encodes to exactly one token and decodes back to
itself. The text is encoded, and every placeholder id is then replaced by the candidate's id, so a token that no
text encodes to (a byte fragment, an unreachable merge) is tested too. The model continues greedily for three
tokens; the candidate's probability at those positions is the evidence.

The prompts, in the paper's words:

* ``input_output``: a device that repeats its input exactly, shown in 20 examples before the question;
* ``assistant_explain``: an assistant asked what the token means, which begins its answer by quoting it;
* ``repeats``: the token repeated 50 times after a line saying the output repeats one phrase indefinitely.

No torch or transformers here: the tokenizer is any object with ``encode(text, add_special_tokens=...)`` and
``decode(ids)`` (a transformers tokenizer).

>>> [p.name for p in PROMPTS], [p.shots for p in PROMPTS]
(['input_output', 'assistant_explain', 'repeats'], [20, 0, 50])
"""

from __future__ import annotations

from dataclasses import dataclass

from blackholes.errors import BlackholesError

SLOT = "{token}"


@dataclass(frozen=True)
class PromptTemplate:
    """``preamble + (question + answer) * shots + question + answer-up-to-the-slot``, with ``{token}`` slots.

    >>> PROMPTS[2].text("ab")[-12:]
    'abababababab'
    """

    name: str
    shots: int
    preamble: str
    question: str
    answer: str

    def text(self, token: str) -> str:
        opening = self.answer[: self.answer.index(SLOT)]  # the answer starts, the model is to write the token
        whole = self.preamble + (self.question + self.answer) * self.shots + self.question + opening
        return whole.replace(SLOT, token)

    @property
    def slots(self) -> int:
        """How many times the token occurs in the prompt: twice per shot and once in the last question."""
        return (self.question.count(SLOT) + self.answer.count(SLOT)) * self.shots + self.question.count(SLOT)


PROMPTS = (
    PromptTemplate(
        "input_output", 20,
        "This device repeats its input exactly, as shown in these 100 identical trials.",
        "\nInput: «{token}»\nOutput:", " «{token}»"),
    PromptTemplate(
        "assistant_explain", 0,
        "This helpful assistant explains what a phrase means, replying with identical responses to identical "
        "questions for reliability.",
        "\nUser: What does 'edslfkj' mean?\nAssistant: 'edslfkj' has no specific meaning I am aware of."
        "\nUser: what does '{token}' mean?\nAssistant:", " '{token}'"),
    PromptTemplate(
        "repeats", 50,
        "Below is the output, as you can see it's just giving the same phrase repeated indefinitely:\n",
        "{token}", "{token}"),
)


@dataclass(frozen=True)
class Prompt:
    """One prompt encoded around the placeholder: its ids, and where the placeholder sits (``slots``)."""

    name: str
    ids: tuple[int, ...]
    slots: tuple[int, ...]

    def with_token(self, token_id: int) -> list[int]:
        """The prompt's ids with every placeholder replaced by ``token_id``.

        >>> Prompt("p", (5, 9, 7, 9), (1, 3)).with_token(2)
        [5, 2, 7, 2]
        """
        ids = list(self.ids)
        for s in self.slots:
            ids[s] = token_id
        return ids


def encode_prompts(tokenizer, placeholder_id: int, placeholder: str) -> list[Prompt] | None:
    """The three prompts encoded around ``placeholder``, or None when one of them does not contain the
    placeholder's id exactly as often as the text contains it (the text merged it with a neighbour)."""
    out = []
    for template in PROMPTS:
        ids = tuple(int(i) for i in tokenizer.encode(template.text(placeholder)))
        slots = tuple(k for k, i in enumerate(ids) if i == placeholder_id)
        if len(slots) != template.slots:
            return None
        out.append(Prompt(template.name, ids, slots))
    return out


def choose_placeholder(tokenizer, vocab_size: int, special_ids=()) -> tuple[int, str, list[Prompt]]:
    """The placeholder (id, text) and the prompts built around it.

    Tried in magikarp's order of preference (a long alphabetic token of many distinct letters makes prompts that
    tokenize cleanly): a token qualifies when its text encodes to exactly its own id, decodes back to the same
    text, and every prompt contains it exactly as often as its text does.
    """
    special = set(int(i) for i in special_ids)
    texts = []
    for i in range(vocab_size):
        if i in special:
            continue
        text = tokenizer.decode([i])
        if text and text.isalpha():
            texts.append((len(set(text)), len(text), -i, text))
    for _, _, neg, text in sorted(texts, reverse=True):
        i = -neg
        if list(tokenizer.encode(text, add_special_tokens=False)) != [i] or tokenizer.decode([i]) != text:
            continue
        prompts = encode_prompts(tokenizer, i, text)
        if prompts is not None:
            return i, text, prompts
    raise BlackholesError("no placeholder token for the verification prompts: no alphabetic token of this "
                          "tokenizer encodes to itself alone inside the three prompts")


def encodable(tokenizer, prompt: Prompt, token_id: int) -> bool:
    """Whether the prompt with ``token_id`` substituted, decoded to text and encoded again, still contains the
    token: False for a token that no text produces (then only the substituted ids can test it)."""
    text = tokenizer.decode(prompt.with_token(token_id))
    return int(token_id) in set(int(i) for i in tokenizer.encode(text))
