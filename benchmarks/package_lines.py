"""Line counts of the dynunc package per subpackage (the floor and each wing), now and at a
git revision, and the import graph between its parts (from the modules' import lines).

    python benchmarks/package_lines.py [--against REV]
"""
import argparse
import ast
import os
import subprocess
import sys
from collections import defaultdict
from typing import Dict, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files_at(rev: str) -> Dict[str, str]:
    """{path: text} of dynunc/*.py at `rev` (None: the working tree)."""
    if rev is None:
        found = {}
        for folder, _, names in os.walk(os.path.join(ROOT, "dynunc")):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        found[os.path.relpath(path, ROOT)] = f.read()
        return found
    names = subprocess.run(["git", "-C", ROOT, "ls-tree", "-r", "--name-only", rev, "dynunc"], capture_output=True,
                           text=True, check=True).stdout.split()
    return {n: subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{n}"], capture_output=True, text=True,
                              check=True).stdout for n in names if n.endswith(".py")}


def part(path: str) -> str:
    """'floor' or the subpackage of dynunc/<sub>/... (the floor's folder lists apart), the root apart."""
    pieces = path.split("/")
    if path == "dynunc/__init__.py":
        return "dynunc (root: Recorder, select, loaded lazily)"
    return "floor" if len(pieces) == 2 else pieces[1]


def module(path: str) -> str:
    name = path[:-3].replace("/", ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def graph(files: Dict[str, str]) -> Dict[str, Set[str]]:
    """part -> the parts its modules import (dynunc itself left out)."""
    modules = {module(p): part(p) for p in files}
    edges = defaultdict(set)
    for path, text in files.items():
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dynunc"):
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("dynunc")]
            for name in names:
                if name in modules and name != "dynunc" and modules[name] != part(path):
                    edges[part(path)].add(modules[name])
                    break
    return edges


def table(files: Dict[str, str]) -> Dict[str, Dict[str, int]]:
    out = defaultdict(dict)
    for path, text in sorted(files.items()):
        out[part(path)][path] = len(text.splitlines())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="REV", help="also count the package at this git revision")
    args = ap.parse_args()
    now = table(files_at(None))
    before = table(files_at(args.against)) if args.against else {}
    print("| part | modules | lines now |" + (f" lines at {args.against} |" if before else ""))
    print("|---|---|---:|" + ("---:|" if before else ""))
    for name in sorted(set(now) | set(before)):
        mods = ", ".join(f"{os.path.basename(p)[:-3] if not p.endswith('__init__.py') else '__init__'} "
                         f"{n}" for p, n in now.get(name, {}).items())
        row = f"| {name} | {mods} | {sum(now.get(name, {}).values()):,} |"
        if before:
            row += f" {sum(before.get(name, {}).values()):,} |"
        print(row)
    total_now = sum(sum(v.values()) for v in now.values())
    print(f"| total | | {total_now:,} |" + (f" {sum(sum(v.values()) for v in before.values()):,} |" if before else ""))
    print("\nimports between the parts (floor = dynunc/*.py):")
    for name, targets in sorted(graph(files_at(None)).items()):
        print(f"  {name} -> {', '.join(sorted(targets))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
