"""`data import`: token arrays become the tokens `data prepare` makes; wrong dtypes are refused
with the fix (the study's int32-read-as-uint16 case first); the loader guard stops a run whose
files disagree with meta.json; bad files and flags exit 2 with nothing written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import write_token_dir
from layerwise.cli import main
from layerwise.data.loader import open_split
from layerwise.data.meta import META_FILE, read_meta
from layerwise.data.prepare import prepare
from layerwise.data.token_import import import_tokens
from layerwise.util.errors import UserError


@pytest.fixture(scope="module")
def reference(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """GPT-2 tokens of 60 enwiki documents, as `data prepare` writes them (no validation)."""
    root = tmp_path_factory.mktemp("ref")
    with gzip.open(shared / "corpora" / "enwiki-sample.jsonl.gz", "rt") as corpus:
        lines = [next(corpus) for _ in range(60)]
    (root / "docs.jsonl").write_text("".join(lines))
    prepare([root / "docs.jsonl"], str(gpt2(shared)), root / "ref", val_tokens=0, workers=1)
    return root, np.fromfile(root / "ref" / "train.bin", dtype=np.uint16)


def gpt2(shared: Path) -> Path:
    return shared / "tokenizers" / "gpt2"


def tokens_of(data_dir: Path) -> np.ndarray:
    meta = read_meta(data_dir)
    parts = [np.fromfile(meta.split_path(s), dtype=meta.dtype) for s in ("train", "val")]
    return np.concatenate(parts).astype(np.int64)


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32"])
@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_import_gives_the_tokens_prepare_gives(reference, shared, tmp_path, dtype, suffix):
    root, ids = reference
    path = tmp_path / f"tokens{suffix}"
    array = ids.astype(dtype)
    np.save(path, array) if suffix == ".npy" else array.tofile(path)
    result = import_tokens([path], dtype, str(gpt2(shared)), tmp_path / "out", val_tokens=1000)
    assert np.array_equal(tokens_of(tmp_path / "out"), ids)
    meta = read_meta(tmp_path / "out")
    ref = read_meta(root / "ref")
    assert meta.tokenizer_sha256 == ref.tokenizer_sha256 and meta.eos_id == ref.eos_id
    assert meta.splits["val"].tokens == 1000
    assert sum(s.documents for s in meta.splits.values()) == ref.splits["train"].documents
    assert meta.dtype == ("uint16" if dtype == "int32" else dtype)
    assert result.linked == ()
    open_split(tmp_path / "out", "train", 64)  # the trainer reads it


def test_a_whole_matching_file_is_linked_not_copied(reference, shared, tmp_path):
    _, ids = reference
    ids.tofile(tmp_path / "train.bin")
    ids[:2000].tofile(tmp_path / "val.bin")
    result = import_tokens(
        [tmp_path / "train.bin"],
        "uint16",
        str(gpt2(shared)),
        tmp_path / "out",
        val_files=[tmp_path / "val.bin"],
    )
    assert result.linked == ("train.bin", "val.bin")
    assert (tmp_path / "out" / "train.bin").stat().st_ino == (tmp_path / "train.bin").stat().st_ino
    assert read_meta(tmp_path / "out").splits["val"].tokens == 2000


def test_the_studys_int32_read_as_uint16_is_refused_with_the_fix(reference, shared, tmp_path):
    ids = reference[1]
    ids.astype(np.int32).tofile(tmp_path / "study.bin")
    with pytest.raises(UserError) as error:
        import_tokens([tmp_path / "study.bin"], "uint16", str(gpt2(shared)), tmp_path / "out")
    message = str(error.value)
    assert "study.bin" in message and "100.0% of odd positions are 0" in message
    assert "--dtype int32" in message
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "study.bin"]


def test_16_bit_ids_read_as_32_bit_are_refused(reference, shared, tmp_path):
    ids = reference[1][: reference[1].size // 2 * 2]
    ids.tofile(tmp_path / "u16.bin")
    with pytest.raises(UserError, match=r"two valid 16-bit ids.*--dtype uint16"):
        import_tokens([tmp_path / "u16.bin"], "uint32", str(gpt2(shared)), tmp_path / "out")


def test_ids_beyond_the_vocabulary_and_a_missing_eos_are_refused(shared, tmp_path):
    rng = np.random.default_rng(0)
    rng.integers(0, 60000, 1 << 17).astype(np.uint16).tofile(tmp_path / "big.bin")
    with pytest.raises(UserError, match=r"big.bin.*beyond the vocabulary of 50,257"):
        import_tokens([tmp_path / "big.bin"], "uint16", str(gpt2(shared)), tmp_path / "out")
    rng.integers(1, 50000, 1 << 17).astype(np.uint16).tofile(tmp_path / "no-eos.bin")
    with pytest.raises(UserError, match=r"end-of-document id 50256 never appears"):
        import_tokens([tmp_path / "no-eos.bin"], "uint16", str(gpt2(shared)), tmp_path / "out")


def test_the_loader_guard_stops_a_run_on_files_meta_misdescribes(tmp_path):
    rng = np.random.default_rng(1)
    data = write_token_dir(tmp_path / "d", {"train": rng.integers(0, 1000, 8000)}, 70000)
    open_split(data, "train", 16)  # uint32 as written: fine
    meta_path = data / META_FILE
    document = json.loads(meta_path.read_text())
    document["dtype"] = "uint16"
    document["splits"]["train"]["tokens"] = 16000
    meta_path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=r"train.bin does not hold what .*meta.json says.*int32"):
        open_split(data, "train", 16)


def run_cli(*argv: str) -> int:
    """The exit status, whether main returns it or argparse exits with it."""
    try:
        return main(["data", "import", *argv])
    except SystemExit as exit_:
        return int(exit_.code or 0)


def test_bad_files_and_flags_exit_2_with_nothing_written(shared, tmp_path, capsys):
    tok = str(gpt2(shared))
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    out = str(tmp_path / "out")
    cases = [
        (["odd.bin", "--dtype", "uint16"], "not a whole number of uint16 ids"),
        (["missing.bin", "--dtype", "uint16"], "cannot read token file"),
        (["odd.bin", "--dtype", "float32"], "invalid choice"),
        (["odd.bin", "--dtype", "uint16", "--val-tokens", "-5"], "expected a token count"),
    ]
    for args, expected in cases:
        args[0] = str(tmp_path / args[0])
        code = run_cli(*args, "--tokenizer", tok, "--out", out)
        assert code == 2 and expected in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.bin"]


def test_prepare_reads_jsonl_zst_as_it_reads_jsonl(reference, shared, tmp_path):
    zstandard = pytest.importorskip("zstandard")
    root, ids = reference
    data = (root / "docs.jsonl").read_bytes()
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    prepare(
        [tmp_path / "docs.jsonl.zst"], str(gpt2(shared)), tmp_path / "z", val_tokens=0, workers=1
    )
    assert np.array_equal(np.fromfile(tmp_path / "z" / "train.bin", dtype=np.uint16), ids)
    (tmp_path / "bad.jsonl.zst").write_bytes(b"not zstd at all")
    with pytest.raises(UserError, match=r"cannot read .*bad.jsonl.zst"):
        prepare([tmp_path / "bad.jsonl.zst"], str(gpt2(shared)), tmp_path / "b", workers=1)
    assert not (tmp_path / "b").exists()


def test_prepare_reads_a_saved_hf_dataset_in_its_state_order(reference, shared, tmp_path):
    pa = pytest.importorskip("pyarrow")
    root, ids = reference
    texts = [json.loads(line)["text"] for line in (root / "docs.jsonl").read_text().splitlines()]
    saved = tmp_path / "saved"
    saved.mkdir()
    names = ["data-00001-of-00002.arrow", "data-00000-of-00002.arrow"]  # state order, not sorted
    for name, part in zip(names, (texts[:30], texts[30:]), strict=True):
        table = pa.table({"id": list(range(len(part))), "text": part})
        with pa.ipc.new_stream(str(saved / name), table.schema) as writer:
            writer.write_table(table, max_chunksize=7)
    (saved / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (saved / "dataset_info.json").write_text("{}")
    prepare([saved], str(gpt2(shared)), tmp_path / "out", val_tokens=0, workers=1)
    assert np.array_equal(np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16), ids)
    with pytest.raises(UserError, match=r"no column 'body'.*--text-field"):
        prepare([saved], str(gpt2(shared)), tmp_path / "x", text_field="body", workers=1)
