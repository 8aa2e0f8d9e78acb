"""Verbalizer: answers as text and as in-context token ids, persistence, and clear errors on bad label sets."""

import json
import re

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from hf_clf_ext.instruction.verbalizer import VERBALIZER_FILE, LabelTokens, Verbalizer
from testing_utils import ALPHABET, CONTEXT, SHARED_PREFIX, label_sets, wordpiece_tokenizer  # noqa: F401

# Characters of the hypothesis-generated label texts; all of them are in the WordPiece training corpus below.


@pytest.fixture(scope="module")
def bpe(tokenizer_dirs):
    return PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- answers as text -------------------------------------------------------------------------------------------------


def test_answer_parse_round_trip_single_label():
    v = Verbalizer(["neg", "pos", "very good"], label_texts={"neg": "négatif"})
    assert v.texts == ["négatif", "pos", "very good"]
    for i in range(3):
        assert v.answer(i) == v.texts[i]
        assert v.answer([i]) == v.texts[i]
        assert v.parse(v.answer(i)) == [i]
        assert v.parse(f"  {v.answer(i)}\n") == [i]
    with pytest.raises(ValueError, match="names one label"):
        v.answer([0, 1])
    with pytest.raises(ValueError, match="unknown labels"):
        v.parse("négatif, pos")  # not a single-label answer
    with pytest.raises(ValueError, match="unknown labels"):
        v.parse("neg")  # the label name is not what the model writes


def test_answer_parse_round_trip_multi_label():
    v = Verbalizer(SHARED_PREFIX, multi_label=True)
    for label_ids in label_sets(v):
        text = v.answer(label_ids)
        assert v.parse(text) == label_ids
        assert v.answer(list(reversed(label_ids))) == text  # canonical order whatever the input order
    assert v.answer([2, 0, 2]) == "pos, positive-ish"
    assert v.parse("positive-ish,pos") == [0, 2]  # parsing free text is lenient about order and spacing
    for bad in ("", "pos,", "pos, neutral", "pos; positive", "po"):
        with pytest.raises(ValueError, match="unknown labels"):
            v.parse(bad)
    with pytest.raises(ValueError, match="at least one label"):
        v.answer([])
    with pytest.raises(ValueError, match="out of range"):
        v.answer([0, 4])
    with pytest.raises(ValueError, match="out of range"):
        v.answer(-1)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.text(alphabet=ALPHABET + ",|", min_size=1, max_size=6), min_size=1, max_size=6, unique=True),
    multi_label=st.booleans(),
    delimiter=st.sampled_from([", ", "; ", " | ", ","]),
    data=st.data(),
)
def test_answer_parse_round_trip_property(texts, multi_label, delimiter, data):
    labels = [f"L{i}" for i in range(len(texts))]
    try:
        v = Verbalizer(labels, label_texts=dict(zip(labels, texts)), multi_label=multi_label, delimiter=delimiter)
    except ValueError:
        reject()
    label_ids = data.draw(st.sampled_from(label_sets(v)))
    assert v.parse(v.answer(label_ids)) == label_ids


# --- persistence -----------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    v = Verbalizer(
        ["neg", "pos", "mixed"],
        label_texts={"neg": "négatif", "mixed": "日本 🙂"},
        multi_label=True,
        delimiter="; ",
        max_labels=2,
    )
    v.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / VERBALIZER_FILE).read_text(encoding="utf-8"))
    assert saved == {
        "labels": ["neg", "pos", "mixed"],
        "label_texts": {"neg": "négatif", "mixed": "日本 🙂"},
        "multi_label": True,
        "delimiter": "; ",
        "max_labels": 2,
    }
    assert "négatif" in (tmp_path / "out" / VERBALIZER_FILE).read_text(encoding="utf-8")  # readable, not \u-escaped
    loaded = Verbalizer.from_pretrained(tmp_path / "out")
    assert loaded == v
    assert loaded.answer([2, 0]) == "négatif; 日本 🙂"

    single = Verbalizer(["a", "b"])
    single.save_pretrained(tmp_path / "single")
    assert Verbalizer.from_pretrained(tmp_path / "single") == single

    with pytest.raises(FileNotFoundError, match="not saved with a verbalizer"):
        Verbalizer.from_pretrained(tmp_path)


