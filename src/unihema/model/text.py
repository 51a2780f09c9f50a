"""Text encoder E_T and text decoder D_T (a ``transformers`` T5) and the tokenizer.

By default the T5 is built from :class:`~unihema.model.configuration.TextConfig` sizes with random
weights, and its tokenizer is *trained* here (byte-pair encoding, ``tokenizers`` library) on a domain corpus: the
prompts, questions, answers and descriptions that :mod:`unihema.data.text` generates over attribute
combinations, plus every class and attribute name of :mod:`unihema.data.vocab`. The tokenizer follows
T5's conventions (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, ``▁``-prefixed word-start pieces,
``</s>`` appended to every sequence, sentinels ``<extra_id_0>`` ... at the end of the vocabulary with
``<extra_id_0>`` the highest id) and is wrapped as a ``transformers.PreTrainedTokenizerFast``.

With ``TextConfig.pretrained_path`` the T5 weights and tokenizer come from a local directory (a saved
``t5-base`` or ``flan-t5-base``; ``local_files_only=True``, nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
import re
import string
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput

from unihema.data.vocab import CELL_ATTRIBUTES, CELL_CLASSES, DETECTION_CLASSES, FOV_ATTRIBUTES
from unihema.model.configuration import ConfigError, TextConfig

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2 as in T5
IGNORE_INDEX = -100  # label value ignored by the cross-entropy (padding of target texts)
MAX_NEW_TOKENS = 64  # longest generated answer: the text length of the authors' model
METASPACE = "\u2581"  # the word-start marker of SentencePiece/T5 pieces
SENTINEL_PATTERN = re.compile(r"<extra_id_\d+>")
# Attribute combinations sampled per cell class for the tokenizer corpus, and their seed.
CORPUS_COMBINATIONS_PER_CLASS = 24
CORPUS_SEED = 0
# Classes whose descriptions/questions make up most of the corpus (WBCAtt's five classes).
CORPUS_CELL_CLASSES = ("neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte")
DISEASES = (
    "acute myeloid leukemia", "acute lymphoblastic leukemia", "chronic myeloid leukemia", "malaria",
    "sickle cell disease", "anemia", "leishmaniasis", "babesiosis", "trypanosomiasis", "tuberculosis",
    "thalassemia", "normal blood",
)  # fmt: skip
DETECTION_PROMPT = "This image is for the detection of {} cells"


def sentinel_token(index: int) -> str:
    """The T5 sentinel number ``index``: ``<extra_id_0>``, ``<extra_id_1>`` ..."""
    return f"<extra_id_{index}>"


# ------------------------------------------------------------------------------------ domain corpus


def _fallback_sentences() -> list[str]:
    """Template sentences over the vocabularies, used when :mod:`unihema.data.text` is unavailable."""
    sentences: list[str] = []
    for name, values in CELL_ATTRIBUTES + FOV_ATTRIBUTES:
        words = name.replace("_", " ")
        for value in values:
            sentences.append(f"Q: What is the {words} of the cell? {value}")
            sentences.append(
                f"mask: The {words} of this cell is <extra_id_0>. The {words} of this cell is {value}."
            )
    for cls in CELL_CLASSES:
        sentences.append(f"Q: What type of cell is this? {cls}. Is this a {cls}? yes no")
        sentences.append(f"This {cls} has a nucleus and cytoplasm.")
    return sentences


def domain_corpus() -> list[str]:
    """Deterministic list of domain sentences to train the tokenizer on."""
    sentences: list[str] = []
    names = list(DETECTION_CLASSES) + list(CELL_CLASSES) + list(DISEASES)
    sentences += [DETECTION_PROMPT.format(name) for name in names]
    sentences += [f"{name} {', '.join(values)}" for name, values in CELL_ATTRIBUTES + FOV_ATTRIBUTES]
    sentences += _fallback_sentences()
    try:
        from unihema.data import text as text_templates
    except ImportError:
        return sentences
    rng = random.Random(CORPUS_SEED)
    for cls in CORPUS_CELL_CLASSES + tuple(CELL_CLASSES[::5]):
        for index in range(CORPUS_COMBINATIONS_PER_CLASS):
            attributes = {name: rng.choice(values) for name, values in CELL_ATTRIBUTES}
            for prompt, answer in itertools.chain(
                text_templates.vqa_pairs(cls, attributes, seed=index),
                text_templates.masked_sentences(cls, attributes, seed=index),
            ):
                sentences += [prompt, answer]
            sentences.append(text_templates.describe(cls, attributes))
    return sentences


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(vocab_size: int, num_sentinels: int) -> str:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first"),
            pre_tokenizers.Punctuation(),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - num_sentinels,
        special_tokens=list(SPECIAL_TOKENS),
        # Every printable ASCII character stays encodable, so unseen words never become <unk>.
        initial_alphabet=sorted(set(string.printable) - set(string.whitespace)),
        show_progress=False,
    )
    # Sentinels are added as whole special tokens below; keep them out of the merge statistics.
    corpus = [SENTINEL_PATTERN.sub(" ", sentence) for sentence in domain_corpus()]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    # T5 places the sentinels at the end of the vocabulary with <extra_id_0> last.
    tokenizer.add_special_tokens([sentinel_token(i) for i in reversed(range(num_sentinels))])
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    return tokenizer.to_str()


def build_domain_tokenizer(vocab_size: int, num_sentinels: int) -> PreTrainedTokenizerFast:
    """Train (or reuse from an in-process cache) the T5-style domain tokenizer.

    Args:
        vocab_size: target vocabulary size including the special tokens and sentinels; a small corpus may
            give fewer pieces.
        num_sentinels: number of ``<extra_id_N>`` tokens.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(_trained_tokenizer_json(vocab_size, num_sentinels))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[sentinel_token(i) for i in range(num_sentinels)],
        model_max_length=int(1e9),
        model_input_names=["input_ids", "attention_mask"],
    )
    if [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] != [0, 1, 2]:
        raise RuntimeError("domain tokenizer: <pad>, </s>, <unk> must have ids 0, 1, 2")
    return tokenizer


