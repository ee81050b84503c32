"""Keeps a "kernel" in TRITON_CACHE_DIR the way Triton's FileCacheManager does, for
machines without Triton: the kernel's files in `<root>/<key>/`, and a group file
`__grp__kernel.json` naming them by absolute path, which a later process takes only
where every named file exists (else it compiles again). Prints, as JSON, whether the
kernel was found."""

import json
import os

import torch  # noqa: F401 (a capture keys its entry on the torch a process ran)

folder = os.path.join(os.environ["TRITON_CACHE_DIR"], "KERNELKEY")
group_file = os.path.join(folder, "__grp__kernel.json")
found = False
if os.path.exists(group_file):
    with open(group_file) as handle:
        found = all(os.path.exists(path) for path in json.load(handle)["child_paths"].values())
if not found:  # "compile": the binary, then the group naming it
    os.makedirs(folder, exist_ok=True)
    binary = os.path.join(folder, "kernel.cubin")
    with open(binary, "wb") as handle:
        handle.write(b"\x7fELF kernel")
    with open(group_file + ".tmp", "w") as handle:
        json.dump({"child_paths": {"kernel.cubin": binary}}, handle)
    os.replace(group_file + ".tmp", group_file)
print(json.dumps({"found": found}))
