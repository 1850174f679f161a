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
