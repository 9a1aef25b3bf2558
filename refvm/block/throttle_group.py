"""Throttle groups: drives sharing one set of limits, and the scheduler that delays their I/O.

QEMU model (``block/throttle-groups.c``), kept here:

* Every throttled drive belongs to exactly one group; a drive throttled on its own is alone
  in a group named after it (``-drive`` id, or QMP ``device``/``id``). All members of a group
  share one :class:`~refvm.block.throttle.ThrottleState`, so the limits are for the sum of
  their I/O, and setting the config through any member changes it for the whole group.
* Requests are queued per member and per direction (read / write), FIFO. At most one timer per
  direction is armed in the whole group (``any_timer_armed``); it belongs to the member whose
  turn it is (the *token*).
* Fairness is QEMU's round robin: when a request finishes its accounting, the next member
  (in registration order, wrapping) that has queued requests of that direction gets the token,
  so a busy member cannot starve the others. A member that issues a request while nobody
  else waits is its own token. A request that may start right away still queues behind older
  requests of its own member and direction.
* When the timer fires its owner's oldest request runs without a second check (the timer
  was armed for exactly the moment the limit allows it), is accounted, and the next request
  is scheduled -- immediately if the limits allow, else with a new timer.
* Reconfiguring a group restarts the queues of the member it was done through (one waiting
  request per direction is let go and the schedule recomputed), as ``throttle_group_config``
  does. Leaving a group (limits disabled, or a move to another group) first lets that
  member's queued requests go, as QEMU's drain with I/O limits disabled does.

Time comes from a :mod:`refvm.clock` clock: with :class:`~refvm.clock.VirtualClock` the
timers fire when the test steps the clock and completion times are exact; with
:class:`~refvm.clock.RealtimeClock` they fire on the clock's thread. ``start`` callbacks are
always called without the group lock held (they may submit more I/O).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from refvm.block.throttle import ThrottleState
from refvm.block.throttle_config import ThrottleConfig

__all__ = ["Clock", "ThrottleGroup", "ThrottleGroupMember", "ThrottleGroups"]

StartFn = Callable[[], None]
READ, WRITE = 0, 1


class Clock(Protocol):
    """What the scheduler needs from :class:`refvm.clock.VirtualClock` / ``RealtimeClock``."""

    def now_ns(self) -> int: ...

    def add_timer(self, deadline_ns: int, callback: Callable[[], None]) -> Any: ...


class ThrottleGroupMember:
    """One drive's side of throttling (QEMU's ``ThrottleGroupMember``); unthrottled until added.

    The block layer routes every read and write through :meth:`submit`; flushes and discards
    are not throttled, as in QEMU.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.group: ThrottleGroup | None = None
        self._queues: tuple[deque[tuple[int, StartFn]], deque[tuple[int, StartFn]]] = (deque(), deque())
        self._timers: list[Any] = [None, None]

    def submit(self, is_write: bool, size: int, start: StartFn) -> None:
        """Run ``start()`` when the group's limits allow a request of ``size`` bytes (maybe now)."""
        group = self.group
        if group is None:
            start()
        else:
            group.submit(self, is_write, size, start)

    def pending(self, is_write: bool) -> int:
        """Requests of this direction waiting for the limits."""
        return len(self._queues[int(is_write)])

    def query_info(self) -> dict[str, Any]:
        """``query-block`` throttle members for this drive (zeros when not throttled)."""
        group = self.group
        if group is None:
            return ThrottleConfig().to_qmp_info()
        return group.config.to_qmp_info(group.name)

    def _timer_pending(self, d: int) -> bool:
        timer = self._timers[d]
        return timer is not None and timer.pending

    def __repr__(self) -> str:
        group = self.group.name if self.group else None
        return f"<ThrottleGroupMember {self.name!r} group={group!r} pending={self.pending(False)}/{self.pending(True)}>"


