"""The one JUnit XML writer of every campaign (matrix, attacks, conformance, compat).

A report is a suite name and :class:`~virtio_sim.orchestration.campaign.verdict.CaseVerdict` cases;
each campaign maps its records onto cases (its ``junit_cases``) and this module writes
them the same way: one ``testsuite`` with the counts, the timestamp and the hostname
(Jenkins' and GitLab's readers want both), one ``testcase`` per case with its status as
a child element (failure, error, skipped, skipped type="xfail"), its properties and any
output. Suite names are dotted and stable wherever the checkout is:
``virtio-sim.<campaign>.<what ran>``.
"""

from __future__ import annotations

import datetime
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from virtio_sim.orchestration.campaign.verdict import CaseVerdict, Status

#: the child element of a case in each status (PASSED has none)
_ELEMENT = {
    Status.FAILED: "failure",
    Status.ERROR: "error",
    Status.SKIPPED: "skipped",
    Status.XFAIL: "skipped",
}


def junit_stamp() -> tuple[str, str]:
    """JUnit's testsuite timestamp (ISO 8601, local time without zone, as the schema has
    it) and hostname."""
    return datetime.datetime.now().replace(microsecond=0).isoformat(), socket.gethostname()


def to_junit(name: str, cases: Sequence[CaseVerdict]) -> str:
    """The suite ``name`` with ``cases``. A case without a time of its own reads ``0``."""
    stamp, host = junit_stamp()
    count = {s: 0 for s in Status}
    for c in cases:
        count[c.status] += 1
    suite = ET.Element(
        "testsuite",
        name=name,
        timestamp=stamp,
        hostname=host,
        tests=str(len(cases)),
        failures=str(count[Status.FAILED]),
        errors=str(count[Status.ERROR]),
        skipped=str(count[Status.SKIPPED] + count[Status.XFAIL]),
        time=f"{sum(c.seconds or 0.0 for c in cases):.3f}",
    )
    for c in cases:
        case = ET.SubElement(
            suite, "testcase", classname=c.classname, name=c.name,
            time="0" if c.seconds is None else f"{c.seconds:.4f}",
        )  # fmt: skip
        if c.properties:
            props = ET.SubElement(case, "properties")
            for k, v in c.properties.items():
                ET.SubElement(props, "property", name=k, value=v)
        tag = _ELEMENT.get(c.status)
        if tag is not None:
            el = ET.SubElement(case, tag, message=c.message)
            if c.status is Status.XFAIL:
                el.set("type", "xfail")
            if c.text:
                el.text = c.text
        if c.output:
            out = ET.SubElement(case, "system-out")
            out.text = c.output
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
