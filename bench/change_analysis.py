"""Bench: change analysis at monorepo scale, path-graph engine against a naive scan.

Generates (in memory) a monorepo of 10,000 packages and 100,000 files, each package declared by a
`ferry-package.yaml` manifest and one in six a ferry.yaml service, then times random commits of 1-20
changed files through `PathGraphEngine` (prefix-trie of the globs, reverse-dependency index) and
`ScanEngine` (every changed file against every glob of every package, as change analysis did before),
checks both give identical answers (every affected package and its reason), and prints one line:

    change_analysis: naive/path-graph = 1234.5x (path-graph 0.08 ms/commit, naive 98.7 ms/commit, ...)

Run: `python bench/change_analysis.py` (or `make bench`); `--help` for sizes. Exits 1 if answers differ.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.change_engines import (  # noqa: E402
    Package,
    PathGraphEngine,
    ScanEngine,
    merge_packages,
    parse_package_manifest,
)
from workflows.types import ServiceSpec  # noqa: E402

AREAS = ("services", "libs", "platform", "tools", "data", "web")
GOAL_RATIO = 20.0
GOAL_MS = 500.0


@dataclass
class Monorepo:
    """What the path-graph engine needs of a repository: manifest texts, file paths, ferry.yaml services."""

    manifests: dict[str, str]
    files: list[str]
    services: list[ServiceSpec]


def generate(packages: int = 10_000, files: int = 100_000, seed: int = 4) -> Monorepo:
    """A reproducible monorepo: `packages` package directories holding `files` files in total.

    Most manifests own their whole directory (`**`, the default); some own parts of it (`src/**`), some
    use a wildcard inside (`**/*.py`), and some also own a file under a shared root folder through a
    root-anchored glob (`/proto/shared/*/<name>.proto`), so the index has wildcards to fall back on.
    Dependencies point to earlier packages (a DAG): see `_dependencies`.
    """
    rng = random.Random(seed)
    dirs = [f"{AREAS[i % len(AREAS)]}/team{(i // len(AREAS)) % 100:02d}/pkg{i:05d}" for i in range(packages)]
    per, extra = divmod(files, packages)
    manifests: dict[str, str] = {}
    all_files: list[str] = []
    for i, d in enumerate(dirs):
        name = f"pkg{i:05d}"
        count = per + (1 if i < extra else 0)
        own = ["BUILD.bazel", "ferry-package.yaml", "README.md"]
        own += [f"src/mod{k}.py" if k % 3 else f"src/{name}/deep/part{k}.py" for k in range(max(0, count - 5))]
        own += ["tests/test_main.py", "tests/data/case.json"]
        style = rng.random()
        lines = [f"name: {name}"]
        if style < 0.10:
            lines.append('paths: ["src/**", "BUILD.bazel", "tests/**"]')
        elif style < 0.15:
            lines.append('paths: ["**/*.py", "**/*.json", "BUILD.bazel"]')
        elif style < 0.20:
            lines.append(f'paths: ["**", "/proto/shared/*/{name}.proto"]')
            own[-1] = f"/proto/shared/{AREAS[i % len(AREAS)]}/{name}.proto"  # keeps the file count exact
        deps: set[str] = set()
        for j in _dependencies(i, rng):
            deps.add(f"pkg{j:05d}")
        if deps:
            lines.append(f"depends_on: [{', '.join(sorted(deps))}]")
        manifests[f"{d}/ferry-package.yaml"] = "\n".join(lines) + "\n"
        all_files += [f.lstrip("/") if f.startswith("/") else f"{d}/{f}" for f in own[:count]]
    services = [
        ServiceSpec(name=f"pkg{i:05d}", paths=[f"{dirs[i]}/**"], image=f"pkg{i:05d}")
        for i in range(packages)
        if _tier(i) == "app" and i % 6 == 1
    ]
    return Monorepo(manifests, all_files, services)


def _tier(i: int) -> str:
    """1% core libraries, a third libraries, the rest applications (what services are made of)."""
    if i % 100 == 0:
        return "core"
    return "lib" if i % 3 == 0 else "app"


def _dependencies(i: int, rng: random.Random) -> list[int]:
    """Earlier packages `i` depends on, layered as in a real monorepo: apps use a few nearby libraries and
    sometimes a core one, libraries rarely use another library, core libraries build on each other."""
    if i == 0:
        return []
    tier = _tier(i)
    cores = list(range(0, i, 100))
    libs = [j for j in range(max(0, i - 300), i) if _tier(j) == "lib"]
    out: list[int] = []
    if tier == "core":
        out += rng.sample(cores, min(len(cores), rng.choice((0, 1))))
    elif tier == "lib":
        out += rng.sample(libs, min(len(libs), rng.choice((0, 0, 1))))
        if rng.random() < 0.1:
            out.append(rng.choice(cores))
    else:
        out += rng.sample(libs, min(len(libs), rng.choice((1, 2, 3))))
        if rng.random() < 0.2:
            out.append(rng.choice(cores))
    return out


def commits(repo: Monorepo, count: int, seed: int = 7) -> list[list[str]]:
    """Random commits of 1-20 changed files: existing files, some new ones, some outside every package."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        changed = set(rng.sample(repo.files, rng.randint(1, 20)))
        if rng.random() < 0.2:
            changed.add(f"docs/notes/n{rng.randrange(1000)}.md")  # owned by nobody
        if rng.random() < 0.2:
            changed.add(rng.choice(repo.files).rsplit("/", 1)[0] + "/new_file.py")
        out.append(sorted(changed))
    return out