class ThrottleGroup:
    """Members sharing one :class:`ThrottleState`, with QEMU's per-direction round robin."""

    def __init__(self, name: str, clock: Clock, config: ThrottleConfig | None = None) -> None:
        self.name = name
        self.clock = clock
        self.members: list[ThrottleGroupMember] = []
        self._lock = threading.RLock()
        self._state = ThrottleState(config if config is not None else ThrottleConfig(), clock.now_ns())
        self._tokens: list[ThrottleGroupMember | None] = [None, None]
        self._any_timer_armed = [False, False]

    # --- configuration ----------------------------------------------------------------------

    @property
    def config(self) -> ThrottleConfig:
        """The limits in force (a copy; levels zeroed, ``group`` set to this group's name)."""
        with self._lock:
            cfg = self._state.get_config()
        for bkt in cfg.buckets:
            bkt.level = bkt.burst_level = 0.0
        cfg.group = self.name
        return cfg

    @property
    def state(self) -> ThrottleState:
        """The shared bucket state (for inspection; hold no references across reconfigures)."""
        return self._state

    def configure(self, config: ThrottleConfig, via: ThrottleGroupMember | None = None) -> None:
        """Install ``config`` for the whole group (buckets emptied) and restart ``via``'s queues.

        ``via`` is the member the change came through (QMP ``block_set_io_throttle`` on one
        drive); ``None`` restarts every member. The config must already be valid.
        """
        config.validate()
        ready: list[StartFn] = []
        with self._lock:
            self._state.configure(config, self.clock.now_ns())
            for member in [via] if via is not None else list(self.members):
                if member is not None and member.group is self:
                    for d in (READ, WRITE):
                        self._restart(member, d, ready)
        _run(ready)

    # --- membership -------------------------------------------------------------------------

    def register(self, member: ThrottleGroupMember) -> None:
        with self._lock:
            if member.group is not None:
                raise ValueError(f"{member.name!r} is already in throttle group {member.group.name!r}")
            self.members.append(member)
            member.group = self
            for d in (READ, WRITE):
                if self._tokens[d] is None:
                    self._tokens[d] = member

    def unregister(self, member: ThrottleGroupMember) -> None:
        """Remove ``member``; its queued requests are released first (limits disabled to drain)."""
        ready: list[StartFn] = []
        with self._lock:
            if member.group is not self:
                raise ValueError(f"{member.name!r} is not in throttle group {self.name!r}")
            for d in (READ, WRITE):
                queue = member._queues[d]
                while queue:
                    size, start = queue.popleft()
                    self._state.account(bool(d), size)
                    ready.append(start)
            self.members.remove(member)
            member.group = None
            for d in (READ, WRITE):
                had_timer = member._timer_pending(d)
                if member._timers[d] is not None:
                    member._timers[d].cancel()
                    member._timers[d] = None
                if self._tokens[d] is member:
                    self._tokens[d] = self.members[0] if self.members else None
                if had_timer and self.members:
                    # Its timer was the group's one armed timer: hand the turn on.
                    self._any_timer_armed[d] = False
                    self._schedule_next(self._tokens[d], d, ready)
                elif had_timer:
                    self._any_timer_armed[d] = False
        _run(ready)

    # --- the scheduler ----------------------------------------------------------------------

    def submit(self, member: ThrottleGroupMember, is_write: bool, size: int, start: StartFn) -> None:
        """Run ``start()`` now if the limits allow, else queue it (FIFO per member and direction).

        Queued requests are started from the clock's timer callbacks; with a virtual clock that
        is inside the ``step``/``set`` call that reaches their time.
        """
        d = int(bool(is_write))
        ready: list[StartFn] = []
        with self._lock:
            if member.group is not self:
                raise ValueError(f"{member.name!r} is not in throttle group {self.name!r}")
            token = self._next_token(member, d)
            must_wait = self._schedule_timer(token, d)
            if must_wait or member._queues[d]:
                member._queues[d].append((size, start))
                return
            self._run_request(member, d, size, start, ready)
        _run(ready)

    def _run_request(
        self, member: ThrottleGroupMember, d: int, size: int, start: StartFn, ready: list[StartFn]
    ) -> None:
        """Account a request that is allowed to run, then keep releasing while limits allow.

        Iterative rather than recursive: each released request of ``member`` is accounted
        before the next decision, exactly as QEMU's chain of woken coroutines does.
        """
        while True:
            self._state.account(bool(d), size)
            ready.append(start)
            if not self._schedule_next(member, d, ready):
                return
            size, start = member._queues[d].popleft()

    def _next_token(self, member: ThrottleGroupMember, d: int) -> ThrottleGroupMember:
        """Whose turn it is: the next member after the current token with queued requests."""
        start = self._tokens[d]
        if start is None or start.group is not self:
            return member
        token = self._next_member(start)
        while token is not start and not token._queues[d]:
            token = self._next_member(token)
        if token is start and not token._queues[d]:
            # Nobody is waiting: chances are ``member`` is the one about to queue.
            return member
        return token

    def _next_member(self, member: ThrottleGroupMember) -> ThrottleGroupMember:
        i = self.members.index(member)
        return self.members[(i + 1) % len(self.members)]

    def _schedule_timer(self, token: ThrottleGroupMember, d: int) -> bool:
        """True if requests of direction ``d`` must wait; arms ``token``'s timer if none is armed."""
        if self._any_timer_armed[d]:
            return True
        must_wait, deadline = self._state.compute_timer(bool(d), self.clock.now_ns())
        if not must_wait:
            return False
        if not token._timer_pending(d):
            self._arm(token, d, deadline)
        self._tokens[d] = token
        self._any_timer_armed[d] = True
        return True

    def _schedule_next(self, member: ThrottleGroupMember, d: int, ready: list[StartFn]) -> bool:
        """After a request of ``member`` ran: pick the next one (QEMU's ``schedule_next_request``).

        Returns True when ``member``'s own next request may go now (the caller runs it, which
        gives preference to the member that just ran, as QEMU does); otherwise the chosen
        member gets a timer -- at "now" if the limits already allow it.
        """
        token = self._next_token(member, d)
        if not token._queues[d]:
            return False
        if self._schedule_timer(token, d):
            return False
        if member._queues[d]:
            self._tokens[d] = member
            return True
        self._arm(token, d, self.clock.now_ns())
        self._any_timer_armed[d] = True
        self._tokens[d] = token
        return False

    def _arm(self, member: ThrottleGroupMember, d: int, deadline: int) -> None:
        old = member._timers[d]
        if old is not None:
            old.cancel()
        member._timers[d] = self.clock.add_timer(deadline, lambda: self._timer_fired(member, d))

    def _timer_fired(self, member: ThrottleGroupMember, d: int) -> None:
        ready: list[StartFn] = []
        with self._lock:
            if member.group is not self:
                return
            member._timers[d] = None
            self._any_timer_armed[d] = False
            self._restart_queue(member, d, ready)
        _run(ready)

    def _restart_queue(self, member: ThrottleGroupMember, d: int, ready: list[StartFn]) -> None:
        """Let ``member``'s oldest request of direction ``d`` go; if none, schedule the next one."""
        if member._queues[d]:
            size, start = member._queues[d].popleft()
            self._run_request(member, d, size, start, ready)
        else:
            self._schedule_next(member, d, ready)

    def _restart(self, member: ThrottleGroupMember, d: int, ready: list[StartFn]) -> None:
        """``throttle_group_restart_tgm``: cancel the member's timer (if armed) and restart its queue."""
        if member._timer_pending(d):
            member._timers[d].cancel()
            member._timers[d] = None
            self._any_timer_armed[d] = False
        self._restart_queue(member, d, ready)

    def __repr__(self) -> str:
        return f"<ThrottleGroup {self.name!r} members={[m.name for m in self.members]} config={self.config}>"


