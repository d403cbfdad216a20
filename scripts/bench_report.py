#!/usr/bin/env python3
"""Writes docs/benchmarks.md (and the Benchmarks section of README.md) from the JSON that
`MODELFS_BENCH_JSON=... cargo bench --bench mounts` produced. Run by scripts/bench.sh; the
report is never edited by hand."""

import json
import sys

WORKLOADS = [
    ("mmap_load", "safetensors mmap load, tensors in name order", "bytes"),
    ("pread8x2m", "8 threads x 2 MiB preads, tensors in shuffled order", "bytes"),
    ("seq_1m", "sequential 1 MiB reads", "bytes"),
    ("header_scan", "header scan of {header_files} safetensors files ({header_file_mib} MiB each)", "files"),
    ("random_64k", "{random_reads} random 64 KiB reads (one thread)", "bytes"),
    ("ls_lR", "`ls -lR` of a prefix with {list_objects} objects", "objects"),
]
MIB = 1024 * 1024


def fmt_s(c):
    if "error" in c:
        return "NOT MEASURED"
    s = f"{c['seconds']:.2f} s"
    if not c["completed"]:
        s = f"> {s} (cut at deadline)"
    return s


def rate(c, unit):
    if "error" in c or c["seconds"] <= 0:
        return None
    if unit == "bytes":
        return c["bytes"] / MIB / c["seconds"]
    return c["items"] / c["seconds"]


def fmt_rate(c, unit):
    r = rate(c, unit)
    if r is None:
        return "–"
    suffix = {"bytes": "MiB/s", "files": "files/s", "objects": "objects/s"}[unit]
    return f"{r:,.1f} {suffix}"


def ratio(c, ref, unit):
    a, b = rate(c, unit), (rate(ref, unit) if ref else None)
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}×"


def rss(c):
    kib = c.get("peak_rss_kib")
    return f"{kib / 1024:.0f} MiB" if kib else "–"


def find(cases, section, workload, mode, system, mib=None):
    for c in cases:
        if (c["section"], c["workload"], c["mode"], c["system"]) == (section, workload, mode, system) and (
            mib is None or c["model_mib"] == mib
        ):
            return c
    return None


def gib(n):
    return f"{n / (1 << 30):.2f} GiB"


def no_cache_row(rows):
    """The measured "modelfs, no cache" row of `rows`: what the other rows are compared with."""
    return next((c for c in rows if c["system"] == "modelfs, no cache" and "error" not in c), None)


def ratio(value, reference, digits=2):
    """`value` ÷ `reference` as "1.23×", or "–" without a reference."""
    return f"{value / reference:.{digits}f}×" if reference else "–"


def small_cache_sections(w, cases):
    """Caches smaller than the models (issue 24): time and the bytes S3 sent, against no cache."""
    small = [c for c in cases if c["section"] == "small_cache"]
    if small:
        mib = small[0]["model_mib"]
        w(f"## A model larger than the disk cache (cold `load_file` of a {mib} MiB model)")
        w("")
        w("safetensors `load_file` (mmap, tensors in name order) on a fresh modelfs mount whose"
          " cache cannot hold the model, with no cache, and with a cache that can; one model, page"
          " cache dropped. S3 bytes = what the endpoint sent during the load.")
        w("")
        w("| cache | time | rate | S3 bytes | S3 ÷ file | time ÷ no cache |")
        w("|---|---|---|---|---|---|")
        ref = no_cache_row(small)
        for c in small:
            if "error" in c:
                w(f"| {c['system'].removeprefix('modelfs, ')} | NOT MEASURED: {c['error']} | | | | |")
                continue
            share = ratio(c["s3_bytes"], c.get("file_bytes"), 3) if c["s3_bytes"] else "–"
            vs = ratio(c["seconds"], ref["seconds"] if ref else None)
            w(f"| {c['system'].removeprefix('modelfs, ')} | {fmt_s(c)} | {fmt_rate(c, 'bytes')} | "
              f"{gib(c['s3_bytes'])} | {share} | {vs} |")
        w("")
    alt = [c for c in cases if c["section"] == "alternate"]
    if alt:
        mib = alt[0]["model_mib"]
        w(f"## Two {mib} MiB models loaded alternately through a cache that holds one")
        w("")
        w("The two models loaded one after the other, A B A B …, each load cold (page cache dropped"
          " before it, not timed); time and S3 bytes summed over the loads.")
        w("")
        w("| cache | loads | total time | total S3 bytes | S3 ÷ files loaded | time ÷ no cache | S3 ÷ no cache |")
        w("|---|---|---|---|---|---|---|")
        ref = no_cache_row(alt)
        for c in alt:
            if "error" in c:
                w(f"| {c['system'].removeprefix('modelfs, ')} | NOT MEASURED: {c['error']} | | | | | |")
                continue
            share = ratio(c["s3_bytes"], c.get("file_bytes"), 3) if c["s3_bytes"] else "–"
            t = ratio(c["seconds"], ref["seconds"] if ref else None)
            b = ratio(c["s3_bytes"], ref["s3_bytes"] if ref else None)
            w(f"| {c['system'].removeprefix('modelfs, ')} | {c['loads']} | {fmt_s(c)} | {gib(c['s3_bytes'])} | "
              f"{share} | {t} | {b} |")
        w("")


