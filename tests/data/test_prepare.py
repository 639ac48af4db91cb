"""`data prepare`: what lands on disk, that it is reproducible, and how bad input is reported."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from helpers import SHARED
from layerwise.cli import data as cli_data
from layerwise.data.inputs import PYTHON_DOCS, resolve_inputs, stdlib_python_files, stdlib_root
from layerwise.data.meta import check_vocab_fits, read_meta, token_dtype
from layerwise.data.prepare import prepare
from layerwise.data.readers import python_docs_documents
from layerwise.data.tokenizer import load_tokenizer
from layerwise.util.errors import UserError

GPT2_DIR = SHARED / "tokenizers" / "gpt2"
OLMO_JSON = SHARED / "tokenizers" / "gpt-neox-olmo-dolma-v1_5.json"
ENWIKI = SHARED / "corpora" / "enwiki-sample.jsonl.gz"


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return load_tokenizer(GPT2_DIR).tokenizer


@pytest.fixture(scope="module")
def enwiki_docs() -> list[str]:
    """A few real articles, shortened so the tests stay fast."""
    with gzip.open(ENWIKI, "rt", encoding="utf-8") as lines:
        return [json.loads(line)["text"][:3000] for line in itertools.islice(lines, 24)]


def write_jsonl(path: Path, records: list[object]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path


def tokens_of(directory: Path, split: str) -> np.ndarray:
    meta = read_meta(directory)
    return np.fromfile(meta.split_path(split), dtype=meta.dtype)


def split_documents(tokens: np.ndarray, eos: int) -> list[tuple[int, ...]]:
    """Token runs between EOS ids: the documents as written."""
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [tuple(tokens[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]


def encoded(tokenizer: Tokenizer, texts: list[str]) -> list[tuple[int, ...]]:
    return [tuple(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]


def test_every_document_is_followed_by_eos(tmp_path: Path, gpt2: Tokenizer) -> None:
    texts = ["First document.", "Second one,\nwith two lines.", "Third: ünïcödé ✓"]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "out"
    result = prepare([source], str(GPT2_DIR), out, val_tokens=0, workers=1)
    expected = [token for ids in encoded(gpt2, texts) for token in (*ids, 50256)]
    assert tokens_of(out, "train").tolist() == expected
    assert tokens_of(out, "val").size == 0
    assert result.meta.splits["train"].documents == 3
    assert result.meta.eos_id == 50256
    assert result.meta.dtype == "uint16"
    assert read_meta(out) == result.meta


def test_validation_takes_whole_documents_chosen_by_seed(
    tmp_path: Path, gpt2: Tokenizer, enwiki_docs: list[str]
) -> None:
    source = write_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in enwiki_docs])
    expected = set(encoded(gpt2, enwiki_docs))
    held_out = []
    for seed in (1, 1, 2):
        out = tmp_path / f"seed{seed}"
        prepare([source], str(GPT2_DIR), out, val_tokens=2000, seed=seed, overwrite=True, workers=1)
        train = split_documents(tokens_of(out, "train"), 50256)
        val = split_documents(tokens_of(out, "val"), 50256)
        assert set(train) | set(val) == expected and not set(train) & set(val)
        assert tokens_of(out, "val").size >= 2000 and tokens_of(out, "val")[-1] == 50256
        assert read_meta(out).splits["val"].documents == len(val)
        held_out.append(val)
    assert held_out[0] == held_out[1]
    assert held_out[0] != held_out[2]


def test_val_fraction_is_a_share_of_the_tokens(tmp_path: Path, enwiki_docs: list[str]) -> None:
    source = write_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in enwiki_docs])
    meta = prepare([source], str(GPT2_DIR), tmp_path / "out", val_fraction=0.25, workers=1).meta
    total = meta.splits["train"].tokens + meta.splits["val"].tokens
    assert meta.val_target_tokens == int(np.ceil(total * 0.25))
    assert meta.splits["val"].tokens >= meta.val_target_tokens


def test_output_is_byte_identical_across_runs_and_worker_counts(
    tmp_path: Path, enwiki_docs: list[str]
) -> None:
    source = write_jsonl(tmp_path / "wiki.jsonl.gz", [{"text": t} for t in enwiki_docs])
    outputs = []
    for name, tokenizer, workers in [
        ("a", "bpe:400", 1),
        ("b", "bpe:400", 2),
        ("c", str(OLMO_JSON), 1),
        ("d", str(OLMO_JSON), 2),
    ]:
        out = tmp_path / name
        prepare([source], tokenizer, out, val_tokens=1500, seed=3, workers=workers)
        outputs.append({f.name: f.read_bytes() for f in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert outputs[2] == outputs[3]
    assert set(outputs[0]) == {"meta.json", "tokenizer.json", "train.bin", "val.bin"}


def test_bpe_tokenizer_is_saved_and_used(tmp_path: Path, enwiki_docs: list[str]) -> None:
    source = write_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in enwiki_docs])
    out = tmp_path / "out"
    meta = prepare([source], "bpe:300", out, val_tokens=0, workers=1).meta
    saved = load_tokenizer(out / "tokenizer.json")
    assert meta.vocab_size == saved.vocab_size <= 300
    assert meta.eos_id == saved.eos_id == saved.tokenizer.token_to_id("<|endoftext|>")
    assert meta.tokenizer == "bpe:300" and meta.tokenizer_sha256 == saved.sha256
    first = split_documents(tokens_of(out, "train"), meta.eos_id)[0]
    assert saved.tokenizer.decode(list(first)) == enwiki_docs[0]


def test_dtype_widens_only_when_ids_do_not_fit_uint16(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000, "</s>": 70_001}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "big.json"))
    source = tmp_path / "doc.txt"
    source.write_text("w1 w65535 w65536 w69999 nope")
    meta = prepare([source], str(tmp_path / "big.json"), tmp_path / "out", val_tokens=0).meta
    assert meta.dtype == "uint32"
    assert tokens_of(tmp_path / "out", "train").tolist() == [1, 65535, 65536, 69999, 70000, 70001]


def test_input_kinds_directories_and_globs(tmp_path: Path, gpt2: Tokenizer) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    write_jsonl(corpus / "a.jsonl", [{"text": "from jsonl"}])
    write_jsonl(corpus / "b.json.gz", [{"body": "from json.gz"}])
    (corpus / "sub" / "c.txt").write_text("from txt\nstill the same document")
    pq.write_table(pa.table({"body": ["from parquet", "row two"]}), corpus / "sub" / "d.parquet")
    (corpus / "README.md").write_text("not an input")
    sources = resolve_inputs([corpus])
    assert [s.path.name for s in sources] == ["a.jsonl", "b.json.gz", "c.txt", "d.parquet"]
    assert [s.path.name for s in resolve_inputs([str(corpus / "**" / "*.t?t")])] == ["c.txt"]

    out = tmp_path / "out"
    inputs = [corpus / "sub", corpus / "b.json.gz"]
    prepare(inputs, str(GPT2_DIR), out, text_field="body", val_tokens=0)
    texts = ["from txt\nstill the same document", "from parquet", "row two", "from json.gz"]
    assert split_documents(tokens_of(out, "train"), 50256) == encoded(gpt2, texts)
    assert [Path(i.path).name for i in read_meta(out).inputs] == ["c.txt", "d.parquet", "b.json.gz"]


def test_python_docs_are_real_stdlib_docstrings() -> None:
    files = stdlib_python_files(stdlib_root())
    assert not any("site-packages" in f.parts or "dist-packages" in f.parts for f in files)
    textwrap = [f for f in files if f.relative_to(stdlib_root()).parts == ("textwrap.py",)]
    (document,) = python_docs_documents(textwrap)
    assert document.startswith("Text wrapping and filling.")
    assert "Wrap a single paragraph of text, returning a list of wrapped lines." in document
    assert "Remove any common leading whitespace from every line in `text`." in document
    assert resolve_inputs([PYTHON_DOCS])[0].kind == PYTHON_DOCS


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "ok"', "malformed JSON"),
        ('{"title": "no text"}', "no 'text' field"),
        ('{"text": 12}', "field 'text' is int"),
        ('["text"]', "expected a JSON object"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text(f'{{"text": "good"}}\n\n{line}\n{{"text": "good"}}\n')
    with pytest.raises(UserError, match=rf"bad\.jsonl:3: {message}") as error:
        prepare([source], str(GPT2_DIR), tmp_path / "out", val_tokens=0, workers=1)
    assert str(source) in str(error.value) and "--skip-bad" in str(error.value)


def test_skip_bad_and_invalid_utf8_are_counted(tmp_path: Path, gpt2: Tokenizer) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(
        b'{"text": "fine"}\n{"text": broken}\n{"id": 1}\n'
        b'{"text": "caf\xe9 latte"}\n{"text": ""}\n{"text": "lone \\udc80 surrogate"}\n'
    )
    out = tmp_path / "out"
    meta = prepare([source], str(GPT2_DIR), out, val_tokens=0, skip_bad=True, workers=1).meta
    assert meta.skipped_bad_records == 2
    assert meta.invalid_utf8_documents == 2
    assert meta.empty_documents == 1
    docs = [gpt2.decode(list(d)) for d in split_documents(tokens_of(out, "train"), 50256)]
    assert docs == ["fine", "caf\ufffd latte", "lone \ufffd surrogate"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "no documents found"),
        ("blank.jsonl", b"\n  \n", "no documents found"),
        ("corrupt.jsonl.gz", b"this is not gzip", r"cannot read .*corrupt\.jsonl\.gz"),
        ("notes.csv", b"a,b\n", "unsupported file type"),
    ],
)
def test_unusable_inputs_give_clear_errors(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        prepare([tmp_path / name], str(GPT2_DIR), tmp_path / "out", val_tokens=0, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_input_and_empty_glob_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.jsonl': no such file"):
        resolve_inputs([tmp_path / "missing.jsonl"])
    with pytest.raises(UserError, match="no readable files match"):
        resolve_inputs([str(tmp_path / "*.jsonl")])


def test_parquet_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    source = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), source)
    with pytest.raises(UserError, match=r"t\.parquet: row 2"):
        prepare([source], str(GPT2_DIR), tmp_path / "o1", val_tokens=0, workers=1)
    with pytest.raises(UserError, match=r"t\.parquet: no column 'body' \(columns: text\)"):
        prepare([source], str(GPT2_DIR), tmp_path / "o2", val_tokens=0, text_field="body")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match=r"needs pyarrow: pip install 'layerwise\[parquet\]'"):
        prepare([source], str(GPT2_DIR), tmp_path / "o3", val_tokens=0, workers=1)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    """An empty directory or an earlier output is replaced whole, and only with --overwrite;
    a file someone added to the earlier output is named, and kept (issue 21)."""
    source = tmp_path / "doc.txt"
    source.write_text("some text")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=r"already exists.*--overwrite"):
        prepare([source], str(GPT2_DIR), out, val_tokens=0)
    prepare([source], str(GPT2_DIR), out, val_tokens=0, overwrite=True)
    (out / "stale.bin").write_bytes(b"old")
    with pytest.raises(UserError, match=r"already exists.*--overwrite"):
        prepare([source], str(GPT2_DIR), out, val_tokens=0)
    with pytest.raises(UserError, match=r"but also what it did not write: stale\.bin; "):
        prepare([source], str(GPT2_DIR), out, val_tokens=0, overwrite=True)
    assert (out / "stale.bin").read_bytes() == b"old"
    (out / "stale.bin").unlink()
    prepare([source], str(GPT2_DIR), out, val_tokens=0, overwrite=True)
    assert read_meta(out).splits["train"].documents == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.txt", "out"]


def test_failed_run_leaves_no_directory(tmp_path: Path, enwiki_docs: list[str]) -> None:
    good = write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in enwiki_docs])
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "fine"}\n{oops\n')
    with pytest.raises(UserError, match=r"b\.jsonl:2"):
        prepare([good, bad], str(GPT2_DIR), tmp_path / "out", val_tokens=0, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]


def test_validation_may_not_take_everything(tmp_path: Path) -> None:
    source = tmp_path / "doc.txt"
    source.write_text("only one document")
    with pytest.raises(UserError, match="would take all 1 documents"):
        prepare([source], str(GPT2_DIR), tmp_path / "out", val_tokens=1)


def test_interrupted_run_leaves_no_directory(tmp_path: Path) -> None:
    """Ctrl-C mid-run (a real SIGINT, workers running): the run stops and leaves nothing behind."""
    words = " ".join(f"word{i} and some ordinary prose" for i in range(2000))
    write_jsonl(tmp_path / "big.jsonl", [{"text": f"{i} {words}"} for i in range(400)])
    # A shell's background job starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: restore the handler an interactive Ctrl-C would meet.
    script = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from layerwise.data.prepare import prepare; prepare([sys.argv[1]], *sys.argv[2:], workers=2)"
    )
    command = [sys.executable, "-c", script, "big.jsonl", str(GPT2_DIR), "out"]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any((d / "train.bin").exists() for d in tmp_path.glob(".out.tmp-*")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert "KeyboardInterrupt" in stderr
    assert sorted(os.listdir(tmp_path)) == ["big.jsonl"]


def test_cli_prepares_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="layerwise")
    cli_data.add_parser(parser.add_subparsers())
    source = tmp_path / "doc.txt"
    source.write_text("A small document for the command line.")
    out = tmp_path / "out"
    argv = ["data", "prepare", "--input", str(source), "--tokenizer", str(GPT2_DIR)]
    args = parser.parse_args([*argv, "--out", str(out), "--val-tokens", "0", "--workers", "1"])
    assert args.func(args) == 0
    summary = capsys.readouterr().err.strip().splitlines()
    tokens = read_meta(out).splits["train"].tokens
    assert len(summary) == 1
    assert summary[0].startswith(f"prepared {out}: train {tokens} tokens / 1 docs, val 0 tokens")
    args = parser.parse_args([*argv, "--out", str(out)])
    with pytest.raises(UserError, match="already exists"):
        args.func(args)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*argv, "--out", str(out), "--val-tokens", "5", "--val-fraction", "0.1"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_read_meta_names_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"{tmp_path / 'meta.json'} not found"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "layerwise-tokens/1"}')
    with pytest.raises(UserError, match=rf"{tmp_path / 'meta.json'} is corrupt"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(UserError, match=rf"{tmp_path / 'meta.json'} is unreadable or corrupt"):
        read_meta(tmp_path)


def test_vocab_check_refuses_ids_the_model_cannot_embed(tmp_path: Path) -> None:
    source = tmp_path / "doc.txt"
    source.write_text("text")
    meta = prepare([source], str(OLMO_JSON), tmp_path / "out", val_tokens=0).meta
    check_vocab_fits(meta, 50304)
    with pytest.raises(UserError, match=r"50280 ids.*vocabulary has only 50257"):
        check_vocab_fits(meta, 50257)


def test_repeated_inputs_are_read_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], enwiki_docs: list[str]
) -> None:
    """A file named twice, matched again by a directory or glob, or copied, is read only once,
    so no document is duplicated, let alone in both splits."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    source = write_jsonl(corpus / "a.jsonl", [{"text": t} for t in enwiki_docs[:12]])
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(source.read_bytes())
    prepare([source], str(GPT2_DIR), tmp_path / "once", val_tokens=2000, workers=1)
    capsys.readouterr()
    inputs = [source, str(source), corpus, str(corpus / "*.jsonl"), copy]
    prepare(inputs, str(GPT2_DIR), tmp_path / "repeated", val_tokens=2000, workers=1)
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("layerwise: warning: ignoring 4 repeated input(s)")
    assert f"{copy} (same content as {source})" in warning
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "repeated" / name).read_bytes() == (
            tmp_path / "once" / name
        ).read_bytes()
    assert [i.path for i in read_meta(tmp_path / "repeated").inputs] == [str(source)]


