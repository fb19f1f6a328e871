"""How a Sample becomes the user's text: one place, so training and scoring cannot drift."""

from __future__ import annotations

from dataclasses import dataclass

from .records import Sample

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def format_prompt(sample: Sample, instruction: str = ANSWER_INSTRUCTION, suffix: str = "") -> str:
    """Distractor (if any), question, lettered options, then the answer instruction; `suffix`
    (the text a generating scorer appends when it asks again) ends the text."""
    lines = []
    if sample.distractor:
        lines.append(sample.distractor)
    lines.append(sample.question)
    lines.extend(f"{letter}. {option}" for letter, option in zip(sample.letters, sample.options))
    if instruction:
        lines.append(instruction)
    return "\n".join(lines) + suffix


def chat_messages(sample: Sample, instruction: str = ANSWER_INSTRUCTION, suffix: str = ""
                  ) -> list[dict]:
    """A one-turn conversation in the processor chat-template format (image first)."""
    content: list[dict] = []
    if sample.image is not None:
        content.append({"type": "image"})
    content.append({"type": "text", "text": format_prompt(sample, instruction, suffix)})
    return [{"role": "user", "content": content}]


# -- question templates per task category ---------------------------------------------------
# A task renders its dataset's question (and context, where the dataset has one) through one
# of these into `Sample.question`; format_prompt then adds options and the instruction as
# above. Tasks record the template they used in describe(), so results say what was asked.
IMAGE_CLASSIFICATION_QUESTION = "What type of object is presented in this image?"


@dataclass(frozen=True, slots=True)
class QuestionTemplate:
    """How a dataset row becomes `Sample.question`: `{question}`, plus `{context}` if any."""

    name: str
    plain: str = "{question}"
    with_context: str = "{context}\n{question}"

    def render(self, question: str, context: str = "") -> str:
        template = self.with_context if context else self.plain
        return template.format(question=question, context=context)

    def describe(self) -> dict:
        return {"name": self.name, "plain": self.plain, "with_context": self.with_context,
                "instruction": ANSWER_INSTRUCTION,
                "layout": "[distractor]\\n{question}\\n{letter}. {option}...\\n{instruction}"}


QUESTION_TEMPLATES: dict[str, QuestionTemplate] = {
    # Image-heavy: the study's classification question; the image alone answers it.
    "image_heavy": QuestionTemplate("image_heavy", plain=IMAGE_CLASSIFICATION_QUESTION,
                                    with_context=IMAGE_CLASSIFICATION_QUESTION),
    # Text-heavy: the dataset's question as written (a fact, if any, goes before it).
    "text_heavy": QuestionTemplate("text_heavy"),
    # VQA: the dataset's hint or lecture context, labelled, then the question.
    "vqa": QuestionTemplate("vqa", with_context="Context: {context}\n{question}"),
}


def question_template(name: str) -> QuestionTemplate:
    """A named template; the error lists the names there are."""
    if name not in QUESTION_TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; "
                         f"choose from {sorted(QUESTION_TEMPLATES)}")
    return QUESTION_TEMPLATES[name]
