#!/usr/bin/env python3
"""Turns the pure-Python wheel of python/ into lintrace's platform wheel
(scripts/build-wheel.sh runs it; auditwheel then sets the manylinux tag).

Adds each --script FILE as `<name>-<version>.data/scripts/<basename>` with
mode 755, which pip installs into the environment's bin/ (as maturin's
`bindings = "bin"` wheels do, e.g. ruff's); adds each --license SRC=DEST as
`.dist-info/licenses/DEST` with a License-File line in METADATA (PEP 639);
marks the wheel as not pure (Root-Is-Purelib: false) with the tag
py3-none-<--platform>; rewrites RECORD. Standard library only.

    wheel_platform.py PURE.whl OUT_DIR --platform linux_x86_64 \\
        --script bin/lintrace-train --license third-party/X=path/to/X
"""

import argparse
import base64
import hashlib
import os
import sys
import zipfile
from pathlib import Path


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, help="the pure wheel built from python/")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--platform", required=True, help="platform tag, e.g. linux_x86_64")
    ap.add_argument("--script", action="append", default=[], type=Path, help="executable to install on PATH")
    ap.add_argument("--license", action="append", default=[], metavar="DEST=SRC",
                    help="a licence file: SRC copied to .dist-info/licenses/DEST")
    args = ap.parse_args()

    # name-version-pytag-abitag-platform.whl
    name, version = args.wheel.name.split("-")[:2]
    dist_info, data_dir = f"{name}-{version}.dist-info", f"{name}-{version}.data"
    tag = f"py3-none-{args.platform}"
    out = args.out_dir / f"{name}-{version}-{tag}.whl"

    with zipfile.ZipFile(args.wheel) as src:
        entries = [(i, src.read(i)) for i in src.infolist() if not i.is_dir()]
    names = {i.filename for i, _ in entries}
    for required in (f"{dist_info}/WHEEL", f"{dist_info}/METADATA", f"{dist_info}/RECORD"):
        if required not in names:
            sys.exit(f"{args.wheel}: no {required}")

    licenses = []
    for spec in args.license:
        dest, _, src_path = spec.partition("=")
        if not src_path:
            sys.exit(f"--license {spec}: expected DEST=SRC")
        licenses.append((dest, Path(src_path).read_bytes()))

    files = []  # (ZipInfo, bytes), in the order written; RECORD last
    for info, data in entries:
        if info.filename == f"{dist_info}/RECORD":
            continue
        if info.filename == f"{dist_info}/WHEEL":
            lines = [l for l in data.decode().splitlines() if l and not l.startswith(("Root-Is-Purelib:", "Tag:"))]
            data = ("\n".join(lines + ["Root-Is-Purelib: false", f"Tag: {tag}"]) + "\n").encode()
        elif info.filename == f"{dist_info}/METADATA" and licenses:
            head, sep, body = data.decode().partition("\n\n")
            head += "".join(f"\nLicense-File: {dest}" for dest, _ in licenses)
            data = (head + sep + body).encode()
        files.append((info.filename, 0o644, data))
    for dest, data in licenses:
        files.append((f"{dist_info}/licenses/{dest}", 0o644, data))
    for script in args.script:
        files.append((f"{data_dir}/scripts/{script.name}", 0o755, script.read_bytes()))

    # .dist-info last, as the wheel spec recommends (RECORD at the very end).
    files.sort(key=lambda f: f[0].startswith(f"{dist_info}/"))
    record = [record_line(n, d) for n, _, d in files] + [f"{dist_info}/RECORD,,"]
    files.append((f"{dist_info}/RECORD", 0o644, ("\n".join(record) + "\n").encode()))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for n, mode, data in files:
            info = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, data)
    os.replace(tmp, out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
