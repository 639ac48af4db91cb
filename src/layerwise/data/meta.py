"""meta.json: what a data directory holds (token files, tokenizer, dtype) and the checks on it.

Everything that reads token files (the loader, the trainer, evaluation, the Hugging Face
importer) learns their dtype, vocabulary and tokenizer from here, never from the file's size or
name, so a file and its description cannot be read two ways. Torch-free and light: the training
process reads meta.json without importing the tokenizing pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.data.inputs import InputInfo
from layerwise.util.errors import UserError

META_FORMAT = "layerwise-tokens/1"
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves disk and page-cache use whenever every id fits in it."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class SplitMeta:
    file: str
    tokens: int
    documents: int
    sha256: str | None = None
    """Of the token file, computed while it was written; None in data prepared before it was."""

    def describe(self) -> str:
        content = f"sha256 {self.sha256[:12]}" if self.sha256 else "no sha256 recorded"
        return f"{self.tokens:,} tokens, {content}"


@dataclass(frozen=True)
class TokenMeta:
    """The contents of meta.json: what a trainer needs to read the token files safely."""

    data_dir: Path
    tokenizer: str
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    dtype: str
    splits: dict[str, SplitMeta]
    seed: int = 0
    val_target_tokens: int = 0
    text_bytes: int = 0
    invalid_utf8_documents: int = 0
    skipped_bad_records: int = 0
    empty_documents: int = 0
    inputs: tuple[InputInfo, ...] = ()

    def split_path(self, split: str) -> Path:
        """The token file of `split`, or a UserError listing the splits that exist."""
        if split not in self.splits:
            raise UserError(f"{self.data_dir}: no split {split!r} (have {', '.join(self.splits)})")
        return self.data_dir / self.splits[split].file


def new_meta(
    data_dir: Path,
    tokenizer: str,
    tokenizer_sha256: str,
    vocab_size: int,
    eos_id: int,
    splits: dict[str, SplitMeta] | None = None,
    **counts: Any,
) -> TokenMeta:
    """The meta of token files of this tokenizer, their dtype set by the one rule
    (`token_dtype`); `counts` are the statistics fields of `TokenMeta`."""
    return TokenMeta(
        data_dir=data_dir,
        tokenizer=tokenizer,
        tokenizer_sha256=tokenizer_sha256,
        vocab_size=vocab_size,
        eos_id=eos_id,
        dtype=token_dtype(vocab_size).name,
        splits=splits or {},
        **counts,
    )


def meta_to_json(meta: TokenMeta) -> str:
    """meta.json's text: keys sorted and no timestamps, so equal runs give equal bytes."""
    document = {
        "format": META_FORMAT,
        "tokenizer": {
            "identity": meta.tokenizer,
            "sha256": meta.tokenizer_sha256,
            "vocab_size": meta.vocab_size,
            "eos_id": meta.eos_id,
            "file": TOKENIZER_FILE,
        },
        "dtype": meta.dtype,
        "splits": {
            name: {
                "file": split.file,
                "tokens": split.tokens,
                "documents": split.documents,
                **({"sha256": split.sha256} if split.sha256 else {}),
            }
            for name, split in meta.splits.items()
        },
        "seed": meta.seed,
        "val_target_tokens": meta.val_target_tokens,
        "text_bytes": meta.text_bytes,
        "invalid_utf8_documents": meta.invalid_utf8_documents,
        "skipped_bad_records": meta.skipped_bad_records,
        "empty_documents": meta.empty_documents,
        "inputs": [{"path": i.path, "bytes": i.bytes, "sha256": i.sha256} for i in meta.inputs],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def read_meta(data_dir: str | Path) -> TokenMeta:
    """Parse and check DIR/meta.json; any problem is a UserError naming the file."""
    path = Path(data_dir) / META_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(
            f"{path} not found: prepare the data with `layerwise data prepare`"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable or corrupt ({exc})") from exc
    try:
        return _meta_from_document(document, Path(data_dir))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is corrupt or from another version ({exc!r})") from exc


def _meta_from_document(document: dict, data_dir: Path) -> TokenMeta:
    if document["format"] != META_FORMAT:
        raise ValueError(f"format {document['format']!r}, expected {META_FORMAT!r}")
    tokenizer = document["tokenizer"]
    dtype = str(document["dtype"])
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"dtype {dtype!r}")
    splits = {
        name: SplitMeta(
            str(s["file"]),
            _count(s["tokens"]),
            _count(s["documents"]),
            None if s.get("sha256") is None else str(s["sha256"]),
        )
        for name, s in document["splits"].items()
    }
    return TokenMeta(
        data_dir=data_dir,
        tokenizer=str(tokenizer["identity"]),
        tokenizer_sha256=str(tokenizer["sha256"]),
        vocab_size=_count(tokenizer["vocab_size"]),
        eos_id=_count(tokenizer["eos_id"]),
        dtype=dtype,
        splits=splits,
        seed=int(document["seed"]),
        val_target_tokens=_count(document["val_target_tokens"]),
        text_bytes=_count(document["text_bytes"]),
        invalid_utf8_documents=_count(document["invalid_utf8_documents"]),
        skipped_bad_records=_count(document["skipped_bad_records"]),
        empty_documents=_count(document["empty_documents"]),
        inputs=tuple(
            InputInfo(str(i["path"]), _count(i["bytes"]), str(i["sha256"]))
            for i in document["inputs"]
        ),
    )


def _count(value: object) -> int:
    """A non-negative JSON integer (bools are ints in Python, but not counts)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def data_differences(recorded: TokenMeta, current: TokenMeta) -> list[str]:
    """How the data a run recorded differs from a data directory now, one line each (empty:
    the same tokens, as far as the records can tell).

    The tokenizer is compared by its sha256 and each split by its token file's sha256 (by its
    token count where either record predates the hash). A run that has seen none of our
    tokens (an imported checkpoint: no splits recorded) is compared by its tokenizer alone.
    """
    differences = []
    if recorded.tokenizer_sha256 != current.tokenizer_sha256:
        differences.append(
            f"tokenizer: {recorded.tokenizer} (sha256 {recorded.tokenizer_sha256[:12]}) -> "
            f"{current.tokenizer} (sha256 {current.tokenizer_sha256[:12]})"
        )
    if not recorded.splits:
        return differences
    for name in sorted(set(recorded.splits) | set(current.splits)):
        old, new = recorded.splits.get(name), current.splits.get(name)
        if old is None or new is None:
            differences.append(f"split {name}: {'present' if old else 'absent'} -> "
                               f"{'present' if new else 'absent'}")  # fmt: skip
            continue
        hashed = old.sha256 is not None and new.sha256 is not None
        if old.tokens != new.tokens or (hashed and old.sha256 != new.sha256):
            differences.append(f"split {name}: {old.describe()} -> {new.describe()}")
    return differences


def check_vocab_fits(meta: TokenMeta, model_vocab_size: int) -> None:
    """Refuse token files with ids the model's embedding cannot look up (silent garbage on GPU)."""
    if meta.vocab_size > model_vocab_size:
        raise UserError(
            f"the tokens in {meta.data_dir} use {meta.vocab_size} ids (tokenizer {meta.tokenizer}) "
            f"but the model's vocabulary has only {model_vocab_size}: give the model a vocab_size "
            f"of at least {meta.vocab_size}, or prepare the data with the model's tokenizer"
        )
