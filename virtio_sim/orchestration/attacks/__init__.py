"""Hostile peers on purpose: a named corpus of malformed rings, register abuse and broken
wire frames replayed against every device model, transport and ring format (and the
reverse, a lying device against every guest driver profile), each case bounded in time
and judged for crashes, hangs, escapes outside allowed memory and wrong policies."""
