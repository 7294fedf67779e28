"""lightsum.data.files: reading users' .npz, .csv and .parquet sequence files, their checks, and the cache."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightsum.data.files import (
    SequenceFile,
    cache_folder,
    csv_reader,
    npz_reader,
    parquet_reader,
    read_sequence_file,
    table,
)
from lightsum.data.files import cache as cache_module
from lightsum.data.files import read as read_module

WHERE = "data.train_path"


def read(path: Path, **kwargs: Any) -> SequenceFile:
    return read_sequence_file(path, where=WHERE, **kwargs)


def refused(path: Path, match: str, **kwargs: Any) -> str:
    """The one-line refusal of reading ``path``; it starts with where and the path."""
    with pytest.raises(ValueError, match=match) as info:
        read(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{WHERE}: {path}: "), message
    return message


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def parquet(path: Path, **columns: Any) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path)
    return path


# .npz ---------------------------------------------------------------------------------------------


def test_npz_2d_numbers(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.int64).reshape(4, 3)
    file = read(npz(tmp_path / "a.npz", x=x, y=np.array([0, 1, 1, 0])), cache=False)
    assert file.values.dtype == np.float32 and file.values.shape == (4, 3, 1)
    np.testing.assert_array_equal(file.values[..., 0], x)
    assert file.lengths.dtype == np.int64 and file.lengths.tolist() == [3, 3, 3, 3]
    assert file.label_codes.dtype == np.uint8 and file.label_codes.tolist() == [0, 1, 1, 0]
    assert file.label_names == ("0", "1") and file.tokens is None
    assert (file.num_rows, file.max_len, file.num_features, file.steps) == (4, 3, 1, "numbers")


def test_npz_3d_features_and_lengths(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(5, 4, 3))
    x[1, 2:] = np.nan  # padding past the length may hold anything: it reads as 0.0
    lengths = np.array([4, 2, 1, 3, 4])
    file = read(npz(tmp_path / "a.npz", x=x, y=np.array(["b", "a", "b", "b", "a"]), lengths=lengths), cache=False)
    assert file.values.shape == (5, 4, 3) and file.num_features == 3
    assert file.lengths.tolist() == lengths.tolist()
    np.testing.assert_allclose(file.values[0], x[0].astype(np.float32))
    assert (file.values[1, 2:] == 0).all() and (file.values[2, 1:] == 0).all()
    assert file.label_names == ("a", "b") and file.label_codes.tolist() == [1, 0, 1, 1, 0]


def test_npz_boolean_labels_and_custom_keys(tmp_path: Path) -> None:
    path = npz(tmp_path / "a.npz", seqs=np.ones((3, 2), dtype=bool), target=np.array([True, False, True]))
    file = read(path, npz_keys=("seqs", "target", "n"), cache=False)
    assert file.label_names == ("false", "true") and file.label_codes.tolist() == [1, 0, 1]
    assert file.values.sum() == 6


def test_npz_without_labels_when_optional(tmp_path: Path) -> None:
    path = npz(tmp_path / "a.npz", x=np.ones((2, 3)))
    refused(path, r"has no array 'y' of labels \(arrays: 'x'\)")
    file = read(path, labels="optional", cache=False)
    assert file.label_codes is None and file.label_names == ()


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"y": np.zeros(2)}, r"has no array 'x' \(arrays: 'y'\)"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0)}, "array 'x' has no rows"),
        ({"x": np.zeros(3), "y": np.zeros(3)}, r"array 'x' has shape \(3,\): it must be \(rows, steps\)"),
        ({"x": np.zeros((2, 0)), "y": np.zeros(2)}, "every row needs at least one step"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, "array 'y' has 2 labels but the sequences have 3 rows"),
        ({"x": np.zeros((3, 2)), "y": np.zeros((3, 1))}, r"labels must be \(3,\), one a row: save y.ravel\(\)"),
        (
            {"x": np.array([["A", "C"]]), "y": np.zeros(1)},
            "holds strings: tokens cannot be read from .npz; save them as .csv",
        ),
        ({"x": np.zeros((2, 2), dtype=complex), "y": np.zeros(2)}, "array 'x' has dtype complex128"),
        (
            {"x": np.zeros((2, 3)), "y": np.zeros(2), "lengths": np.array([3, 4])},
            r"array 'lengths', row 1: length 4 is outside \[1, 3\]",
        ),
        ({"x": np.zeros((2, 3)), "y": np.zeros(2), "lengths": np.array([0, 3])}, "array 'lengths', row 0: length 0"),
        ({"x": np.zeros((2, 3)), "y": np.array([0.0, np.nan])}, "row 1, array 'y': the label is missing"),
        ({"x": np.zeros((2, 3)), "y": np.array(["a", " "])}, "row 1, array 'y': the label is missing"),
    ],
)
def test_npz_refusals(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    refused(npz(tmp_path / "a.npz", **arrays), match)


def test_npz_object_array_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = npz(tmp_path / "a.npz", x=np.array([[1, 2], [3]], dtype=object), y=np.zeros(2))
    refused(path, "array 'x' holds Python objects .* does not unpickle")


@pytest.mark.parametrize(
    ("value", "what"), [(np.nan, "NaN"), (np.inf, "infinite"), (1e39, "1e\\+39, too large for float32")]
)
def test_npz_non_finite_values_name_the_first_row(tmp_path: Path, value: float, what: str) -> None:
    x = np.zeros((4, 3, 2))
    x[2, 1, 1] = x[3, 0, 0] = value
    message = refused(
        npz(tmp_path / "a.npz", x=x, y=np.zeros(4)), f"array 'x', row 2, step 1, feature 1: the value is {what}"
    )
    assert "save the rows' lengths as 'lengths'" in message


def test_npz_not_a_zip(tmp_path: Path) -> None:
    refused(write(tmp_path / "a.npz", "not a zip"), r"is not a .npz archive")


# .csv ---------------------------------------------------------------------------------------------


def test_csv_numbers_of_variable_lengths(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n1,0.5 1.5 2\n0,-3\n1,1e2  4\t5 6\n")
    file = read(path, cache=False)
    assert file.steps == "numbers" and file.values.dtype == np.float32 and file.values.shape == (3, 4, 1)
    assert file.lengths.tolist() == [3, 1, 4]
    np.testing.assert_array_equal(file.values[..., 0], [[0.5, 1.5, 2, 0], [-3, 0, 0, 0], [100, 4, 5, 6]])
    assert file.label_names == ("0", "1") and file.label_codes.tolist() == [1, 0, 1]


def test_csv_tokens(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\nyes,G A T\nno,C\nyes,A A C G T T\n")
    file = read(path, cache=False)
    assert file.steps == "tokens" and file.tokens == ("A", "C", "G", "T") and file.num_features == 1
    assert file.values.dtype == np.int32 and file.values.shape == (3, 6)
    assert file.values.tolist() == [[2, 0, 3, -1, -1, -1], [1, -1, -1, -1, -1, -1], [0, 0, 1, 2, 3, 3]]
    assert file.lengths.tolist() == [3, 1, 6]
    assert file.label_names == ("no", "yes") and file.label_codes.tolist() == [1, 0, 1]


def test_csv_forced_tokens_reads_numbers_as_tokens(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,42 7\n1,7\n")
    file = read(path, steps="tokens", cache=False)
    assert file.tokens == ("42", "7") and file.values.tolist() == [[0, 1], [1, -1]]


def test_csv_extra_columns_and_custom_names(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", 'id,events,note,class\n7,1 2,"a, b",cat\n8,3,x,dog\n')
    file = read(path, label_column="class", sequence_column="events", cache=False)
    assert file.values[..., 0].tolist() == [[1, 2], [3, 0]] and file.label_names == ("cat", "dog")


def test_csv_bom_crlf_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b'\xef\xbb\xbf"label","sequence"\r\n"1","1 2 3"\r\n0,"4,5"\r\n'.replace(b'"4,5"', b'" 4  5 "'))
    file = read(path, cache=False)
    assert file.values[..., 0].tolist() == [[1, 2, 3], [4, 5, 0]] and file.lengths.tolist() == [3, 2]
    assert file.label_names == ("0", "1")


def test_csv_labels_sort_numerically_and_merge_equal_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n10,1\n2,1\n1.0,1\n 1,1\n0,1\n")
    file = read(path, cache=False)
    assert file.label_names == ("0", "1", "2", "10")
    assert file.label_codes.tolist() == [3, 2, 1, 1, 0]


def test_csv_boolean_labels(tmp_path: Path) -> None:
    file = read(write(tmp_path / "a.csv", "label,sequence\nTrue,1\nfalse,2\ntrue,3\n"), cache=False)
    assert file.label_names == ("false", "true") and file.label_codes.tolist() == [1, 0, 1]


def test_csv_without_labels_when_optional(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "sequence\n1 2\n3\n")
    refused(path, r"has no label column 'label' \(columns: 'sequence'\): name it with --data.label_column")
    file = read(path, labels="optional", cache=False)
    assert file.label_codes is None and file.label_names == () and file.lengths.tolist() == [2, 1]
    blank = read(write(tmp_path / "b.csv", "label,sequence\n,1\n,2\n"), labels="optional", cache=False)
    assert blank.label_codes is None


def test_optional_labels_missing_in_some_rows_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n,1\n1,2\n,3\n")
    refused(path, "row 0, column 'label': the label is missing", labels="optional")
    refused(path, "row 0, column 'label': the label is missing")
    nulls = parquet(tmp_path / "a.parquet", sequence=[[1.0], [2.0]], label=[None, None])
    assert read(nulls, labels="optional", cache=False).label_codes is None
    refused(nulls, "row 0, column 'label': the label is missing")


def test_too_many_label_values(tmp_path: Path) -> None:
    text = "label,sequence\n" + "".join(f"{i},1\n" for i in range(300))
    refused(write(tmp_path / "a.csv", text), "column 'label' has 300 distinct label values, more than 256")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"is empty \(0 bytes\)"),
        ("\ufeff", "is empty: give a header row"),
        ("label,sequence\n", "has a header but no rows"),
        ("label,seq\n0,1\n", r"has no sequence column 'sequence' \(columns: 'label', 'seq'\)"),
        (
            "label,sequence\n0,1\n1,2\n0,1 a\n",
            r"row 2 \(line 4\), column 'sequence', step 1: 'a' is not a number: use --data.steps tokens",
        ),
        ("label,sequence\n0,1\n1,2\n0,   \n", r"row 2 \(line 4\) has no steps \(column 'sequence' is empty\)"),
        ("label,sequence\n0,1\n,2\n", r"row 1, column 'label': the label is missing"),
        ("label,sequence\n0,1 2\n1,nan\n", r"row 1 \(line 3\), column 'sequence', step 0: 'nan' is NaN"),
        ("label,sequence\n0,1 2\n1,3 -inf\n", "row 1 .*, step 1: '-inf' is infinite"),
        ("label,sequence\n0,1 2\n1,3 1e39\n", "row 1 .*, step 1: '1e39' is too large for float32"),
        ("label,sequence\n0,1\n1,2,3\n", r"row 1 \(line 3\) has 3 fields but the header has 2: quote a field"),
        ('label,sequence\n0,"1,2,3"\n', "looks like numbers separated by ',' or ';': separate steps by spaces"),
        ("label,sequence,label\n0,1,0\n", "column 'label' appears 2 times in the header"),
        ('label,sequence\n0,1\nx,"1\n', r"is not valid CSV at line 3 \(unexpected end of data\): check its quotes"),
        ('label,sequence\n0,"1 2" 3\n', r"is not valid CSV at line 2 \(',' expected after '\"'\)"),
    ],
)
def test_csv_refusals(tmp_path: Path, text: str, match: str) -> None:
    refused(write(tmp_path / "a.csv", text), match)


def test_csv_forced_numbers_refuses_a_token(tmp_path: Path) -> None:
    refused(
        write(tmp_path / "a.csv", "label,sequence\n0,A 1\n"),
        "row 0 .*step 0: 'A' is not a number: steps=numbers",
        steps="numbers",
    )


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"label,sequence\n0,1\n1,\xff\xfe\n")
    refused(path, "is not UTF-8 text")


def test_csv_long_rows_and_many_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_reader, "_CHUNK_ROWS", 7)  # several chunks: rows, tokens and labels carry across them
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 100, size=rng.integers(1, 20)) for _ in range(50)]
    text = "label,sequence\n" + "".join(f"{i % 3},{' '.join(map(str, r))}\n" for i, r in enumerate(rows))
    numbers = read(write(tmp_path / "a.csv", text), cache=False)
    tokens = read(tmp_path / "a.csv", steps="tokens", cache=False)
    assert numbers.lengths.tolist() == tokens.lengths.tolist() == [len(r) for r in rows]
    for i, r in enumerate(rows):
        assert numbers.values[i, : len(r), 0].tolist() == r.tolist()
        assert [tokens.tokens[c] for c in tokens.values[i, : len(r)]] == [str(v) for v in r]
    assert numbers.label_codes.tolist() == [i % 3 for i in range(50)]
    big = "label,sequence\n0,1\n" + "1," + " ".join(["7"] * 100_000) + "\n"  # past csv's default field limit
    assert read(write(tmp_path / "b.csv", big), cache=False).max_len == 100_000


def test_csv_error_in_a_later_chunk_names_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_reader, "_CHUNK_ROWS", 4)
    text = "label,sequence\n" + "0,1 2\n" * 9 + "1,3 x 4\n"
    refused(write(tmp_path / "a.csv", text), r"row 9 \(line 11\), column 'sequence', step 1: 'x' is not a number")


# .parquet -----------------------------------------------------------------------------------------


def test_parquet_numbers(tmp_path: Path) -> None:
    path = parquet(tmp_path / "a.parquet", sequence=[[1.0, 2.0], [3.0], [4.0, 5.0, 6.0]], label=[0, 1, 0])
    file = read(path, cache=False)
    assert file.values.shape == (3, 3, 1) and file.values[..., 0].tolist() == [[1, 2, 0], [3, 0, 0], [4, 5, 6]]
    assert file.lengths.tolist() == [2, 1, 3] and file.label_names == ("0", "1")


def test_parquet_features(tmp_path: Path) -> None:
    path = parquet(tmp_path / "a.parquet", sequence=[[[1, 2], [3, 4]], [[5, 6]]], label=["b", "a"])
    file = read(path, cache=False)
    assert file.values.shape == (2, 2, 2) and file.num_features == 2
    assert file.values.tolist() == [[[1, 2], [3, 4]], [[5, 6], [0, 0]]]
    assert file.label_names == ("a", "b") and file.label_codes.tolist() == [1, 0]


def test_parquet_fixed_size_features_and_dictionary_labels(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    steps = pa.array([[[1, 2], [3, 4]], [[5, 6]]], pa.list_(pa.list_(pa.float32(), 2)))
    # As pandas writes a categorical column, with a category no row has.
    labels = pa.DictionaryArray.from_arrays(pa.array([2, 0], pa.int8()), pa.array(["cat", "cow", "dog"]))
    file = read(parquet(tmp_path / "a.parquet", sequence=steps, label=labels), cache=False)
    assert file.values.tolist() == [[[1, 2], [3, 4]], [[5, 6], [0, 0]]]
    assert file.label_names == ("cat", "dog") and file.label_codes.tolist() == [1, 0]


def test_parquet_forced_steps(tmp_path: Path) -> None:
    numbers = parquet(tmp_path / "n.parquet", sequence=[[42, 7], [7]], label=[1, 1])
    file = read(numbers, steps="tokens", cache=False)
    assert file.tokens == ("42", "7") and file.values.tolist() == [[0, 1], [1, -1]]
    assert file.label_names == ("1",)  # one class is the data module's to refuse, not the reader's
    strings = parquet(tmp_path / "s.parquet", sequence=[["1.5", "2"], ["x"]], label=[0, 1])
    refused(strings, "row 1, column 'sequence', step 0: 'x' is not a number", steps="numbers")
    good = parquet(tmp_path / "g.parquet", sequence=[["1.5", "2"], ["3"]], label=[0, 1])
    assert read(good, steps="numbers", cache=False).values[..., 0].tolist() == [[1.5, 2], [3, 0]]


def test_parquet_tokens_and_boolean_labels(tmp_path: Path) -> None:
    path = parquet(tmp_path / "a.parquet", sequence=[["login", "buy"], ["login"]], label=[True, False])
    file = read(path, cache=False)
    assert file.tokens == ("buy", "login") and file.values.tolist() == [[1, 0], [1, -1]]
    assert file.label_names == ("false", "true") and file.label_codes.tolist() == [1, 0]


def test_parquet_batches_and_optional_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "_CHUNK_ROWS", 3)
    seqs = [["a", "b", "c"][: 1 + i % 3] for i in range(10)]
    path = parquet(tmp_path / "a.parquet", sequence=seqs)
    file = read(path, labels="optional", cache=False)
    assert file.label_codes is None and file.lengths.tolist() == [1 + i % 3 for i in range(10)]
    assert file.tokens == ("a", "b", "c") and file.values[9].tolist() == [0, -1, -1]
    refused(path, r"has no label column 'label' \(columns: 'sequence'\)")


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"sequence": [[1.0], None], "label": [0, 1]}, "row 1, column 'sequence' is null"),
        ({"sequence": [[1.0], [2.0, None]], "label": [0, 1]}, "row 1, column 'sequence', step 1 is null"),
        ({"sequence": [[1.0], [2.0]], "label": [0, None]}, "row 1, column 'label': the label is missing"),
        ({"sequence": [[1.0], []], "label": [0, 1]}, "row 1 has no steps"),
        (
            {"sequence": [[[1, 2]], [[1, 2], [3]]], "label": [0, 1]},
            "row 1, column 'sequence', step 1 has 1 features .* ragged",
        ),
        ({"sequence": [[1.0], [float("nan")]], "label": [0, 1]}, "row 1, column 'sequence', step 0: the value is NaN"),
        ({"seq": [[1.0]], "label": [0]}, r"has no sequence column 'sequence' \(columns: 'seq', 'label'\)"),
        ({"sequence": [[1.0]], "y": [0]}, r"has no label column 'label' \(columns: 'sequence', 'y'\)"),
        ({"sequence": [1.0], "label": [0]}, "column 'sequence' has type double: it must be a list"),
    ],
)
def test_parquet_refusals(tmp_path: Path, columns: dict[str, Any], match: str) -> None:
    refused(parquet(tmp_path / "a.parquet", **columns), match)


def test_parquet_empty(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "a.parquet"
    pytest.importorskip("pyarrow.parquet").write_table(
        pa.table({"sequence": pa.array([], pa.list_(pa.float64())), "label": pa.array([], pa.int64())}), path
    )
    refused(path, "has no rows")


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "a.parquet", "PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    refused(path, r"reading .parquet needs pyarrow: pip install 'lightsum\[parquet\]'")


# Any format ---------------------------------------------------------------------------------------


def test_missing_file_folder_and_suffix(tmp_path: Path) -> None:
    refused(tmp_path / "nope.csv", "no such file")
    (tmp_path / "dir.csv").mkdir()
    refused(tmp_path / "dir.csv", "is a folder, not a file")
    refused(write(tmp_path / "a.txt", "x"), r"is not a .csv, .npz, .parquet file")


def test_bad_options(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1\n")
    refused(path, "steps='words' is not one of", steps="words")
    refused(path, "labels='maybe' is not one of", labels="maybe")
    refused(path, "the label and sequence columns are both 'x'", label_column="x", sequence_column="x")


def test_memory_estimates_refuse_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv_path = write(tmp_path / "a.csv", "label,sequence\n0,1 2 3\n1,4 5\n")
    npz_path = npz(tmp_path / "a.npz", x=np.zeros((10, 4)), y=np.zeros(10))
    monkeypatch.setattr(table, "available_memory", lambda: 10)
    for path in [csv_path, npz_path]:
        message = refused(
            path, "reading it needs about .* of memory but this machine has 10 bytes available", cache=False
        )
        assert "split the file" in message
    monkeypatch.setattr(table, "available_memory", lambda: None)  # unknown: no refusal
    assert read(csv_path, cache=False).num_rows == 2
    # The .npz estimate: the sequences as float32 (converted a block at a time), the other arrays as
    # stored, the lengths.
    with zipfile.ZipFile(npz_path) as zf:
        used = {"x": "x.npy", "y": "y.npy"}
        assert npz_reader._npz_bytes(zf, used, "x", (10, 4)) == 160 + zf.getinfo("y.npy").file_size + 80
    assert csv_reader._csv_bytes(1000) == 500 * 4 + 250 * 16


def test_memory_estimate_of_parquet_and_of_padding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = parquet(tmp_path / "a.parquet", sequence=[[1.0, 2.0], [3.0]], label=[0, 1])
    metadata = pytest.importorskip("pyarrow.parquet").ParquetFile(path).metadata
    assert parquet_reader._parquet_bytes(metadata, "sequence") == 3 * 4 + 2 * 16
    monkeypatch.setattr(table, "available_memory", lambda: 10)
    refused(path, "reading it needs about 44 bytes", cache=False)
    # Padding is checked once the longest row is known: one long row pads every other.
    monkeypatch.setattr(table, "available_memory", lambda: 100)
    csv_path = write(tmp_path / "b.csv", "label,sequence\n" + "0,1\n" * 20 + "1," + "2 " * 30 + "\n")
    monkeypatch.setattr(csv_reader, "_csv_bytes", lambda size: 0)
    refused(csv_path, r"padding its 21 rows to the longest \(30 steps\) needs about 2.5 kB", cache=False)


# The cache ----------------------------------------------------------------------------------------


def fail_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> None:
        raise AssertionError("the file was parsed again")

    for name in ("_read_csv", "_read_npz", "_read_parquet"):
        monkeypatch.setattr(read_module, name, fail)


@pytest.mark.parametrize("suffix", [".csv", ".npz", ".parquet"])
def test_second_read_is_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    path = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        write(path, "label,sequence\na,X Y\nb,Y\n")
    elif suffix == ".npz":
        npz(path, x=np.ones((2, 3, 2)), y=np.array([1, 0]), lengths=np.array([3, 1]))
    else:
        parquet(path, sequence=[[1.5, 2.5], [3.5]], label=[0, 1])
    first = read(path)
    assert (tmp_path / f"train{suffix}.lightsum" / "meta.json").is_file() and cache_folder(path).is_dir()
    assert isinstance(first.values, np.memmap)  # even the first read returns the cache's memory maps
    fail_parsing(monkeypatch)
    second = read(path)
    assert isinstance(second.values, np.memmap) and not second.values.flags.writeable
    assert isinstance(second.lengths, np.memmap) and isinstance(second.label_codes, np.memmap)
    for name in ("values", "lengths", "label_codes"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert (second.label_names, second.tokens, second.path) == (first.label_names, first.tokens, str(path))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left


def test_cache_without_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "p.csv", "sequence\n1 2\n")
    read(path, labels="optional")
    assert sorted(p.name for p in cache_folder(path).iterdir()) == ["lengths.npy", "meta.json", "values.npy"]
    fail_parsing(monkeypatch)
    assert read(path, labels="optional").label_codes is None


def test_changed_source_or_options_rebuild(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1 2\n1,3\n")
    assert read(path).values[..., 0].tolist() == [[1, 2], [3, 0]]
    write(path, "label,sequence\n0,7 8\n1,9\n")  # same size: the modification time tells
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert read(path).values[..., 0].tolist() == [[7, 8], [9, 0]]
    tokens = read(path, steps="tokens")
    assert tokens.tokens == ("7", "8", "9")
    meta = json.loads((cache_folder(path) / "meta.json").read_text())
    assert meta["options"]["steps"] == "tokens" and meta["tokens"] == ["7", "8", "9"]
    assert read(path).steps == "numbers"


@pytest.mark.parametrize("damage", ["truncated", "missing", "json", "shape"])
def test_damaged_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1 2\n1,3\n")
    read(path)
    folder = cache_folder(path)
    if damage == "truncated":
        data = (folder / "values.npy").read_bytes()
        (folder / "values.npy").write_bytes(data[:-4])
    elif damage == "missing":
        (folder / "lengths.npy").unlink()
    elif damage == "json":
        (folder / "meta.json").write_text("{not json")
    else:
        np.save(folder / "values.npy", np.zeros((2, 3, 1), dtype=np.float32))
    again = read(path)
    assert again.values[..., 0].tolist() == [[1, 2], [3, 0]] and isinstance(again.values, np.memmap)
    assert json.loads((folder / "meta.json").read_text())["shape"] == [2, 2, 1]


def test_unwritable_folder_reads_without_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1 2\n1,3\n")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as root, chmod would not stop writes
    file = read(path)
    assert not isinstance(file.values, np.memmap) and file.lengths.tolist() == [2, 1]
    assert not cache_folder(path).exists()


def test_failing_cache_write_reads_without_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1 2\n1,3\n")

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    file = read(path)
    assert file.lengths.tolist() == [2, 1] and not cache_folder(path).exists()
    assert list(tmp_path.iterdir()) == [path]  # the partial folder is removed


def test_cache_false_neither_reads_nor_writes_it(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1 2\n1,3\n")
    read(path, cache=False)
    assert not cache_folder(path).exists()


def _finished_partial(tmp_path: Path, path: Path) -> Path:
    """A second process's finished cache folder, not yet renamed into place."""
    partial = tmp_path / ".partial"
    partial.mkdir()
    for item in cache_folder(path).iterdir():
        (partial / item.name).write_bytes(item.read_bytes())
    return partial


