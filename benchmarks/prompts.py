"""How a Sample becomes the user's text: one place, so training and scoring cannot drift."""

from __future__ import annotations

from .records import Sample

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def format_prompt(sample: Sample, instruction: str = ANSWER_INSTRUCTION) -> str:
    """Distractor (if any), question, lettered options, then the answer instruction."""
    lines = []
    if sample.distractor:
        lines.append(sample.distractor)
    lines.append(sample.question)
    lines.extend(f"{letter}. {option}" for letter, option in zip(sample.letters, sample.options))
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


def chat_messages(sample: Sample, instruction: str = ANSWER_INSTRUCTION) -> list[dict]:
    """A one-turn conversation in the processor chat-template format (image first)."""
    content: list[dict] = []
    if sample.image is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": format_prompt(sample, instruction)})
    return [{"role": "user", "content": content}]