# ------------------------------------------------------------------------------------- T5 config


def t5_config_from(config: TextConfig) -> T5Config:
    """A ``T5Config`` with the sizes of ``config`` (T5's token ids: pad 0, eos 1, decoder start 0)."""
    return T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        feed_forward_proj=config.feed_forward_proj,
        tie_word_embeddings=config.tie_word_embeddings,
        dropout_rate=config.dropout_rate,
        layer_norm_epsilon=config.layer_norm_epsilon,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def text_config_from_t5(t5: T5Config, base: TextConfig) -> TextConfig:
    """``base`` with its sizes replaced by those of a (pretrained) ``T5Config``."""
    return dataclasses.replace(
        base,
        vocab_size=t5.vocab_size,
        tokenizer_vocab_size=min(base.tokenizer_vocab_size, t5.vocab_size),
        d_model=t5.d_model,
        d_kv=t5.d_kv,
        d_ff=t5.d_ff,
        num_layers=t5.num_layers,
        num_decoder_layers=t5.num_decoder_layers,
        num_heads=t5.num_heads,
        feed_forward_proj=t5.feed_forward_proj,
        tie_word_embeddings=bool(t5.tie_word_embeddings),
        dropout_rate=t5.dropout_rate,
        layer_norm_epsilon=t5.layer_norm_epsilon,
        relative_attention_num_buckets=t5.relative_attention_num_buckets,
        relative_attention_max_distance=t5.relative_attention_max_distance,
    )


# ------------------------------------------------------------------------------------ text model


