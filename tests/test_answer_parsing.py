"""Answer parsers and the retry profile: examples, and properties that hold for all inputs."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mibench.answer_parsing import (
    PARSERS,
    RETRY_PROFILES,
    STUDY_RETRY_SUFFIX,
    AnswerParsingError,
    LetterParser,
    OptionTextParser,
    RetryProfile,
    StudyParser,
    answer_parser,
    answer_with_retries,
    retry_profile,
)
from mibench.records import OPTION_LETTERS, Sample


def sample(n: int = 4, category: str = "text_heavy", options: tuple[str, ...] | None = None,
           sid: str = "s") -> Sample:
    options = options or tuple(f"option {i}" for i in range(n))
    return Sample(id=sid, question="q", options=options, answer=0, category=category)


LETTER = LetterParser()
STUDY = StudyParser()
TEXT = OptionTextParser()


# -- letter ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, option", [
    ("(B)", 1), ("B.", 1), ("Answer: B", 1), ("**C**", 2), ("The answer is D.", 3),
    ("F F F F F", 5), ("B) option 1", 1), ("A cat sits on a mat, so the answer is (C).", 2),
    ("I think it is B", 1), ("A", 0), ("A.", 0), ("'B'", 1), ("A\nbecause", 0),
])
def test_letter_reads_marked_letters(text, option):
    assert LETTER.parse(text, sample(6)).option == option


@pytest.mark.parametrize("text, failure", [
    ("", "empty"), ("   \n", "empty"), ("A cat", "no_letter"), ("Bob's T-shirt", "no_letter"),
    ("BC", "no_letter"), ("B2", "no_letter"), ("the answer is e", "no_letter"),
    ("It's a Cat", "no_letter"),
])
def test_letter_failures(text, failure):
    result = LETTER.parse(text, sample(26))
    assert (result.option, result.failure, result.retry) == (None, failure, True)


def test_letter_ignores_letters_outside_the_samples_options():
    assert LETTER.parse("E then B", sample(4)).option == 1
    assert LETTER.parse("E", sample(4)).failure == "no_letter"


prose = st.text(alphabet=string.ascii_lowercase + " .,;:!?\n", max_size=40)
markings = st.sampled_from(["{L}", "({L})", "{L}.", "{L})", "Answer: {L}", "answer is {L}.",
                            "**{L}**", "{L}: {option}", "[{L}]", "'{L}'"])


@given(n=st.integers(2, 26), data=st.data(), before=prose, after=prose, marking=markings)
def test_letter_finds_a_marked_letter_after_any_lower_case_prose(n, data, before, after,
                                                                marking):
    i = data.draw(st.integers(0, n - 1))
    s = sample(n)
    # a new line after the letter: "A cat" on one line is prose (see LetterParser)
    text = f"{before} {marking.format(L=OPTION_LETTERS[i], option=s.options[i])}\n{after}"
    assert LETTER.parse(text, s).option == i


@given(n=st.integers(2, 26), text=st.text(max_size=80))
def test_every_parser_returns_an_option_of_the_sample_or_a_known_failure(n, text):
    for name in PARSERS:
        result = answer_parser(name).parse(text, sample(n))
        assert (result.option is None) != (result.failure is None)
        assert result.option is None or 0 <= result.option < n


@given(n=st.integers(2, 25), text=st.text(alphabet=string.ascii_letters + " .()", max_size=60))
def test_letter_never_reads_a_letter_the_sample_does_not_have(n, text):
    others = "".join(c for c in text if c.isupper() and c not in OPTION_LETTERS[:n])
    result = LETTER.parse(others + " " + others.lower(), sample(n))
    assert result.option is None


@given(first=st.integers(0, 5), second=st.integers(0, 5), before=prose)
def test_letter_takes_the_first_of_two_marked_letters(first, second, before):
    text = f"{before} ({OPTION_LETTERS[first]}) or ({OPTION_LETTERS[second]})"
    assert LETTER.parse(text, sample(6)).option == first


# -- study ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, category, option, failure", [
    ("b", "text_heavy", 1, None),
    ("It is a cat", "text_heavy", 0, None),          # the article counts, as in the study
    ("the answer: c.", "text_heavy", 2, None),
    ("E", "text_heavy", None, "no_letter"),          # A-D only outside classification
    ("E", "image_heavy", None, "not_an_option"),     # A-Z on classification, beyond 4 options
    ("x-ray of a dog", "image_heavy", None, "not_an_option"),  # "x" is a standalone letter
    ("yes", "vqa", None, "no_letter"),
    ("", "vqa", None, "empty"),
])
def test_study_rule(text, category, option, failure):
    result = STUDY.parse(text, sample(4, category))
    assert (result.option, result.failure) == (option, failure)


def test_study_does_not_retry_a_letter_beyond_the_options():
    assert STUDY.parse("Z", sample(4, "image_heavy")).retry is False
    assert STUDY.parse("none of these", sample(4, "text_heavy")).retry is True


def test_study_span_options_reads_the_samples_own_letters():
    assert StudyParser("study").parse("f", sample(6)).failure == "no_letter"
    assert StudyParser("options").parse("f", sample(6)).option == 5
    with pytest.raises(AnswerParsingError, match="span"):
        StudyParser("all")


@given(text=st.text(alphabet=string.ascii_letters + string.digits + " .,:()_-'\n", max_size=60),
       category=st.sampled_from(["image_heavy", "text_heavy", "vqa"]))
def test_study_ignores_case(text, category):
    assert STUDY.parse(text, sample(4, category)) == STUDY.parse(text.swapcase(),
                                                                   sample(4, category))


words = st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8)


@given(prefix=st.lists(words, max_size=5), i=st.integers(0, 3),
       marking=st.sampled_from(["({L})", "{L}.", "Answer: {L}", "{L}"]))
def test_study_and_letter_agree_when_no_single_letter_word_comes_first(prefix, i, marking):
    text = " ".join(prefix) + " " + marking.format(L=OPTION_LETTERS[i])
    assert STUDY.parse(text, sample(4)).option == LETTER.parse(text, sample(4)).option == i


# -- option text ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, option, failure", [
    ("It is a triangle.", 2, None),
    ("TRIANGLE", 2, None),
    ("dark red", 3, None),                  # the longer option wins over "red" inside it
    ("red", 0, None),
    ("red or dark red?", None, "several_options"),
    ("a square and a circle", None, "several_options"),
    ("a hexagon", None, "no_option_text"),
    ("reddish", None, "no_option_text"),    # whole words only
    ("", None, "empty"),
])
def test_option_text(text, option, failure):
    s = sample(options=("red", "square", "triangle", "dark red", "circle"))
    result = TEXT.parse(text, s)
    assert (result.option, result.failure) == (option, failure)


@given(options=st.lists(words.filter(lambda w: w not in ("it", "is", "the", "answer")),
                        min_size=2, max_size=6, unique=True),
       data=st.data(), shout=st.booleans())
def test_option_text_finds_the_one_named_option(options, data, shout):
    i = data.draw(st.integers(0, len(options) - 1))
    text = f"The answer is {options[i]}."
    result = TEXT.parse(text.upper() if shout else text, sample(options=tuple(options)))
    assert result.option == i


# -- registry and retry profile ----------------------------------------------------------------
def test_registry_names_its_parsers_and_rejects_unknown_ones():
    assert sorted(PARSERS) == ["letter", "option_text", "study"]
    assert isinstance(answer_parser("study", span="options"), StudyParser)
    with pytest.raises(AnswerParsingError, match="choose from"):
        answer_parser("regex")


def test_study_retry_profile_is_the_studys():
    study = retry_profile("study")
    assert (study.suffix, study.retries) == (STUDY_RETRY_SUFFIX, 1)
    assert study.suffix_for(0) == "" and study.suffix_for(2) == STUDY_RETRY_SUFFIX * 2
    assert RETRY_PROFILES["none"].retries == 0
    with pytest.raises(AnswerParsingError, match="same greedy request"):
        RetryProfile("", retries=2)
    with pytest.raises(AnswerParsingError, match=">= 0"):
        RetryProfile("x", retries=-1)
    with pytest.raises(AnswerParsingError, match="choose from"):
        retry_profile("forever")


def scripted(replies: dict[tuple[str, str], str], calls: list):
    """A generate function answering from a table keyed by (sample id, suffix)."""
    def generate(samples, suffix):
        calls.append(([s.id for s in samples], suffix))
        return [replies[(s.id, suffix)] for s in samples]
    return generate


def test_answer_with_retries_asks_again_only_for_unread_answers():
    suffix = STUDY_RETRY_SUFFIX
    replies = {("a", ""): "B", ("b", ""): "hmm", ("b", suffix): "(C)", ("c", ""): "no idea",
               ("c", suffix): "still no idea", ("d", ""): "E"}
    samples = [sample(sid=sid) for sid in "abc"] + [sample(sid="d", category="image_heavy")]
    calls: list = []
    answers = answer_with_retries(scripted(replies, calls), samples, StudyParser(),
                                  retry_profile("study"))
    assert calls == [(["a", "b", "c", "d"], ""), (["b", "c"], suffix)]
    assert [(a.option, a.failure, a.retries) for a in answers] == [
        (1, None, 0), (2, None, 1), (None, "no_letter", 1), (None, "not_an_option", 0)]
    assert answers[1].responses == ("hmm", "(C)") and answers[1].text == "(C)"


@given(order=st.permutations(list("abcd")), split=st.integers(1, 4))
def test_answers_do_not_depend_on_batching(order, split):
    suffix = STUDY_RETRY_SUFFIX
    replies = {("a", ""): "B", ("b", ""): "hmm", ("b", suffix): "(C)", ("c", ""): "x",
               ("c", suffix): "y", ("d", ""): "d"}
    by_id = {sid: sample(sid=sid) for sid in "abcd"}
    whole = dict(zip("abcd", answer_with_retries(scripted(replies, []), list(by_id.values()),
                                                 STUDY, retry_profile("study"))))
    parts = {}
    for chunk in (order[:split], order[split:]):
        got = answer_with_retries(scripted(replies, []), [by_id[s] for s in chunk], STUDY,
                                  retry_profile("study"))
        parts.update(zip(chunk, got))
    assert parts == whole
