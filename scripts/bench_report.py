#!/usr/bin/env python3
"""Writes docs/benchmarks.md (and the Benchmarks section of README.md) from the JSON that
`MODELFS_BENCH_JSON=... cargo bench --bench mounts` produced. Run by scripts/bench.sh; the
report is never edited by hand."""

import json
import sys

WORKLOADS = [
    ("mmap_load", "`load_file` by name: safetensors mmap load, tensors in name order", "bytes"),
    ("pread8x2m", "8 threads × 2 MiB preads (ComfyUI's loader), tensors in shuffled order", "bytes"),
    ("seq_1m", "`cat`: sequential 1 MiB reads", "bytes"),
    ("header_scan", "header scan of {header_files} safetensors files ({header_file_mib} MiB each)", "files"),
    ("random_64k", "{random_reads} random 64 KiB reads (one thread)", "bytes"),
    ("ls_lR", "`ls -lR` of a prefix with {list_objects} objects", "objects"),
]
# Short names (README, cost and target tables).
SHORT = {
    "mmap_load": "`load_file`",
    "pread8x2m": "8×2 MiB preads",
    "seq_1m": "`cat`",
    "header_scan": "header scan",
    "random_64k": "random 64 KiB",
    "ls_lR": "`ls -lR`",
}
# The whole-model loads of the cost section, in its order.
COST_WORKLOADS = ["seq_1m", "mmap_load", "pread8x2m"]
# Per-prefix GET rate S3 sustains, and a node's link in the fleet arithmetic.
S3_PREFIX_GETS_PER_S = 5500
NODE_LINK_GIB_PER_S = 10e9 / 8 / (1 << 30)
FLEET_NODES = [16, 64, 256]
MIB = 1024 * 1024
GIB = 1 << 30


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


def rate_ratio(c, ref, unit):
    """rate(c) ÷ rate(ref), or None."""
    a, b = rate(c, unit) if c else None, (rate(ref, unit) if ref else None)
    if a is None or not b:
        return None
    return a / b


def fmt_rate_ratio(c, ref, unit):
    r = rate_ratio(c, ref, unit)
    return "–" if r is None else f"{r:.2f}×"


# The daemon CPU column: per GiB read for whole-file workloads, per item for the others.
CPU_HEADER = {"bytes": "daemon CPU-s/GiB", "files": "daemon CPU-ms/file", "objects": "daemon CPU-ms/1k objects"}


def cpu_per_unit(c, unit):
    """Daemon CPU seconds per GiB read (bytes), milliseconds per file or per 1000 objects."""
    if not c or "error" in c or c.get("daemon_cpu_s") is None:
        return None
    if unit == "bytes":
        return c["daemon_cpu_s"] / (c["bytes"] / GIB) if c["bytes"] else None
    per = {"files": 1000, "objects": 1000 * 1000}[unit]
    return c["daemon_cpu_s"] * per / c["items"] if c["items"] else None


def fmt_cpu(c, unit):
    v = cpu_per_unit(c, unit)
    return "–" if v is None else f"{v:.2f}"


def endpoint_cpu(c):
    """The endpoint's CPU seconds per GiB the reader got, and the share of the run its core was
    busy (near 100%: the run measured the endpoint, not the system)."""
    cpu = c.get("endpoint_cpu_s")
    if cpu is None or not c.get("bytes") or not c.get("seconds"):
        return "–", "–"
    return f"{cpu / (c['bytes'] / GIB):.2f}", f"{min(cpu / c['seconds'], 1.0):.0%}"


def rss(c):
    kib = c.get("peak_rss_kib")
    return f"{kib / 1024:.0f} MiB" if kib else "–"


def find(cases, section, workload, mode, system, mib=None):
    for c in cases:
        if (c["section"], c["workload"], c["mode"], c["system"]) == (section, workload, mode, system) and (
            mib is None or c["model_mib"] == mib
        ) and "skipped" not in c:
            return c
    return None


