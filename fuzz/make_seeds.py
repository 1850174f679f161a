#!/usr/bin/env python3
"""Writes the seed corpus of the load_and_execute target into seeds/load_and_execute/.

Each seed is [split: u16 LE][program JSON][input JSON]; see fuzz_targets/load_and_execute.rs.
Run from anywhere: python3 fuzz/make_seeds.py
"""
import base64
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds", "load_and_execute")
TEXT = {"name": "text", "path": "/text", "type": "text", "max_bytes": 256, "on_oversize": "truncate"}
LABELS = {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.6}
CLEAN = [{"name": "clean", "from": "text", "steps": [
    {"op": "nfkc"}, {"op": "lowercase"}, {"op": "replace", "kind": "url", "with": " U "},
    {"op": "replace", "kind": "email", "with": " E "}, {"op": "replace", "kind": "number", "with": " N "},
    {"op": "collapse_whitespace"}, {"op": "truncate", "max_bytes": 64}]}]


def program(features, decide, inputs=None, output=None, preprocess=None):
    p = {"format": "loopai.program/1", "task": "t", "inputs": inputs or [TEXT],
         "features": features, "output": output or LABELS}
    if decide is not None:
        p["decide"] = decide
    if preprocess is not None:
        p["preprocess"] = preprocess
    return p


def packed(values):
    return "base64:" + base64.b64encode(struct.pack("<%df" % len(values), *values)).decode()


KW = {"name": "kw", "op": "keywords", "source": "clean", "terms": ["free", "win"], "whole_words": True}
RE = {"name": "re", "op": "regex", "source": "text", "pattern": "[$£]\\d", "mode": "count"}
UP = {"name": "up", "op": "stat", "source": "text", "stat": "upper_ratio"}
AMT = {"name": "amt", "op": "number", "input": "amount"}
AMOUNT = {"name": "amount", "path": "/amount", "type": "number", "required": False, "default": 1}
W = {"name": "w", "op": "word_ngrams", "source": "clean", "n": [1, 2], "hash": {"bits": 2, "seed": 0}}
C = {"name": "c", "op": "char_ngrams", "source": "clean", "n": [2, 3], "within_words": True,
     "hash": {"bits": 2, "seed": 1}, "weighting": "log1p", "normalize": "l2"}
V = {"name": "v", "op": "word_ngrams", "source": "clean", "n": [1, 1], "vocabulary": ["free", "win", "N"],
     "weighting": "binary"}
RULES = {"op": "rules", "rules": [
    {"name": "r", "when": {"all": [{"feature": "kw", "gt": 0}, {"not": {"feature": "re", "eq": 0}}]},
     "then": "spam", "confidence": 0.9},
    {"when": {"any": [{"feature": "up", "ge": 0.5}, {"always": True}]}, "then": "ham", "confidence": 0.7}]}
LINEAR = {"op": "linear", "inputs": ["w", "c", "up"], "classes": ["ham", "spam"], "link": "sigmoid",
          "weights": packed([0.5, -0.5, 1.0, -1.0, 0.25, 0.75, -0.25, 2.0, 1.5]), "bias": [0.1]}
SOFTMAX = {"op": "linear", "inputs": ["v", "amt"], "classes": ["spam", "ham"], "link": "softmax",
           "weights": [1, -1, 0.5, 0, -1, 1, 0.1, -0.1], "bias": [0, 0], "temperature": 2, "min_confidence": 0.55}
BAYES = {"op": "naive_bayes", "inputs": ["v"], "classes": ["spam", "ham"], "class_log_prior": [-1, -0.5],
         "feature_log_prob": [-1, -3, -1, -3, -2, -2]}
TREE = {"op": "tree", "inputs": ["amt", "up"], "classes": ["spam", "ham"], "feature": [0, -1, 1, -1, -1],
        "threshold": [10, 0, 0.5, 0, 0], "left": [1, 0, 3, 0, 0], "right": [2, 0, 4, 0, 0],
        "value": [0, 0, 1, 3, 0, 0, 2, 1, 5, 1]}
EXTRACT = {"kind": "extract", "source": "text", "abstain_below": 0.5, "fields": [
    {"name": "amount", "pattern": "\\$([0-9.]+)", "type": "number"},
    {"name": "who", "pattern": "(?P<n>[A-Z]\\w+)", "group": "n", "required": False}]}

SEEDS = {
    "rules": (program([KW, RE, UP], RULES, preprocess=CLEAN), {"text": "WIN a FREE prize, $5 now!"}),
    "linear_hashed": (program([W, C, UP], LINEAR, preprocess=CLEAN), {"text": "free entry to win http://x.io"}),
    "hybrid": (program([KW, RE, UP, W, C], {"op": "first", "steps": [RULES, LINEAR]}, preprocess=CLEAN),
               {"text": "Ok see you at 7 café"}),
    "vote": (program([V, AMT, UP], {"op": "vote", "min_confidence": 0.5, "members": [
        {"weight": 2, "decide": SOFTMAX}, {"weight": 1, "decide": BAYES}, {"weight": 1, "decide": TREE}]},
        inputs=[TEXT, AMOUNT], preprocess=CLEAN), {"text": "win 100 free", "amount": 42}),
    "extract": (program([], None, output=EXTRACT), {"text": "Bob paid $12.50 to Alice"}),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (prog, inp) in SEEDS.items():
        p = json.dumps(prog, separators=(",", ":"), ensure_ascii=False).encode()
        i = json.dumps(inp, ensure_ascii=False).encode()
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(struct.pack("<H", len(p)) + p + i)
    with open(os.path.join(HERE, "..", "examples", "spam", "program.json"), "rb") as f:
        spam = f.read()
    if len(spam) < 65536:
        with open(os.path.join(OUT, "spam_example"), "wb") as f:
            f.write(struct.pack("<H", len(spam)) + spam + b'{"text": "URGENT! You won a \xc2\xa3900 prize"}')


if __name__ == "__main__":
    main()
