"""VerbalizerLogitsProcessor: constrained decoding only ever writes canonical answers.

Most properties drive the processor without a model (random scores, greedy or sampled choices, finished rows padded
as `generate()` pads them), which is fast enough for hypothesis; the rest run `generate()` on tiny causal LMs.
"""

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LogitsProcessorList, PreTrainedTokenizerFast

from hf_clf_ext.instruction.logits_process import VerbalizerLogitsProcessor
from hf_clf_ext.instruction.verbalizer import LabelTokens, Verbalizer
from testing_utils import ALPHABET, CONTEXT, SHARED_PREFIX, label_sets, wordpiece_tokenizer

EXTRA_VOCAB = 5  # models often have more logits than the tokenizer has tokens

LABEL_SETS = {
    "shared_prefix": SHARED_PREFIX,
    "unicode": ["négatif", "日本", "日曜", "🙂", "🙂🙂", "pos"],
    "whitespace": ["very good", "not bad at all", "good", "not bad"],
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run many tiny tensor ops; with intra-op threads they slow down tenfold on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe(tokenizer_dirs):
    return PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])


def tokenizer_named(request, which):
    return request.getfixturevalue("bpe") if which == "bpe" else wordpiece_tokenizer()


def canonical_answers(v, t):
    """Token ids of every valid answer without its stop token -> its label ids."""
    return {tuple(v.answer_ids(t, label_ids)[:-1]): label_ids for label_ids in label_sets(v)}


def drive(proc, t, *, rows, vocab, seed, sample, pad_id, prompt_lengths=(3,), max_steps=400):
    """Decode like `generate()` without a model: random scores, the processor, argmax or a sample, finished rows
    padded. Returns each row's answer ids up to and including its stop token."""
    gen = torch.Generator().manual_seed(seed)
    width = max(prompt_lengths)
    prompt = torch.randint(3, vocab - EXTRA_VOCAB, (rows, width), generator=gen)
    for row in range(rows):  # left padding, different per row
        prompt[row, : width - prompt_lengths[row % len(prompt_lengths)]] = pad_id
    input_ids = prompt
    stop = torch.tensor(t.stop)
    done = torch.zeros(rows, dtype=torch.bool)
    for _ in range(max_steps):
        scores = torch.randn(rows, vocab, generator=gen) * 3
        scores[:, stop] += torch.randn(rows, len(stop), generator=gen) * 3  # vary answer lengths
        out = proc(input_ids, scores.clone())
        assert out.shape == scores.shape
        assert torch.isfinite(out).any(dim=-1).all(), "a row has every token masked"
        assert ((out == scores) | (out == float("-inf"))).all(), "the processor only masks"
        assert torch.equal(out[done], scores[done]), "finished rows are left alone"
        assert not torch.isfinite(out[~done]).all(dim=-1).any(), "unfinished rows are constrained"
        if sample:
            next_tokens = torch.multinomial(torch.softmax(out, dim=-1), 1, generator=gen).squeeze(1)
        else:
            next_tokens = out.argmax(dim=-1)
        next_tokens = torch.where(done, pad_id, next_tokens)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=1)
        done |= torch.isin(next_tokens, stop)
        if done.all():
            break
    assert done.all(), "every row ends with a stop token"
    answers = []
    for row in input_ids[:, width:].tolist():
        end = next(i for i, token in enumerate(row) if token in t.stop)
        assert all(token == pad_id for token in row[end + 1 :])
        answers.append(row[: end + 1])
    return answers


def check_answers(v, t, answers, tokenizer=None):
    """Every answer is a canonical answer of a valid label set; with a round-tripping tokenizer, its text parses to
    the same labels."""
    canonical = canonical_answers(v, t)
    found = []
    for answer in answers:
        assert answer[-1] in t.stop
        label_ids = canonical.get(tuple(answer[:-1]))
        assert label_ids is not None, f"{answer} is not a canonical answer"
        if v.multi_label:
            assert label_ids == sorted(set(label_ids)) and len(label_ids) <= (v.max_labels or len(v.labels))
        else:
            assert len(label_ids) == 1
        if tokenizer is not None:
            parsed = v.parse(tokenizer.decode(answer[:-1], skip_special_tokens=True).strip())
            assert parsed == label_ids
            assert v.answer_ids(t, parsed)[:-1] == answer[:-1]
        found.append(label_ids)
    return found