def test_bpe_vocab_the_inputs_cannot_fill_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "doc.txt"
    source.write_text("a tiny corpus has few pairs to merge; a tiny corpus")
    meta = prepare([source], "bpe:5000", tmp_path / "out", val_tokens=0, workers=1).meta
    assert meta.vocab_size < 5000
    assert (
        f"warning: bpe:5000 asked for 5,000 ids but the inputs only support {meta.vocab_size:,}"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--workers", "0"], "error: --workers must be >= 1, got 0"),
        (["--workers", "-2"], "error: --workers must be >= 1, got -2"),
        (["--workers", "two"], "argument --workers: invalid int value: 'two'"),
        (["--val-tokens", "lots"], "argument --val-tokens: expected a token count such as 50M"),
        (["--val-tokens", "-5"], "(0 for no validation split), got '-5'"),
        (["--val-tokens", "0.4"], "(0 for no validation split), got '0.4'"),
        (["--val-fraction", "half"], "argument --val-fraction: invalid float value: 'half'"),
        (["--val-fraction", "1"], "error: --val-fraction must be in [0, 1), got 1.0"),
        (["--tokenizer", "bpe:-5"], "N is the vocabulary size, a positive integer of at least"),
    ],
)
def test_bad_options_are_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    from layerwise.cli import main

    source = tmp_path / "doc.txt"
    source.write_text("text")
    argv = ["data", "prepare", "--input", str(source), "--tokenizer", str(GPT2_DIR)]
    try:
        status = main([*argv, "--out", str(tmp_path / "out"), *option])
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["doc.txt"]


def test_val_tokens_flag_reads_budgets_like_50m() -> None:
    from layerwise.cli import build_parser, parse

    argv = ["data", "prepare", "--input", "x", "--tokenizer", "bpe:300", "--out", "y"]
    assert parse(build_parser(), [*argv, "--val-tokens", "50M"]).val_tokens == 50_000_000
    assert parse(build_parser(), [*argv, "--val-tokens", "0"]).val_tokens == 0
    with pytest.raises(SystemExit):
        parse(build_parser(), [*argv, "--val-tokens", "lots"])


@pytest.mark.parametrize("val_tokens", [0, 2000])
def test_meta_records_the_sha256_of_each_token_file(
    tmp_path: Path, enwiki_docs: list[str], val_tokens: int
) -> None:
    """The identity of the data, hashed while the files are written, is what runs record."""
    source = write_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in enwiki_docs[:20]])
    out = tmp_path / "out"
    meta = prepare([source], str(GPT2_DIR), out, val_tokens=val_tokens, workers=1).meta
    for name, split in meta.splits.items():
        assert split.sha256 == hashlib.sha256((out / split.file).read_bytes()).hexdigest(), name
    assert read_meta(out) == meta
