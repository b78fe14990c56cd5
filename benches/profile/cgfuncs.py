#!/usr/bin/env python3
"""Per-function costs from a callgrind dump, with inlined pieces merged into their function.

    cgfuncs.py DUMP [--per N] top [COUNT]        functions by inclusive cost
    cgfuncs.py DUMP [--per N] self [COUNT]       functions by their own cost
    cgfuncs.py DUMP [--per N] callees PATTERN    what the functions matching PATTERN call
    cgfuncs.py DUMP [--per N] callers PATTERN    who calls the functions matching PATTERN

    cgfuncs.py DUMP --per N footprint [COUNT]    the code a request runs through (see below)
    cgfuncs.py DUMP --per N atomics BINARY [COUNT]  atomic read-modify-writes run in BINARY

`--event E` reads another of the dump's events than the first (with `--cache-sim=yes`:
I1mr, D1mr, D1mw for L1 instruction, data read and data write misses); it goes first.
`footprint` needs a dump made with `--dump-instr=yes` (`DUMP_INSTR=1 callgrind.sh`): it counts
the 64-byte lines of code holding an instruction executed at least once per two requests, in
all and by crate and function (the first COUNT), the code that competes for the L1
instruction cache on every request. `atomics` (same kind of dump) counts the executed
instructions of BINARY that `objdump -d` shows as atomic (`lock` prefix, or `xchg` with memory):
each costs tens of cycles (more when another core holds the line) where a count of instructions
shows one.
`--per N` divides every figure by N (the requests in the dump: instructions per request).
callgrind_annotate splits a function into one entry per source file its inlined code came
from; here a function is its name, whatever file each instruction was inlined from.
"""
import os
import re
import subprocess
import sys
from collections import defaultdict


def parse(path, event=None):
    names = {"fn": {}, "cfn": {}}
    self_cost = defaultdict(int)
    calls = defaultdict(lambda: defaultdict(int))  # caller -> callee -> inclusive
    counts = defaultdict(lambda: defaultdict(int))
    fn = None
    callee = None
    pending_call = False
    file_ids = {}
    positions = 1  # `positions: line`, or `instr line` in a `--dump-instr=yes` dump
    column = 1  # the first event follows the positions

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        ident, label = m.group(1), m.group(2)
        table = names["fn"]  # fn and cfn share one id space
        if label is not None:
            table[ident] = label
        return table.get(ident, ident)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if line.startswith("positions:"):
                positions = len(line.split()) - 1
                column = positions
                continue
            if line.startswith("events:"):
                events = line.split()[1:]
                if event is None:
                    column = positions
                elif event in events:
                    column = positions + events.index(event)
                else:
                    sys.exit(f"no event {event} in {path} (events: {' '.join(events)})")
                continue
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[column]) if len(parts) > column else 0
                if pending_call:
                    calls[fn][callee] += cost
                    pending_call = False
                else:
                    self_cost[fn] += cost
                continue
            key, _, rest = line.partition("=")
            if key == "fn":
                fn = name("fn", rest)
            elif key == "cfn":
                callee = name("cfn", rest)
            elif key == "calls":
                counts[fn][callee] += int(rest.split()[0])
                pending_call = True
    return self_cost, calls, counts


def executed(path):
    """Each instruction of a `--dump-instr=yes` dump: (object, function, address) -> times
    executed (an instruction's own count; the inclusive costs of calls are left out)."""
    names = {"ob": {}, "fn": {}}
    cost = defaultdict(int)
    ob, fn, last, after_call = None, None, 0, False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?", line)
            if m:
                # ob and cob share one id space, as fn and cfn do.
                table = names[m.group(2)]
                if m.group(4) is not None:
                    table[m.group(3)] = m.group(4)
                if not m.group(1):
                    name = table.get(m.group(3), m.group(3))
                    if m.group(2) == "ob":
                        ob = name
                    else:
                        fn = name
                continue
            if line.startswith("calls="):
                after_call = True  # the next line is the call's inclusive cost
                continue
            if not line or line[0] not in "0123456789+-*":
                continue
            parts = line.split()
            a = parts[0]
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a[0] in "+-":
                addr = last + int(a, 0)
            elif a == "*":
                addr = last
            else:
                continue
            last = addr
            if after_call:
                after_call = False
            elif len(parts) >= 3:
                cost[(ob, fn, addr)] += int(parts[2])
    return cost