def accepted_answers(proc, t, vocab, *, max_depth=400):
    """Every token sequence the processor lets through, found breadth-first: one call per depth with a batch of all
    live prefixes, padded to a fixed batch size as `generate()` keeps it (each live prefix leads to an answer, so
    there are never more of them than answers)."""
    frontier, complete = [()], []
    width = answer_count(t) + 1
    for _ in range(max_depth):
        assert len(frontier) <= width
        rows = frontier + [frontier[0]] * (width - len(frontier))
        out = proc(torch.tensor([[2, 2, 7, *row] for row in rows]), torch.zeros(width, vocab))
        allowed = torch.isfinite(out[: len(frontier)])
        counts = allowed.sum(dim=-1)
        assert ((counts > 0) & (counts < vocab)).all(), "a live prefix is fully masked or unconstrained"
        grown = []
        for row, token in allowed.nonzero().tolist():
            (complete if token in t.stop else grown).append(frontier[row] + (token,))
        frontier = grown
        if not frontier:
            return set(complete)
    raise AssertionError("answers never end")


def answer_count(t):
    """How many answers there are: label sets times stop tokens."""
    n = len(t.first)
    most = min(t.max_labels or n, n) if t.multi_label else 1
    return sum(math.comb(n, k) for k in range(1, most + 1)) * len(t.stop)


def build(v, tokenizer, **kwargs):
    t = v.label_tokens(tokenizer, CONTEXT, lead=" ", **kwargs)
    return t, VerbalizerLogitsProcessor(t), len(tokenizer) + EXTRA_VOCAB


# --- exhaustive: the processor accepts exactly the canonical answers -------------------------------------------------


@pytest.mark.parametrize("which", ["bpe", "wordpiece"])
@pytest.mark.parametrize("name", list(LABEL_SETS))
@pytest.mark.parametrize("multi_label, max_labels", [(False, None), (True, None), (True, 2), (True, 1)])
def test_accepts_exactly_the_canonical_answers(request, which, name, multi_label, max_labels):
    tokenizer = tokenizer_named(request, which)
    v = Verbalizer(LABEL_SETS[name], multi_label=multi_label, max_labels=max_labels)
    t, proc, vocab = build(v, tokenizer)
    expected = {tuple(v.answer_ids(t, label_ids)) for label_ids in label_sets(v)}
    assert len(expected) == len(label_sets(v))
    assert accepted_answers(proc, t, vocab) == expected


def test_several_stop_tokens(bpe):
    v = Verbalizer(SHARED_PREFIX, multi_label=True, max_labels=2)
    t, proc, vocab = build(v, bpe, stop_ids=[bpe.eos_token_id, bpe.pad_token_id])
    expected = {tuple(v.answer_ids(t, ids)[:-1]) + (stop,) for ids in label_sets(v) for stop in t.stop}
    assert accepted_answers(proc, t, vocab) == expected


# --- property: random scores, greedy or sampled, always a canonical answer ------------------------------------------


