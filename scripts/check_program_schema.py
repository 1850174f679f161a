#!/usr/bin/env python3
"""Checks docs/program.schema.json: it is a valid JSON Schema, every bundled program
validates against it, and a few malformed programs do not."""
import copy
import json
import pathlib
import sys

import jsonschema

root = pathlib.Path(__file__).resolve().parent.parent
schema = json.loads((root / "docs/program.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)

programs = sorted(root.glob("examples/**/program.json"))
if not programs:
    sys.exit("no example programs found")
for path in programs:
    errors = list(validator.iter_errors(json.loads(path.read_text())))
    if errors:
        sys.exit(f"{path}: {errors[0].message} at {list(errors[0].absolute_path)}")

# A program over structured inputs: a number, a category, missing flags, ranges and `in`.
structured = {
    "format": "loopai.program/1",
    "task": "tickets",
    "inputs": [
        {"name": "subject", "path": "/subject", "type": "text", "required": False},
        {"name": "lines", "path": "/lines", "type": "number", "required": False, "default": 10},
        {"name": "priority", "path": "/priority", "type": "category", "required": False},
    ],
    "features": [
        {"name": "lines.num", "op": "number", "input": "lines"},
        {"name": "lines.z", "op": "scale", "input": "lines", "mean": 10, "std": 4, "clip": 8},
        {"name": "lines.bins", "op": "bins", "input": "lines", "edges": [5, 20]},
        {"name": "priority.cat", "op": "one_hot", "input": "priority", "values": ["low", "high"]},
        {"name": "priority.missing", "op": "missing", "input": "priority"},
    ],
    "decide": {"op": "first", "steps": [
        {"op": "rules", "rules": [
            {"when": {"all": [{"feature": "priority.cat", "in": ["high"]},
                              {"feature": "lines.num", "ge": 5, "lt": 20}]},
             "then": "urgent", "confidence": 0.9}]},
        {"op": "linear", "inputs": ["lines.z", "lines.bins", "priority.cat", "priority.missing"],
         "classes": ["normal", "urgent"], "link": "sigmoid", "weights": [1, 0, 0, 1, 0, 2, 1, -1],
         "bias": [0]},
    ]},
    "output": {"kind": "label", "labels": ["normal", "urgent"]},
}
errors = list(validator.iter_errors(structured))
if errors:
    sys.exit(f"structured program: {errors[0].message} at {list(errors[0].absolute_path)}")
bad = copy.deepcopy(structured)
bad["decide"]["steps"][0]["rules"][0]["when"]["all"][0]["in"] = [3]
if validator.is_valid(bad):
    sys.exit("the schema accepts an `in` condition with a number")
bad = copy.deepcopy(structured)
bad["features"][1]["std"] = 0
if validator.is_valid(bad):
    sys.exit("the schema accepts a `scale` feature with std 0")

good = json.loads(programs[0].read_text())
mutations = {
    "unknown top-level key": lambda p: p.update(surprise=1),
    "unknown feature op": lambda p: p["features"][0].update(op="nope"),
    "wrong format": lambda p: p.update(format="loopai.program/2"),
    "rule confidence above 1": lambda p: p["decide"]["steps"][0]["rules"][0].update(confidence=2),
}
for what, mutate in mutations.items():
    bad = copy.deepcopy(good)
    mutate(bad)
    if validator.is_valid(bad):
        sys.exit(f"the schema accepts a program with an {what}")
print(f"program schema: {len(programs)} example(s) valid, {len(mutations)} malformed refused")
