"""Change analysis engines: which packages, and so which services, does a set of changed files affect?

A monorepo with thousands of packages gets a commit every few minutes, and each one must only rebuild what
it can break. Two engines answer behind one interface (`ChangeEngine`):

- `PathGraphEngine` (here): packages own paths (globs), `depends_on` links them. Packages come from
  ferry.yaml's `services:`, and optionally from a `services.yaml` at the repository root or a
  `ferry-package.yaml` in each package's directory (see `parse_services_file`, `parse_package_manifest`).
  Everything is indexed once, so a commit costs about O(changed files x path depth + affected packages)
  whatever the number of packages.
- `BazelEngine` (activities/bazel.py): `bazel query rdeps(...)` on a Bazel workspace, mapped back to the
  same packages by path.

`ScanEngine` is the obvious engine (every changed file against every glob of every package): the reference
that tests and `bench/change_analysis.py` compare the fast one with.

Files that affect everything (root build files, CI configuration: `global_paths`) mark every service.
This module does no I/O: callers hand it packages and manifest texts.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

import yaml

from common.yamlsafe import load_yaml
from workflows.types import ServiceSpec

SERVICES_FILE = "services.yaml"
"""Optional file at the repository root declaring packages: `packages: {name: {paths, depends_on}}`."""

PACKAGE_MANIFEST = "ferry-package.yaml"
"""Optional per-directory manifest: `name`, `paths` (relative to its directory), `depends_on`."""

DEFAULT_GLOBAL_PATHS: tuple[str, ...] = (
    # Bazel's root files: they change how every package loads or builds.
    "WORKSPACE",
    "WORKSPACE.bazel",
    "WORKSPACE.bzlmod",
    "MODULE.bazel",
    "MODULE.bazel.lock",
    ".bazelrc",
    ".bazelversion",
    ".bazelignore",
    "BUILD",
    "BUILD.bazel",
    # Starlark macros and rules: who loads them is not visible from paths, so any change may affect anyone.
    "**/*.bzl",
    # CI configuration: the pipeline every service goes through.
    ".buildkite/**",
    ".tekton/**",
    ".github/workflows/**",
    ".gitlab-ci.yml",
)
"""Changed files matching one of these affect every service (ferry.yaml can replace the list)."""

SERVICE = "service"
LIBRARY = "library"


# --- path globs ---


def normalize_pattern(pattern: str) -> str:
    """The pattern as matched: anchored at the root, `./` and leading `/` dropped, `dir/` meaning `dir/**`."""
    pat = pattern.strip().removeprefix("./").lstrip("/")
    if pat.endswith("/"):
        pat += "**"
    return pat


def _translate(pat: str) -> str:
    """Regex source of a normalized pattern (see glob_match for the semantics)."""
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if pat.startswith("**", i):
            before_ok = i == 0 or pat[i - 1] == "/"
            after = pat[i + 2 : i + 3]
            if before_ok and after == "/":
                out.append("(?:[^/]*/)*")  # `**/`: zero or more whole directories
                i += 3
                continue
            if before_ok and after == "":
                out.append(".*")  # trailing `**`: everything below
                i += 2
                continue
            out.append("[^/]*")  # `a**b`: just a star, as in gitignore
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pat.find("]", i + 2)) != -1:
            body = pat[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a glob once; match it with `matches_path`."""
    return re.compile(_translate(normalize_pattern(pattern)))


@lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return compile_pattern(pattern)