def footprint(path, per, count):
    """The hot code of a `--dump-instr=yes` dump, by 64-byte line: in all, by crate, by function."""
    cost, owner = defaultdict(int), {}
    for (ob, fn, addr), n in executed(path).items():
        cost[(ob, addr)] += n
        owner[(ob, addr)] = fn
    by_fn, by_crate = defaultdict(set), defaultdict(set)
    for (ob, addr), n in cost.items():
        if n * 2 >= per:
            name = owner[(ob, addr)] or "?"
            by_fn[name].add((ob, addr // 64))
            m = re.match(r"^<?(?:&|dyn )?([A-Za-z_][A-Za-z0-9_]*)::", name)
            by_crate[m.group(1) if m else name[:40]].add((ob, addr // 64))
    lines = set().union(*by_fn.values()) if by_fn else set()
    print(f"{len(lines)} lines of 64 bytes ({len(lines) * 64 / 1024:.1f} KiB) hold code run at least once per two requests")
    for title, table in (("by crate", by_crate), ("by function", by_fn)):
        print(f"\n{title}:")
        for name, ls in sorted(table.items(), key=lambda kv: -len(kv[1]))[:count]:
            print(f"{len(ls):8,} {name[:190]}")


def atomics(path, per, binary, count):
    """Atomic read-modify-writes (`lock`-prefixed instructions, and `xchg` with memory, which
    is locked without the prefix) executed in BINARY, by function. Each costs tens of cycles
    that an instruction count shows as one."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True, check=True
    ).stdout
    locked = set()
    for line in listing.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\t(.*)", line)
        if m and (m.group(2).startswith("lock ") or re.match(r"xchg\s.*\(", m.group(2))):
            locked.add(int(m.group(1), 16))
    by_fn = defaultdict(int)
    target = os.path.realpath(binary)
    for (ob, fn, addr), n in executed(path).items():
        if ob is not None and os.path.realpath(ob) == target and addr in locked:
            by_fn[fn or "?"] += n
    print(f"{sum(by_fn.values()) / per:,.1f} atomic read-modify-writes in {binary}")
    for fn, n in sorted(by_fn.items(), key=lambda kv: -kv[1])[:count]:
        print(f"{n / per:10,.1f} {fn[:190]}")


def main():
    args = sys.argv[1:]
    path = args.pop(0)
    event = None
    if args[:1] == ["--event"]:
        event = args[1]
        args = args[2:]
    per = 1
    if args[:1] == ["--per"]:
        per = int(args[1])
        args = args[2:]
    cmd = args.pop(0) if args else "top"
    if cmd == "footprint":
        return footprint(path, per, int(args[0]) if args else 30)
    if cmd == "atomics":
        return atomics(path, per, args[0], int(args[1]) if len(args) > 1 else 30)
    self_cost, calls, counts = parse(path, event)
    inclusive = {}
    for fn in set(self_cost) | set(calls):
        # A recursive call is counted once: the callee's inclusive cost is already in it.
        inclusive[fn] = self_cost.get(fn, 0) + sum(v for k, v in calls[fn].items() if k != fn)
    fmt = lambda v: f"{v / per:14,.0f}" if per != 1 else f"{v:14,}"
    if cmd in ("top", "self"):
        count = int(args[0]) if args else 40
        table = inclusive if cmd == "top" else self_cost
        for fn, v in sorted(table.items(), key=lambda kv: -kv[1])[:count]:
            print(fmt(v), fn[:200])
    elif cmd == "callees":
        pat = args[0]
        for fn in sorted((f for f in inclusive if pat in f), key=lambda f: -inclusive[f]):
            print(fmt(inclusive[fn]), "*", fn[:200])
            print(fmt(self_cost.get(fn, 0)), "   (self)")
            for callee, v in sorted(calls[fn].items(), key=lambda kv: -kv[1]):
                print(fmt(v), f"   > {callee[:190]} ({counts[fn][callee]}x)")
    elif cmd == "callers":
        pat = args[0]
        for target in sorted({c for cs in calls.values() for c in cs if pat in c}):
            total = sum(cs.get(target, 0) for cs in calls.values())
            print(fmt(total), "*", target[:200])
            rows = [(cs[target], caller) for caller, cs in calls.items() if target in cs]
            for v, caller in sorted(rows, reverse=True)[:30]:
                print(fmt(v), f"   < {caller[:190]} ({counts[caller][target]}x)")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
