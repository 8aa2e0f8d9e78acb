"""The head started from the language model's own guess: each label's row is the LM's output embedding of the
label name's first token, so that with a pooling suffix that asks for the label ("\\nTopic:") the untrained
classifier already scores the labels as the LM would continue the text (its zero-shot guess), instead of at random.

The pooled vector is the backbone's last hidden state after its final norm, the very vector the LM head multiplies:
`score.weight[c] = lm_head.weight[first token of " <label c>"]` makes the head's logits the LM's next-token logits
of the label tokens (their ranking only, where the LM then scales or soft-caps its logits: Cohere, Granite,
Gemma 2). Rows are centred on their mean, which leaves softmax probabilities unchanged and starts
multi-label sigmoids near 0.5 rather than at the LM's raw logits (tens)."""

import json
import logging

import torch

from ..texts import suffix_ids
from .modeling_last_token import HUB_KWARGS

logger = logging.getLogger(__name__)

def label_token_ids(tokenizer, labels) -> list[int]:
    """The first token of each label name as the LM would write it after the suffix (a space, then the name with
    underscores as spaces), past any token that is only white space (tokenizers that do not merge the space into
    the word give it a token of its own, the same for every label)."""
    ids = []
    for label in labels:
        tokens = suffix_ids(tokenizer, " " + str(label).replace("_", " ").strip())  # its space kept, as a suffix's
        words = [token for token in tokens if tokenizer.decode([token]).strip()]
        if not words:
            raise ValueError(f"head_init='label_names': the label {label!r} has no tokens.")
        ids.append(words[0])
    shared = {}
    for label, token in zip(labels, ids):
        shared.setdefault(token, []).append(label)
    clashes = [names for names in shared.values() if len(names) > 1]
    if clashes:
        logger.warning("head_init='label_names': labels %s start with the same token; their rows start equal and "
                       "only training tells them apart.", clashes)
    return ids


def output_embeddings(classifier, source=None, **hub_kwargs) -> torch.Tensor:
    """`(vocab, hidden)` rows of the LM's output layer: the input embeddings when the backbone ties them (SmolLM2,
    Gemma, Qwen2 0.5B, ...), else `lm_head.weight` read from the checkpoint `source` (the classifier dropped it)."""
    text_config = classifier.config.text_config.get_text_config()
    if getattr(text_config, "tie_word_embeddings", False):
        return classifier.model.get_input_embeddings().weight
    if source is None:
        raise ValueError("head_init='label_names' needs the LM's output embeddings: this backbone does not tie them "
                         "to its input embeddings, and the model was given as an object, so its checkpoint's lm_head "
                         "cannot be read. Pass the model's name or path, or use head_init='random'.")
    from safetensors import safe_open
    from transformers.utils import cached_file

    hub = {key: hub_kwargs[key] for key in HUB_KWARGS if key in hub_kwargs}
    index = cached_file(source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub)
    name = json.load(open(index))["weight_map"].get("lm_head.weight") if index else "model.safetensors"
    path = cached_file(source, name, _raise_exceptions_for_missing_entries=False, **hub) if name else None
    if path is None:
        raise ValueError(f"head_init='label_names': no lm_head.weight in the safetensors checkpoint of {source}; use "
                         "head_init='random'.")
    with safe_open(path, framework="pt") as file:
        if "lm_head.weight" not in file.keys():
            raise ValueError(f"head_init='label_names': {source} holds no lm_head.weight; use head_init='random'.")
        return file.get_tensor("lm_head.weight")


@torch.no_grad()
def init_head_from_label_names(classifier, tokenizer, labels, source=None, **hub_kwargs) -> list[int]:
    """Set `classifier.score.weight` to the centred output embeddings of the labels' first tokens; returns the
    token ids used."""
    ids = label_token_ids(tokenizer, labels)
    rows = output_embeddings(classifier, source, **hub_kwargs)[torch.tensor(ids)].float()
    head = classifier.score
    head.weight.copy_((rows - rows.mean(dim=0, keepdim=True)).to(head.weight.device))
    if head.bias is not None:
        head.bias.zero_()
    return ids