def test_labels_are_strings():
    v = Verbalizer([0, 1], label_texts={"1": "yes"})
    assert v.labels == ["0", "1"] and v.texts == ["0", "yes"]


# --- answers as tokens -----------------------------------------------------------------------------------------------


def test_label_tokens_are_in_context(bpe):
    v = Verbalizer(["positive", "pos"])
    t = v.label_tokens(bpe, "Label:", lead=" ")
    context = ids(bpe, "Label:")
    in_context = ids(bpe, "Label: positive")
    assert in_context[: len(context)] == context
    assert list(t.first[0]) == in_context[len(context):]
    # The naive encoding of the label alone is different: the space belongs to the word's first token.
    assert list(t.first[0]) != ids(bpe, "positive")
    assert t.first[0][0] != ids(bpe, "positive")[0]
    assert t.first[1] == t.first[0][: len(t.first[1])]  # "pos" is a token prefix of "positive" here
    assert t.stop == (bpe.eos_token_id,)
    assert t.after_delimiter == () and t.delimiter == () and not t.multi_label


def test_label_tokens_multi_label_and_answer_ids(bpe):
    v = Verbalizer(SHARED_PREFIX, multi_label=True, max_labels=3)
    t = v.label_tokens(bpe, CONTEXT, lead=" ", stop_ids=[bpe.eos_token_id, bpe.pad_token_id])
    assert isinstance(t, LabelTokens) and t.multi_label and t.max_labels == 3
    assert t.stop == (bpe.eos_token_id, bpe.pad_token_id)
    assert list(t.delimiter) == ids(bpe, ",")
    anchor = ids(bpe, "Label: pos,")
    assert list(t.after_delimiter[1]) == ids(bpe, "Label: pos, positive")[len(anchor):]
    assert v.answer_ids(t, [3, 1]) == [*t.first[1], *t.delimiter, *t.after_delimiter[3], bpe.eos_token_id]
    assert v.answer_ids(t, 2) == [*t.first[2], bpe.eos_token_id]


@pytest.mark.parametrize("which", ["bpe", "wordpiece"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=5), min_size=1, max_size=5, unique=True),
    multi_label=st.booleans(),
    delimiter=st.sampled_from([", ", "; ", " | "]),
    data=st.data(),
)
def test_answer_ids_are_how_the_tokenizer_spells_the_answer(request, which, texts, multi_label, delimiter, data):
    """The canonical answer tokens (what SFT trains on and generation is constrained to) are exactly the tokens the
    tokenizer gives the answer text when it follows the prompt."""
    tokenizer = request.getfixturevalue("bpe") if which == "bpe" else wordpiece_tokenizer()
    labels = [f"L{i}" for i in range(len(texts))]
    try:
        v = Verbalizer(labels, label_texts=dict(zip(labels, texts)), multi_label=multi_label, delimiter=delimiter)
    except ValueError:
        reject()
    t = v.label_tokens(tokenizer, CONTEXT, lead=" ")
    label_ids = data.draw(st.sampled_from(label_sets(v)))
    context = ids(tokenizer, CONTEXT)
    spelled = ids(tokenizer, CONTEXT + " " + v.answer(label_ids))
    assert spelled[: len(context)] == context
    assert v.answer_ids(t, label_ids) == spelled[len(context):] + [tokenizer.eos_token_id]


# --- clear errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(labels=[]), "label set is empty"),
        (dict(labels=["a", "b", "a"]), "Duplicate labels"),
        (dict(labels=["a", "b"], label_texts={"a": "yes", "b": "yes"}), "share the label texts \\['yes'\\]"),
        (dict(labels=["a", "b"], label_texts={"b": "a"}), "share the label texts \\['a'\\]"),
        (dict(labels=["a", "b"], label_texts={"a": " "}), "Labels \\['a'\\] have empty label texts"),
        (dict(labels=["a", "b"], label_texts={"a": ""}), "empty label texts"),
        (dict(labels=["a", "b"], label_texts={"c": "x"}), "not in the label set: \\['c'\\]"),
        (dict(labels=["a", "b "]), "Label texts \\['b '\\] start or end with whitespace"),
        (dict(labels=["a", "b"], label_texts={"a": " yes"}), "Label texts \\[' yes'\\] start or end with whitespace"),
        (dict(labels=["a", "b"], label_texts={"a": "yes\n"}), "start or end with whitespace"),
        (dict(labels=["a", "b, c"], multi_label=True), "contain the delimiter ', '"),
        (dict(labels=["a", "b"], label_texts={"b": "x;y"}, multi_label=True, delimiter="; "), "contain the delimiter"),
        (dict(labels=["a", "b"], multi_label=True, delimiter="  "), "visible character"),
        (dict(labels=["a", "b"], multi_label=True, max_labels=0), "max_labels must be at least 1, got 0"),
        (dict(labels=["a", "b"], multi_label=True, max_labels=-2), "max_labels must be at least 1"),
        (dict(labels=[0, 1], label_texts={1: "yes"}), re.escape("maps label names (strings) to answer texts "
                                                                "(strings); got {1: 'yes'}. The labels are "
                                                                "['0', '1']")),
        (dict(labels=["a", "b"], label_texts={"a": 3}), "maps label names"),
    ],
)
def test_invalid_label_sets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Verbalizer(**kwargs)


