"""Tokenizer specs: the files users point at load with the right EOS, and bpe:N is reproducible."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models

from helpers import SHARED
from layerwise.data.tokenizer import bpe_vocab_size, load_tokenizer, train_bpe
from layerwise.util.errors import UserError

GPT2_DIR = SHARED / "tokenizers" / "gpt2"
OLMO_JSON = SHARED / "tokenizers" / "gpt-neox-olmo-dolma-v1_5.json"

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pack my box with five dozen liquor jugs, then pack another box.",
    "Sphinx of black quartz, judge my vow; the vow was judged by the sphinx.",
] * 5


def test_gpt2_directory_matches_gpt2_ids_and_eos() -> None:
    loaded = load_tokenizer(GPT2_DIR)
    assert loaded.eos_id == 50256
    assert loaded.vocab_size == 50257
    assert loaded.tokenizer.encode("Hello world", add_special_tokens=False).ids == [15496, 995]
    assert loaded.identity == "gpt2-bpe:gpt2"


def test_hf_json_detects_eos_from_special_tokens() -> None:
    loaded = load_tokenizer(OLMO_JSON)
    assert loaded.eos_id == 50279
    assert loaded.vocab_size == 50280
    assert loaded.sha256 == load_tokenizer(str(OLMO_JSON)).sha256


def test_saved_tokenizer_reloads_to_the_same_encoder(tmp_path: Path) -> None:
    loaded = load_tokenizer(GPT2_DIR)
    loaded.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    text = "Tokenizers <|endoftext|> round-trip, naïvely."
    assert again.tokenizer.encode(text).ids == loaded.tokenizer.encode(text).ids
    assert again.eos_id == loaded.eos_id


def test_trained_bpe_is_reproducible_and_has_eos() -> None:
    first = train_bpe(300, iter(TEXTS))
    second = train_bpe(300, iter(TEXTS))
    assert first.sha256 == second.sha256
    assert first.tokenizer.to_str() == second.tokenizer.to_str()
    assert first.tokenizer.id_to_token(first.eos_id) == "<|endoftext|>"
    assert first.vocab_size <= 300
    ids = first.tokenizer.encode(TEXTS[1]).ids
    assert first.tokenizer.decode(ids) == TEXTS[1]


@pytest.mark.parametrize("spec", ["bpe:100", "bpe:lots", "bpe:", "bpe:-5", "bpe:0", "bpe:3.5"])
def test_bad_bpe_specs_are_refused(spec: str) -> None:
    with pytest.raises(UserError, match=r"a positive integer of at least 257 .*e\.g\. bpe:32000"):
        bpe_vocab_size(spec)
    assert bpe_vocab_size("bpe:257") == 257


def test_file_specs_are_not_bpe() -> None:
    assert bpe_vocab_size(str(OLMO_JSON)) is None
    assert bpe_vocab_size("bpe:512") == 512


def test_missing_tokenizer_names_the_spec(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere\.json"):
        load_tokenizer(tmp_path / "nowhere.json")


def test_gpt2_directory_without_merges_is_refused(tmp_path: Path) -> None:
    (tmp_path / "encoder.json").write_text('{"a": 0}')
    with pytest.raises(UserError, match=r"vocab\.bpe / merges\.txt"):
        load_tokenizer(tmp_path)


def test_tokenizer_without_eos_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "no-eos.json"
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(UserError, match="end-of-document"):
        load_tokenizer(path)


def test_corrupt_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not a HF tokenizers JSON"):
        load_tokenizer(path)