def test_losing_the_race_keeps_the_winners_cache(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1 2\n1,3\n")
    read(path)
    partial = _finished_partial(tmp_path, path)
    winner = (cache_folder(path) / "values.npy").stat().st_ino
    assert cache_module._install(partial, cache_folder(path), lambda: object()) is True
    assert (cache_folder(path) / "values.npy").stat().st_ino == winner


def test_a_stale_cache_is_replaced(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1 2\n1,3\n")
    read(path)
    partial = _finished_partial(tmp_path, path)
    (partial / "marker").write_text("mine")
    assert cache_module._install(partial, cache_folder(path), lambda: None) is True
    assert (cache_folder(path) / "marker").read_text() == "mine" and not partial.exists()
    assert [p.name for p in tmp_path.iterdir() if "stale" in p.name] == []


def test_orphaned_partial_folders_are_removed(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1\n1,2\n")
    old, new = tmp_path / ".a.csv.lightsum-partial-old", tmp_path / ".a.csv.lightsum-partial-new"
    old.mkdir()
    new.mkdir()
    os.utime(old, (1, 1))
    read(path)
    assert not old.exists() and new.exists()


def test_a_file_named_like_the_cache_is_left_alone(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "label,sequence\n0,1\n1,2\n")
    cache_folder(path).write_text("the user's own file")
    file = read(path)
    assert file.lengths.tolist() == [1, 1] and cache_folder(path).read_text() == "the user's own file"


def test_npz_converted_a_block_of_rows_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """float64, big-endian and Fortran-ordered arrays convert to the same float32 across blocks."""
    monkeypatch.setattr(table, "_CHUNK_ROWS", 3)
    x = np.random.default_rng(0).standard_normal((10, 4, 2))
    y = np.arange(10) % 2
    for name, stored in [("c", x), ("be", x.astype(">f8")), ("f", np.asfortranarray(x)), ("i", (x * 9).astype(int))]:
        file = read(npz(tmp_path / f"{name}.npz", x=stored, y=y), cache=False)
        np.testing.assert_array_equal(file.values, stored.astype(np.float32))
    x[7, 2, 1] = 1e300
    refused(
        npz(tmp_path / "big.npz", x=x, y=y), r"array 'x', row 7, step 2, feature 1: the value is 1e\+300, too large"
    )
