"""Spec conformance: the requirement catalogue, the checkers and their findings.

Checkers on both sides (a conformance driver probing a device, a checking device watching a
driver) report into one :class:`~virtio_sim.orchestration.conformance.findings.FindingLog`, so a report does
not care which side found what.
"""
