"""The nemesis: seeded faults, one at a time, with the group healed before each.

Kinds (spec/ha.md §4): SIGKILL the master and restart it later on the same port; SIGSTOP the
master past the ttl, then SIGCONT (it must not ack, and must rejoin); SIGSTOP a replica briefly;
SIGKILL an etcd member (the etcd leader half the time) and restart it; slow the master's disk
(its WAL flushes take 0.2 s for 0.5-1 s, so requests queue up and are read together, then one
flush takes ttl + 0.5-2 s: with --wal-fsync=false the flush holds the event loop, so the lease
is not renewed and the master's deadline passes while the batch, and any other copy of its
keys waiting on it, is in flight). The first events go
through every kind once, in a seeded order; the rest are drawn with weights. Every fault is
undone before the next one starts, and the next starts only after a client write was
acknowledged (some node takes writes again) and a master is visible.

The seed fixes the schedule (kinds, delays, which replica or etcd member); which node is master
at each moment is the group's doing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from tests.process.jepsen.checker import NemesisEvent
from tests.process.jepsen.cluster import TTL, Group
from tests.process.jepsen.history import History

KINDS = ("kill_master", "pause_master", "pause_replica", "kill_etcd", "slow_disk")
WEIGHTS = (3, 3, 2, 2, 3)
#: no write acknowledged this long after a fault was undone: the group is stuck
HEAL_TIMEOUT_S = 45.0


class StuckError(AssertionError):
    pass


class Nemesis:
    def __init__(
        self,
        group: Group,
        history: History,
        seed: int,
        *,
        seconds: float,
        min_events: int,
        say: Callable[[str], None] = print,
    ) -> None:
        self.group = group
        self.history = history
        self.rng = random.Random(seed)
        self.seconds = seconds
        self.min_events = min_events
        self.say = say
        self.events: list[NemesisEvent] = []
        self.kinds = [k for k in KINDS if k != "kill_etcd" or len(group.etcd_members()) >= 3]
        self.began = time.monotonic()

    def run(self) -> None:
        self.began = time.monotonic()
        plan = list(self.kinds)
        self.rng.shuffle(plan)
        weights = [WEIGHTS[KINDS.index(k)] for k in self.kinds]
        since = time.time()
        while len(self.events) < self.min_events or self.elapsed() < self.seconds:
            self.heal(since)
            time.sleep(self.rng.uniform(0.5, 1.5))
            kind = plan.pop(0) if plan else self.rng.choices(self.kinds, weights)[0]
            event = getattr(self, kind)()
            self.events.append(event)
            self.say(
                f"[{self.elapsed():6.2f}s] {event.kind} {event.target}"
                f" ({event.end - event.start:.2f}s)"
            )
            since = event.end
        self.heal(since)

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def heal(self, since: float) -> None:
        """Wait until a client write is acknowledged after `since` and a master is visible."""
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.history.last_ack > since and self.group.master() is not None:
                return
            time.sleep(0.1)
        last = self.events[-1] if self.events else None
        raise StuckError(
            f"no write acknowledged within {HEAL_TIMEOUT_S} s after"
            f" {'the start' if last is None else f'{last.kind} {last.target}'}"
            f" (at {self.elapsed():.1f}s); nodes say: {self.group.roles()}"
        )

    def master(self) -> str:
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            name = self.group.master()
            if name is not None:
                return name
            time.sleep(0.1)
        raise StuckError(f"no master within {HEAL_TIMEOUT_S} s; nodes say: {self.group.roles()}")

    # --- the faults ---------------------------------------------------------------------------
    def kill_master(self) -> NemesisEvent:
        name = self.master()
        start = time.time()
        self.group.kill(name)
        # sometimes back before a rival took over (it must wait out its own old key)
        time.sleep(self.rng.uniform(1.0, TTL + 3.0))
        self.group.restart(name)
        return NemesisEvent("kill_master", name, start, time.time())

    def pause_master(self) -> NemesisEvent:
        name = self.master()
        start = time.time()
        self.group.pause(name)
        time.sleep(self.rng.uniform(TTL + 0.5, TTL + 3.0))
        self.group.resume(name)
        return NemesisEvent("pause_master", name, start, time.time())

    def pause_replica(self) -> NemesisEvent:
        master = self.master()
        name = self.rng.choice(sorted(n for n in self.group.up() if n != master))
        start = time.time()
        self.group.pause(name)
        time.sleep(self.rng.uniform(0.3, 2.0))
        self.group.resume(name)
        return NemesisEvent("pause_replica", name, start, time.time())

    def kill_etcd(self) -> NemesisEvent:
        members = self.group.etcd_members()
        member = self.group.etcd.leader() if self.rng.random() < 0.5 else self.rng.choice(members)
        target = f"etcd{members.index(member)}"
        start = time.time()
        member.kill()
        time.sleep(self.rng.uniform(1.0, 4.0))
        member.restart()
        return NemesisEvent("kill_etcd", target, start, time.time())

    def slow_disk(self) -> NemesisEvent:
        name = self.master()
        start = time.time()
        self.group.failpoints(name, {"wal.write": {"delay_ms": 200}})
        time.sleep(self.rng.uniform(0.5, 1.0))
        stall_s = self.rng.uniform(TTL + 0.5, TTL + 2.0)
        self.group.failpoints(name, {"wal.write": {"delay_ms": round(stall_s * 1000)}})
        time.sleep(stall_s + 1.0)  # the stalled flush began within 0.2 s, and is over
        self.group.failpoints(name, {})
        return NemesisEvent("slow_disk", name, start, time.time())
