"""``text_similarity``: a score in [0, 1] from a maintained implementation of
each metric (none is written here):

* ``fuzzy_match``: rapidfuzz's normalised Indel similarity (``fuzz.ratio`` / 100);
* ``bleu``: sacrebleu's sentence BLEU (default smoothing, 13a tokenizer) / 100;
* ``gleu``: NLTK's sentence GLEU;
* ``meteor``: NLTK's METEOR with exact and Porter-stem matching; its WordNet
  synonym stage runs only when the NLTK ``wordnet`` corpus is installed on
  the server (it cannot be downloaded at run time), otherwise no synonyms;
* ``rouge_1`` ... ``rouge_5``, ``rouge_l``: Google's ``rouge-score`` F-measure;
* ``cosine``: cosine similarity of mean-pooled hidden states of the embedding
  model ``OPENFT_GRADER_EMBEDDING_MODEL`` (refused when none is configured).

Word-level metrics split on whitespace.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from openft.graders.templates import render


def score(grader: dict[str, Any], context: dict[str, Any], embedding_model: Path | None = None) -> float:
    text, reference = render(grader["input"], context), render(grader["reference"], context)
    return similarity(grader["evaluation_metric"], text, reference, embedding_model)


def similarity(metric: str, text: str, reference: str, embedding_model: Path | None = None) -> float:
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    if metric == "bleu":
        import sacrebleu

        return sacrebleu.sentence_bleu(text, [reference]).score / 100.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([reference.split()], text.split()))
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        return float(meteor_score([reference.split()], text.split(), wordnet=_wordnet()))
    if metric.startswith("rouge_"):
        key = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
        return float(_rouge(key).score(reference, text)[key].fmeasure)
    if metric == "cosine":
        if embedding_model is None:
            raise ValueError("no embedding model is configured (OPENFT_GRADER_EMBEDDING_MODEL)")
        return _embedder(str(embedding_model)).cosine(text, reference)
    raise ValueError(f"unknown metric {metric!r}")


@functools.lru_cache(maxsize=16)
def _rouge(key: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key])


class _NoSynonyms:
    """WordNet's interface with no entries: METEOR without its synonym stage."""

    def synsets(self, *_args: Any, **_kwargs: Any) -> list[Any]:
        return []


@functools.lru_cache(maxsize=1)
def _wordnet() -> Any:
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        return _NoSynonyms()


class _Embedder:
    def __init__(self, path: str):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def embed(self, text: str) -> Any:
        import torch

        with torch.inference_mode():
            batch = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
            hidden = self.model(**batch).last_hidden_state[0]
            return hidden.mean(dim=0)

    def cosine(self, a: str, b: str) -> float:
        import torch

        value = torch.nn.functional.cosine_similarity(self.embed(a), self.embed(b), dim=0)
        return float(value.clamp(-1.0, 1.0))


@functools.lru_cache(maxsize=2)
def _embedder(path: str) -> _Embedder:
    return _Embedder(path)
