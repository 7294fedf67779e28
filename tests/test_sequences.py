"""lightsum.data.sequences: users' sequence files (CSV, text, .npy), digit checks, and the model/data fit check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lightsum.data.sequences import check_digits, check_fits, read_sequences

DIGITS = np.random.default_rng(7).integers(0, 10, size=(300, 30))


def write_csv(path: Path, rows: np.ndarray, comma: bool = True) -> Path:
    path.write_text("".join((",".join if comma else "".join)(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("form", ["comma", "string", "npy"])
def test_read_sequences_forms(form: str, tmp_path: Path) -> None:
    if form == "npy":
        np.save(path := tmp_path / "x.npy", DIGITS.astype(np.int64))
    else:
        path = write_csv(tmp_path / "x.csv", DIGITS, comma=form == "comma")
        path.write_text(path.read_text().replace(",", " , ", 5) + "\n\n")  # spaces, trailing blank lines
    if form == "string":  # Windows line endings and a byte-order mark, as some editors save CSV
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    digits = read_sequences(path, 30)
    assert digits.dtype == torch.uint8 and torch.equal(digits, torch.as_tensor(DIGITS, dtype=torch.uint8))


BAD_FILES = [
    ("short.csv", "1,2,3\n", "line 1: expected 30 digits, got 3"),
    ("letter.csv", "0" * 30 + "\n" + "0" * 29 + "x\n", "line 2: 'x' is not a digit"),
    ("negative.csv", ",".join(["1"] * 29 + ["-1"]) + "\n", "line 1: '-1' is not a digit"),
    ("two_digit.csv", ",".join(["1"] * 29 + ["10"]) + "\n", "line 1: '10' is not a digit"),
    ("gap.csv", "0" * 30 + "\n\n" + "0" * 30 + "\n", "line 2: expected 30 digits, got 0"),
    ("header.csv", "digits\n" + "0" * 30 + "\n", "line 1: expected 30 digits, got 6"),
    ("empty.csv", "", "holds no sequences"),
]


@pytest.mark.parametrize(("name", "text", "named"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_text_files_name_the_line(name: str, text: str, named: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=named):
        read_sequences(tmp_path / name, 30)


@pytest.mark.parametrize(
    ("array", "named"),
    [
        (np.zeros((4, 29), dtype=np.int64), r"shape \(N, 30\), got \(4, 29\)"),
        (np.zeros((4, 30), dtype=np.float32), "integers 0-9, got dtype float32"),
        (np.vstack([np.zeros((2, 30), int), np.full((1, 30), 12)]), "row 2, column 0: 12 is not a digit 0-9"),
        (np.zeros((0, 30), dtype=np.int64), "holds no sequences"),
    ],
)
def test_bad_npy_files_name_the_row(array: np.ndarray, named: str, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ValueError, match=named):
        read_sequences(tmp_path / "x.npy", 30)


def test_npy_suffix_in_any_case(tmp_path: Path) -> None:
    with open(tmp_path / "x.NPY", "wb") as f:  # np.save(path) would append ".npy"
        np.save(f, DIGITS)
    assert torch.equal(read_sequences(tmp_path / "x.NPY", 30), torch.as_tensor(DIGITS, dtype=torch.uint8))


def test_empty_and_cut_short_npy_files(tmp_path: Path) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=f"data.predict_path: {tmp_path / 'empty.npy'} is empty"):
        read_sequences(tmp_path / "empty.npy", 30)
    np.save(tmp_path / "whole.npy", DIGITS)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "whole.npy").read_bytes()[:200])
    with pytest.raises(ValueError, match=f"{tmp_path / 'cut.npy'} is not a readable .npy array"):
        read_sequences(tmp_path / "cut.npy", 30)


def test_missing_binary_and_pickled_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file not found"):
        read_sequences(tmp_path / "nope.csv", 30)
    with pytest.raises(ValueError, match=f"{tmp_path} is not a file"):
        read_sequences(tmp_path, 30)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="not a text file"):
        read_sequences(tmp_path / "bin.csv", 30)
    np.save(tmp_path / "obj.npy", np.array([[object()]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        read_sequences(tmp_path / "obj.npy", 30)


@pytest.mark.parametrize(
    ("digits", "message"),
    [
        (np.zeros((3, 29), dtype=int), r"digits must have shape \(N, 30\), got \(3, 29\)"),
        (np.zeros(30, dtype=int), r"shape \(N, 30\), got \(30,\)"),
        (np.zeros((2, 30), dtype=bool), "integers 0-9, got dtype bool"),
        (torch.zeros(2, 30), "integers 0-9, got dtype torch.float32"),
        (
            np.vstack([np.zeros((1, 30), int), np.r_[np.zeros(29, int), -1][None]]),
            "row 1, column 29: -1 is not a digit 0-9",
        ),
    ],
)
def test_check_digits_names_the_problem(digits: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_digits(digits, 30)
    assert torch.equal(check_digits(DIGITS, 30), torch.as_tensor(DIGITS))


def test_check_fits_names_the_key_both_values_and_the_fix() -> None:
    check_fits({"seq_len": 30, "layout": "flat"}, {"seq_len": 30, "layout": "flat", "batch_size": 5})
    check_fits({"seq_len": 30}, {"seq_len": None})  # nothing to compare
    with pytest.raises(
        ValueError,
        match="the model reads layout='flat' but data.layout is 'sequence': use --data.layout flat with x.ckpt",
    ):
        check_fits({"seq_len": 30, "layout": "flat"}, {"seq_len": 30, "layout": "sequence"}, " with x.ckpt")


def text_forms(rows: np.ndarray) -> dict[str, bytes]:
    """The same sequences written each way a user's file may write them."""
    strings = ["".join(map(str, r)) for r in rows]
    commas = [",".join(map(str, r)) for r in rows]
    return {
        "strings": "".join(s + "\n" for s in strings).encode(),
        "commas, CRLF, no last line end": "\r\n".join(commas).encode(),
        "mixed forms and spaces": "".join(
            (s if i % 3 else " " + c.replace(",", " , ", 2)) + "\n" for i, (s, c) in enumerate(zip(strings, commas))
        ).encode(),
        "BOM and trailing blank lines": b"\xef\xbb\xbf" + "".join(s + "\n" for s in strings).encode() + b"\n \n\n",
    }


