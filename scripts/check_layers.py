#!/usr/bin/env python3
"""Check that the modules of a crate import each other one way, and list the largest files.

Usage: scripts/check_layers.py [CRATE_SRC_DIR ...]   (default: loopai-core/src)

A module is a source file; for the top-level check, a directory's `mod.rs` together with its
children is one module. Test code is left out: files declared under `#[cfg(test)]` and inline
`#[cfg(test)]` items (`mod tests { ... }`, test-only functions). References are found by path:
`crate::a::b`, `use crate::{a::{b, c}, d}`, and `super::x`.

Prints every import cycle (strongly connected component) at both levels and the non-test line
count of the largest files; exits 1 if there is a cycle or a file's non-test part is over
`--max-lines` (default 1200).
"""

import argparse
import os
import re
import sys


TOKENS = re.compile(
    r"""//[^\n]*"""  # line and doc comments
    r"""|/\*.*?\*/"""  # block comments
    r"""|(?<![\w"])b?r(?P<hashes>#*)".*?"(?P=hashes)"""  # raw strings
    r'|b?"(?:\\.|[^"\\])*"'  # strings
    r"""|b?'(?:\\.|\\u\{[0-9a-fA-F]+\}|[^'\\])'""",  # character literals (not lifetimes)
    re.S,
)


def raw_no_strings(raw):
    """Comments, strings and character literals blanked in one left-to-right pass, lines kept,
    so that braces and paths inside them do not count."""

    def blank(m):
        token = m.group(0)
        filler = "' '" if token.endswith("'") else ("" if token.startswith("/") else '""')
        return filler + "\n" * token.count("\n")

    return TOKENS.sub(blank, raw)


def item_end(text, start):
    """Index just after the item starting at `start`: its `{...}` block or its `;`."""
    i = start
    while i < len(text) and text[i] not in "{;":
        i += 1
    if i >= len(text) or text[i] == ";":
        return i + 1
    depth = 0
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def without_test_code(text, keep_lines=True):
    """The text with every `#[cfg(test)]` item blanked (newlines kept) or removed."""
    out = []
    pos = 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < pos:
            continue
        end = item_end(text, m.end())
        out.append(text[pos : m.start()])
        out.append("\n" * text[m.start() : end].count("\n") if keep_lines else "")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def test_only_children(text):
    """Names of child modules declared as `#[cfg(test)] mod x;`."""
    return set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;", text))


def expand_use_tree(tree, prefix):
    """`a::{b, c::{d}}` -> [prefix+a::b, prefix+a::c::d]."""
    tree = tree.strip()
    paths = []
    depth = 0
    brace = tree.find("{")
    if brace == -1:
        name = tree.split(" as ")[0].strip()
        return [prefix + [s for s in name.split("::") if s]]
    head = [s for s in tree[:brace].split("::") if s]
    inner = tree[brace + 1 : tree.rfind("}")]
    parts, cur = [], ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for p in parts:
        if p.strip():
            paths.extend(expand_use_tree(p, prefix + head))
    return paths


USE = re.compile(r"\b(?P<vis>pub(?:\([a-z]+\))?\s+)?use\s+(?P<tree>[^;]*);", re.S)


def use_paths(tree, self_path, children):
    """Absolute module paths of a use tree, or [] for an external crate."""
    tree = re.sub(r"\s+", " ", tree).strip()
    head = tree.split("::")[0].strip()
    if head == "crate":
        base, rest = [], tree.split("::", 1)[1]
    elif head == "super":
        base, rest = self_path[:-1], tree.split("::", 1)[1]
    elif head == "self":
        base, rest = self_path, tree.split("::", 1)[1]
    elif head.split("{")[0].strip() in children:
        base, rest = self_path, tree
    else:
        return []
    return expand_use_tree(rest, list(base))


def references(text, self_path, children):
    """Module paths (lists of segments) this text refers to."""
    refs = []
    for m in USE.finditer(text):
        refs.extend(use_paths(m.group("tree"), self_path, children))
    body = USE.sub("", text)
    for m in re.finditer(r"\b(crate|super)((?:\s*::\s*\w+)+)", body):
        base = [] if m.group(1) == "crate" else self_path[:-1]
        segs = [s.strip() for s in m.group(2).split("::") if s.strip()]
        refs.append(list(base) + segs)
    return refs


