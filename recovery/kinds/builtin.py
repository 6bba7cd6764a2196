"""The built-in target kinds, registered in order: one line per kind.

Order matters only within a target kind (its first non-manual, unconditional workflow is its
default) and for the order workflows are listed in. rate-limit-recovery lives in its own module
but recovers http targets, so it joins the http kind here rather than by an import in http.py
(the kind modules stay independent of each other).
"""

from __future__ import annotations

from recovery.kinds import cache, database, http, ratelimit, register

register(http.KIND.with_workflows(ratelimit.RATE_LIMIT))
register(database.KIND)
register(cache.KIND)
