"""Local stand-ins of Harbor, Argo CD, SonarQube, Tekton and Buildkite for the Ferry sandbox.

They speak the same HTTP APIs as the real systems (the subsets Ferry's clients use, written from
`specs/`), share one in-memory `World` so that they interact like the real systems do, and inject faults
from a scenario file. Use in-process through `httpx.ASGITransport(app=apps[name])` or over real HTTP:

    world = World(scenario_path, tokens=None, speed=1.0)
    apps = build_apps(world)                     # keys: NAMES
    await serve(apps, {"harbor-onprem": 18101, ...}, host="127.0.0.1")
"""

from sandbox.standins.server import build_apps, serve
from sandbox.standins.world import NAMES, Scenario, ScenarioError, World, tokens_from_env

__all__ = ["NAMES", "Scenario", "ScenarioError", "World", "build_apps", "serve", "tokens_from_env"]
