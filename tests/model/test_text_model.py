from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import T5ForConditionalGeneration

from unihema.model.configuration import ConfigError, TextConfig
from unihema.model.text import IGNORE_INDEX, TextModel, build_domain_tokenizer, domain_corpus, t5_config_from

SMALL_TEXT = TextConfig(
    vocab_size=1024, tokenizer_vocab_size=1024, num_sentinels=16, d_model=32, d_kv=8, d_ff=64, num_layers=1,
    num_decoder_layers=1, num_heads=4, max_length=24, dropout_rate=0.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return build_domain_tokenizer(SMALL_TEXT.tokenizer_vocab_size, SMALL_TEXT.num_sentinels)


def test_tokenizer_follows_t5_conventions(tokenizer) -> None:
    assert tokenizer.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(16)])
    assert sentinel_ids == sorted(sentinel_ids, reverse=True)  # <extra_id_0> is the highest id
    assert max(sentinel_ids) == len(tokenizer) - 1
    ids = tokenizer("mask: The nucleus is <extra_id_0>.")["input_ids"]
    assert ids[-1] == 1  # </s> appended
    assert sentinel_ids[0] in ids  # the sentinel is one token
    assert set(tokenizer("Q: x")) == {"input_ids", "attention_mask"}


def test_tokenizer_round_trips_domain_text(tokenizer) -> None:
    for text in [
        "Q: What is the shape of the nucleus?",
        "segmented-bilobed",
        "This image is for the detection of sickle cell cells",
    ]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        assert tokenizer.unk_token_id not in ids
    # Domain words are whole pieces, not characters.
    assert len(tokenizer("neutrophil")["input_ids"]) == 2


def test_tokenizer_is_deterministic() -> None:
    assert build_domain_tokenizer(600, 8).get_vocab() == build_domain_tokenizer(600, 8).get_vocab()
    assert len(domain_corpus()) > 1000


def test_text_model_encode_and_teacher_forcing() -> None:
    model, config = TextModel.from_config(SMALL_TEXT)
    assert config == SMALL_TEXT
    ids, mask = model.tokenize(["Q: What is the colour of the cytoplasm?", "Q: Is it?"])
    assert ids.shape == mask.shape and mask[1].sum() < mask[0].sum()
    states = model.encode(ids, mask)
    assert states.shape == (2, ids.shape[1], 32)
    labels = model.tokenize_targets(["light blue", "yes"])
    assert (labels[1] == IGNORE_INDEX).any() and (labels[0] != IGNORE_INDEX).all()
    logits = model.teacher_forced(states, mask, labels)
    assert logits.shape == (2, labels.shape[1], SMALL_TEXT.vocab_size)
    # The same logits as T5 computing its own loss from the labels (its decoder inputs are the shifted labels).
    reference = model.t5(encoder_outputs=(states,), attention_mask=mask, labels=labels)
    torch.testing.assert_close(logits, reference.logits)
    manual = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(reference.loss, manual)


def test_truncation_to_max_length() -> None:
    model, _ = TextModel.from_config(dataclasses.replace(SMALL_TEXT, max_length=8))
    ids, _ = model.tokenize(["the nucleus is segmented and the cytoplasm is light blue with pink granules"])
    assert ids.shape[1] == 8 and ids[0, -1] == 1


def test_vocab_smaller_than_tokenizer_is_rejected(tokenizer) -> None:
    t5 = T5ForConditionalGeneration(
        t5_config_from(dataclasses.replace(SMALL_TEXT, vocab_size=64, tokenizer_vocab_size=40))
    )
    with pytest.raises(ConfigError, match="text.vocab_size"):
        TextModel(t5, tokenizer, max_length=24)


def test_groups_split_encoder_and_decoder() -> None:
    model, _ = TextModel.from_config(SMALL_TEXT)
    encoder = {id(p) for p in model.encoder_modules().parameters()}
    decoder = {id(p) for p in model.decoder_modules().parameters()}
    assert not encoder & decoder
    assert encoder | decoder == {id(p) for p in model.parameters()}
    assert id(model.t5.shared.weight) in encoder


def test_pretrained_directory(tmp_path, tokenizer) -> None:
    source = dataclasses.replace(
        SMALL_TEXT, d_model=48, d_kv=12, feed_forward_proj="relu", tie_word_embeddings=True
    )
    t5 = T5ForConditionalGeneration(t5_config_from(source))
    t5.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(str(tmp_path / "t5"))

    model, config = TextModel.from_config(
        dataclasses.replace(SMALL_TEXT, pretrained_path=str(tmp_path / "t5"))
    )
    # Sizes come from the directory, not from the requested config.
    assert (config.d_model, config.feed_forward_proj, config.tie_word_embeddings) == (48, "relu", True)
    for name, tensor in t5.state_dict().items():
        assert torch.equal(model.t5.state_dict()[name], tensor), name
    assert model.tokenizer.get_vocab() == tokenizer.get_vocab()

    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        TextModel.from_config(dataclasses.replace(SMALL_TEXT, pretrained_path=str(tmp_path / "missing")))