def find_cold(cases, workload, system, mib):
    """A cold whole-model case at `mib`: the cost section's, else the workload tables' (the
    bench does not run a cost cell the tables measured at the same size)."""
    return find(cases, "cost", workload, "cold", system, mib) or find(
        cases, "workloads", workload, "cold", system, mib)


def gib(n):
    return f"{n / (1 << 30):.2f} GiB"


def no_cache_row(rows):
    """The measured "modelfs, no cache" row of `rows`: what the other rows are compared with."""
    return next((c for c in rows if c["system"] == "modelfs, no cache" and "error" not in c), None)


def ratio(value, reference, digits=2):
    """`value` ÷ `reference` as "1.23×", or "–" without a reference."""
    return f"{value / reference:.{digits}f}×" if reference else "–"


def s3_share(c):
    """The bytes S3 sent for case `c` ÷ the bytes of the files it loaded, "–" when none were sent."""
    return ratio(c["s3_bytes"], c.get("file_bytes"), 3) if c["s3_bytes"] else "–"


def against_no_cache_table(w, rows, title, intro, columns, cells):
    """A section of `rows` under `title` and `intro`: one table row per cache, whose `columns`
    `cells(c, ref)` fills, `ref` being the "modelfs, no cache" row (None when it is missing)."""
    w(title)
    w("")
    w(intro)
    w("")
    w("| cache | " + " | ".join(columns) + " |")
    w("|---|" + "---|" * len(columns))
    ref = no_cache_row(rows)
    for c in rows:
        cache = c["system"].removeprefix("modelfs, ")
        if "error" in c:
            w(f"| {cache} | NOT MEASURED: {c['error']}" + " |" * len(columns))
            continue
        w(f"| {cache} | " + " | ".join(cells(c, ref)) + " |")
    w("")


def vs_no_cache(c, ref, key):
    """Case `c`'s `key` ÷ the no-cache row's, "–" without that row."""
    return ratio(c[key], ref[key] if ref else None)


# The sections on caches smaller than the models (issue 24), each against no cache: its
# `section` in the JSON, title (given the model size), intro, columns after the cache, and the
# cells of one case `c` against the no-cache row `ref`.
SMALL_CACHE_SECTIONS = [
    ("small_cache",
     "## A model larger than the disk cache (cold `load_file` of a {mib} MiB model)",
     "safetensors `load_file` (mmap, tensors in name order) on a fresh modelfs mount whose"
     " cache cannot hold the model, with no cache, and with a cache that can; one model, page"
     " cache dropped. S3 bytes = what the endpoint sent during the load.",
     ["time", "rate", "S3 bytes", "S3 ÷ file", "time ÷ no cache"],
     lambda c, ref: [fmt_s(c), fmt_rate(c, "bytes"), gib(c["s3_bytes"]), s3_share(c),
                     vs_no_cache(c, ref, "seconds")]),
    ("alternate",
     "## Two {mib} MiB models loaded alternately through a cache that holds one",
     "The two models loaded one after the other, A B A B …, each load cold (page cache dropped"
     " before it, not timed); time and S3 bytes summed over the loads.",
     ["loads", "total time", "total S3 bytes", "S3 ÷ files loaded", "time ÷ no cache", "S3 ÷ no cache"],
     lambda c, ref: [str(c["loads"]), fmt_s(c), gib(c["s3_bytes"]), s3_share(c),
                     vs_no_cache(c, ref, "seconds"), vs_no_cache(c, ref, "s3_bytes")]),
]


def small_cache_sections(w, cases):
    """Caches smaller than the models (issue 24): time and the bytes S3 sent, against no cache."""
    for section, title, intro, columns, cells in SMALL_CACHE_SECTIONS:
        rows = [c for c in cases if c["section"] == section]
        if rows:
            against_no_cache_table(w, rows, title.format(mib=rows[0]["model_mib"]), intro, columns, cells)


