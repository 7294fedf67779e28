"""SequenceFiles, the files source: labels and classes, stratified splits, the schema measured on the
training split only, batches padded to their own longest sequence, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import toy_sequences, write_sequences

from lightsum import SumClassifier
from lightsum.data import SequenceFiles
from lightsum.data.batches import NATURAL, Batch


def files(path: Path, stage: str = "fit", **kwargs) -> SequenceFiles:
    data = SequenceFiles(train_path=str(path), **kwargs)
    data.schema()  # as the CLI's link does before setup
    data.setup(stage)
    return data


@pytest.fixture
def numbers_csv(tmp_path: Path) -> Path:
    return write_sequences(tmp_path / "train.csv", toy_sequences(600))


def test_stratified_split_holds_each_class_in_proportion_and_is_a_pure_function_of_the_seed(numbers_csv: Path) -> None:
    data = files(numbers_csv)
    rows = data.splits()
    labels = data.labels_of(data.read("train_path"), "train_path").numpy()
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(600))  # disjoint, complete
    for cls in (0, 1):
        total = int((labels == cls).sum())
        assert int((labels[rows["val"]] == cls).sum()) == round(total * 0.2)
        assert int((labels[rows["test"]] == cls).sum()) == round(total * 0.2)
    again, other = files(numbers_csv).splits(), files(numbers_csv, seed=1).splits()
    assert all(np.array_equal(rows[s], again[s]) for s in rows)
    assert not np.array_equal(rows["val"], other["val"])


def test_a_split_without_a_class_is_refused_with_the_counts(tmp_path: Path) -> None:
    data = toy_sequences(40, minority=0.0)  # one sequence of class 1: the validation split gets none
    path = write_sequences(tmp_path / "few.csv", data)
    with pytest.raises(
        ValueError,
        match=r"the val split would hold no sequence of class '1' \(1 in the file; train/val/test get 1/0/0\)",
    ):
        files(path)
    data["y"][2] = 1  # two: the validation and test splits get one each, training none
    path = write_sequences(tmp_path / "two.csv", data)
    with pytest.raises(
        ValueError,
        match=r"the train split would hold no sequence of class '1' \(2 in the file; train/val/test get 0/1/1\)",
    ):
        files(path, val_fraction=0.3, test_fraction=0.3)


def test_the_minority_is_measured_and_the_class_balance_is_handed_over(numbers_csv: Path) -> None:
    data = files(numbers_csv, sampling="oversample")
    negatives, positives = data.class_balance.counts
    assert positives < negatives  # the toy's minority is class 1
    assert data.epoch_sampler.minority_label == 1
    assert data.class_balance.served_positive_share == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    ("names", "positive", "classes"),
    [
        (("no", "yes"), "yes", ["no", "yes"]),
        (("fraud", "ok"), "fraud", ["ok", "fraud"]),
        (("False", "True"), None, ["false", "true"]),
    ],
)
def test_string_labels_and_positive_label(tmp_path: Path, names, positive, classes) -> None:
    path = write_sequences(tmp_path / "t.csv", toy_sequences(200), label_names=names)
    data = files(path, positive_label=positive)
    assert data.classes() == classes and data.schema()["classes"] == classes
    ones = data.labels_of(data.read("train_path"), "train_path").numpy()
    raw = np.char.lower(np.array(names)[toy_sequences(200)["y"]])  # booleans are read case-blind
    assert np.array_equal(ones, (raw == classes[1].lower()).astype(np.uint8))


def test_labels_needing_a_name_one_class_and_three_values_are_refused(tmp_path: Path) -> None:
    path = write_sequences(tmp_path / "t.csv", toy_sequences(200), label_names=("cat", "dog"))
    with pytest.raises(ValueError, match="has labels 'cat' and 'dog': name class 1 with --data.positive_label"):
        files(path)
    with pytest.raises(ValueError, match="data.positive_label='cow' is not a label"):
        files(path, positive_label="cow")
    one = toy_sequences(50)
    one["y"][:] = 0
    with pytest.raises(ValueError, match=r"holds one class only \('0'\)"):
        files(write_sequences(tmp_path / "one.csv", one))
    three = toy_sequences(50)
    three["y"][:3] = [0, 1, 2]
    with pytest.raises(ValueError, match="holds 3 label values"):
        files(write_sequences(tmp_path / "three.csv", three))


def test_number_statistics_come_from_the_training_split_only(tmp_path: Path) -> None:
    raw = toy_sequences(500, features=2)
    path = write_sequences(tmp_path / "t.npz", raw)
    data = files(path)
    train = data.splits()["train"]
    steps = np.concatenate([raw["x"][i, : raw["lengths"][i]] for i in train]).astype(np.float64)
    schema = data.schema()
    assert schema["steps"] == "numbers" and schema["features"] == 2
    np.testing.assert_allclose(schema["mean"], steps.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(schema["std"], steps.std(0), rtol=1e-5)


def test_tokens_use_the_training_vocabulary_with_one_code_for_unseen_tokens(tmp_path: Path) -> None:
    raw = toy_sequences(300, steps="tokens")
    raw["x"][0][0] = "Z"  # row 0 is class 0; make sure it lands outside the training split below
    path = write_sequences(tmp_path / "t.csv", raw)
    data = files(path)
    in_train = 0 in set(data.splits()["train"].tolist())
    vocabulary = data.schema()["vocabulary"]
    assert ("Z" in vocabulary) == in_train and {"A", "C", "G", "T", "X"} <= set(vocabulary)
    data.setup("test")
    batch = data.test_set.__getitems__(list(range(len(data.test_set))))
    assert batch.x.dtype == torch.int64 and int(batch.x.min()) == 0  # padding
    assert int(batch.x.max()) <= len(vocabulary) + 1


def test_batches_are_padded_to_their_own_longest_sequence_and_validation_batches_carry_parts(numbers_csv: Path) -> None:
    data = files(numbers_csv)
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, Batch) and batch.weights is None and batch.parts is None
    assert batch.x.shape[1] == int(batch.lengths.max()) and batch.x.shape[2] == 1
    val = next(iter(data.val_dataloader()))
    assert isinstance(val, Batch) and bool((val.parts == NATURAL).all())
    assert float(val.weights.sum()) == pytest.approx(len(val.labels) / len(data.validation_set))


def test_a_predict_file_with_another_feature_count_is_refused(tmp_path: Path) -> None:
    train = write_sequences(tmp_path / "train.npz", toy_sequences(200, features=2))
    other = write_sequences(tmp_path / "new.npz", toy_sequences(20, features=3), labels=False)
    schema = files(train).schema()
    data = SequenceFiles(predict_path=str(other), schema=schema)
    with pytest.raises(
        ValueError, match=r"data.predict_path: .*new.npz has 3 feature\(s\) a step but the model was trained on 2"
    ):
        data.load_predict_file()


def test_predict_proba_reads_raw_sequences_as_training_did(tmp_path: Path) -> None:
    raw = toy_sequences(200)
    data = files(write_sequences(tmp_path / "t.npz", raw))
    model = SumClassifier(seq_len=None, schema=data.schema(), hidden_size=8).eval()
    batch = data.train_set.__getitems__([0, 1, 2])
    expected = torch.sigmoid(model(batch.x, batch.lengths))
    rows = data.splits()["train"][:3]
    ragged = [raw["x"][i, : raw["lengths"][i], 0] for i in rows]  # a list of 1-D arrays, of their own lengths
    torch.testing.assert_close(torch.from_numpy(model.predict_proba(ragged)), expected)
    padded = model.predict_proba(raw["x"][rows], lengths=raw["lengths"][rows])
    torch.testing.assert_close(torch.from_numpy(padded), expected)


def test_sets_read_the_files_memory_map_so_processes_share_one_copy(numbers_csv: Path) -> None:
    data = files(numbers_csv, placement="host")
    values = data.read("train_path").values
    assert isinstance(values, np.memmap)  # the cache beside the file, mapped read-only
    for split in (data.train_set, data.validation_set):
        assert split.x.data_ptr() == values.ctypes.data  # not a copy: splits index rows of the map