def reexports(text, self_path, children):
    """Names a module re-exports (`pub use`, `pub(crate) use`) -> the path they come from."""
    out = {}
    for m in USE.finditer(text):
        if not m.group("vis"):
            continue
        tree = re.sub(r"\s+", " ", m.group("tree"))
        for path in use_paths(tree, self_path, children):
            out[path[-1]] = path
        # `x as y`: the alias is the exported name.
        for orig, alias in re.findall(r"(\w+) as (\w+)", tree):
            for path in use_paths(tree, self_path, children):
                if path[-1] == orig:
                    out[alias] = path
    return out


def load_crate(src):
    modules = {}  # tuple(path) -> non-test text
    children = {}  # tuple(path) -> names of its child modules
    sizes = {}  # file -> non-test line count

    def visit(path_segs, file_path):
        raw = open(file_path, encoding="utf-8").read()
        text = raw_no_strings(raw)
        tests = test_only_children(text)
        code = without_test_code(text)
        modules[tuple(path_segs)] = code
        children[tuple(path_segs)] = set()
        kept = without_test_code(raw_no_strings(raw), keep_lines=False)
        sizes[os.path.relpath(file_path, src)] = len(kept.rstrip("\n").split("\n"))
        base_dir = os.path.dirname(file_path)
        stem = os.path.splitext(os.path.basename(file_path))[0]
        if stem not in ("lib", "mod", "main"):
            base_dir = os.path.join(base_dir, stem)
        for m in re.finditer(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;", code, flags=re.M):
            name = m.group(1)
            if name in tests:
                continue
            for cand in (os.path.join(base_dir, name + ".rs"), os.path.join(base_dir, name, "mod.rs")):
                if os.path.exists(cand):
                    children[tuple(path_segs)].add(name)
                    visit(path_segs + [name], cand)
                    break

    visit([], os.path.join(src, "lib.rs"))
    return modules, sizes, children


def resolve(modules, exports, ref, depth=0):
    """The module a path lands in, following re-exports (`crate::Clock` -> the clock module)."""
    for n in range(len(ref), -1, -1):
        mod = tuple(ref[:n])
        if mod in modules:
            if n < len(ref) and depth < 20:
                target = exports.get(mod, {}).get(ref[n])
                if target is not None and target != list(ref[: n + 1]):
                    return resolve(modules, exports, target + list(ref[n + 1 :]), depth + 1)
            return mod
    return None


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def name(mod):
    return "::".join(mod) or "crate"


def check(src, max_lines):
    modules, sizes, children = load_crate(src)
    exports = {m: reexports(code, list(m), children[m]) for m, code in modules.items()}
    edges = {}
    for mod, code in modules.items():
        for ref in references(code, list(mod), children[mod]):
            target = resolve(modules, exports, ref)
            if target is None or target == mod or target == ():
                continue
            # A parent declaring and re-exporting its children is containment, not a dependency.
            if target[: len(mod)] == mod:
                continue
            edges.setdefault(mod, set()).add(target)
    failed = False
    file_cycles = sccs(edges)
    top = {}
    for a, targets in edges.items():
        for b in targets:
            if a and b and a[0] != b[0]:
                top.setdefault((a[0],), set()).add((b[0],))
    top_cycles = sccs(top)
    print(f"== {src}")
    for label, cycles in (("file", file_cycles), ("top-level module", top_cycles)):
        if cycles:
            failed = True
            for c in cycles:
                print(f"cycle between {label}s: " + ", ".join(name(m) for m in c))
                for m in c:
                    inside = sorted(name(t) for t in (edges if label == "file" else top).get(m, ()) if t in c)
                    print(f"    {name(m)} -> {', '.join(inside)}")
        else:
            print(f"no import cycle between {label}s ({len(modules) if label == 'file' else len(top)} modules)")
    print("largest non-test parts of files:")
    for f, n in sorted(sizes.items(), key=lambda kv: -kv[1])[:10]:
        flag = "  OVER" if n > max_lines else ""
        print(f"    {n:5d}  {f}{flag}")
        if n > max_lines:
            failed = True
    return failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src", nargs="*", default=["loopai-core/src"])
    ap.add_argument("--max-lines", type=int, default=1200)
    args = ap.parse_args()
    failed = False
    for src in args.src:
        failed |= check(src, args.max_lines)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