def cost_section(w, meta, cases):
    """Cold whole-model loads at each cost size, with the disk's refusals."""
    sizes = sorted(set(meta.get("cost_mib", [])) | {c["model_mib"] for c in cases if c["section"] == "cost"})
    if not sizes:
        return
    w("## How cost grows (cold: `cat`, `load_file`, 8×2 MiB preads)")
    w("")
    w("One run per cell; cells at the workload tables' model size are those tables' medians.")
    w("")
    w("The endpoint runs on a core of its own; its CPU is that of its threads during the run, and"
      " \"endpoint busy\" is that CPU ÷ the run's time: near 100%, the endpoint's core was the"
      " limit, not the system measured. `scripts/profile_cost.sh` profiles modelfs's cells"
      " system-wide: each CPU's time per thread and its top symbols, per measured run.")
    w("")
    w("| model | workload | system | time | rate | vs mountpoint-s3 | vs limit | daemon CPU-s/GiB | daemon peak RSS"
      " | endpoint CPU-s/GiB | endpoint busy |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    skipped = []
    for mib in sizes:
        skip = next((c for c in cases if c["section"] == "cost" and c["model_mib"] == mib and "skipped" in c), None)
        if skip:
            skipped.append((mib, skip["skipped"]))
            continue
        for wid in COST_WORKLOADS:
            mp = find_cold(cases, wid, "mountpoint-s3", mib)
            lim = find_cold(cases, wid, "link limit", mib)
            for system in ("modelfs", "mountpoint-s3", "link limit"):
                c = find_cold(cases, wid, system, mib)
                if c:
                    w(f"| {mib} MiB | {SHORT[wid]} | {system} | {fmt_s(c)} | {fmt_rate(c, 'bytes')} | "
                      f"{fmt_rate_ratio(c, mp, 'bytes')} | {fmt_rate_ratio(c, lim, 'bytes')} | "
                      f"{fmt_cpu(c, 'bytes')} | {rss(c)} | {' | '.join(endpoint_cpu(c))} |")
    w("")
    for mib, why in skipped:
        w(f"- **{mib} MiB**: {why}.")
    if skipped:
        w("")
    w("**This machine's memory.** The host of these VMs takes back memory the guest leaves free, and"
      " touching it again costs a host fault (`scripts/page_cost.sh` measures it: seconds per GiB"
      " written into pages that sat free, into pages just freed, and after idling again). A cold load"
      " allocates page cache for the reader's pages, and a system that fills a disk cache as much"
      " again for the cache file unless it lets those pages go: modelfs drops them 128 MiB behind"
      " its readers for files of a quarter of its memory or more, here the 8 GiB model (since"
      " 2026-12-05; the reader has the bytes); mountpoint-s3 `--cache` was not examined."
      " At 2 GiB the memory touched before each run covers the allocations; at"
      " 8 GiB (the endpoint's locked copy alone is a third of this machine's RAM) it cannot, and"
      " those cells pay the fault per GiB allocated beyond it, which an EC2 instance's memory does"
      " not.")
    w("")
    budget = meta.get("modelfs_memory_mib")
    if budget:
        w(f"modelfs runs with `--memory-cache-size {budget}MiB` (its default), which bounds its block"
          f" data: cached blocks plus downloads in flight. Target for its peak RSS: the budget +"
          f" 128 MiB = {budget + 128} MiB.")
        w("")


def fleet_section(w, meta, cases):
    """Issue 22: the requests 16 nodes cold-starting one model make, and what a real fleet would."""
    fleet = [c for c in cases if c["section"] == "fleet"]
    if not fleet:
        return
    mib, mounts = fleet[0]["model_mib"], fleet[0].get("mounts", meta.get("fleet_mounts"))
    w(f"## Request economics at fleet scale ({mounts} nodes cold-start one {mib} MiB model)")
    w("")
    w(f"{mounts} mounts of the same system, each on a cache directory of its own (as {mounts} nodes would"
      f" be), cold-load the same {mib} MiB model at the same time with `load_file` (mmap, name order);"
      " page cache dropped. GETs = GetObject requests the endpoint answered during the loads; peak"
      " GET/s = the most GETs between two samples of the endpoint's counter (taken every 100 ms) at most"
      " 1 s apart. On this machine the loads share one CPU, so the peak rate is this box's, not a"
      " fleet's; GETs per GiB is the system's own and carries over.")
    w("")
    w("| system | time | delivered | GETs | GETs per GiB | S3 ÷ delivered | peak GET/s (1 s) | daemon CPU-s/GiB | largest daemon RSS |")
    w("|---|---|---|---|---|---|---|---|---|")
    per_gib = {}
    for c in fleet:
        if "error" in c:
            w(f"| {c['system']} | NOT MEASURED: {c['error']} | | | | | | | |")
            continue
        delivered = c["bytes"] / GIB
        g = c["gets"] / delivered if delivered else None
        if g:
            per_gib[c["system"]] = g
        share = ratio(c["s3_bytes"], c["bytes"], 3)
        w(f"| {c['system']} | {fmt_s(c)} | {gib(c['bytes'])} | {c['gets']:,} | "
          f"{'–' if g is None else f'{g:.1f}'} | {share} | {c['peak_gets_per_s']:,.0f} | "
          f"{fmt_cpu(c, 'bytes')} | {rss(c)} |")
    w("")
    if not per_gib:
        return
    w(f"**A real fleet.** N nodes each loading the same object at 10 Gbit/s"
      f" ({NODE_LINK_GIB_PER_S:.2f} GiB/s) make GETs per GiB × {NODE_LINK_GIB_PER_S:.2f} × N GET/s on"
      f" the object's prefix; S3 sustains {S3_PREFIX_GETS_PER_S:,} GET/s per prefix before it throttles"
      " (503 SlowDown).")
    w("")
    systems = list(per_gib)
    w("| nodes | " + " | ".join(f"{s}: GET/s on the prefix | {s}: ÷ {S3_PREFIX_GETS_PER_S:,}" for s in systems) + " |")
    w("|---|" + "---|---|" * len(systems))
    for n in FLEET_NODES:
        cells = []
        for s in systems:
            r = per_gib[s] * NODE_LINK_GIB_PER_S * n
            cells.append(f"{r:,.0f} | {r / S3_PREFIX_GETS_PER_S:.2f}×")
        w(f"| {n} | " + " | ".join(cells) + " |")
    w("")
    for s in systems:
        nodes = S3_PREFIX_GETS_PER_S / (per_gib[s] * NODE_LINK_GIB_PER_S)
        w(f"- {s}: {nodes:,.0f} nodes at 10 Gbit/s reach {S3_PREFIX_GETS_PER_S:,} GET/s on one prefix.")
    w("")


def targets_section(w, meta, cases):
    """Issue 22's targets, each with the measured ratio beside it."""
    rows = []
    mib = meta["model_mib"]

    def add(target, value, ok):
        rows.append((target, "–" if value is None else value, "–" if ok is None else ("yes" if ok else "**no**")))

    def check(target, r, bound, at_least=True, fmt="{:.2f}×"):
        if r is None:
            add(target, None, None)
        else:
            add(target, fmt.format(r), r >= bound if at_least else r <= bound)

    sizes = sorted({mib} | set(meta.get("cost_mib", [])))
    for size in sizes:
        for wid in COST_WORKLOADS:
            m = find_cold(cases, wid, "modelfs", size)
            if m is None:
                continue
            check(f"cold {size} MiB {SHORT[wid]}: ≥ 0.8× the link limit",
                  rate_ratio(m, find_cold(cases, wid, "link limit", size), "bytes"), 0.8)
        m = find_cold(cases, "seq_1m", "modelfs", size)
        if m is not None:
            check(f"cold {size} MiB `cat`: ≥ 1.2× mountpoint-s3",
                  rate_ratio(m, find_cold(cases, "seq_1m", "mountpoint-s3", size), "bytes"), 1.2)
    m = find(cases, "workloads", "seq_1m", "cold", "modelfs", mib)
    if m is not None:
        cpu = cpu_per_unit(m, "bytes")
        for system, bound in (("mountpoint-s3 --cache", 1.0), ("mountpoint-s3", 1.3)):
            other = cpu_per_unit(find(cases, "workloads", "seq_1m", "cold", system, mib), "bytes")
            r = cpu / other if cpu is not None and other else None
            check(f"cold {mib} MiB `cat` daemon CPU-s/GiB (modelfs fills its cache): ≤ {bound}× {system}'s",
                  r, bound, at_least=False)
    for wid in ("seq_1m", "mmap_load"):
        m = find(cases, "workloads", wid, "warm", "modelfs", mib)
        if m is None:
            continue
        check(f"warm {mib} MiB {SHORT[wid]}: ≥ 1.3× the local file",
              rate_ratio(m, find(cases, "workloads", wid, "warm", "local file", mib), "bytes"), 1.3)
        check(f"warm {mib} MiB {SHORT[wid]}: faster than mountpoint-s3 --cache (> 1×)",
              rate_ratio(m, find(cases, "workloads", wid, "warm", "mountpoint-s3 --cache", mib), "bytes"), 1.0 + 1e-9)
    budget = meta.get("modelfs_memory_mib")
    peaks = [c["peak_rss_kib"] for c in cases
             if c.get("system") == "modelfs" and c["section"] in ("workloads", "cost") and c.get("peak_rss_kib")]
    if budget and peaks:
        check(f"modelfs peak RSS, every table and size: ≤ {budget + 128} MiB",
              max(peaks) / 1024, budget + 128, at_least=False, fmt="{:.0f} MiB")
    if not rows:
        return
    w("## Issue 22's targets in this run")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    for target, value, ok in rows:
        w(f"| {target} | {value} | {ok} |")
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
    if "elapsed_s" in meta:
        w(f"- **Run time**: {meta['elapsed_s'] / 60:.0f} min for the suite (estimated at its start:"
          f" {meta.get('estimate_s', 0) / 60:.0f} min), building excluded.")
    pinning = meta.get("pinning", "server, daemon and reader share the same cores")
    w(f"- **Endpoint**: the project's local S3 server (`s3local`) on 127.0.0.1, shaped: {meta['shaping']}."
      f" CPUs: {pinning}. The server sends object bytes from a mapping of"
      " its files (no copy of its own), and before every measured run of every system the objects the"
      " workload fetches are read back into the page cache after the drop below and locked there"
      " (`mlock`) for the run: S3's disks and CPU are not on the client's machine, so no system pays"
      " the endpoint's disk reads, nor shares the disk its cache writes to with them (until 2026-12-02"
      " the mounts paid them; until 2026-12-05 the 8 GiB cells did, the copy evicted by the memory"
      " touch below and read back from disk at up to 1 GB/s during the run).")
    w(f"- **mountpoint-s3**: {meta['mountpoint']}, mount-s3 1.23 defaults (8 MiB parts, default prefetcher,"
      " 16 FUSE threads); `--cache` = its disk cache (1 MiB blocks).")
    w(f"- **Link limit**: {meta['limit']}.")
    w(f"- **Model**: generated safetensors (mixed dtypes and tensor sizes), {meta['model_mib']} MiB of tensor data.")
    w("- **Protocol**: cold = fresh mount, empty cache directory, page cache dropped; modelfs always runs with"
      " a disk cache, so its cold runs fill it, and cold `cat` also runs mountpoint-s3 `--cache` on an empty"
      " cache (the daemon CPU of filling a disk cache). Warm = modelfs remounted"
      " on the cache a first pass filled, page cache dropped; mountpoint-s3 `--cache` wipes its cache at mount,"
      " so its warm run is the same mount after a filling pass (a sequential read for the mmap and pread"
      " patterns), page cache dropped; local file = the same bytes on the local disk, page cache dropped."
      " \"Page cache dropped\" = `sync`, wait until no dirty or writeback pages are left, 2 s more for the"
      " disk to settle, then `drop_caches`, before every measured run. Before every measured run of every"
      " system (link limit included), up to 3x the model + 512 MiB of anonymous memory (never more than"
      " what leaves 2 GiB free) is touched and freed:"
      " these VMs hand memory the guest left free for a few seconds back to the host, and its first touch"
      " again costs a host fault, which a real instance never pays (`back_memory` in `benches/mounts.rs`)."
      f" Each workload cell is the median of {meta.get('repeat', 1)} runs, the systems' runs interleaved"
      " (A B C A B C …) so the machine's drift hits all alike (every run's time is in the JSON);"
      f" a run still going after {meta['deadline_s']} s is cut, not repeated, and shown as `> N s` with the"
      " rate of the part it did. The cost and fleet sections are one run per cell. Before the workload"
      " tables and at each cost size an unmeasured link-limit `cat` of the model runs first (the first"
      " run after the model is seeded met the endpoint's slow copies, 4-5x its CPU per GiB, in about"
      " half the tries; until 2026-12-06 the workload tables' first run paid them).")
    w("- Ratios are rate ÷ rate: `vs mountpoint-s3` > 1 means faster than mountpoint-s3;"
      " `vs limit` is the share of the link limit (cold) or of the local file (warm). Daemon CPU = user +"
      " system time of the FUSE daemon's process during the measured run (from `/proc`), per GiB the"
      " reader got (per file or per 1,000 objects for scans); the reader's own CPU is not in it.")
    w("")
    targets_section(w, meta, cases)
    headline = []
    for wid, title, unit in WORKLOADS:
        if not any(c["section"] == "workloads" and c["workload"] == wid for c in cases):
            continue
        title = title.format(**meta)
        w(f"## {title}")
        w("")
        w(f"| mode | system | time | rate | vs mountpoint-s3 | vs limit / local | {CPU_HEADER[unit]} | daemon peak RSS |")
        w("|---|---|---|---|---|---|---|---|")
        for mode, mp_name, ref_name in (("cold", "mountpoint-s3", "link limit"),
                                        ("warm", "mountpoint-s3 --cache", "local file")):
            mp = find(cases, "workloads", wid, mode, mp_name)
            ref = find(cases, "workloads", wid, mode, ref_name)
            # Cold `cat` also has mountpoint-s3 --cache filling its cache.
            extra = ["mountpoint-s3 --cache"] if mode == "cold" else []
            for system in ["modelfs", mp_name] + extra + [ref_name]:
                c = find(cases, "workloads", wid, mode, system)
                if c is None:
                    continue
                w(f"| {mode} | {system} | {fmt_s(c)} | {fmt_rate(c, unit)} | {fmt_rate_ratio(c, mp, unit)} | "
                  f"{fmt_rate_ratio(c, ref, unit)} | {fmt_cpu(c, unit)} | {rss(c)} |")
                if "error" in c:
                    w(f"| | ⚠ {system} NOT MEASURED: {c['error']} | | | | | | |")
            m = find(cases, "workloads", wid, mode, "modelfs")
            if m:
                headline.append((wid, mode, m, mp, ref, unit))
        w("")
    cost_section(w, meta, cases)
    fleet_section(w, meta, cases)
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
         f" shaped like S3 ({meta['shaping']}; {pinning}), {meta['model_mib']} MiB model; mountpoint-s3 = its"
         " 1.23 engine with default settings (`--cache` for warm). Full tables, protocol, cost growth to"
         " larger models and fleet request economics: [docs/benchmarks.md](docs/benchmarks.md). Rerun"
         " everything with `sudo scripts/bench.sh` (generated; do not edit).", "",
         "| workload | mode | modelfs | mountpoint-s3 | limit | modelfs ÷ mountpoint-s3 | modelfs ÷ limit |",
         "|---|---|---|---|---|---|---|"]
    for wid, mode, m, mp, ref, unit in headline:
        H.append(f"| {SHORT[wid]} | {mode} | {fmt_s(m)} | {fmt_s(mp) if mp else '–'} | "
                 f"{fmt_s(ref) if ref else '–'} | {fmt_rate_ratio(m, mp, unit)} | {fmt_rate_ratio(m, ref, unit)} |")
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