@pytest.mark.parametrize("which", ["bpe", "wordpiece"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(list(LABEL_SETS)),
    multi_label=st.booleans(),
    max_labels=st.sampled_from([None, 1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
    sample=st.booleans(),
)
def test_random_decoding_writes_canonical_answers(request, which, name, multi_label, max_labels, seed, sample):
    tokenizer = tokenizer_named(request, which)
    v = Verbalizer(LABEL_SETS[name], multi_label=multi_label, max_labels=max_labels)
    t, proc, vocab = build(v, tokenizer)
    answers = drive(
        proc, t, rows=6, vocab=vocab, seed=seed, sample=sample, pad_id=tokenizer.pad_token_id, prompt_lengths=(3, 7, 5)
    )
    check_answers(v, t, answers, tokenizer if which == "bpe" else None)


# Inner spaces are kept; leading and trailing ones are refused by the verbalizer (see test_verbalizer.py).
generated_texts = st.lists(
    st.text(alphabet=ALPHABET, min_size=1, max_size=5).map(str.strip).filter(bool), min_size=2, max_size=5, unique=True
)


@pytest.mark.parametrize("which", ["bpe", "wordpiece"])
@example(texts=[";", "; ;"], multi_label=True, max_labels=None, delimiter=" | ", seed=0, sample=False)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=generated_texts,
    multi_label=st.booleans(),
    max_labels=st.sampled_from([None, 1, 2]),
    delimiter=st.sampled_from([", ", "; ", " | "]),
    seed=st.integers(0, 2**32 - 1),
    sample=st.booleans(),
)
def test_generated_label_sets(request, which, texts, multi_label, max_labels, delimiter, seed, sample):
    tokenizer = tokenizer_named(request, which)
    labels = [f"L{i}" for i in range(len(texts))]
    try:
        v = Verbalizer(
            labels, label_texts=dict(zip(labels, texts)), multi_label=multi_label, max_labels=max_labels,
            delimiter=delimiter,
        )
    except ValueError:
        reject()  # the verbalizer's own validation
    t = v.label_tokens(tokenizer, CONTEXT, lead=" ")
    if which == "wordpiece" and len(set(t.first)) < len(t.first):
        # WordPiece spells "a-b" and "a - b" alike: the processor must refuse such label sets.
        with pytest.raises(ValueError, match="same token ids"):
            VerbalizerLogitsProcessor(t)
        reject()
    proc = VerbalizerLogitsProcessor(t)
    vocab = len(tokenizer) + EXTRA_VOCAB
    event(f"multi_label={multi_label}, {len(label_sets(v))} answers")
    answers = drive(proc, t, rows=4, vocab=vocab, seed=seed, sample=sample, pad_id=tokenizer.pad_token_id)
    check_answers(v, t, answers, tokenizer if which == "bpe" else None)
    if len(label_sets(v)) <= 16:
        assert accepted_answers(proc, t, vocab) == {tuple(v.answer_ids(t, ids)) for ids in label_sets(v)}


@pytest.mark.parametrize("delimiter", [" | ", " / "])
@pytest.mark.parametrize("labels", [["good", "good 日本", "bad"], ["pos", "pos 🙂 ok", "pos 🙂", "x"], SHARED_PREFIX])
def test_delimiter_whose_first_token_continues_a_label(bpe, labels, delimiter):
    """Regression: " |" is two tokens here, " " and "|", and " " also continues "good" into "good 日本". The
    processor used to refuse such label sets as ambiguous, deciding on the delimiter's first token alone."""
    v = Verbalizer(labels, multi_label=True, delimiter=delimiter)
    t, proc, vocab = build(v, bpe)
    assert len(t.delimiter) == 2
    assert accepted_answers(proc, t, vocab) == {tuple(v.answer_ids(t, ids)) for ids in label_sets(v)}
    for seed in range(3):
        answers = drive(proc, t, rows=8, vocab=vocab, seed=seed, sample=True, pad_id=bpe.pad_token_id)
        check_answers(v, t, answers, bpe)


def test_hand_made_tokens_with_a_shared_delimiter_token():
    # Labels 0 = [5], 1 = [5, 8, 6], 2 = [7]; the delimiter [8, 9] starts with label 1's second token.
    t = LabelTokens(
        first=((5,), (5, 8, 6), (7,)), after_delimiter=((5,), (5, 8, 6), (7,)), delimiter=(8, 9), stop=(1,),
        multi_label=True, max_labels=2,
    )
    proc = VerbalizerLogitsProcessor(t)
    assert accepted_answers(proc, t, 12) == {
        (5, 1), (5, 8, 6, 1), (7, 1), (5, 8, 9, 5, 8, 6, 1), (5, 8, 9, 7, 1), (5, 8, 6, 8, 9, 7, 1)
    }


def test_sampling_reaches_every_answer(bpe):
    """Not just valid: every valid answer is reachable (the processor does not over-constrain)."""
    v = Verbalizer(SHARED_PREFIX, multi_label=True, max_labels=2)
    t, proc, vocab = build(v, bpe)
    answers = drive(proc, t, rows=400, vocab=vocab, seed=0, sample=True, pad_id=bpe.pad_token_id)
    found = check_answers(v, t, answers, bpe)
    assert sorted(map(tuple, label_sets(v))) == sorted(set(map(tuple, found)))


# --- rows that finish early, masks, new generations -----------------------------------------------------------------


def test_finished_and_off_track_rows_are_never_fully_masked(bpe):
    v = Verbalizer(SHARED_PREFIX, multi_label=True)
    t, proc, vocab = build(v, bpe)
    pad, eos = bpe.pad_token_id, bpe.eos_token_id
    prompt = [[pad, 9, 9], [9, 9, 9], [pad, pad, 9], [9, 9, 9]]
    # Step 1: every row starts an answer.
    proc(torch.tensor(prompt), torch.zeros(4, vocab))
    steps = [
        [t.first[0][0], t.first[0][0], t.first[3][0], 5],  # row 3 goes off track (a token the mask forbade)
        [t.first[0][1], t.first[0][1], t.first[3][1], 6],
        [t.first[0][2], t.first[0][2], t.first[3][2], 7],
        [eos, t.delimiter[0], t.first[3][3], 8],  # row 0 finishes, row 1 goes on to a second label
        [pad, t.after_delimiter[3][0], t.first[3][4], 9],
    ]
    input_ids = torch.tensor(prompt)
    for tokens in steps:
        input_ids = torch.cat([input_ids, torch.tensor(tokens)[:, None]], dim=1)
        scores = torch.randn(4, vocab)
        out = proc(input_ids, scores.clone())
        assert torch.isfinite(out).any(dim=-1).all()
        assert not torch.isnan(torch.softmax(out, dim=-1)).any()
    assert torch.equal(out[0], scores[0])  # finished and padded: untouched
    assert torch.equal(out[3], scores[3])  # off track: untouched rather than all -inf
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [t.after_delimiter[3][1]]
    assert torch.isfinite(out[2]).nonzero().flatten().tolist() == [t.first[3][5]]


@pytest.mark.parametrize("max_labels", [None, 2])
def test_forbidden_delimiter_leaves_the_row_alone(bpe, max_labels):
    """Regression: beam search keeps some -inf candidates when too few tokens are allowed. A forbidden delimiter
    after the last label (or past max_labels) used to lead to a state that allows nothing: a fully masked row."""
    v = Verbalizer(SHARED_PREFIX, multi_label=True, max_labels=max_labels)
    t, proc, vocab = build(v, bpe)
    # Row 0: the last label, then a delimiter although no label can follow. Row 1: two labels, then a delimiter,
    # allowed only without max_labels. Row 2: a valid answer in progress.
    rows = [
        [*t.first[3], *t.delimiter, *t.after_delimiter[0]],
        [*t.first[0], *t.delimiter, *t.after_delimiter[1], *t.delimiter, *t.after_delimiter[3]],
        [*t.first[1], *t.delimiter, *t.after_delimiter[2], *t.delimiter, *t.after_delimiter[3]][: len(t.first[3]) + 2],
    ]
    length = max(map(len, rows))
    rows = [row + [bpe.eos_token_id] * (length - len(row)) for row in rows]  # ended rows are never looked at again
    prompt = torch.full((3, 2), 9)
    for step in range(length + 1):
        input_ids = torch.cat([prompt, torch.tensor([row[:step] for row in rows])], dim=1)
        scores = torch.randn(3, vocab)
        out = proc(input_ids, scores.clone())
        assert torch.isfinite(out).any(dim=-1).all(), f"a row is fully masked at step {step}"
    assert torch.equal(out[0], scores[0])
    assert torch.equal(out[1], scores[1]) if max_labels == 2 else not torch.isfinite(out[1]).all()


def test_masks_are_cached_per_answer_state(bpe, monkeypatch):
    v = Verbalizer(SHARED_PREFIX, multi_label=True)
    t, proc, vocab = build(v, bpe)
    drive(proc, t, rows=16, vocab=vocab, seed=1, sample=True, pad_id=bpe.pad_token_id)
    masks = dict(proc._masks)
    computed, allowed_ids = [], proc._allowed_ids
    monkeypatch.setattr(proc, "_allowed_ids", lambda state: computed.append(state) or allowed_ids(state))
    drive(proc, t, rows=16, vocab=vocab, seed=1, sample=True, pad_id=bpe.pad_token_id)
    assert computed == [] and proc._masks.keys() == masks.keys()
    assert all(proc._masks[key] is mask for key, mask in masks.items())


def test_new_generation_one_token_longer_than_the_last_step(bpe):
    """Regression: a generation whose prompt is exactly one token longer than the previous generation's last step
    used to be taken for a continuation of it, leaving the new answers unconstrained."""
    v = Verbalizer(SHARED_PREFIX)
    t, proc, vocab = build(v, bpe)
    pad = bpe.pad_token_id
    first = drive(proc, t, rows=3, vocab=vocab, seed=0, sample=False, pad_id=pad, prompt_lengths=(4,))
    check_answers(v, t, first, bpe)
    last_length = proc._last_length
    second = drive(
        proc, t, rows=3, vocab=vocab, seed=1, sample=True, pad_id=pad, prompt_lengths=(last_length + 1, 2, 5)
    )
    check_answers(v, t, second, bpe)
    # The same prompts again, whatever the previous generation's length.
    third = drive(proc, t, rows=2, vocab=vocab, seed=2, sample=False, pad_id=pad,
                  prompt_lengths=(proc._last_length + 1,))
    check_answers(v, t, third, bpe)


def test_label_followed_by_a_stop_token_inside_another_label_is_refused(bpe):
    v = Verbalizer(["po", "pos"])
    t = v.label_tokens(bpe, CONTEXT, lead=" ")
    assert t.first[1][: len(t.first[0])] == t.first[0]
    next_token = t.first[1][len(t.first[0])]  # "s" continues " po" into " pos"
    with pytest.raises(ValueError, match=f"The tokens of label 'pos' contain the stop token {next_token}"):
        v.label_tokens(bpe, CONTEXT, lead=" ", stop_ids=[bpe.eos_token_id, next_token])
    # Token ids made by hand, past the verbalizer's check, meet the processor's.
    t = LabelTokens(first=t.first, after_delimiter=(), delimiter=(), stop=(bpe.eos_token_id, next_token),
                    multi_label=False, max_labels=None)
    with pytest.raises(ValueError,
                       match=f"Label 0 is a prefix of another label followed by the stop token {next_token}"):
        VerbalizerLogitsProcessor(t)


def test_label_followed_by_the_delimiter_inside_another_label_is_refused():
    # Label 1's tokens are label 0's followed by the whole delimiter (e.g. both unknown to the tokenizer).
    t = LabelTokens(
        first=((5,), (5, 9)), after_delimiter=((5,), (5, 9)), delimiter=(9,), stop=(1,), multi_label=True,
        max_labels=None,
    )
    with pytest.raises(ValueError, match=re.escape("Label 0 followed by the delimiter [9] is the start of another")):
        VerbalizerLogitsProcessor(t)


def test_ambiguous_labels_are_refused(bpe):
    v = Verbalizer(["a-b", "a - b"])
    t = v.label_tokens(wordpiece_tokenizer(), CONTEXT, lead=" ")
    assert t.first[0] == t.first[1]
    with pytest.raises(ValueError, match="Labels 0 and 1 have the same token ids"):
        VerbalizerLogitsProcessor(t)


# --- generate() with tiny causal LMs ---------------------------------------------------------------------------------

PROMPTS = [f"Text: {text}\nLabel:" for text in ("the bank cut rates", "the striker scored twice in the final", "ok")]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def lm(request, tiny_lm_dirs):
    path = tiny_lm_dirs[request.param, "pad"]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, padding_side="left")
    return model, tokenizer


def generate(lm, prompts, proc, *, pad_to=None, **kwargs):
    model, tokenizer = lm
    padding = dict(padding="max_length", max_length=pad_to) if pad_to else dict(padding=True)
    batch = tokenizer(prompts, return_tensors="pt", add_special_tokens=False, **padding)
    assert (batch.attention_mask[:, 0] == 0).any()  # left padding is exercised
    out = model.generate(
        **batch,
        logits_processor=LogitsProcessorList([proc]),
        max_new_tokens=40,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    answers = []
    for row in out[:, batch.input_ids.shape[1] :].tolist():
        assert tokenizer.eos_token_id in row, f"no answer ended: {row}"
        end = row.index(tokenizer.eos_token_id)
        # generate() fills finished rows with pad (beam search with eos when the pad id is 0)
        assert set(row[end + 1 :]) <= {tokenizer.pad_token_id, tokenizer.eos_token_id}
        answers.append(row[: end + 1])
    return answers


DECODING = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=5.0, top_k=0, top_p=1.0),
    "beam": dict(do_sample=False, num_beams=3, num_return_sequences=3),
}