def main():
    src, out, readme = sys.argv[1], sys.argv[2], sys.argv[3]
    doc = json.load(open(src))
    meta, cases = doc["meta"], doc["cases"]
    L = []
    w = L.append
    w("# Benchmarks: modelfs and mountpoint-s3 on an endpoint shaped like S3")
    w("")
    w("Generated by `scripts/bench.sh` from `target/bench/results.json` — do not edit by hand.")
    w("")
    w(f"- **Date**: {meta['date']}; git `{meta['git']}`; {meta['modelfs']}")
    w(f"- **Machine**: {meta['cores']} cores ({meta['cpu'].strip()}), {meta['memory']}, kernel {meta['kernel']}")
    w(f"- **Endpoint**: the project's local S3 server (`s3local`) on 127.0.0.1, shaped: {meta['shaping']}."
      " Server, daemon and reader share the same cores. The server sends object bytes from a mapping of"
      " its files (no copy of its own), and before every measured run of every system the objects the"
      " workload fetches are read back into the page cache after the drop below: S3's disks and CPU are"
      " not on the client's machine, so no system pays the endpoint's disk reads (the link limit, which"
      " drops no caches, never did; until 2026-12-02 the mounts did).")
    w(f"- **mountpoint-s3**: {meta['mountpoint']}, mount-s3 1.23 defaults (8 MiB parts, default prefetcher,"
      " 16 FUSE threads); `--cache` = its disk cache (1 MiB blocks).")
    w(f"- **Link limit**: {meta['limit']}.")
    w(f"- **Model**: generated safetensors (mixed dtypes and tensor sizes), {meta['model_mib']} MiB of tensor data.")
    w(f"- **Protocol**: cold = fresh mount, empty cache directory, page cache dropped. Warm = modelfs remounted"
      " on the cache a first pass filled, page cache dropped; mountpoint-s3 `--cache` wipes its cache at mount,"
      " so its warm run is the same mount after a filling pass (a sequential read for the mmap and pread"
      " patterns), page cache dropped; local file = the same bytes on the local disk, page cache dropped."
      " \"Page cache dropped\" = `sync`, wait until no dirty or writeback pages are left, 2 s more for the"
      " disk to settle, then `drop_caches`, before every measured run. Before every measured run of every"
      " system (link limit included), up to 3x the model + 512 MiB of anonymous memory is touched and freed:"
      " these VMs hand memory the guest left free for a few seconds back to the host, and its first touch"
      " again costs a host fault (3 GiB written into fresh tmpfs pages: 6.8 s; into just-freed ones: 1.3 s),"
      " which a real instance never pays (`back_memory` in `benches/mounts.rs`)."
      f" Each workload cell is the median of {meta.get('repeat', 1)} runs, the systems' runs interleaved"
      " (A B C A B C …) so the machine's drift hits all alike (every run's time is in the JSON);"
      f" a run still going after {meta['deadline_s']} s is cut, not repeated, and shown as `> N s` with the"
      " rate of the part it did. The cost section is one run per cell.")
    w("- Ratios are rate ÷ rate: `vs mountpoint-s3` > 1 means faster than mountpoint-s3;"
      " `vs limit` is the share of the link limit (cold) or of the local file (warm).")
    w("")
    headline = []
    for wid, title, unit in WORKLOADS:
        title = title.format(**meta)
        w(f"## {title}")
        w("")
        w("| mode | system | time | rate | vs mountpoint-s3 | vs limit / local | daemon peak RSS |")
        w("|---|---|---|---|---|---|---|")
        for mode, mp_name, ref_name in (("cold", "mountpoint-s3", "link limit"),
                                        ("warm", "mountpoint-s3 --cache", "local file")):
            mp = find(cases, "workloads", wid, mode, mp_name)
            ref = find(cases, "workloads", wid, mode, ref_name)
            for system in ("modelfs", mp_name, ref_name):
                c = find(cases, "workloads", wid, mode, system)
                if c is None:
                    continue
                w(f"| {mode} | {system} | {fmt_s(c)} | {fmt_rate(c, unit)} | {ratio(c, mp, unit)} | "
                  f"{ratio(c, ref, unit)} | {rss(c)} |")
                if "error" in c:
                    w(f"| | ⚠ {system} NOT MEASURED: {c['error']} | | | | | |")
            m = find(cases, "workloads", wid, mode, "modelfs")
            if m:
                headline.append((wid, mode, m, mp, ref, unit))
        w("")
    # Cost growth.
    cost = [c for c in cases if c["section"] == "cost"]
    if cost:
        w("## How cost grows (cold, mmap load in name order)")
        w("")
        w("| model | system | time | rate | vs mountpoint-s3 | vs limit | daemon peak RSS |")
        w("|---|---|---|---|---|---|---|")
        for mib in sorted({c["model_mib"] for c in cost}):
            mp = find(cases, "cost", "mmap_load", "cold", "mountpoint-s3", mib)
            lim = find(cases, "cost", "mmap_load", "cold", "link limit", mib)
            for system in ("modelfs", "mountpoint-s3", "link limit"):
                c = find(cases, "cost", "mmap_load", "cold", system, mib)
                if c:
                    w(f"| {mib} MiB | {system} | {fmt_s(c)} | {fmt_rate(c, 'bytes')} | "
                      f"{ratio(c, mp, 'bytes')} | {ratio(c, lim, 'bytes')} | {rss(c)} |")
        w("")
        budget = meta.get("modelfs_memory_mib")
        if budget:
            w(f"modelfs runs with `--memory-cache-size {budget}MiB` (its default), which bounds its block"
              f" data: cached blocks plus downloads in flight. Target for its peak RSS: the budget +"
              f" 128 MiB = {budget + 128} MiB.")
            w("")
    small_cache_sections(w, cases)
    missing = [c for c in cases if "error" in c]
    if missing:
        w("## ⚠ Cases that were not measured")
        w("")
        for c in missing:
            w(f"- {c['workload']} {c['mode']} {c['system']} ({c['model_mib']} MiB): {c['error']}")
        w("")
    open(out, "w").write("\n".join(L))

    # README headline.
    H = ["## Benchmarks", "",
         f"Measured {meta['date']} on {meta['cores']} cores, kernel {meta['kernel']}, against a local S3 endpoint"
         f" shaped like S3 ({meta['shaping']}), {meta['model_mib']} MiB model; mountpoint-s3 = its 1.23 engine"
         " with default settings (`--cache` for warm). Full tables, protocol and the cost-growth section:"
         " [docs/benchmarks.md](docs/benchmarks.md). Rerun everything with `sudo scripts/bench.sh`"
         " (generated; do not edit).", "",
         "| workload | mode | modelfs | mountpoint-s3 | limit | modelfs ÷ mountpoint-s3 | modelfs ÷ limit |",
         "|---|---|---|---|---|---|---|"]
    for wid, mode, m, mp, ref, unit in headline:
        H.append(f"| {wid} | {mode} | {fmt_s(m)} | {fmt_s(mp) if mp else '–'} | "
                 f"{fmt_s(ref) if ref else '–'} | {ratio(m, mp, unit)} | {ratio(m, ref, unit)} |")
    H.append("")
    H.append("Cold limit = parallel ranged GETs straight from the endpoint; warm limit = the same bytes"
             " from a local file.")
    H.append("")
    text = open(readme).read()
    marker = "\n## Benchmarks"
    idx = text.find(marker)
    head = text if idx < 0 else text[:idx]
    open(readme, "w").write(head.rstrip("\n") + "\n\n" + "\n".join(H))


if __name__ == "__main__":
    main()