@pytest.mark.parametrize("block", [7, 100, 4 * 2**20])
@pytest.mark.parametrize("form", list(text_forms(DIGITS[:2])))
def test_text_files_read_alike_whatever_the_block_size(
    form: str, block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightsum.data import sequences

    monkeypatch.setattr(sequences, "_TEXT_BLOCK", block)  # 7: lines longer than a block, in the checks' words
    (path := tmp_path / "x.csv").write_bytes(text_forms(DIGITS)[form])
    if block == 7:
        with pytest.raises(ValueError, match="line 1: expected 30 digits, got a line of over 7 bytes: '"):
            read_sequences(path, 30)
        return
    assert torch.equal(read_sequences(path, 30), torch.as_tensor(DIGITS, dtype=torch.uint8))


@pytest.mark.parametrize("block", [64, 4 * 2**20])
def test_a_blank_line_is_refused_wherever_the_next_sequence_is(
    block: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightsum.data import sequences

    monkeypatch.setattr(sequences, "_TEXT_BLOCK", block)
    lines = ["0" * 30] * 3 + [""] * 5 + ["1" * 30] * 3  # blank lines 4-8, over two blocks of 64 bytes
    (path := tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 4: expected 30 digits, got 0: ''$"):
        read_sequences(path, 30)


def test_a_binary_file_without_line_ends_is_not_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightsum.data import sequences

    monkeypatch.setattr(sequences, "_TEXT_BLOCK", 64)
    (path := tmp_path / "x.csv").write_bytes(bytes(range(128, 256)) * 2)
    with pytest.raises(ValueError, match="is not a text file"):
        read_sequences(path, 30)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", ">i8", "uint8"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_integer_types_and_orders(dtype: str, order: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightsum.data import sequences

    monkeypatch.setattr(sequences, "_NPY_VALUES", 1000)  # several pieces
    np.save(path := tmp_path / "x.npy", np.asarray(DIGITS, dtype=dtype, order=order))
    digits = read_sequences(path, 30)
    assert digits.is_contiguous() and torch.equal(digits, torch.as_tensor(DIGITS, dtype=torch.uint8))


@pytest.mark.parametrize("order", ["C", "F"])
def test_the_first_bad_npy_value_by_row_in_either_order(
    order: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightsum.data import sequences

    monkeypatch.setattr(sequences, "_NPY_VALUES", 1000)
    bad = DIGITS.copy()
    bad[250, 0], bad[200, 29], bad[40, 3] = 10, 11, -1  # in Fortran order column 0 comes first
    np.save(path := tmp_path / "x.npy", np.asarray(bad, order=order))
    with pytest.raises(ValueError, match="row 40, column 3: -1 is not a digit 0-9$"):
        read_sequences(path, 30)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"\x93NUMPY\x09\x00" + b" " * 100, r"not a readable .npy array \(unknown format version 9.0\)"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i8'\n", r"not a readable .npy array \("),
        (b"3,4,5,6,7,8,9\n", r"not a readable .npy array \(the magic string is not correct"),
    ],
)
def test_damaged_npy_headers(raw: bytes, named: str, tmp_path: Path) -> None:
    (path := tmp_path / "x.npy").write_bytes(raw)
    with pytest.raises(ValueError, match=named):
        read_sequences(path, 30)