def _prefixes(path: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`, `a/b/c`]: a pattern matching any of them owns the path."""
    parts = path.strip("/").split("/")
    return ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]


def matches_path(rx: re.Pattern[str], path: str) -> bool:
    """Does a compiled pattern own `path` (itself, or one of its parent directories)?"""
    return any(rx.fullmatch(p) for p in _prefixes(path))


def glob_match(pattern: str, path: str) -> bool:
    """Does repo-relative `path` fall under `pattern`?

    Semantics (gitignore-like, but always anchored at the repository root): `*` and `?` never cross `/`;
    `**/` matches zero or more directories, a trailing `/**` everything below, `[abc]`/`[!abc]` classes;
    a trailing `/` means "this directory". A pattern that matches a parent directory owns everything in it,
    so `services/api` and `services/api/**` are the same. Unlike gitignore, `*.md` matches top-level files
    only: ownership globs should say where they apply. PurePosixPath.match is not used because before
    Python 3.13 it has no `**` and matches from the right.
    """
    return matches_path(_glob_regex(pattern), path)


_WILDCARD = re.compile(r"[*?\[]")


class _Node:
    __slots__ = ("children", "owns", "below", "globs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.owns: list[int] = []  # a literal pattern ends here: this path and everything below it
        self.below: list[int] = []  # `<here>/**`: everything strictly below
        self.globs: list[tuple[re.Pattern[str], int]] = []  # wildcards after this literal prefix


class PathIndex:
    """Which owners' patterns match a path, without trying every pattern.

    A prefix trie of the literal leading segments of every pattern: a path walks down its own segments and
    collects the owners on the way, so a lookup costs O(path depth). Only a pattern with a wildcard before
    its end (`services/*/Dockerfile`, `**/BUILD`) is tried as a regex, and only on the paths that pass
    its literal prefix. Answers exactly as `glob_match` does.
    """

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, pattern: str, owner: int) -> None:
        """Index `pattern` as owned by `owner` (any int the caller maps back to a name)."""
        pat = normalize_pattern(pattern)
        if not pat:
            return  # an empty pattern owns nothing (as glob_match)
        parts = pat.split("/")
        node = self._root
        for i, part in enumerate(parts):
            if _WILDCARD.search(part):
                if i == len(parts) - 1 and part == "**":
                    node.below.append(owner)
                else:
                    node.globs.append((re.compile(_translate(pat)), owner))
                return
            node = node.children.setdefault(part, _Node())
        node.owns.append(owner)

    def match(self, path: str) -> list[int]:
        """Owners of `path`, each once, in no particular order."""
        parts = path.strip("/").split("/")
        n = len(parts)
        found: list[int] = []
        prefixes: list[str] | None = None
        node: _Node | None = self._root
        depth = 0
        while node is not None:
            found.extend(node.owns)
            if depth < n:
                found.extend(node.below)
            if node.globs:
                if prefixes is None:
                    prefixes = ["/".join(parts[:k]) for k in range(1, n + 1)]
                # A glob below this literal prefix needs at least one more segment than the prefix has.
                tail = prefixes[depth:]
                found.extend(owner for rx, owner in node.globs if any(rx.fullmatch(p) for p in tail))
            if depth == n:
                break
            node = node.children.get(parts[depth])
            depth += 1
        return list(dict.fromkeys(found)) if len(found) > 1 else found


# --- packages ---


@dataclass(frozen=True)
class Package:
    """A node of the change graph: a deployable service or a library (code others depend on)."""

    name: str
    paths: tuple[str, ...]
    depends_on: tuple[str, ...] = ()
    kind: str = LIBRARY
    source: str = "ferry.yaml"  # where it was declared, for error messages


class ManifestError(ValueError):
    """A services file or package manifest is malformed; the message names the file and the key."""


def packages_from_services(services: Iterable[ServiceSpec]) -> list[Package]:
    """ferry.yaml's services and libraries as packages."""
    return [Package(s.name, tuple(s.paths), tuple(s.depends_on), s.kind) for s in services]


def _str_list(value: Any, where: str, default: list[str] | None = None) -> list[str]:
    if value is None and default is not None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ManifestError(f"{where}: must be a list of non-empty strings")
    return value


def _mapping(text: str, source: str) -> dict[str, Any]:
    try:
        data = load_yaml(text, source)
    except yaml.YAMLError as e:
        raise ManifestError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: must be a mapping")
    return data


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")


def parse_services_file(text: str, source: str = SERVICES_FILE) -> list[Package]:
    """Packages of a root `services.yaml`; paths are globs relative to the repository root.

    ```yaml
    packages:
      base: {paths: ["libs/base/**"]}
      left: {paths: ["libs/left/**"], depends_on: [base]}
    ```
    """
    data = _mapping(text, source)
    _check_keys(data, {"packages"}, source)
    packages = data.get("packages") or {}
    if not isinstance(packages, dict):
        raise ManifestError(f"{source}: packages: must be a mapping of name -> {{paths, depends_on}}")
    out: list[Package] = []
    for name, spec in packages.items():
        where = f"{source}: packages.{name}"
        if not isinstance(spec, dict):
            raise ManifestError(f"{where}: must be a mapping with 'paths'")
        _check_keys(spec, {"paths", "depends_on"}, where)
        paths = _str_list(spec.get("paths"), f"{where}.paths")
        if not paths:
            raise ManifestError(f"{where}.paths: must name at least one path")
        deps = _str_list(spec.get("depends_on"), f"{where}.depends_on", default=[])
        out.append(Package(str(name), tuple(paths), tuple(deps), LIBRARY, source))
    return out


def parse_package_manifest(path: str, text: str) -> Package:
    """The package declared by `<dir>/ferry-package.yaml`.

    ```yaml
    name: left
    paths: ["**"]          # default; relative to the manifest's directory, "/x/**" from the root
    depends_on: [base]
    ```
    """
    data = _mapping(text, path)
    _check_keys(data, {"name", "paths", "depends_on"}, path)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ManifestError(f"{path}: name: must be a non-empty string")
    directory = path.rpartition("/")[0]
    own = []
    for pattern in _str_list(data.get("paths"), f"{path}: paths", default=["**"]):
        pattern = pattern.strip()
        if pattern.startswith("/"):
            own.append(pattern.lstrip("/"))
        elif ".." in pattern.split("/"):
            raise ManifestError(f"{path}: paths: {pattern!r} leaves the package; use '/...' for root paths")
        else:
            own.append(f"{directory}/{pattern.removeprefix('./')}" if directory else pattern)
    deps = _str_list(data.get("depends_on"), f"{path}: depends_on", default=[])
    return Package(name.strip(), tuple(own), tuple(deps), LIBRARY, path)


def merge_packages(services: Iterable[ServiceSpec], packages: Iterable[Package]) -> list[Package]:
    """ferry.yaml's services plus the packages of manifests, as one graph.

    Only ferry.yaml makes a package deployable (a service needs an image and Argo CD apps), so packages
    that only manifests declare are libraries. A manifest naming a ferry.yaml service adds paths and
    dependencies to it. A name declared by two manifests, or a dependency on a name nobody declares, is a
    ManifestError: either would silently leave services out of a release.
    """
    merged: dict[str, Package] = {p.name: p for p in packages_from_services(services)}
    declared: dict[str, str] = {}
    manifest_packages = list(packages)
    for p in manifest_packages:
        if p.name in declared:
            raise ManifestError(f"package {p.name!r} is declared twice: in {declared[p.name]} and in {p.source}")
        declared[p.name] = p.source
        base = merged.get(p.name)
        if base is None:
            merged[p.name] = Package(p.name, p.paths, p.depends_on, LIBRARY, p.source)
        else:
            merged[p.name] = Package(
                p.name,
                tuple(dict.fromkeys(base.paths + p.paths)),
                tuple(dict.fromkeys(base.depends_on + p.depends_on)),
                base.kind,
                base.source,
            )
    for p in manifest_packages:
        for dep in p.depends_on:
            if dep not in merged:
                raise ManifestError(f"{p.source}: depends_on: no package is named {dep!r}")
    return list(merged.values())


# --- the graph and its answers ---


def summary(files: Sequence[str]) -> str:
    """`changed: a (+2 more)`: the first file of a reason and how many others."""
    more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
    return f"changed: {files[0]}{more}"


def global_reason(files: Sequence[str]) -> str:
    """Reason of a service affected only because a global path changed."""
    return f"{summary(files)}, a global path: affects every service"


class ChangeEngine(Protocol):
    """Maps changed files to the affected deployable services, sorted, with a reason for each."""

    def affected(self, changed_files: list[str]) -> tuple[list[str], dict[str, str]]:
        """(sorted service names, service -> human reason)."""
        ...


class _Graph:
    """Names, kinds and the reverse-dependency index shared by the engines."""

    def __init__(self, packages: Iterable[Package]) -> None:
        by_name: dict[str, Package] = {}
        for p in packages:
            by_name[p.name] = p  # a later declaration replaces an earlier one, as in a dict
        self.packages = by_name
        self.names = sorted(by_name)
        self.services = [n for n in self.names if by_name[n].kind == SERVICE]
        self.dependents = reverse_dependencies(by_name.values())

    def propagate(self, seeds: Mapping[str, str]) -> dict[str, str]:
        """Seeds plus everyone depending on them, transitively, each with the shortest chain as its reason."""
        return propagate(seeds, self.dependents)

    def result(self, reasons: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        affected = sorted(n for n in reasons if n in self.packages and self.packages[n].kind == SERVICE)
        return affected, {n: reasons[n] for n in affected}


def reverse_dependencies(packages: Iterable[Package]) -> dict[str, list[str]]:
    """name -> the packages that depend on it, sorted (so answers never depend on declaration order)."""
    dependents: dict[str, list[str]] = {}
    for p in packages:
        for dep in p.depends_on:
            dependents.setdefault(dep, []).append(p.name)
    for names in dependents.values():
        names.sort()
    return dependents


MAX_CHAIN_SHOWN = 8
"""Longer dependency chains are shortened in reasons: `a -> b -> ... (+N more) -> root`."""


def propagate(seeds: Mapping[str, str], dependents: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Breadth-first over "who depends on me": the reason names the shortest chain back to a real change.

    Each package keeps a pointer to the one it was reached from, so a reason costs at most MAX_CHAIN_SHOWN
    steps however deep the graph is (copying whole chains would be quadratic on a 10,000-package chain).
    """
    reason = dict(seeds)
    queue = deque(sorted(reason))
    parent: dict[str, str | None] = dict.fromkeys(reason)
    root: dict[str, str] = {name: name for name in reason}
    depth: dict[str, int] = dict.fromkeys(reason, 0)
    while queue:
        current = queue.popleft()
        for dependent in dependents.get(current, ()):
            if dependent in parent:
                continue
            parent[dependent] = current
            root[dependent] = root[current]
            depth[dependent] = depth[current] + 1
            chain = _chain(current, depth[dependent], parent, root[current])
            reason[dependent] = f"depends on {chain} ({reason[root[current]]})"
            queue.append(dependent)
    return reason


def _chain(start: str, length: int, parent: Mapping[str, str | None], root: str) -> str:
    """`start -> its parent -> ... -> root` (the changed package), shortened past MAX_CHAIN_SHOWN names."""
    if length > MAX_CHAIN_SHOWN:
        shown, tail = MAX_CHAIN_SHOWN - 2, [f"... (+{length - MAX_CHAIN_SHOWN + 1} more)", root]
    else:
        shown, tail = length, []
    names: list[str] = []
    node: str | None = start
    while node is not None and len(names) < shown:
        names.append(node)
        node = parent[node]
    return " -> ".join(names + tail)


class PathGraphEngine:
    """Packages own globs and depend on each other: the engine for any repository, Bazel or not.

    Built once per package set: a `PathIndex` of every package's globs, one of the global paths, and the
    reverse-dependency index. `affected_packages` then costs O(changed files x path depth + affected).
    """

    name = "paths"

    def __init__(self, packages: Iterable[Package], global_paths: Sequence[str] | None = None) -> None:
        self._graph = _Graph(packages)
        self._index = PathIndex()
        for i, name in enumerate(self._graph.names):
            for pattern in self._graph.packages[name].paths:
                self._index.add(pattern, i)
        self.global_paths = tuple(DEFAULT_GLOBAL_PATHS if global_paths is None else global_paths)
        self._globals = PathIndex()
        for pattern in self.global_paths:
            self._globals.add(pattern, 0)

    @classmethod
    def from_services(
        cls,
        services: Iterable[ServiceSpec],
        packages: Iterable[Package] = (),
        global_paths: Sequence[str] | None = None,
    ) -> PathGraphEngine:
        """The engine of ferry.yaml's services, plus packages read from manifests if any."""
        return cls(merge_packages(services, packages), global_paths)

    @property
    def packages(self) -> Mapping[str, Package]:
        """Every package of the graph by name."""
        return self._graph.packages

    def owners(self, path: str) -> list[str]:
        """Packages whose globs match `path`, sorted."""
        names = self._graph.names
        return sorted(names[i] for i in self._index.match(path))

    def global_changes(self, changed_files: Sequence[str]) -> list[str]:
        """The changed files that affect every service."""
        return [f for f in changed_files if self._globals.match(f)]

    def direct(self, changed_files: Sequence[str]) -> dict[str, list[str]]:
        """Package -> the changed files it owns (in the order given)."""
        names = self._graph.names
        owned: dict[str, list[str]] = {}
        for f in changed_files:
            for i in self._index.match(f):
                owned.setdefault(names[i], []).append(f)
        return owned

    def seed(
        self,
        changed_files: Sequence[str],
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Every affected package with its reason: direct owners, then `extra` seeds, then the global
        paths (every service), then dependents transitively."""
        seeds = {name: summary(files) for name, files in self.direct(changed_files).items()}
        for name, why in (extra or {}).items():
            seeds.setdefault(name, why)
        hits = self.global_changes(changed_files)
        if hits:
            why = global_reason(hits)
            for name in self._graph.services:
                seeds.setdefault(name, why)
        return self._graph.propagate(seeds)

    def affected_packages(self, changed_files: Sequence[str]) -> dict[str, str]:
        """Every affected package, libraries included, with its reason."""
        return self.seed(changed_files)

    def result(self, reasons: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        """The deployable services among affected packages, sorted, with their reasons."""
        return self._graph.result(reasons)

    def affected(self, changed_files: list[str]) -> tuple[list[str], dict[str, str]]:
        """ChangeEngine: the affected services and why."""
        return self.result(self.affected_packages(changed_files))


class ScanEngine:
    """The obvious engine: every changed file against every glob of every package, every time.

    What change analysis did before the path index; kept as the reference the fast engine must agree with
    (tests) and as the baseline of bench/change_analysis.py. Globs are compiled once, so what is measured
    is the scan, not regex compilation.
    """

    name = "scan"

    def __init__(self, packages: Iterable[Package], global_paths: Sequence[str] | None = None) -> None:
        self._packages = sorted(packages, key=lambda p: p.name)
        self._compiled = [(p, [compile_pattern(g) for g in p.paths if normalize_pattern(g)]) for p in self._packages]
        globals_ = DEFAULT_GLOBAL_PATHS if global_paths is None else global_paths
        self._globals = [compile_pattern(g) for g in globals_ if normalize_pattern(g)]

    def affected_packages(self, changed_files: Sequence[str]) -> dict[str, str]:
        """Every affected package with its reason (same answer as PathGraphEngine.affected_packages)."""
        prefixes = {f: _prefixes(f) for f in changed_files}

        def owns(patterns: list[re.Pattern[str]], f: str) -> bool:
            return any(rx.fullmatch(p) for rx in patterns for p in prefixes[f])

        seeds: dict[str, str] = {}
        for package, patterns in self._compiled:
            owned = [f for f in changed_files if owns(patterns, f)]
            if owned:
                seeds[package.name] = summary(owned)
        hits = [f for f in changed_files if owns(self._globals, f)]
        if hits:
            for package in self._packages:
                if package.kind == SERVICE:
                    seeds.setdefault(package.name, global_reason(hits))
        # Rebuilt on every call, as the scan always did: nothing is indexed ahead.
        return propagate(seeds, reverse_dependencies(self._packages))

    def affected(self, changed_files: list[str]) -> tuple[list[str], dict[str, str]]:
        """ChangeEngine: the affected services and why."""
        reasons = self.affected_packages(changed_files)
        kinds = {p.name: p.kind for p in self._packages}
        affected = sorted(n for n in reasons if kinds.get(n) == SERVICE)
        return affected, {n: reasons[n] for n in affected}
