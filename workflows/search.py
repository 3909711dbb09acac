"""Custom search attributes: how an SRE finds a release in the Temporal UI.

They must be registered on the server before workflows upsert them (the sandbox does it with
`temporal server start-dev --search-attribute`, `ferry temporal init` does it on a real server).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

COMMIT_SHA = SearchAttributeKey.for_keyword("CommitSha")
BRANCH = SearchAttributeKey.for_keyword("Branch")
SERVICES = SearchAttributeKey.for_keyword_list("Services")
RELEASE_STAGE = SearchAttributeKey.for_keyword("ReleaseStage")

ALL = (COMMIT_SHA, BRANCH, SERVICES, RELEASE_STAGE)