def _run(ready: list[StartFn]) -> None:
    for start in ready:
        start()


class ThrottleGroups:
    """The named groups of one machine (QEMU's global group list), created and dropped on demand.

    A group exists while it has members; the last member leaving forgets it, so a later group
    of the same name starts from the config it is given then.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._groups: dict[str, ThrottleGroup] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> ThrottleGroup | None:
        with self._lock:
            return self._groups.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._groups)

    def get_or_create(self, name: str, config: ThrottleConfig | None = None) -> ThrottleGroup:
        """The group ``name`` (created if new); a given ``config`` is applied to the whole group."""
        with self._lock:
            group = self._groups.get(name)
            if group is None:
                group = self._groups[name] = ThrottleGroup(name, self.clock)
        if config is not None:
            group.configure(config)
        return group

    def enable(self, member: ThrottleGroupMember, group_name: str) -> ThrottleGroup:
        """Put ``member`` in ``group_name`` (``blk_io_limits_enable``); the group's config stands."""
        group = self.get_or_create(group_name)
        group.register(member)
        return group

    def disable(self, member: ThrottleGroupMember) -> None:
        """Take ``member`` out of its group (``blk_io_limits_disable``); drops an empty group."""
        group = member.group
        if group is None:
            return
        group.unregister(member)
        with self._lock:
            if not group.members and self._groups.get(group.name) is group:
                del self._groups[group.name]

    def update_group(self, member: ThrottleGroupMember, group_name: str) -> None:
        """Move ``member`` to ``group_name`` unless it is already there (``blk_io_limits_update_group``)."""
        if member.group is not None and member.group.name == group_name:
            return
        self.disable(member)
        self.enable(member, group_name)

    def attach_drive(self, member: ThrottleGroupMember, config: ThrottleConfig, default_group: str) -> None:
        """``-drive`` semantics: if ``config`` is enabled, join ``config.group`` (else a group named
        ``default_group``, the drive id) and set ``config`` for that whole group -- a later drive
        naming the same group overrides the limits of the earlier ones, as in QEMU.
        """
        config.validate()
        if not config.enabled():
            return
        group = self.enable(member, config.group if config.group is not None else default_group)
        group.configure(config, via=member)

    def set_io_throttle(self, member: ThrottleGroupMember, config: ThrottleConfig, default_group: str) -> None:
        """QMP ``block_set_io_throttle`` semantics once the arguments are parsed and valid.

        Enabled config: an unthrottled drive joins ``config.group`` or ``default_group`` (QMP
        ``device``, else ``id``); a throttled one moves only if ``group`` was given; then the
        config is set for the whole group. All limits 0: throttling is switched off for this
        drive (queued requests run).
        """
        config.validate()
        if config.enabled():
            if member.group is None:
                self.enable(member, config.group if config.group is not None else default_group)
            elif config.group is not None:
                self.update_group(member, config.group)
            assert member.group is not None
            member.group.configure(config, via=member)
        else:
            self.disable(member)
