"""Task registry, text-to-text formatting and loaders (fixtures + the real files when present)."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from peft_superpos.data import (
    DATA_DIR_ENV,
    STSB_TARGETS,
    TASK_NAMES,
    TASKS,
    get_task,
    load_task_split,
    read_split_rows,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
REAL_DATA = Path(os.environ.get("PEFT_SUPERPOS_TEST_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))

# (task, split) -> number of examples in the fixture files (MultiRC: answer options).
FIXTURE_SIZES = {
    ("qqp", "train"): 6,
    ("qqp", "validation"): 5,
    ("qnli", "train"): 5,
    ("qnli", "validation"): 5,
    ("mnli", "train"): 6,
    ("mnli", "validation"): 5,
    ("mnli", "validation_matched"): 5,
    ("mnli", "validation_mismatched"): 5,
    ("sst2", "train"): 6,
    ("sst2", "validation"): 5,
    ("stsb", "train"): 6,
    ("stsb", "validation"): 5,
    ("mrpc", "train"): 5,
    ("mrpc", "validation"): 5,
    ("cola", "train"): 6,
    ("cola", "validation"): 5,
    ("multirc", "train"): 7,
    ("multirc", "validation"): 7,
    ("rte", "train"): 6,
    ("rte", "validation"): 5,
    ("cb", "train"): 6,
    ("cb", "validation"): 5,
    ("copa", "train"): 5,
    ("copa", "validation"): 5,
    ("wic", "train"): 5,
    ("wic", "validation"): 5,
    ("boolq", "train"): 5,
    ("boolq", "validation"): 5,
}

# (task, split) -> (rows, label counts) from /work/shared/data/SOURCES.md and the official releases.
REAL_SIZES = {
    ("cb", "train"): (250, {0: 115, 1: 119, 2: 16}),
    ("cb", "validation"): (56, {0: 23, 1: 28, 2: 5}),
    ("copa", "train"): (400, {0: 195, 1: 205}),
    ("copa", "validation"): (100, {0: 55, 1: 45}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),
    ("rte", "validation"): (277, {0: 146, 1: 131}),
    ("mrpc", "train"): (3668, {0: 1194, 1: 2474}),
    ("mrpc", "validation"): (408, {0: 129, 1: 279}),
    ("cola", "train"): (8551, {0: 2528, 1: 6023}),
    ("cola", "validation"): (1043, {0: 322, 1: 721}),
    ("stsb", "train"): (5749, None),
    ("stsb", "validation"): (1500, None),
    ("sst2", "train"): (67349, {0: 29780, 1: 37569}),
    ("sst2", "validation"): (872, {0: 428, 1: 444}),
}


def test_registry_has_the_13_paper_tasks() -> None:
    assert TASK_NAMES == (
        "qqp",
        "qnli",
        "mnli",
        "sst2",
        "stsb",
        "mrpc",
        "cola",
        "multirc",
        "rte",
        "cb",
        "copa",
        "wic",
        "boolq",
    )
    with pytest.raises(TypeError):
        TASKS["new"] = TASKS["rte"]  # type: ignore[index]
    assert get_task("rte").benchmark == "super_glue"
    assert get_task("cola").benchmark == "glue"


@pytest.mark.parametrize("name", ["sst2", "sst-2", "SST-2", "Sst_2", " SST 2"])
def test_get_task_is_case_and_punctuation_insensitive(name: str) -> None:
    assert get_task(name) is TASKS["sst2"]


def test_get_task_aliases() -> None:
    assert get_task("STS-B").name == "stsb"
    assert get_task("MultiRC").name == "multirc"
    assert get_task(TASKS["cb"]) is TASKS["cb"]


def test_unknown_task_lists_known_tasks() -> None:
    with pytest.raises(ValueError, match="unknown task 'wsc'.*known tasks: QQP, QNLI, MNLI.*BoolQ"):
        get_task("wsc")


def test_label_words_and_choices() -> None:
    for task in TASKS.values():
        if task.name == "stsb":
            assert task.label_words is None
            assert task.choices == STSB_TARGETS
        else:
            assert task.label_words is not None and task.choices == task.label_words
            assert len(set(w.lower() for w in task.label_words)) == len(task.label_words)
    assert len(STSB_TARGETS) == 26
    assert STSB_TARGETS[0] == "0.0" and STSB_TARGETS[1] == "0.2" and STSB_TARGETS[-1] == "5.0"
    assert TASKS["rte"].label_words == ("entailment", "not_entailment")
    assert TASKS["mnli"].label_words == ("entailment", "neutral", "contradiction")
    assert TASKS["cb"].label_words == ("entailment", "contradiction", "neutral")


@pytest.mark.parametrize(
    ("score", "target"),
    [(0.0, "0.0"), (0.067, "0.0"), (3.8, "3.8"), (4.75, "4.8"), (2.5, "2.4"), (5.0, "5.0")],
)
def test_stsb_target_is_rounded_to_0_2(score: float, target: str) -> None:
    assert TASKS["stsb"].target_for(score) == target
    assert target in STSB_TARGETS


def test_format_uses_t5_style_templates() -> None:
    rte = TASKS["rte"].format({"premise": " A  dog runs. ", "hypothesis": "An animal runs.", "label": 0})
    assert rte == {
        "source": "rte sentence1: A dog runs. sentence2: An animal runs.",
        "target": "entailment",
        "label": 0,
    }
    copa = TASKS["copa"].format(
        {
            "premise": "It rained.",
            "choice1": "The street was wet.",
            "choice2": "It was dry.",
            "question": "effect",
            "label": 0,
        }
    )
    assert copa["source"] == (
        "copa choice1: The street was wet. choice2: It was dry. premise: It rained. question: effect"
    )
    assert copa["target"] == "choice1"
    multirc = TASKS["multirc"].format(
        {
            "paragraph": "<b>Sent 1: </b>Hi there.<br>",
            "question": "Who?",
            "answer": "Me",
            "idx": {"paragraph": 3, "question": 7, "answer": 9},
            "label": 1,
        }
    )
    assert multirc == {
        "source": "multirc question: Who? answer: Me paragraph: Sent 1: Hi there.",
        "target": "True",
        "label": 1,
        "group": "3-7",
    }
    stsb = TASKS["stsb"].format({"sentence1": "a", "sentence2": "b", "label": 3.25})
    assert stsb == {"source": "stsb sentence1: a sentence2: b", "target": "3.2", "label": 3.25}


def test_parse_prediction() -> None:
    rte = TASKS["rte"]
    assert rte.parse_prediction("entailment") == 0
    assert rte.parse_prediction("  Not_Entailment \n") == 1
    assert rte.parse_prediction("entail") is None
    assert rte.parse_prediction("") is None
    assert TASKS["boolq"].parse_prediction("true") == 1
    assert TASKS["copa"].parse_prediction("choice2") == 1
    stsb = TASKS["stsb"]
    assert stsb.parse_prediction(" 3.4") == pytest.approx(3.4)
    assert stsb.parse_prediction("7") == 5.0
    assert stsb.parse_prediction("-1.5") == 0.0
    for bad in ("three", "nan", "inf", ""):
        assert stsb.parse_prediction(bad) is None


@pytest.mark.parametrize(("name", "split"), sorted(FIXTURE_SIZES))
def test_fixture_splits(name: str, split: str) -> None:
    task = TASKS[name]
    ds = load_task_split(name, split, data_dir=FIXTURES)
    expected_columns = ["source", "target", "label"] + (["group"] if name == "multirc" else [])
    assert ds.column_names == expected_columns
    assert len(ds) == FIXTURE_SIZES[(name, split)]
    for example in ds:
        assert example["source"].startswith(name + " ")
        if task.is_regression:
            assert 0.0 <= example["label"] <= 5.0
            assert task.parse_prediction(example["target"]) == pytest.approx(example["label"], abs=0.1 + 1e-9)
        else:
            assert example["target"] == task.choices[example["label"]]
            assert task.parse_prediction(example["target"]) == example["label"]
    if not task.is_regression:
        assert len(set(ds["label"])) >= 2


def test_multirc_is_flattened_with_question_groups() -> None:
    ds = load_task_split("multirc", "train", data_dir=FIXTURES)
    assert Counter(ds["group"]) == {"0-0": 3, "0-1": 2, "1-2": 2}
    assert ds["label"] == [1, 0, 1, 1, 0, 1, 0]
    assert ds[0]["source"].startswith("multirc question: What did Anna buy? answer: A red bike paragraph: Sent 1:")


def test_glue_quotes_and_bom_are_kept_verbatim() -> None:
    sst2 = read_split_rows("sst2", "train", FIXTURES)
    assert sst2[5]["sentence"] == 'it never finds its " voice '
    mrpc = read_split_rows("mrpc", "train", FIXTURES)
    assert mrpc[2]["sentence1"] == '"We are pleased with the result," he said.'
    cola = read_split_rows("cola", "train", FIXTURES)
    assert cola[0] == {"sentence": "The cat chased the mouse.", "label": 1, "idx": 0}


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(FIXTURES))
    assert len(load_task_split("cb", "validation")) == 5


def test_rte_falls_back_to_glue_tsv(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "glue" / "RTE", tmp_path / "glue" / "RTE")
    glue = load_task_split("rte", "validation", data_dir=tmp_path)
    superglue = load_task_split("rte", "validation", data_dir=FIXTURES)
    assert glue.to_dict() == superglue.to_dict()


def test_task_folder_directly_under_data_dir(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "glue" / "SST-2", tmp_path / "SST-2")
    assert len(load_task_split("SST-2", "validation", data_dir=tmp_path)) == 5


def test_missing_file_names_expected_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_task_split("rte", "validation", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "superglue" / "RTE" / "val.jsonl") in message
    assert str(tmp_path / "glue" / "RTE" / "dev.tsv") in message
    with pytest.raises(FileNotFoundError, match="dev_mismatched.tsv"):
        load_task_split("mnli", "validation_mismatched", data_dir=tmp_path)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_task_split("cb", "test", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split 'validation_matched'"):
        load_task_split("rte", "validation_matched", data_dir=tmp_path)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_tsv_row_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "glue" / "SST-2" / "train.tsv", "sentence\tlabel\ngood \t1\nbad\t0\textra\n")
    with pytest.raises(ValueError, match=rf"{path}, line 3: expected 2 tab-separated fields, got 3"):
        load_task_split("sst2", "train", data_dir=tmp_path)
    _write(path, "sentence\tlabel\ngood \t1\n\nbad \tmaybe\n")
    with pytest.raises(ValueError, match=r"train.tsv, line 4: malformed SST-2 row: label 'maybe'"):
        load_task_split("sst2", "train", data_dir=tmp_path)


def test_malformed_jsonl_row_names_file_and_line(tmp_path: Path) -> None:
    good = '{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n'
    path = _write(tmp_path / "superglue" / "CB" / "val.jsonl", good + '{"premise": "p", "label": "neutral"}\n')
    with pytest.raises(ValueError, match=rf"{path}, line 2: malformed CB row: missing field 'hypothesis'"):
        load_task_split("cb", "validation", data_dir=tmp_path)
    _write(path, good + good + "{not json\n")
    with pytest.raises(ValueError, match=r"val.jsonl, line 3: invalid JSON"):
        load_task_split("cb", "validation", data_dir=tmp_path)
    _write(path, good.replace("entailment", "maybe"))
    with pytest.raises(ValueError, match=r"val.jsonl, line 1: malformed CB row: label 'maybe'"):
        load_task_split("cb", "validation", data_dir=tmp_path)


def test_hub_failure_asks_for_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=rf"no network.*Pass data_dir=.*{DATA_DIR_ENV}"):
        load_task_split("boolq", "validation")


def test_hub_rows_are_formatted(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake(path: str, config: str, split: str, **kwargs: object) -> list[dict]:
        calls.append((path, config, split))
        if config == "mnli":
            return [{"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0}]
        idx = {"paragraph": 0, "question": 4, "answer": 1}
        return [{"paragraph": "P.", "question": "Q?", "answer": "A", "idx": idx, "label": 0}]

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    ds = load_task_split("multirc", "validation")
    assert ds.to_list() == [
        {
            "source": "multirc question: Q? answer: A paragraph: P.",
            "target": "False",
            "label": 0,
            "group": "0-4",
        }
    ]
    mnli = load_task_split("mnli", "validation")
    assert mnli.to_list() == [{"source": "mnli hypothesis: H. premise: P.", "target": "neutral", "label": 1}]
    assert calls[-1] == ("nyu-mll/glue", "mnli", "validation_matched")


real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real GLUE/SuperGLUE files not found at {REAL_DATA}")


@real_data
@pytest.mark.parametrize(("name", "split"), sorted(REAL_SIZES))
def test_real_files(name: str, split: str) -> None:
    rows, counts = REAL_SIZES[(name, split)]
    ds = load_task_split(name, split, data_dir=REAL_DATA)
    assert len(ds) == rows
    if counts is None:  # STS-B
        assert 0.0 <= min(ds["label"]) and max(ds["label"]) <= 5.0
        assert set(ds["target"]) <= set(STSB_TARGETS)
    else:
        assert dict(Counter(ds["label"])) == counts


@real_data
def test_real_glue_rte_fallback(tmp_path: Path) -> None:
    (tmp_path / "glue").mkdir()
    (tmp_path / "glue" / "RTE").symlink_to(REAL_DATA / "glue" / "RTE")
    glue = load_task_split("rte", "validation", data_dir=tmp_path)
    superglue = load_task_split("rte", "validation", data_dir=REAL_DATA)
    assert len(glue) == 277
    assert glue["label"] == superglue["label"]


def test_first_examples_keeps_whole_multirc_questions() -> None:
    from peft_superpos.data import first_examples

    data = load_task_split("multirc", "validation", FIXTURES)
    groups = data["group"]
    assert len(set(groups)) >= 2
    first_group = [g for g in groups if g == groups[0]]
    assert len(first_group) >= 2  # the cut below falls inside a question
    cut = first_examples(data, 1)
    assert cut["group"] == first_group  # extended to the end of the question
    assert len(first_examples(data, len(first_group))) == len(first_group)
    assert len(first_examples(data, 10_000)) == len(data)
    sst2 = load_task_split("sst2", "validation", FIXTURES)
    assert first_examples(sst2, 2)["source"] == sst2["source"][:2]
