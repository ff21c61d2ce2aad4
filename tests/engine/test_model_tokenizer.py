"""engine.tokenizer: byte-level round trips, streaming decode, chat template, HF agreement."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tokenizer import Tokenizer

TEXTS = ["Hello, world!", "naïve café — 日本語 🚀", "", "  leading spaces\nand\ttabs"]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer(tiny_model_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_every_string_round_trips(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id == 256
    assert tok.decode(ids) == text
    assert tok.encode(text, add_special_tokens=False) == list(text.encode("utf-8"))


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_deltas_never_split_a_character(tok: Tokenizer, text: str) -> None:
    dec = tok.incremental_decoder()
    deltas = [dec.push(i) for i in tok.encode(text, add_special_tokens=False)]
    assert "".join(deltas) + dec.flush() == text
    assert all("\ufffd" not in d for d in deltas)
    if "🚀" in text:  # a 4-byte character arrives whole, after three silent bytes
        assert "🚀" in deltas and deltas.count("") >= 3


def test_flush_returns_a_truncated_character_as_replacement(tok: Tokenizer) -> None:
    dec = tok.incremental_decoder()
    assert dec.push(ord("a")) == "a"
    assert dec.push(0xE6) == ""  # first byte of a 3-byte character
    assert dec.flush() == "\ufffd"


def test_eos_ids_include_eot_and_end_of_text(tok: Tokenizer) -> None:
    assert tok.eos_ids == {257, 260}
    assert tok.vocab_size == 261


def test_chat_template_matches_transformers(tok: Tokenizer, tiny_model_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi é "}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert text == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
    )
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode_chat(messages)
    hf_ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert ids == list(hf_ids["input_ids"])
    assert ids.count(256) == 1 and ids.count(260) == 2


def test_model_without_template_says_so(tmp_path: Path, tiny_model_dir: Path) -> None:
    import json
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat_template"):
        Tokenizer(tmp_path / "m").apply_chat_template([{"role": "user", "content": "x"}])
