"""The Bazel change engine: `bazel query rdeps(//..., <changed files>)`, mapped back to services by path.

In a Bazel workspace the BUILD files already hold the dependency graph, finer and more current than any
hand-written `depends_on`. The engine asks Bazel which targets depend on the changed files, takes the
packages of those targets, and gives each package to the service or library owning its BUILD file (the
path graph's globs). Changed files that are no Bazel target (outside every package, or a README no rule
names) are mapped by path, as the path-graph engine does; ferry.yaml's `depends_on` still applies on top,
so a declared dependency Bazel does not see still rebuilds. On a graph whose `depends_on` mirrors the
BUILD files both engines give the same answer.

Bazel runs as a CLI (`BazelRunner`): a server per workspace kept warm between analyses by default
(`--batch` optional), its output under `output_user_root`. Offline use (tests, air-gapped workers) needs
the external repositories Bazel's own tools refer to; see tests/bazel_stubs/README.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from activities.change_engines import PathGraphEngine
from activities.errors import BAD_REQUEST, NOT_CONFIGURED, fatal, retryable
from activities.gitrepo import redact

log = logging.getLogger(__name__)

WORKSPACE_FILES = ("WORKSPACE", "WORKSPACE.bazel", "MODULE.bazel")
"""Any of these at the root makes a repository a Bazel workspace (for engine: auto)."""

BUILD_FILES = ("BUILD.bazel", "BUILD")  # Bazel prefers BUILD.bazel when both exist
INSTALL_HINT = "apt-get install bazel-bootstrap on Debian/Ubuntu, or bazelisk"

# Characters allowed in a file label here. Bazel allows a few more, but these need no quoting in a query and
# cover real source trees; a file with any other character is mapped by path instead.
_LABEL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+=,@~-")
# Download failures are the network's fault, not the commit's: worth a retry.
_NETWORK_HINTS = ("error downloading", "unknown host", "connection refused", "timed out", "failed to fetch")


class BazelRunner:
    """Runs `bazel query` in a workspace and classifies its failures.

    `output_user_root` keeps Bazel's install and output bases out of the worker's home; `startup_flags` and
    `query_flags` are added to every call (e.g. `--override_repository=...` for an offline worker). In
    server mode (the default) each workspace gets a Bazel server that stays warm for `max_idle_secs`
    (Bazel's default when None), so a second query skips the JVM start and the package loading.
    """

    def __init__(
        self,
        binary: str = "bazel",
        *,
        output_user_root: Path | None = None,
        startup_flags: Sequence[str] = (),
        query_flags: Sequence[str] = (),
        batch: bool = False,
        max_idle_secs: int | None = None,
        timeout: float = 900.0,
    ) -> None:
        self.binary = binary
        self.output_user_root = output_user_root
        self.startup_flags = list(startup_flags)
        self.query_flags = list(query_flags)
        self.batch = batch
        self.max_idle_secs = max_idle_secs
        self.timeout = timeout
        self._servers: set[Path] = set()
        self._guard = threading.Lock()

    def available(self) -> bool:
        """Is the bazel binary on this worker?"""
        return shutil.which(self.binary) is not None

    def _startup(self) -> list[str]:
        flags = []
        if self.output_user_root is not None:
            flags.append(f"--output_user_root={self.output_user_root}")
        if self.batch:
            flags.append("--batch")
        elif self.max_idle_secs is not None:
            flags.append(f"--max_idle_secs={self.max_idle_secs}")
        return flags + self.startup_flags

    def query(self, workspace: Path, expression: str) -> list[str]:
        """Labels printed by `bazel query EXPRESSION --output=label` in `workspace`."""
        if not self.available():
            raise fatal(
                f"bazel: `{self.binary}` is not installed on this worker ({INSTALL_HINT}); install it or set "
                "change_analysis.engine to paths in ferry.yaml",
                NOT_CONFIGURED,
            )
        if self.output_user_root is not None:
            Path(self.output_user_root).mkdir(parents=True, exist_ok=True)
        # A file, not an argument: a big merge names thousands of files, more than one argv entry may hold.
        with tempfile.NamedTemporaryFile("w", prefix="ferry-query-", suffix=".txt", delete=False) as f:
            f.write(expression)
        cmd = [
            self.binary,
            *self._startup(),
            "query",
            "--noshow_progress",
            "--output=label",
            "--order_output=no",
            f"--query_file={f.name}",
            *self.query_flags,
        ]
        if not self.batch:
            with self._guard:
                self._servers.add(Path(workspace))
        try:
            proc = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise retryable(
                f"bazel: query in {workspace.name} took longer than {self.timeout:.0f} s; a retry finds the "
                "server warm, else raise the timeout (change_analysis.bazel) or use engine: paths"
            ) from None
        except OSError as e:
            raise fatal(f"bazel: cannot run `{self.binary}`: {e.strerror} ({INSTALL_HINT})", NOT_CONFIGURED) from None
        finally:
            os.unlink(f.name)
        if proc.returncode != 0:
            raise _classify(proc.returncode, proc.stderr, workspace)
        return [line.strip() for line in proc.stdout.splitlines() if line.strip()]

    def shutdown(self) -> None:
        """Stop the servers this runner started (tests; a worker leaves them to expire after max_idle_secs)."""
        with self._guard:
            servers, self._servers = sorted(self._servers), set()
        for workspace in servers:
            if workspace.is_dir():
                subprocess.run(
                    [self.binary, *self._startup(), "shutdown"],
                    cwd=workspace,
                    capture_output=True,
                    timeout=120,
                    check=False,
                )


def _classify(code: int, stderr: str, workspace: Path) -> Exception:
    errors = [line.strip() for line in stderr.splitlines() if line.startswith("ERROR")]
    detail = redact(" | ".join(errors[-3:]) or stderr.strip()[-400:])[:700]
    where = f"bazel query in {workspace.name} exited {code}"
    if code == 7 and any(h in stderr.lower() for h in _NETWORK_HINTS):
        return retryable(
            f"{where}: an external repository could not be fetched: {detail}; give the worker access to it, "
            "or a --repository_cache/--distdir or --override_repository in change_analysis.bazel.query_flags"
        )
    if code == 7:
        return fatal(
            f"{where}: the BUILD files at this commit do not load: {detail}; fix them (`bazel query //...` "
            "reproduces it) or set change_analysis.engine to paths",
            BAD_REQUEST,
        )
    if code == 2:
        return fatal(
            f"{where}: Bazel refused the command: {detail}; check change_analysis.bazel flags in ferry.yaml and "
            "that the repository root has a WORKSPACE (or MODULE.bazel your Bazel version reads)",
            BAD_REQUEST,
        )
    # Interrupted, lock contention, a crashed server, out of memory: transient until shown otherwise.
    return retryable(f"{where}: {detail}")


def _label_safe(path: str) -> bool:
    return bool(path) and all(c in _LABEL_SAFE for c in path) and "//" not in path


class BazelEngine:
    """ChangeEngine over a checked-out Bazel workspace; `graph` maps packages and loose files to services."""

    name = "bazel"

    def __init__(self, workspace: Path, graph: PathGraphEngine, runner: BazelRunner) -> None:
        self.workspace = Path(workspace)
        self.graph = graph
        self.runner = runner
        self._packages: dict[str, str | None] = {}  # directory -> its BUILD file, or None
        self._ignored = self._read_bazelignore()

    def _read_bazelignore(self) -> tuple[str, ...]:
        try:
            lines = (self.workspace / ".bazelignore").read_text().splitlines()
        except OSError:
            return ()
        return tuple(s.strip().strip("/") for s in lines if s.strip() and not s.lstrip().startswith("#"))

    def build_file(self, directory: str) -> str | None:
        """Repo path of the BUILD file that makes `directory` a package, or None if it is none."""
        if directory in self._packages:
            return self._packages[directory]
        found = None
        if not any(directory == d or directory.startswith(d + "/") for d in self._ignored):
            for name in BUILD_FILES:
                if (self.workspace / directory / name).is_file():
                    found = f"{directory}/{name}" if directory else name
                    break
        self._packages[directory] = found
        return found

    def package_of(self, path: str) -> str | None:
        """The Bazel package holding `path` (its nearest directory with a BUILD file), or None."""
        parts = path.split("/")[:-1]
        for k in range(len(parts), -1, -1):
            directory = "/".join(parts[:k])
            if self.build_file(directory) is not None:
                return directory
        return None

    def affected_packages(self, changed_files: list[str]) -> dict[str, str]:
        """Every affected package (ferry's, not Bazel's) with its reason."""
        if self.graph.global_changes(changed_files):
            return self.graph.affected_packages(changed_files)  # everything: no need to ask Bazel
        file_labels: dict[str, str] = {}  # label -> file
        scanned: set[str] = set()  # packages whose changed files are looked up among their targets
        rebuilt: set[str] = set()  # packages whose BUILD file changed: all their targets count as changed
        for f in changed_files:
            pkg = self.package_of(f)
            if pkg is None or not _label_safe(f):
                continue  # mapped by path only
            if self.build_file(pkg) == f:
                rebuilt.add(pkg)
                continue
            name = f[len(pkg) + 1 :] if pkg else f
            file_labels[f"//{pkg}:{name}"] = f
            scanned.add(pkg)
        if not file_labels and not rebuilt:
            return self.graph.affected_packages(changed_files)
        labels = set(self.runner.query(self.workspace, _rdeps_query(file_labels, scanned, rebuilt)))
        known = [f for label, f in file_labels.items() if label in labels]
        known += [self.build_file(p) or p for p in sorted(rebuilt)]
        why = f"depends on changed Bazel targets ({_summary_of(known)})"
        extra: dict[str, str] = {}
        for pkg in sorted({label[2:].split(":", 1)[0] for label in labels if label.startswith("//")}):
            build = self.build_file(pkg)
            for owner in self.graph.owners(build) if build else ():
                extra.setdefault(owner, why)
        return self.graph.seed(changed_files, extra)

    def affected(self, changed_files: list[str]) -> tuple[list[str], dict[str, str]]:
        """ChangeEngine: the affected services and why."""
        return self.graph.result(self.affected_packages(changed_files))


def _summary_of(files: list[str]) -> str:
    more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
    return f"changed: {files[0]}{more}" if files else "changed: BUILD files"


def _regex_literal(text: str) -> str:
    # Bracket every non-alphanumeric character: a literal in Java's regex (which `filter` uses) without
    # backslashes, which the query language's quoting would otherwise have to carry.
    return "".join(c if c.isalnum() or c in "/:_" else f"[{c}]" for c in text)


def _rdeps_query(file_labels: dict[str, str], scanned: set[str], rebuilt: set[str]) -> str:
    """rdeps(//..., <changed files that are targets> + <every target of packages whose BUILD changed>).

    A changed file that no rule names is no target, and `set(//pkg:file)` would fail the whole query; so
    the files are picked out of their packages' targets with `filter` (a file not found is simply absent
    from the answer and mapped by path).
    """
    seeds = []
    if file_labels:
        alternatives = "|".join(_regex_literal(label) for label in sorted(file_labels))
        packages = " ".join(f"//{p}:*" for p in sorted(scanned))
        seeds.append(f'filter("^({alternatives})$", set({packages}))')
    if rebuilt:
        seeds.append("set(" + " ".join(f"//{p}:*" for p in sorted(rebuilt)) + ")")
    return f"rdeps(//..., {' + '.join(seeds)})"
