#!/usr/bin/env python3
"""Build-log entries as Quay's manager writes them (quay-integration.md section 11.2):
`json.dumps({"message": ..., "type": ..., "data": {...}})` with Python's defaults. Writes
buildlogs_kat.json next to this file; tests/buildlogs.rs compares buildman's entries to
these byte for byte. Made with Python 3.11.7:

    python3 crates/quay/tests/data/buildlogs_kat.py
"""

import datetime
import json
import os


def entry(message, log_type=None, log_data=None):
    # Quay's BuildLogs.append_log_message.
    log_obj = {"message": message}
    if log_type:
        log_obj["type"] = log_type
    if log_data:
        log_obj["data"] = log_data
    return json.dumps(log_obj)


WITH_MICROS = str(datetime.datetime(2026, 11, 30, 9, 15, 2, 417))
WHOLE_SECOND = str(datetime.datetime(2026, 11, 30, 9, 15, 2))

cases = [
    # The docstring's example in Quay's manager, as it is really written.
    {"name": "phase build-scheduled", "json": entry("build-scheduled", "phase", {"datetime": WITH_MICROS})},
    {"name": "phase pulling with pull metadata", "json": entry("pulling", "phase", {
        "registry_url": "quay.example", "base_image": "quay.example/org/base",
        "base_image_tag": "3.19", "pull_username": "org+robot", "datetime": WHOLE_SECOND})},
    {"name": "phase pulling, some metadata empty", "json": entry("pulling", "phase", {
        "base_image": "busybox", "datetime": WITH_MICROS})},
    {"name": "command", "json": entry("Step 1/3 : FROM busybox", "command", {"datetime": WITH_MICROS})},
    {"name": "plain line with non-ASCII and control characters", "json": entry(
        "caf\u00e9 \u2603 \U0001f600 \"q\" \\ \t\x7f\x01\n", None, {"datetime": WITH_MICROS})},
    {"name": "error", "json": entry("Could not pull base image", "error", {
        "internal_error": False, "datetime": WITH_MICROS})},
]

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "buildlogs_kat.json"), "w") as f:
    json.dump({"datetime_with_micros": WITH_MICROS, "datetime_whole_second": WHOLE_SECOND,
               "entries": cases}, f, indent=1)
    f.write("\n")
