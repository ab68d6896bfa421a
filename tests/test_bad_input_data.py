"""Data a user may get wrong, each one line that says what to fix: GLUE files that are not
UTF-8 text or hold a score that is not a number, split fractions out of range, and CIFAR's
batch files extracted next to (not into) the folder torchvision reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from data_files import trust_written_files, write_cifar10, write_cifar100
from torchvision.datasets import CIFAR10, CIFAR100

from aligned.config import ConfigError
from aligned.data import glue
from aligned.data.cifar import CIFARDataModule
from aligned.data.digits import DigitsDataModule
from aligned.data.glue import GlueDataModule, find_task
from aligned.data.imagenet import ImageFolderDataModule

# --- GLUE files -------------------------------------------------------------------------------

SST2 = b"sentence\tlabel\nit is good .\t1\n"
STSB = b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def stsb_row(score: bytes) -> bytes:
    fields = b"0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tA jet."
    return fields + b"\t" + score + b"\n"


@pytest.mark.parametrize("content, where", [
    (SST2 + b"caf\xe9 au lait\t0\n", r"line 3 has the byte 0xe9"),  # Latin-1, not UTF-8
    (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), r"line 1 has "),
])
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, content, where):
    path = tmp_path / "train.tsv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))} is not UTF-8 text \({where}"
                                          r".*GLUE's SST-2 files are UTF-8 TSV"):
        glue.read_tsv(path, find_task("sst2"))


def test_a_data_module_on_a_latin1_dev_file_stops_before_tokenising(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_bytes(SST2)
    (folder / "dev.tsv").write_bytes(SST2 + b"na\xefve\t1\n")
    module = GlueDataModule("sst2", tokenizer="never-loaded", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(folder / 'dev.tsv'))} is not UTF-8"):
        module.setup("validate")


@pytest.mark.parametrize("score", [b"five", b"3,8", b"nan", b"inf"])
def test_an_stsb_score_that_is_not_a_number_names_the_line(tmp_path, score):
    path = tmp_path / "dev.tsv"
    path.write_bytes(STSB + stsb_row(b"4.25") + stsb_row(score))
    with pytest.raises(ConfigError, match=rf"dev.tsv, line 3: the STS-B score "
                                          rf"'{score.decode()}' is not a number"):
        glue.read_tsv(path, find_task("stsb"))


def test_stsb_scores_that_are_numbers_are_read_as_floats(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(STSB + stsb_row(b"4.25") + stsb_row(b"0"))
    assert glue.read_tsv(path, find_task("stsb")).labels == [4.25, 0.0]


def test_a_field_too_long_for_a_tsv_is_not_csvs_traceback(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(SST2 + b"x" * 200_000 + b"\t1\n")
    with pytest.raises(ConfigError, match=r"train.tsv, line 3: field larger than field limit"):
        glue.read_tsv(path, find_task("sst2"))


@pytest.mark.parametrize("kwargs, message", [
    ({"train_subset": 0.5}, r"data.train_subset is a number of training examples, a positive "
                            r"integer \(or null for all of them\); got 0.5"),
    ({"train_subset": 0}, "data.train_subset is a number of training examples"),
    ({"max_length": 0}, "data.max_length must be a positive integer, got 0"),
])
def test_glue_sizes_out_of_range_are_rejected_when_built(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GlueDataModule("sst2", tokenizer="never-loaded", **kwargs)


# --- split fractions --------------------------------------------------------------------------

OUT_OF_RANGE = [0, 0.0, 1, 1.5, -0.1, "0.2", True]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize("key", ["val_fraction", "test_fraction"])
def test_digits_fractions_out_of_range_name_the_key_and_the_range(key, value):
    with pytest.raises(ConfigError, match=rf"data.{key} must be a fraction strictly between 0 "
                                          rf"and 1 .*got {re.escape(repr(value))}\."):
        DigitsDataModule(**{key: value})


@pytest.mark.parametrize("val, test, small", [(0.5, 0.5, "train 0"), (0.002, 0.2, "val 4"),
                                              (0.2, 0.003, "test 6")])
def test_digits_fractions_that_leave_a_split_without_every_class_are_rejected(val, test, small):
    with pytest.raises(ConfigError, match=rf"split the 1797 digits into .*{small}.* every split "
                                          "needs at least 10 .one per class."):
        DigitsDataModule(val_fraction=val, test_fraction=test)


def test_digits_fractions_in_range_split_as_asked():
    module = DigitsDataModule(val_fraction=0.1, test_fraction=0.3)
    module.setup()
    sizes = {name: len(split) for name, split in module.splits.items()}
    assert sizes == {"train": 1077, "val": 180, "test": 540}


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_imagenet_val_fraction_out_of_range_names_the_key_and_the_range(tmp_path, value):
    with pytest.raises(ConfigError, match=r"data.val_fraction must be a fraction strictly "
                                          r"between 0 and 1"):
        ImageFolderDataModule(data_dir=str(tmp_path), val_fraction=value)


@pytest.mark.parametrize("value", [0, 0.1, 50_000, -5, True])
def test_cifar_val_size_out_of_range_says_it_is_a_number_of_images(tmp_path, value):
    with pytest.raises(ConfigError, match=r"data.val_size is the number of training images held "
                                          r"out for validation, an integer between 1 and 49999"):
        CIFARDataModule(data_dir=str(tmp_path), download=False, val_size=value)


@pytest.mark.slow
def test_train_py_with_a_zero_val_fraction_prints_one_line_and_exits_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "train.py", "+data.val_fraction=0", "logger=none",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: data.val_fraction must be a fraction strictly between 0 and 1 (the "
                      "share of the images in that split), got 0."]


# --- CIFAR files outside their folder ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("variant, dataset, write", [("cifar10", CIFAR10, write_cifar10),
                                                     ("cifar100", CIFAR100, write_cifar100)])
def test_batch_files_directly_in_data_dir_are_told_where_to_move(tmp_path, monkeypatch, variant,
                                                                  dataset, write):
    write(tmp_path)
    folder = tmp_path / dataset.base_folder
    trust_written_files(monkeypatch, dataset, folder)
    for path in folder.iterdir():  # as if the archive's files had been extracted without it
        path.rename(tmp_path / path.name)
    folder.rmdir()
    module = CIFARDataModule(variant=variant, data_dir=str(tmp_path), download=False,
                             val_size=10, num_workers=0)
    with pytest.raises(ConfigError) as raised:
        module.setup()
    message = str(raised.value)
    assert f"The files sit directly in {tmp_path}, but torchvision reads them from its " \
           f"subfolder {dataset.base_folder}/: move them there" in message
    assert "folder above" not in message  # data_dir is right; the files are misplaced
    # Doing what the message says makes the same module load.
    command = re.search(r"\((cd .+)\)\.$", message).group(1)
    subprocess.run(command, shell=True, check=True)
    module.setup()
    assert len(module.splits["train"]) + len(module.splits["val"]) == len(dataset(str(tmp_path)))


def test_data_dir_set_to_the_batches_folder_names_the_folder_above(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    trust_written_files(monkeypatch, CIFAR10, folder)
    module = CIFARDataModule(data_dir=str(folder), download=False, val_size=10)
    with pytest.raises(ConfigError, match=rf"set data.data_dir={re.escape(str(tmp_path))}\.$"):
        module.setup()
