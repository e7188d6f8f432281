# SPDX-License-Identifier: BSD-2-Clause
"""Run a simulation: fast by default, a VCD only when something fails, and never hang."""

from pathlib import Path

from amaranth.sim import Simulator

__all__ = ["SimulationDeadline", "run_sim", "unelaborated"]


def unelaborated(*objs):
    """Mark hardware objects that are intentionally never elaborated — built for their cycle
    formulas or their signature only — and the parts they build eagerly, so that Amaranth does
    not warn that they were created but never used."""
    from amaranth.hdl import Elaboratable
    seen, todo = set(), list(objs)
    while todo:
        obj = todo.pop()
        if isinstance(obj, (list, tuple)):
            todo.extend(obj)
            continue
        if isinstance(obj, dict):
            todo.extend(obj.values())
            continue
        if id(obj) in seen or not isinstance(obj, Elaboratable):
            continue
        seen.add(id(obj))
        obj._MustUse__silence = True
        todo.extend(vars(obj).values())


class SimulationDeadline(AssertionError):
    """The testbenches did not finish within the allowed number of clock cycles."""


def run_sim(dut, testbenches, *, background=(), vcd_path=None, always_vcd=False, period=1e-8,
            deadline_cycles=None, traces=()):
    """Simulate ``dut`` with one clock until every (non-background) testbench returns.

    The simulation first runs without waveform output. If it raises, and ``vcd_path`` is given,
    it is reset and replayed while writing ``vcd_path``; the original exception is then
    re-raised. Replay is faithful only if the testbenches derive all their randomness inside
    their coroutine (for example ``rng = random.Random(seed)`` in the ``async def``), because a
    reset restarts every testbench from its beginning.

    Parameters
    ----------
    dut : Elaboratable
        Design under test. It must use the ``sync`` domain only.
    testbenches : iterable of async callables
        ``async def tb(ctx)`` functions (or :func:`functools.partial` objects of them). The
        simulation ends when all of them have returned.
    background : iterable of async callables
        Testbenches that run only while the others do (models, checkers, endless stimulus).
    vcd_path : str or Path or None
        Where to write a waveform. Parent folders are created.
    always_vcd : bool
        Write ``vcd_path`` on every run, not only on failure.
    period : float
        Clock period in seconds.
    deadline_cycles : int or None
        If given, fail with :class:`SimulationDeadline` once this many clock periods have passed
        while testbenches are still running.
    traces : iterable of signals
        Extra signals (outside the design) to put in the VCD.

    Raises
    ------
    SimulationDeadline
        If ``deadline_cycles`` elapsed first.
    Exception
        Whatever a testbench or the design raised.
    """
    sim = Simulator(dut)
    sim.add_clock(period)
    for tb in testbenches:
        sim.add_testbench(tb)
    for tb in background:
        sim.add_testbench(tb, background=True)
    if deadline_cycles is not None:
        async def deadline(ctx):
            await ctx.delay(deadline_cycles * period)
            raise SimulationDeadline(
                f"simulation still running after {deadline_cycles} clock cycles "
                f"(deadline_cycles={deadline_cycles}); a testbench is probably waiting for "
                f"something that never happens")
        sim.add_testbench(deadline, background=True)

    if vcd_path is not None:
        vcd_path = Path(vcd_path)
        vcd_path.parent.mkdir(parents=True, exist_ok=True)

    if always_vcd and vcd_path is not None:
        with sim.write_vcd(str(vcd_path), traces=traces):
            sim.run()
        return
    try:
        sim.run()
    except Exception:
        if vcd_path is not None:
            sim.reset()
            with sim.write_vcd(str(vcd_path), traces=traces):
                try:
                    sim.run()
                except Exception:
                    pass    # the first run's exception is the one to report
        raise
