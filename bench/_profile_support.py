#!/usr/bin/env python3
"""Helpers of bench/profile.py: a GC-timing wrapper, and the reading of py-spy's collapsed stacks.

As a script it is the wrapper: it runs a module or a script exactly as `python -m MODULE` /
`python SCRIPT` would, after installing a `gc.callbacks` hook when EXAM_EVENTS_GC_STATS names a
file. A daemon thread rewrites that file (atomically, every 0.25 s) with the totals so far: monotonic
wall time, this process's CPU time, collections and seconds spent collecting per generation. The
reader takes two snapshots and divides their differences, so the window is the one between them.
When a file named like that one plus `.freeze` appears, the thread calls `gc.collect()` and
`gc.freeze()` once (an experiment: what freezing the start-up heap would change).

    EXAM_EVENTS_GC_STATS=/tmp/gc.json python bench/_profile_support.py -m consumer
    EXAM_EVENTS_GC_STATS=/tmp/gc.json python bench/_profile_support.py bench/ingress.py --serve-noop

Only the standard library here: the wrapper must import nothing the wrapped program would import
differently.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GC_STATS_ENV = "EXAM_EVENTS_GC_STATS"
OUR_PACKAGES = (
    "consumer",
    "ingress",
    "handlers",
    "schemas",
    "common",
    "cli",
    "lrs_forward",
    "bench",
    "tests",
)
WRAPPER_FRAMES = ("_profile_support.py", "<frozen runpy>")
GC_THREAD_FRAME = "install_gc_timer.<locals>.loop"


# --- the GC hook (runs inside the profiled process) -------------------------------------------------


class GcTimer:
    """Totals of the collections seen by a `gc.callbacks` hook, per generation."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.seconds[generation] += time.perf_counter() - self._started
        self.collections[generation] += 1
        self.collected[generation] += info["collected"]

    def snapshot(self) -> dict[str, Any]:
        return {
            "wall": time.monotonic(),
            "cpu": time.process_time(),
            "collections": list(self.collections),
            "seconds": list(self.seconds),
            "collected": list(self.collected),
            "thresholds": list(gc.get_threshold()),
            "frozen": gc.get_freeze_count(),
        }


def install_gc_timer(path: Path, interval: float = 0.25) -> GcTimer:
    """Hook the collector and keep `path` up to date from a daemon thread."""
    timer = GcTimer()
    gc.callbacks.append(timer)
    temporary = path.with_name(path.name + ".tmp")

    def write() -> None:
        temporary.write_text(json.dumps(timer.snapshot()))
        os.replace(temporary, path)

    freeze_request = path.with_name(path.name + ".freeze")

    def loop() -> None:
        frozen = False
        while True:
            if not frozen and freeze_request.exists():  # an experiment of bench/profile.py --gc-freeze
                gc.collect()
                gc.freeze()
                frozen = True
            write()
            time.sleep(interval)

    write()
    threading.Thread(target=loop, name="gc-stats", daemon=True).start()
    return timer


def run_wrapped(argv: list[str]) -> None:
    """`-m MODULE ARGS...` or `SCRIPT ARGS...`, as the interpreter itself would run them."""
    if os.environ.get(GC_STATS_ENV):
        install_gc_timer(Path(os.environ[GC_STATS_ENV]))
    # sys.path[0] is bench/ (this file's directory), where ingress.py would shadow the package.
    sys.path[0] = str(ROOT)
    if argv[:1] == ["-m"] and len(argv) >= 2:
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")
    else:
        raise SystemExit("usage: _profile_support.py (-m MODULE | SCRIPT) [ARGS...]")


@dataclass
class GcShare:
    """The collector's work between two snapshots of a GcTimer's file."""

    wall: float
    cpu: float
    collections: list[int]
    seconds: list[float]
    collected: list[int]
    thresholds: list[int]
    frozen: int

    @classmethod
    def between(cls, before: dict[str, Any], after: dict[str, Any]) -> GcShare:
        return cls(
            wall=after["wall"] - before["wall"],
            cpu=after["cpu"] - before["cpu"],
            collections=[a - b for a, b in zip(after["collections"], before["collections"], strict=True)],
            seconds=[a - b for a, b in zip(after["seconds"], before["seconds"], strict=True)],
            collected=[a - b for a, b in zip(after["collected"], before["collected"], strict=True)],
            thresholds=after["thresholds"],
            frozen=after["frozen"],
        )

    def lines(self) -> list[str]:
        total = sum(self.seconds)
        out = [
            f"GC over {self.wall:.2f} s wall, {self.cpu:.2f} s CPU of the process: "
            f"{total * 1000:.0f} ms in {sum(self.collections)} collections = "
            f"{100 * total / self.wall:.1f}% of wall, {100 * total / max(self.cpu, 1e-9):.1f}% of its CPU "
            f"(thresholds {tuple(self.thresholds)}, {self.frozen} objects frozen)"
        ]
        for generation in range(3):
            count, seconds = self.collections[generation], self.seconds[generation]
            mean = seconds / count * 1e6 if count else 0.0
            out.append(
                f"  gen {generation}: {count:6d} collections ({count / self.wall:7.1f}/s), "
                f"{seconds * 1000:7.1f} ms, mean {mean:7.0f} us, {self.collected[generation]} objects freed"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.seconds)
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "collections": self.collections,
            "seconds": self.seconds,
            "collected": self.collected,
            "thresholds": self.thresholds,
            "frozen": self.frozen,
            "share_of_wall": total / self.wall,
            "share_of_cpu": total / max(self.cpu, 1e-9),
        }


# --- py-spy's collapsed stacks ------------------------------------------------------------------------