class TextModel(nn.Module):
    """E_T and D_T: a T5 encoder-decoder plus its tokenizer.

    Args:
        t5: the ``T5ForConditionalGeneration``.
        tokenizer: a tokenizer whose ids fit ``t5.config.vocab_size``.
        max_length: prompts and targets are truncated to this many tokens (``</s>`` included).
        pad_to_max_length: pad every text to ``max_length`` tokens instead of the batch's longest.

    The token embedding table is shared by the T5 encoder and decoder; :meth:`encoder_modules` owns it
    (freezing E_T freezes the decoder's input embedding too), :meth:`decoder_modules` holds the decoder
    blocks, its final norm and the lm_head.
    """

    def __init__(
        self,
        t5: T5ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        pad_to_max_length: bool = False,
    ) -> None:
        super().__init__()
        if len(tokenizer) > t5.config.vocab_size:
            raise ConfigError(
                f"text.vocab_size ({t5.config.vocab_size}) is smaller than the tokenizer ({len(tokenizer)} tokens)"
            )
        self.t5 = t5
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_max_length = pad_to_max_length

    @classmethod
    def from_config(
        cls, config: TextConfig, tokenizer: PreTrainedTokenizerBase | None = None
    ) -> tuple[TextModel, TextConfig]:
        """Build the text model; returns it with ``config`` updated to the actual T5 sizes.

        Without ``pretrained_path`` the T5 has random weights and, unless ``tokenizer`` is given, the
        domain tokenizer is trained.
        """
        if config.pretrained_path is None:
            if tokenizer is None:
                tokenizer = build_domain_tokenizer(config.tokenizer_vocab_size, config.num_sentinels)
            return cls(
                T5ForConditionalGeneration(t5_config_from(config)),
                tokenizer,
                config.max_length,
                config.pad_to_max_length,
            ), config
        path = Path(config.pretrained_path)
        if not path.is_dir():
            raise FileNotFoundError(f"text.pretrained_path is not a directory: {path}")
        t5 = T5ForConditionalGeneration.from_pretrained(str(path), local_files_only=True)
        tokenizer = load_tokenizer(path) if tokenizer is None else tokenizer
        return cls(t5, tokenizer, config.max_length, config.pad_to_max_length), text_config_from_t5(
            t5.config, config
        )

    @property
    def d_model(self) -> int:
        return int(self.t5.config.d_model)

    def encoder_modules(self) -> nn.Module:
        """E_T: the T5 encoder stack (with the shared token embedding)."""
        return self.t5.get_encoder()

    def decoder_modules(self) -> nn.Module:
        """D_T: decoder blocks, final norm and lm_head (not the shared token embedding)."""
        decoder = self.t5.get_decoder()
        modules = nn.ModuleDict(
            {"block": decoder.block, "final_layer_norm": decoder.final_layer_norm, "lm_head": self.t5.lm_head}
        )
        return modules

    # ----------------------------------------------------------------------------------- tokens
    def tokenize(
        self, texts: Sequence[str], device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Token ids ``(B, L)`` and attention mask ``(B, L)`` (1 = token) padded to the longest text
        (or to ``max_length`` with ``pad_to_max_length``)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of strings")
        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def tokenize_targets(self, texts: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """Target labels ``(B, T)`` with padding set to :data:`IGNORE_INDEX`."""
        ids, mask = self.tokenize(texts, device)
        return ids.masked_fill(mask == 0, IGNORE_INDEX)

    def decode(self, token_ids: Tensor) -> list[str]:
        return self.tokenizer.batch_decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True
        )

    # ---------------------------------------------------------------------------------- modules
    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """E_T: ``(B, L)`` ids -> text states E_E^T ``(B, L, N)``."""
        return self.t5.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def teacher_forced(self, memory: Tensor, memory_mask: Tensor, labels: Tensor) -> Tensor:
        """D_T with teacher forcing on ``memory`` ``(B, L, N)``: token logits ``(B, T, V)`` for ``labels``
        ``(B, T)``. The loss is the criterion's (:mod:`unihema.train.losses`), not computed here."""
        return self.t5(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=memory_mask,
            decoder_input_ids=self.t5.prepare_decoder_input_ids_from_labels(labels=labels),
            return_dict=True,
        ).logits

    @torch.no_grad()
    def generate(
        self, memory: Tensor, memory_mask: Tensor, num_beams: int = 1, max_new_tokens: int = MAX_NEW_TOKENS
    ) -> Tensor:
        """Greedy (``num_beams=1``) or beam search from ``memory``; returns generated ids ``(B, T)``."""
        return self.t5.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=memory_mask,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            early_stopping=num_beams > 1,
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json", "vocab.txt")
"""Files of which a tokenizer folder holds at least one (``save_pretrained`` writes the first two)."""


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Tokenizer files from a local directory (never downloads).

    Raises:
        FileNotFoundError: ``path`` is not a folder, holds none of :data:`TOKENIZER_FILES`, or its files
            cannot be read as a tokenizer; the message names the folder (and the first line of the cause).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: tokenizer folder not found (a model folder keeps its tokenizer there)"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        found = sorted(p.name for p in path.iterdir())
        listing = (
            f"it holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}" if found else "it is empty"
        )
        raise FileNotFoundError(
            f"{path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); {listing}"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as error:
        cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"{path}: the tokenizer files cannot be read ({cause})") from error
