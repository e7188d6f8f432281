# SPDX-License-Identifier: BSD-2-Clause
"""Drive and observe :mod:`amaranth.lib.stream` interfaces from async testbenches.

The producers insert random bubbles and the consumers random stalls, so every test exercises
back pressure. All randomness comes from an explicit :class:`random.Random`; create it inside the
testbench coroutine so that :func:`sim.harness.run_sim` can replay a failure exactly.

Every transfer decision uses values sampled *at* the clock edge (``ctx.tick().sample(...)``),
never values read after it, so the helpers are immune to the order in which testbenches run.
Signals are written only when they change, because every ``ctx.set`` settles the whole design.

The helpers iterate one multi-shot tick trigger per call and close it on normal return only: a
simulation that is abandoned (because another testbench raised) just drops them.
"""

from amaranth.hdl import Value

__all__ = ["put", "get", "put_all", "get_n", "check_stream_rules"]


def _bubbles(rng, p):
    """Draw a geometric number of idle cycles: each further cycle has probability ``p``."""
    n = 0
    if rng is not None and p:
        while rng.random() < p:
            n += 1
    return n


async def put(ctx, stream, payload, *, rng=None, p_idle=0.0):
    """Send one payload on ``stream``; see :func:`put_all`."""
    await put_all(ctx, stream, (payload,), rng=rng, p_idle=p_idle)


async def get(ctx, stream, *, rng=None, p_stall=0.0):
    """Receive one payload from ``stream`` and return it; see :func:`get_n`."""
    return (await get_n(ctx, stream, 1, rng=rng, p_stall=p_stall))[0]


async def put_all(ctx, stream, payloads, *, rng=None, p_idle=0.0):
    """Send every payload of ``payloads`` in order, back to back unless a bubble is drawn.

    Before each payload, a geometric number of idle cycles (probability ``p_idle`` each) is
    inserted with ``valid`` low. Returns after the last transfer's clock edge, ``valid`` low.
    """
    valid = 0
    ticks = ctx.tick().sample(stream.ready).__aiter__()
    for payload in payloads:
        idle = _bubbles(rng, p_idle)
        if idle and valid:
            ctx.set(stream.valid, 0)
            valid = 0
        for _ in range(idle):
            await ticks.__anext__()
        ctx.set(stream.payload, payload)
        if not valid:
            ctx.set(stream.valid, 1)
            valid = 1
        while True:
            _, _, ready = await ticks.__anext__()
            if ready:
                break
    await ticks.aclose()
    if valid:
        ctx.set(stream.valid, 0)


async def get_n(ctx, stream, count, *, rng=None, p_stall=0.0):
    """Receive ``count`` payloads from ``stream`` and return them as a list.

    In each cycle ``ready`` is low with probability ``p_stall``. ``ready`` is low on return.
    """
    out = []
    if count == 0:
        return out
    ready = None
    ticks = ctx.tick().sample(stream.valid, stream.payload).__aiter__()
    while True:
        want = 0 if rng is not None and p_stall and rng.random() < p_stall else 1
        if want != ready:
            ctx.set(stream.ready, want)
            ready = want
        _, _, valid, payload = await ticks.__anext__()
        if valid and ready:
            out.append(payload)
            if len(out) == count:
                break
    await ticks.aclose()
    ctx.set(stream.ready, 0)
    return out


async def check_stream_rules(ctx, stream, name):
    """Check rule 2 of the stream transfer rules for as long as the simulation runs.

    Use as a background testbench (``functools.partial(check_stream_rules, stream=s, name=...)``).
    Once ``valid`` is high and ``ready`` low at a clock edge, the next edge must again see
    ``valid`` high and the same payload bits. Raises :exc:`AssertionError` naming the stream and
    the cycle (numbered from 0, the cycle ending at the first clock edge). Cycles in reset are
    not checked.
    """
    bits = Value.cast(stream.payload)
    held = None
    cycle = 0
    async for _, rst, valid, ready, payload in ctx.tick().sample(stream.valid, stream.ready, bits):
        if held is not None and not rst:
            if not valid:
                raise AssertionError(f"{name}: valid dropped in cycle {cycle} while the payload "
                                     f"{held:#x} of cycle {cycle - 1} was not yet transferred")
            if payload != held:
                raise AssertionError(f"{name}: payload changed from {held:#x} to {payload:#x} in "
                                     f"cycle {cycle} before the transfer (valid high, ready low "
                                     f"in cycle {cycle - 1})")
        held = payload if valid and not ready and not rst else None
        cycle += 1