def parse_collapsed(text: str) -> Counter[tuple[str, ...]]:
    """`frame;frame;...;leaf COUNT` lines (py-spy --format raw), root first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def frame_file(frame: str) -> str:
    """`function (path:line)` -> path ("" when the frame has none)."""
    if not frame.endswith(")") or " (" not in frame:
        return ""
    return frame.rsplit(" (", 1)[1][:-1].rsplit(":", 1)[0]


def group_of(frame: str) -> str:
    """Which body of code a frame belongs to: ours (by top-level package), a library, or the stdlib part."""
    path = frame_file(frame)
    if not path:
        return "other"
    root = str(ROOT) + "/"
    if path.startswith(root) and "/site-packages/" not in path:
        top = path[len(root) :].split("/", 1)[0]
        return f"ours:{top}" if top in OUR_PACKAGES else "ours:other"
    if "/site-packages/" in path:
        package = path.split("/site-packages/", 1)[1].split("/", 1)[0]
        package = package.removesuffix(".py").split(".", 1)[0]
        if package.startswith("pydantic"):
            return "pydantic"
        if package.startswith("opentelemetry"):
            return "opentelemetry"
        return package
    if path.startswith("<"):  # <string>: dataclasses' generated __init__ and the like
        return "generated code" if path == "<string>" else "other"
    if "/lib/python" not in path:
        return "other"
    below = path.split("/lib/python", 1)[1].split("/")[1:]  # e.g. ["asyncio", "events.py"], ["uuid.py"]
    return below[0].removesuffix(".py")


def short(frame: str) -> str:
    """The frame with its path cut to the package part (what py-spy prints without --full-filenames)."""
    path = frame_file(frame)
    if not path:
        return frame
    function = frame.rsplit(" (", 1)[0]
    line = frame.rsplit(":", 1)[1][:-1]
    root = str(ROOT) + "/"
    if path.startswith(root) and "/site-packages/" not in path:
        path = path[len(root) :]
    elif "/site-packages/" in path:
        path = path.split("/site-packages/", 1)[1]
    elif "/lib/python" in path:
        path = path.split("/lib/python", 1)[1].split("/", 1)[1]
    return f"{function} ({path}:{line})"


@dataclass
class Profile:
    """Own and cumulative sample counts per function and per group."""

    samples: int
    own: Counter[str]
    cumulative: Counter[str]
    group_own: Counter[str]
    group_cumulative: Counter[str]
    callers: dict[str, Counter[str]]

    @classmethod
    def of(cls, stacks: Counter[tuple[str, ...]]) -> Profile:
        own: Counter[str] = Counter()
        cumulative: Counter[str] = Counter()
        group_own: Counter[str] = Counter()
        group_cumulative: Counter[str] = Counter()
        callers: dict[str, Counter[str]] = {}
        for stack, count in stacks.items():
            if any(f.startswith(GC_THREAD_FRAME) for f in stack):
                continue  # the GC statistics' own thread (seen as active while it waits for the GIL)
            frames = [f for f in stack if not frame_file(f).endswith(WRAPPER_FRAMES)] or list(stack)
            leaf = frames[-1]
            own[short(leaf)] += count
            caller = short(frames[-2]) if len(frames) > 1 else "(none)"
            callers.setdefault(short(leaf), Counter())[caller] += count
            group_own[group_of(leaf)] += count
            for name in {short(f) for f in frames}:
                cumulative[name] += count
            for group in {group_of(f) for f in frames}:
                group_cumulative[group] += count
        return cls(sum(group_own.values()), own, cumulative, group_own, group_cumulative, callers)

    def table(self, top: int) -> list[str]:
        n = max(self.samples, 1)
        out = [
            f"{self.samples} samples (CPU-active stacks; idle waits and the GC statistics thread left out)",
            "",
        ]
        out.append(f"{'group':<22} {'own':>6} {'cumul.':>7}")
        for group, count in self.group_own.most_common():
            out.append(f"{group:<22} {100 * count / n:5.1f}% {100 * self.group_cumulative[group] / n:6.1f}%")
        out += ["", f"top {top} by own time:", f"{'own':>6} {'cumul.':>7}  function"]
        for name, count in self.own.most_common(top):
            out.append(f"{100 * count / n:5.1f}% {100 * self.cumulative[name] / n:6.1f}%  {name}")
        out += [
            "",
            f"top {top} by cumulative share (below the entry points):",
            f"{'cumul.':>7} {'own':>6}  function",
        ]
        shown = 0
        for name, count in self.cumulative.most_common():
            if count / n > 0.97:  # <module>, run, the event loop's own frames: everything is under them
                continue
            out.append(f"{100 * count / n:6.1f}% {100 * self.own[name] / n:5.1f}%  {name}")
            shown += 1
            if shown == top:
                break
        out += ["", "callers of the 5 hottest functions (share of all samples):"]
        for name, _ in self.own.most_common(5):
            out.append(f"  {name}")
            for caller, count in self.callers[name].most_common(4):
                out.append(f"    {100 * count / n:5.1f}%  from {caller}")
        return out

    def as_dict(self, top: int) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {
            "samples": self.samples,
            "groups_own": {g: c / n for g, c in self.group_own.most_common()},
            "groups_cumulative": {g: c / n for g, c in self.group_cumulative.most_common()},
            "top_own": [[name, c / n, self.cumulative[name] / n] for name, c in self.own.most_common(top)],
            "callers": {
                name: {caller: c / n for caller, c in self.callers[name].most_common(5)}
                for name, _ in self.own.most_common(5)
            },
            "top_cumulative": [
                [name, c / n, self.own[name] / n] for name, c in self.cumulative.most_common(top * 2)
            ],
        }


if __name__ == "__main__":
    run_wrapped(sys.argv[1:])
