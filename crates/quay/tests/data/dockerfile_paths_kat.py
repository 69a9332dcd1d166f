#!/usr/bin/env python3
"""Context and Dockerfile path as Quay's manager hands them to a worker
(quay-integration.md section 6.3; Quay's BuildJob.extract_dockerfile_args and
util.slash_join, copied here), run with Python's own posixpath. Writes
dockerfile_paths_kat.json for tests/buildpack.rs:

    python3 crates/quay/tests/data/dockerfile_paths_kat.py

A relative context resolves against the manager's working directory; this table fixes
it to /quay-registry (Quay's image; unverified for any deployment).
"""

import json
import os
import posixpath

CWD = "/quay-registry"
os.getcwd = lambda: CWD


def slash_join(*args):
    def rmslash(path):
        path = path[1:] if len(path) > 0 and path[0] == "/" else path
        path = path[:-1] if len(path) > 0 and path[-1] == "/" else path
        return path

    return "/".join(rmslash(path) for path in args)


def extract_dockerfile_args(build_config):
    dockerfile_path = build_config.get("build_subdir", "")
    context = build_config.get("context", "")
    if not (dockerfile_path == "" or context == ""):
        dockerfile_abspath = slash_join("", dockerfile_path)
        if ".." in posixpath.relpath(dockerfile_abspath, context):
            return posixpath.split(dockerfile_path)
        dockerfile_path = posixpath.relpath(dockerfile_abspath, context)
    return context, dockerfile_path


PAIRS = [
    ("/Dockerfile", "/"),
    ("/sub/Dockerfile", "/sub"),
    ("/sub/Dockerfile", "/sub/"),
    ("/sub/Dockerfile", "/"),
    ("/Dockerfile", "/sub"),
    ("/a/b/Dockerfile", "/a/c"),
    ("Dockerfile", "/"),
    ("sub/Dockerfile", "/sub"),
    ("//sub//Dockerfile//", "/sub"),
    ("/sub/Dockerfile/", "/sub"),
    ("/x..y/Dockerfile", "/"),
    ("/sub/../Dockerfile", "/"),
    ("/sub/./Dockerfile", "/sub"),
    ("/sub", "/sub"),
    ("/Dockerfile", "sub"),
    ("/quay-registry/sub/Dockerfile", "sub"),
    ("/Dockerfile", "."),
    ("/sub/Dockerfile", "/../sub"),
    ("/a//b", "/"),
    ("//Dockerfile", "/x"),
    ("/Dockerfile", ""),
    ("", "/sub"),
    ("", ""),
    (None, "/sub"),
    ("/sub/Dockerfile", None),
]

cases = []
for subdir, context in PAIRS:
    config = {}
    if subdir is not None:
        config["build_subdir"] = subdir
    if context is not None:
        config["context"] = context
    got_context, got_path = extract_dockerfile_args(config)
    cases.append({"build_subdir": subdir, "context": context,
                  "sent_context": got_context, "sent_dockerfile_path": got_path})

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "dockerfile_paths_kat.json"), "w") as f:
    json.dump({"working_directory": CWD, "cases": cases}, f, indent=1)
    f.write("\n")
