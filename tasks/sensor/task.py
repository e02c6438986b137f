"""A sensor task: a device driver that produces readings and hands them over by shared memory and IRQ.

It owns nothing but its caps: ``readings`` (a dataspace it shares with the consumer) and ``ready``
(an IRQ the consumer has bound). Every ``1/rate_hz`` seconds it samples its (simulated) device,
writes the reading into the ring in the dataspace (``protocols/sensor_ring.py``) and triggers the IRQ.
Waiting between samples is a kernel receive timeout, not a Python sleep. Config::

    config:
      shm: readings        # cap names (these are the defaults)
      irq: ready
      rate_hz: 5           # readings per second
      count: 0             # stop after this many readings (0 = run until the system stops)
      channel: 0           # the device channel number reported with each reading

The simulated device is a temperature around 21.5 °C with a slow daily swing and a little noise,
derived from the reading's sequence number (deterministic: the same run gives the same values).
"""
from __future__ import annotations

import math
import time

from protocols import sensor_ring as ring


def sample(seq: int, channel: int = 0) -> int:
    """The device: milli-degrees Celsius for reading ``seq``."""
    swing = 1500 * math.sin(seq / 50.0)
    noise = ((seq * 2654435761 + channel * 40503) % 201) - 100
    return int(21500 + swing + noise)


def main(env) -> int:
    cfg = env.config
    rate = float(cfg.get("rate_hz", 5))
    count = int(cfg.get("count", 0))
    channel = int(cfg.get("channel", 0))
    if not 0 < rate <= 1000:
        env.log(f"rate_hz must be in (0, 1000], got {rate}")
        return 2
    shm = env.map_dataspace(env.cap(cfg.get("shm", "readings")), writable=True)
    irq = env.cap(cfg.get("irq", "ready"))
    slots = ring.slots_for(shm.size)
    if slots < 1:
        env.log(f"the readings dataspace ({shm.size} bytes) holds no slot")
        return 2
    ring.init(shm.buf, slots)
    env.log(f"sampling channel {channel} at {rate:g} Hz into a ring of {slots} readings")
    period_us = int(1_000_000 / rate)
    seq = 0
    while count == 0 or seq < count:
        # the slot first, then the header that publishes it (ring.write keeps that order)
        ring.write(shm.buf, ring.Reading(seq, time.time_ns() // 1000, sample(seq, channel), channel))
        env.trigger(irq)
        seq += 1
        env.sleep(period_us)
    env.log(f"{seq} readings delivered")
    return 0
