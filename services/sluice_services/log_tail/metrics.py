from __future__ import annotations

from prometheus_client import Counter, Gauge

FOLLOWERS = Gauge(
    "sluice_log_tail_followers",
    "Followers now, per file.",
    ["service", "file"],
    multiprocess_mode="livesum",
)
LINES_DELIVERED = Counter(
    "sluice_log_tail_lines_delivered_total", "Lines sent to followers.", ["service", "file"]
)
LINES_READ = Counter(
    "sluice_log_tail_lines_read_total", "Lines read from files.", ["service", "file"]
)
GAPS = Counter(
    "sluice_log_tail_gaps_total",
    "Gaps told to followers (reason: slow_follower|rotated|resume_too_old).",
    ["service", "file", "reason"],
)
ROTATIONS = Counter(
    "sluice_log_tail_rotations_total",
    "File changes seen (kind: rename|truncate|delete|create).",
    ["service", "file", "kind"],
)
REFUSALS = Counter(
    "sluice_log_tail_refusals_total",
    "Times a file's path led somewhere it must not be read (reason: symlink|not_directory|"
    "not_regular|hard_link|other_device|unreadable); its history was dropped.",
    ["service", "file", "reason"],
)