@pytest.mark.parametrize("decoding", list(DECODING))
@pytest.mark.parametrize("multi_label", [False, True])
def test_generate(lm, decoding, multi_label):
    model, tokenizer = lm
    v = Verbalizer(SHARED_PREFIX, multi_label=multi_label, max_labels=3 if multi_label else None)
    t = v.label_tokens(tokenizer, PROMPTS[0], lead=" ")
    assert all(v.label_tokens(tokenizer, prompt, lead=" ") == t for prompt in PROMPTS)
    proc = VerbalizerLogitsProcessor(t)
    torch.manual_seed(0)
    answers = generate(lm, PROMPTS, proc, **DECODING[decoding])
    assert len(answers) == len(PROMPTS) * DECODING[decoding].get("num_return_sequences", 1)
    found = check_answers(v, t, answers, tokenizer)
    if decoding == "beam":  # the returned beams are distinct answers
        for i in range(len(PROMPTS)):
            beams = [tuple(ids) for ids in found[3 * i : 3 * i + 3]]
            assert len(set(beams)) == 3


def test_generate_reuses_one_processor(lm):
    model, tokenizer = lm
    v = Verbalizer(SHARED_PREFIX, multi_label=True)
    t = v.label_tokens(tokenizer, CONTEXT, lead=" ")
    proc = VerbalizerLogitsProcessor(t)
    torch.manual_seed(0)
    check_answers(v, t, generate(lm, PROMPTS, proc, do_sample=True, temperature=5.0, top_k=0), tokenizer)
    # Different prompts and lengths, including a prompt exactly one token longer than the last step seen.
    check_answers(v, t, generate(lm, PROMPTS[1:], proc, do_sample=False), tokenizer)
    check_answers(v, t, generate(lm, PROMPTS[::-1], proc, pad_to=proc._last_length + 1, do_sample=False), tokenizer)
    greedy = generate(lm, PROMPTS, proc, do_sample=False)
    check_answers(v, t, greedy, tokenizer)
    # An identical generation reuses every cached mask: no new states, no per-step vocabulary work.
    masks = len(proc._masks)
    assert generate(lm, PROMPTS, proc, do_sample=False) == greedy
    assert len(proc._masks) == masks
