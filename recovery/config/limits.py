"""Every limit the config loader enforces, in one place (docs/security.md lists them with values).

The file is input from whoever can write it (or set the variables it references): each limit
bounds the time and memory one bad file can cost, so that a mistake or an attack ends in one
exit-2 line within about a second instead of a hang, an out-of-memory kill or a config that
validates but breaks at run time.
"""

from __future__ import annotations

# --- the file and its YAML ----------------------------------------------------------------------
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB; a fleet of thousands of targets fits in well under half
MAX_DEPTH = 32  # nesting of mappings/sequences; the schema itself needs 6
# YAML values (scalars + collections) in one document. PyYAML costs ~1 µs and the pydantic error
# of a bad value ~1 KB each, so this bounds parse time and memory whatever the shape of the file.
MAX_NODES = 50_000
# Keys of one mapping: the widest the schema has is a target (~15 fields) or headers (100). This
# also bounds the errors pydantic collects for one mapping of unknown or bad fields (~1 KB each).
MAX_KEYS = 256
MAX_NUMBER_CHARS = 100  # a longer int/float scalar is refused (YAML 1.1 base-60 ints are quadratic)
MAX_EXPANDED_CHARS = 1 << 20  # characters produced by all ${VAR} expansions of one file

# --- values ---------------------------------------------------------------------------------------
HOUR = 3600.0
DAY = 86_400.0
MAX_TIMEOUT = DAY  # timeouts, lock TTL, leases, waits: a longer one is a typo that hangs a run
MAX_INTERVAL = DAY  # monitor interval, rate-limit increase interval
MAX_VERIFY_INTERVAL = HOUR  # pause between verification probes, inside a run that holds the lock
MAX_DELAY = DAY  # retry delays (base, increment, cap)
MAX_WINDOW = 30 * DAY  # sliding windows (strategies, manual triggers) and key TTLs
MAX_CACHE_TTL = 365 * 86_400  # integer seconds: expiry of rebuilt cache keys
MAX_COUNT = 1000  # thresholds, successes in a row, breaker fail_max, manual triggers per window
MAX_FACTOR = 100.0  # backoff multiplier, adaptive penalty per failure
MAX_RATE = 1_000_000.0  # requests/second
MAX_SEED = 2**63 - 1  # |seed| of jitter
MAX_TARGETS = 5000
MAX_LIST = 100  # expect_status, required_fields, headers, composite strategies

# --- escalation ladders and dependencies (docs/runbooks/dependency-outage.md) ------------------
MAX_RUNGS = 10  # workflows in one target's escalation ladder
MAX_DEPENDS_ON = 32  # direct dependencies of one target (the transitive set is bounded by MAX_TARGETS)