def test_delimiter_in_a_single_label_text_is_fine():
    assert Verbalizer(["a", "b, c"]).parse("b, c") == [1]


def test_label_text_that_tokenizes_to_nothing():
    # The BERT normalizer drops format characters such as the zero-width space: the text is not blank to Python,
    # but it has no tokens, so the model could never write it.
    wordpiece = wordpiece_tokenizer()
    assert "\u200b".strip() and ids(wordpiece, " \u200b") == []
    v = Verbalizer(["a", "b"], label_texts={"b": "\u200b"})
    with pytest.raises(ValueError, match=re.escape("The label text of 'b' ('\\u200b') tokenizes to nothing.")):
        v.label_tokens(wordpiece, CONTEXT)
    with pytest.raises(ValueError, match=re.escape("The label text of 'b' (' \\u200b') tokenizes to nothing.")):
        v.label_tokens(wordpiece, CONTEXT, lead=" ")


def test_context_that_merges_with_the_label(bpe):
    v = Verbalizer(["positive", "negative"])
    # "Label: " ends with a lone space token, which BPE merges into " positive" when the label follows.
    assert ids(bpe, "Label: ")[-1] not in ids(bpe, "Label: positive")
    with pytest.raises(ValueError, match="last tokens merge with 'positive'"):
        v.label_tokens(bpe, "Label: ")
    # The same context works when the space moves into the label's lead.
    assert v.label_tokens(bpe, "Label:", lead=" ").first[0] == tuple(ids(bpe, " positive"))


def test_delimiter_that_merges_with_a_label(bpe):
    # "th" + "e" is the BPE token "the": the delimiter would not be a token of its own after this label.
    assert ids(bpe, " th")[-1] not in ids(bpe, " the")
    v = Verbalizer(["pos", "th"], multi_label=True, delimiter="e ")
    with pytest.raises(ValueError, match="merge with \"the delimiter after 'th'\" \\('e'\\).*choose a delimiter"):
        v.label_tokens(bpe, CONTEXT, lead=" ")


def test_no_stop_token(bpe):
    v = Verbalizer(["a", "b"])
    no_eos = PreTrainedTokenizerFast(tokenizer_object=bpe.backend_tokenizer)
    assert no_eos.eos_token_id is None
    with pytest.raises(ValueError, match="no eos token"):
        v.label_tokens(no_eos, CONTEXT)
    assert v.label_tokens(no_eos, CONTEXT, stop_ids=[7]).stop == (7,)


def test_special_tokens_and_stop_tokens_inside_labels_are_refused(bpe):
    with pytest.raises(ValueError, match=re.escape("The text of label 'b' ('yes<eos>') contains the special token "
                                                   "'<eos>'")):
        Verbalizer(["a", "b"], label_texts={"b": "yes<eos>"}).label_tokens(bpe, CONTEXT, lead=" ")
    with pytest.raises(ValueError, match="The text of the delimiter .* contains the special token '<pad>'"):
        Verbalizer(["a", "b"], multi_label=True, delimiter="<pad> ").label_tokens(bpe, CONTEXT, lead=" ")
    stop = ids(bpe, " good")[-1]  # an ordinary token as the stop token, inside a label
    with pytest.raises(ValueError, match=f"The tokens of label 'very good' contain the stop token {stop}"):
        Verbalizer(["a", "very good"]).label_tokens(bpe, CONTEXT, lead=" ", stop_ids=[stop])
