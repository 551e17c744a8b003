"""``--json [PATH]``, ``--junit-xml PATH``, ``--html PATH``: the report files of a campaign.

Every campaign command takes the same three options with the same meaning: ``--json``
alone puts the JSON document on stdout and nothing else there, ``--json PATH`` and the
others write files. The paths are checked before the work starts (a run of an hour must
not be lost to a missing directory, virtio_sim/outpaths.py) and each report is rendered
only when its file is asked for.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from virtio_sim.outpaths import check_writable, write_text

Render = Callable[[], str]


def add_report_arguments(
    p: argparse.ArgumentParser, *, json_help: str, junit_help: str, html_help: str
) -> None:
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help=json_help)
    p.add_argument("--junit-xml", metavar="PATH", help=junit_help)
    p.add_argument("--html", metavar="PATH", help=html_help)


@dataclass(frozen=True)
class Outputs:
    json: str | None = None
    junit_xml: str | None = None
    html: str | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> Outputs:
        return cls(getattr(args, "json", None), getattr(args, "junit_xml", None), getattr(args, "html", None))

    @property
    def json_only(self) -> bool:
        """The JSON document goes to stdout, alone there."""
        return self.json == "-"

    def check(self) -> None:
        """OutputPathError for the first path that cannot be written (before the run)."""
        check_writable((("--json", self.json), ("--junit-xml", self.junit_xml), ("--html", self.html)))

    def write(self, *, json: Render, junit: Render | None = None, html: Render | None = None) -> None:
        """Write the files asked for (not stdout); OutputPathError if one cannot be written
        after all (the disk filled up...)."""
        for option, path, render in (
            ("--json", None if self.json_only else self.json, json),
            ("--junit-xml", self.junit_xml, junit),
            ("--html", self.html, html),
        ):
            if path and render is not None:
                write_text(option, path, render())