def load(repo: Monorepo) -> list[Package]:
    """Parse every manifest and merge in ferry.yaml's services, as the activity does."""
    return merge_packages(repo.services, (parse_package_manifest(p, t) for p, t in repo.manifests.items()))


def run(packages: int = 10_000, files: int = 100_000, n_commits: int = 30, repeat: int = 5) -> tuple[str, bool]:
    """The result line, and whether both engines answered identically."""
    repo = generate(packages, files)
    started = time.perf_counter()
    graph = PathGraphEngine(load(repo))
    index_s = time.perf_counter() - started
    naive = ScanEngine(graph.packages.values())
    work = commits(repo, n_commits)

    started = time.perf_counter()
    for _ in range(repeat):
        fast_answers = [graph.affected_packages(c) for c in work]
    fast_ms = (time.perf_counter() - started) * 1000 / (repeat * len(work))

    started = time.perf_counter()
    slow_answers = [naive.affected_packages(c) for c in work]
    slow_ms = (time.perf_counter() - started) * 1000 / len(work)

    same = fast_answers == slow_answers and all(
        graph.affected(c) == naive.affected(c) for c in work[: min(5, len(work))]
    )
    affected = sum(len(a) for a in fast_answers) / len(work)
    ratio = slow_ms / fast_ms if fast_ms else float("inf")
    goals = "met" if ratio >= GOAL_RATIO and fast_ms < GOAL_MS else "NOT met"
    line = (
        f"change_analysis: naive/path-graph = {ratio:.1f}x (path-graph {fast_ms:.2f} ms/commit, "
        f"naive {slow_ms:.1f} ms/commit, {len(work)} commits of 1-20 files, {len(graph.packages):,} packages, "
        f"{len(repo.files):,} files, {affected:.0f} affected packages/commit on average, index built in "
        f"{index_s:.1f} s, answers {'identical' if same else 'DIFFERENT'}; goal >={GOAL_RATIO:.0f}x and "
        f"<{GOAL_MS:.0f} ms/commit: {goals})"
    )
    return line, same


def main() -> int:
    """Print the one result line; exit 1 when the engines disagree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--commits", type=int, default=30)
    args = parser.parse_args()
    line, same = run(args.packages, args.files, args.commits)
    print(line)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
